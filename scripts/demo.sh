#!/usr/bin/env bash
# make demo: a local Postgres with pgvector, both example apps upgraded to head with the
# fleetmig CLI, their state and history shown, then one step down and back up.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

FLEETMIG=${FLEETMIG:-target/debug/fleetmig}
DEMO_DIR=${DEMO_DIR:-/tmp/fleetmig-demo}
PORT=${DEMO_PG_PORT:-55432}
PSQL="${FLEETMIG_PG_BIN:?run through make demo}/psql"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Starting PostgreSQL (with pgvector) on 127.0.0.1:$PORT, data in $DEMO_DIR"
bash scripts/pg-local.sh start "$DEMO_DIR" "$PORT"
ADMIN=$(bash scripts/pg-local.sh url "$DEMO_DIR" "$PORT")
for db in demo_aletheia demo_truthgraph; do
  "$PSQL" -X -q -d "$ADMIN" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
done
base=${ADMIN%/*}

step "aletheia: check, then upgrade to head (EMBEDDING_DIM=768 from the environment)"
export DATABASE_URL="$base/demo_aletheia"
"$FLEETMIG" --app aletheia check
EMBEDDING_DIM=768 "$FLEETMIG" --app aletheia upgrade head

step "truthgraph: upgrade to head with the IVFFlat index switched off (-x)"
DATABASE_URL="$base/demo_truthgraph" "$FLEETMIG" --app truthgraph -x PGVECTOR_ENABLE_IVFFLAT=false upgrade head

step "fleetmig current --verbose (aletheia)"
"$FLEETMIG" --app aletheia current --verbose

step "fleetmig history (the graph) and history --applied (what the database recorded)"
"$FLEETMIG" --app aletheia history
"$FLEETMIG" --app aletheia history --applied

step "The embedding column as the database has it"
"$PSQL" -X -d "$DATABASE_URL" -c '\d memory_shards' | grep -E 'embedding|ivfflat'

step "downgrade -1 (drops the IVFFlat index CONCURRENTLY), then upgrade again"
"$FLEETMIG" --app aletheia downgrade -1
"$FLEETMIG" --app aletheia current
"$FLEETMIG" --app aletheia upgrade

step "Offline SQL for truthgraph (first lines)"
"$FLEETMIG" --app truthgraph upgrade --sql | head -n 25

step "Done. The server keeps running: stop it with: bash scripts/pg-local.sh stop $DEMO_DIR $PORT"
