#!/usr/bin/env bash
# Throwaway local PostgreSQL for the demo and for poking around by hand.
#
#   scripts/pg-local.sh start  DIR PORT   initdb (first time) and start; data in DIR/data,
#                                         unix socket in DIR, log in DIR/postgres.log
#   scripts/pg-local.sh stop   DIR [PORT] fast shutdown (no error if not running)
#   scripts/pg-local.sh status DIR [PORT] exit 0 if running, 3 if not
#   scripts/pg-local.sh url    DIR PORT   print postgres://postgres@127.0.0.1:PORT/postgres
#
# Listens on 127.0.0.1 only; user `postgres`, trust auth. PostgreSQL refuses to run as
# root, so as root every server command runs as `nobody` (and DIR is chowned to it).
# Binaries: $FLEETMIG_PG_BIN, else the default of scripts/setup.sh.
set -euo pipefail

die() { printf 'pg-local: %s\n' "$*" >&2; exit 1; }
usage() { die "usage: $0 start|stop|status|url DIR PORT"; }

[ $# -ge 2 ] || usage
cmd="$1"
dir="$2"
port="${3:-}"

if [ "$cmd" = url ]; then
    [[ "$port" =~ ^[0-9]+$ ]] || usage
    echo "postgres://postgres@127.0.0.1:${port}/postgres"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    IS_ROOT=1
    default_tools=/opt/fleetmig-tools
else
    IS_ROOT=0
    default_tools="${HOME:-}/.cache/fleetmig-tools"
fi
PG_BIN="${FLEETMIG_PG_BIN:-${TOOLS_DIR:-$default_tools}/pg/pgserver/pginstall/bin}"
[ -x "$PG_BIN/pg_ctl" ] || die "no pg_ctl in $PG_BIN: run scripts/setup.sh (or set FLEETMIG_PG_BIN)"

case "$dir" in
    /*) ;;
    *) dir="$PWD/$dir" ;;
esac
data="$dir/data"
logfile="$dir/postgres.log"

# Run a PostgreSQL command as the server user, from a directory it can read.
as_pg() {
    if [ "$IS_ROOT" -eq 1 ]; then
        (cd / && runuser -u nobody -- "$@")
    else
        (cd / && "$@")
    fi
}

is_running() { [ -f "$data/PG_VERSION" ] && as_pg "$PG_BIN/pg_ctl" -D "$data" status >/dev/null 2>&1; }

case "$cmd" in
start)
    [[ "$port" =~ ^[0-9]+$ ]] || usage
    case "$dir" in *\'* | *' '*) die "DIR must not contain quotes or spaces: $dir" ;; esac
    sock="$dir/.s.PGSQL.$port"
    [ "${#sock}" -le 100 ] || die "DIR is too long for a unix socket path ($sock)"
    if is_running; then
        echo "pg-local: already running in $dir"
        exit 0
    fi
    mkdir -p "$dir"
    if [ "$IS_ROOT" -eq 1 ]; then
        chown -R nobody: "$dir"
        runuser -u nobody -- test -w "$dir" -a -x "$dir" \
            || die "user nobody cannot write $dir (a parent directory is not world-executable?)"
    fi
    if [ ! -f "$data/PG_VERSION" ]; then
        echo "pg-local: initdb $data"
        as_pg "$PG_BIN/initdb" -D "$data" -U postgres -A trust -E UTF8 --no-locale --no-sync \
            >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
        echo "include_if_exists = 'fleetmig-local.conf'" >>"$data/postgresql.conf"
    fi
    cat >"$data/fleetmig-local.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
    if [ "$IS_ROOT" -eq 1 ]; then
        chown nobody: "$data/fleetmig-local.conf" "$data/postgresql.conf"
    fi
    if ! as_pg "$PG_BIN/pg_ctl" -D "$data" -l "$logfile" -w -t 60 start >/dev/null; then
        tail -n 20 "$logfile" >&2 || true
        die "postgres did not start (port $port in use?); log: $logfile"
    fi
    echo "pg-local: started on 127.0.0.1:$port (socket dir $dir)"
    echo "postgres://postgres@127.0.0.1:${port}/postgres"
    ;;
stop)
    if is_running; then
        as_pg "$PG_BIN/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null
        echo "pg-local: stopped ($dir)"
    else
        echo "pg-local: not running ($dir)"
    fi
    ;;
status)
    if is_running; then
        echo "pg-local: running ($dir)"
    else
        echo "pg-local: not running ($dir)"
        exit 3
    fi
    ;;
*)
    usage
    ;;
esac
