#!/usr/bin/env python3
"""Alembic in-process, as a long-running Alembic-based tool would run it (the fleet benchmark).

One process imports Alembic, SQLAlchemy and psycopg2 once, forks WORKERS workers
(multiprocessing, fork) and waits. Each job then calls alembic.command.upgrade(cfg, "head") or
downgrade(cfg, "base") once per tenant URL, WORKERS at a time, each worker taking the next
URL when it is free (like `xargs -P`). Python's start-up, the imports and the fork happen
before the first job, outside the benchmark's measured time.

    driver.py ALEMBIC_INI WORKERS

Protocol: prints `ready` once the workers are up; then per stdin line
{"command": "upgrade" | "downgrade", "urls": [...]} it prints one JSON line
{"ok": <tenants migrated>, "failed": [[url, error], ...]}. Ends at end of input.
"""

import json
import multiprocessing
import sys

import psycopg2  # noqa: F401  imported before the fork, like the others
import sqlalchemy  # noqa: F401
from alembic import command
from alembic.config import Config

CONFIG = None


def init(ini):
    """In each worker: one Config for all its runs; env.py leaves logging alone."""
    global CONFIG
    CONFIG = Config(ini)
    CONFIG.attributes["configure_logger"] = False


def ready(_):
    return True


def run(job):
    """One tenant: the whole run in one transaction (env.py). None, or the error."""
    name, url = job
    CONFIG.attributes["url"] = url
    try:
        if name == "upgrade":
            command.upgrade(CONFIG, "head")
        else:
            command.downgrade(CONFIG, "base")
        return None
    except Exception as e:  # reported per tenant, like a failed tenant of the daemon
        return f"{type(e).__name__}: {e}"


def main(ini, workers):
    pool = multiprocessing.get_context("fork").Pool(workers, initializer=init, initargs=(ini,))
    pool.map(ready, range(workers), chunksize=1)
    print("ready", flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        urls = job["urls"]
        errors = pool.map(run, [(job["command"], u) for u in urls], chunksize=1)
        failed = [[u, e] for u, e in zip(urls, errors) if e]
        print(json.dumps({"ok": len(urls) - len(failed), "failed": failed}), flush=True)
    pool.close()
    pool.join()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], int(sys.argv[2]))
