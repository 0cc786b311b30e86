#!/usr/bin/env bash
# make demo: the main job. Starts PostgreSQL (with pgvector) and etcd on loopback, starts the
# fleetmig daemon, registers 20 tenant databases across both example apps (with different
# EMBEDDING_DIM values), upgrades them all through grpcurl with the progress streamed, and
# shows the fleet's versions. Everything it starts is stopped at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

FLEETMIG=${FLEETMIG:-target/debug/fleetmig}
DEMO_DIR=${DEMO_DIR:-/tmp/fleetmig-demo}
# Fixed ports below the ephemeral range (32768-60999), so no outgoing connection can hold them.
PG_PORT=${DEMO_PG_PORT:-25432}
ETCD_PORT=${DEMO_ETCD_PORT:-23790}
GRPC=${DEMO_GRPC:-127.0.0.1:25051}
PSQL="${FLEETMIG_PG_BIN:?run through make demo}/psql"
GRPCURL=${FLEETMIG_GRPCURL:-grpcurl}
ETCD=${FLEETMIG_ETCD_BIN:-etcd}
export FLEETMIG_SERVER="http://$GRPC"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() {
  [ -n "${DAEMON_PID:-}" ] && kill -TERM "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null || true
  [ -n "${ETCD_PID:-}" ] && kill "$ETCD_PID" 2>/dev/null && wait "$ETCD_PID" 2>/dev/null || true
  bash scripts/pg-local.sh stop "$DEMO_DIR/pg" "$PG_PORT" >/dev/null 2>&1 || true
}
trap cleanup EXIT

rm -rf "$DEMO_DIR" && mkdir -p "$DEMO_DIR"
step "Starting PostgreSQL 18 + pgvector on 127.0.0.1:$PG_PORT and etcd on 127.0.0.1:$ETCD_PORT"
bash scripts/pg-local.sh start "$DEMO_DIR/pg" "$PG_PORT"
ADMIN=$(bash scripts/pg-local.sh url "$DEMO_DIR/pg" "$PG_PORT")
"$ETCD" --name demo --data-dir "$DEMO_DIR/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
  --initial-cluster "demo=http://127.0.0.1:$((ETCD_PORT + 1))" >"$DEMO_DIR/etcd.log" 2>&1 &
ETCD_PID=$!
for _ in $(seq 100); do
  kill -0 "$ETCD_PID" 2>/dev/null || { echo "etcd did not start (port $ETCD_PORT busy? set DEMO_ETCD_PORT):"; tail -5 "$DEMO_DIR/etcd.log"; exit 1; }
  ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$ETCD_PORT" endpoint health >/dev/null 2>&1 && break
  sleep 0.1
done

step "A developer's laptop: the CLI on one DATABASE_URL"
"$PSQL" -X -q -d "$ADMIN" -c "CREATE DATABASE laptop"
DATABASE_URL="${ADMIN%/*}/laptop" EMBEDDING_DIM=768 "$FLEETMIG" --app aletheia upgrade head
DATABASE_URL="${ADMIN%/*}/laptop" "$FLEETMIG" --app aletheia history

step "Starting the daemon on $GRPC (logs in $DEMO_DIR/daemon.log)"
FLEETMIG_LOG=info "$FLEETMIG" serve --config config/fleetmig.toml --listen "$GRPC" \
  --etcd "http://127.0.0.1:$ETCD_PORT" >"$DEMO_DIR/daemon.log" 2>&1 &
DAEMON_PID=$!
for _ in $(seq 100); do grep -q "listening on" "$DEMO_DIR/daemon.log" && break; sleep 0.1; done
grep -q "listening on" "$DEMO_DIR/daemon.log" || { cat "$DEMO_DIR/daemon.log"; exit 1; }
"$GRPCURL" -plaintext "$GRPC" list

step "Registering 20 tenant databases (12 aletheia with EMBEDDING_DIM 384/768/1024, 8 truthgraph)"
dims=(384 768 1024)
for i in $(seq -w 1 20); do
  "$PSQL" -X -q -d "$ADMIN" -c "CREATE DATABASE tenant_$i"
  if [ "$i" -le 12 ]; then
    tier=$([ $((10#$i % 3)) -eq 0 ] && echo enterprise || echo free)
    "$FLEETMIG" tenants add "acme-$i" --app aletheia --port "$PG_PORT" --dbname "tenant_$i" \
      -l "tier=$tier" -p "EMBEDDING_DIM=${dims[$((10#$i % 3))]}" >/dev/null
  else
    "$FLEETMIG" tenants add "globex-$i" --app truthgraph --port "$PG_PORT" --dbname "tenant_$i" -l tier=free >/dev/null
  fi
done
"$FLEETMIG" tenants ls

step "grpcurl: Upgrade every aletheia tenant to head (the stream, abridged: first events, then the summary)"
"$GRPCURL" -plaintext -d '{"app": "aletheia", "target": "head", "selector": {"all": true}, "concurrency": 4}' \
  "$GRPC" fleetmig.v1.Migrations/Upgrade >"$DEMO_DIR/upgrade.json"
head -n 60 "$DEMO_DIR/upgrade.json"
echo "  ... ($(grep -c '"at"' "$DEMO_DIR/upgrade.json") events in all) ..."
grep -A 12 '"summary"' "$DEMO_DIR/upgrade.json"

step "The CLI client: upgrade truthgraph tenants with live progress"
"$FLEETMIG" fleet upgrade --app truthgraph --concurrency 4

step "fleetmig fleet current (per tenant, and the version skew)"
"$FLEETMIG" fleet current --app aletheia
"$FLEETMIG" fleet current --app truthgraph

step "A tenant's embedding column follows its own EMBEDDING_DIM"
for t in 01 02 03; do
  printf 'tenant_%s: ' "$t"
  "$PSQL" -X -qAt -d "${ADMIN%/*}/tenant_$t" -c "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'memory_shards'::regclass AND attname = 'embedding'"
done

step "Roll the enterprise tier back one revision, then forward again"
"$FLEETMIG" fleet downgrade -1 --app aletheia -l tier=enterprise
"$FLEETMIG" fleet current --app aletheia | tail -n 4
"$FLEETMIG" fleet upgrade --app aletheia -l tier=enterprise

step "A rollout: truthgraph back one revision in waves (canary first, free tier before the rest), then forward"
# A rollout lives in etcd, not in this terminal's stream: any replica drives it, and
# `fleetmig rollout watch ID` re-attaches from anywhere.
"$FLEETMIG" rollout start --app truthgraph --downgrade --target -1 --canary 1 --batch-percent 50 \
  --order tier=free --max-failures 0 --idempotency-key demo-down
"$FLEETMIG" rollout start --app truthgraph --canary 1 --batch-percent 50 --idempotency-key demo-up
"$FLEETMIG" rollout ls --app truthgraph

step "Traces"
if [ -n "${OTEL_EXPORTER_OTLP_ENDPOINT:-}" ]; then
  echo "Traces and metrics went to the OTLP collector at $OTEL_EXPORTER_OTLP_ENDPOINT (service fleetmig)."
else
  echo "No OTLP collector configured, so no traces were exported (and none were paid for)."
  echo "Run with OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 make demo to send them to a collector,"
  echo "or 'docker compose -f deploy/docker-compose.yml up' for fleetmig + Jaeger (UI on http://localhost:16686)."
fi
echo "Log lines of this run (with trace ids when tracing is on): $DEMO_DIR/daemon.log"

step "Done: stopping the daemon (SIGTERM: graceful), etcd and PostgreSQL"
