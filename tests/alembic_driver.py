"""Alembic in one long-lived process, for fleetmig's graph property test.

Reads one JSON command per line on stdin and answers one JSON line on stdout:

  {"ini": PATH, "url": SQLALCHEMY_URL, "cmd": "upgrade"|"downgrade"|"stamp"|"current"|"heads"|"history",
   "args": [...], "purge": false}
  -> {"ok": true, "stdout": "...", "warnings": [...]} or {"ok": false, "error": "Type: message"}

Each command runs alembic.command.* exactly as the CLI would, against the project's
alembic.ini, with sqlalchemy.url set to "url". Starting Python once instead of once per
command is what lets hundreds of random cases fit in a CI run.

Started through the Alembic the tests use (FLEETMIG_ALEMBIC): a launcher project's env.py
re-executes this file with that Alembic's interpreter and sys.path.
"""

import io
import json
import sys
import warnings

from alembic import command
from alembic.config import Config


def run(req):
    out = io.StringIO()
    cfg = Config(req["ini"], stdout=out)
    cfg.set_main_option("sqlalchemy.url", req["url"])
    cmd, args = req["cmd"], req.get("args", [])
    if cmd == "upgrade":
        command.upgrade(cfg, args[0])
    elif cmd == "downgrade":
        command.downgrade(cfg, args[0])
    elif cmd == "stamp":
        command.stamp(cfg, args, purge=bool(req.get("purge")))
    elif cmd == "current":
        command.current(cfg)
    elif cmd == "heads":
        command.heads(cfg)
    elif cmd == "history":
        command.history(cfg, args[0] if args else None)
    else:
        raise ValueError("unknown command %r" % cmd)
    return out.getvalue()


def main():
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out = run(req)
            resp = {
                "ok": True,
                "stdout": out,
                "warnings": [str(w.message) for w in caught],
            }
        except Exception as e:  # Alembic refusing (or failing an assertion): a refusal
            resp = {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
        sys.stdout.write(json.dumps(resp) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
