"""Not a migration environment: how the fleet benchmark finds the interpreter and sys.path of
the Alembic under test, whatever wraps it (`$FLEETMIG_ALEMBIC -c benches/alembic/launch/alembic.ini
current` prints them as one JSON line). The benchmark then runs `python -m alembic` and
benches/alembic/driver.py with that interpreter directly: a wrapper script or a pyenv shim in
front of every `alembic` run would charge Alembic for start-up work that is not its own."""

import json
import sys

print(json.dumps({"executable": sys.executable, "path": [p for p in sys.path if p]}), flush=True)
