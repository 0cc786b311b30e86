//! Integration tests against real PostgreSQL (with pgvector) and etcd, started by the harness.

mod daemon_harness;
mod harness;

mod adopt;
mod alembic_daemon;
mod alembic_import;
mod alembic_parity;
mod alembic_project;
mod alembic_property;
mod cli;
mod daemon;
mod daemon_e2e;
mod engine;
mod locks;
mod onboard;
mod pki;
mod pools;
mod rollouts;
mod security;
mod services;
mod telemetry;
