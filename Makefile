# fleetmig developer entry points.
#
#   make setup                 install tools (apt packages, Postgres 18 + pgvector, grpcurl)
#   make build                 cargo build
#   make lint                  rustfmt check, clippy -D warnings, yamllint deploy/
#   make test                  setup + lint + cargo test (the harness starts Postgres and etcd) + fuzz
#   make test-graph            the Alembic graph property test alone, GRAPH_CASES cases (default 2000)
#   make fuzz                  the fuzz targets (cargo fuzz), FUZZ_SECONDS each (default 30)
#   make chaos                 the fault suite's long versions (3-member etcd, 3 replicas; ~2 min)
#   make bench                 the fleet benchmark (daemon vs psql floor and Alembic, registry scale)
#   make bench-blocking        pgbench's latency while a migration waits behind a long transaction
#   make demo                  setup + build + scripts/demo.sh
#   make migrate-rev m="add users" [app=NAME]
#   make migrate-up [app=NAME] / make migrate-down [app=NAME]   (DATABASE_URL from env or .env)
#   make clean-tools           remove $(TOOLS_DIR)
#
# Overridable: TOOLS_DIR, CARGO, CARGO_TEST_ARGS (e.g. CARGO_TEST_ARGS="-- --nocapture").

SHELL := /bin/bash
.DEFAULT_GOAL := build

CARGO ?= cargo
ifeq ($(shell id -u),0)
TOOLS_DIR ?= /opt/fleetmig-tools
else
TOOLS_DIR ?= $(HOME)/.cache/fleetmig-tools
endif
override TOOLS_DIR := $(abspath $(TOOLS_DIR))
CARGO_TEST_ARGS ?=

# Exported to cargo test, the demo and the migrate targets.
FLEETMIG_PG_BIN ?= $(TOOLS_DIR)/pg/pgserver/pginstall/bin
FLEETMIG_ETCD_BIN ?= $(or $(shell command -v etcd 2>/dev/null),/usr/bin/etcd)
FLEETMIG_GRPCURL ?= $(TOOLS_DIR)/bin/grpcurl
FLEETMIG_ALEMBIC ?= $(TOOLS_DIR)/bin/alembic
override FLEETMIG_PG_BIN := $(FLEETMIG_PG_BIN)
override FLEETMIG_ETCD_BIN := $(FLEETMIG_ETCD_BIN)
override FLEETMIG_GRPCURL := $(FLEETMIG_GRPCURL)
override FLEETMIG_ALEMBIC := $(FLEETMIG_ALEMBIC)
export TOOLS_DIR FLEETMIG_PG_BIN FLEETMIG_ETCD_BIN FLEETMIG_GRPCURL FLEETMIG_ALEMBIC
export PATH := $(TOOLS_DIR)/bin:$(PATH)

APP_ARG = $(if $(app),--app '$(app)')

# Random graph cases of the Alembic property test (tests/integration/alembic_property.rs):
# unset, `make test` runs the test's default (150); `make test GRAPH_CASES=1000` runs more.
GRAPH_CASES ?=
ifneq ($(GRAPH_CASES),)
export FLEETMIG_GRAPH_CASES := $(GRAPH_CASES)
endif

.PHONY: setup build lint test test-graph chaos fuzz bench bench-blocking demo migrate-rev migrate-up migrate-down clean-tools

setup:
	bash scripts/setup.sh

build:
	$(CARGO) build --locked

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	python3 benches/alembic/generate.py --check
	@if [ -d deploy ] && [ -n "$$(find deploy -type f \( -name '*.yaml' -o -name '*.yml' \) -print -quit)" ]; then \
		echo "yamllint -d relaxed deploy/"; yamllint -d relaxed deploy/; \
	else echo "yamllint: no yaml files under deploy/, skipped"; fi

test: setup lint
	$(CARGO) test --locked --all-targets $(CARGO_TEST_ARGS)
	$(MAKE) fuzz

test-graph: setup
	FLEETMIG_GRAPH_CASES=$(or $(GRAPH_CASES),2000) $(CARGO) test --locked --test integration alembic_property -- --nocapture

# The fault suite (tests/integration/chaos.rs) with FLEETMIG_CHAOS=1: 40 tenants, a 30 s etcd
# quorum loss. `make test` runs the same scenarios small (24 tenants, a 6 s quorum loss).
# One scenario at a time; measured takeover and resume times are printed.
chaos: setup
	FLEETMIG_CHAOS=1 $(CARGO) test --locked --test integration -- chaos:: --test-threads=1 --nocapture

# cargo fuzz on the machine's stable toolchain: RUSTC_BOOTSTRAP=1 lets it pass the sanitizer
# flags (-Z) that otherwise need nightly. New inputs go to $(TOOLS_DIR)/fuzz-corpus; the kept
# corpus (fuzz/corpus, minimised with `cargo fuzz cmin`) is read as seeds. A crash fails the
# run and leaves its input under fuzz/artifacts/.
FUZZ_SECONDS ?= 30
FUZZ_TARGETS := revision_file sql_split
fuzz: setup
	@command -v cargo-fuzz >/dev/null || $(CARGO) install --locked cargo-fuzz@0.13.2 --root $(TOOLS_DIR)
	set -o pipefail; cd fuzz && for t in $(FUZZ_TARGETS); do \
		mkdir -p $(TOOLS_DIR)/fuzz-corpus/$$t && \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t $(TOOLS_DIR)/fuzz-corpus/$$t corpus/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -max_len=4096 -print_final_stats=1 2>&1 \
			| { grep -vE '^#[0-9]+' || true; } || exit 1; \
	done

# The fleet benchmark (release build): the daemon against the psql floor, Alembic in-process
# and the CLI loops, in interleaved pairs. Knobs: BENCH_SIZES=200 BENCH_CONCURRENCY=2,8
# BENCH_PAIRS=5 BENCH_APPS=aletheia,truthgraph BENCH_PEERS=floor,alembic,cli
# BENCH_REGISTRY=10000 (README, "Benchmark"). Tables in target/bench/fleet.md, JSON beside.
bench: setup
	$(CARGO) bench --locked --bench fleet

# The application's view of a migration blocked by a long transaction (pgbench against a
# tenant): BENCH_CLIENTS=4 BENCH_SECONDS=14 BENCH_HOLD_SECONDS=6 BENCH_LOCK_TIMEOUT_MS=500.
bench-blocking: setup
	$(CARGO) bench --locked --bench blocking

demo: setup build
	bash scripts/demo.sh

# The message travels through the environment, so quotes in it are safe.
migrate-rev: export FLEETMIG_REV_MESSAGE = $(m)
migrate-rev:
	@if [ -z "$$FLEETMIG_REV_MESSAGE" ]; then echo 'usage: make migrate-rev m="message" [app=NAME]' >&2; exit 2; fi
	$(CARGO) run --quiet -- revision -m "$$FLEETMIG_REV_MESSAGE" $(APP_ARG)

migrate-up:
	$(CARGO) run --quiet -- upgrade head $(APP_ARG)

migrate-down:
	$(CARGO) run --quiet -- downgrade -1 $(APP_ARG)

clean-tools:
	@case "$(TOOLS_DIR)" in ''|/|/opt|/usr|/usr/*|$(HOME)) echo "refusing to remove TOOLS_DIR=$(TOOLS_DIR)" >&2; exit 1;; esac
	rm -rf '$(TOOLS_DIR)'
