//! Integration tests against real PostgreSQL (with pgvector) and etcd, started by the harness.

mod daemon_harness;
mod harness;
mod tls_services;

mod adopt;
mod alembic_import;
mod blockers;
mod changed;
mod cli;
mod consistency;
mod daemon;
mod daemon_e2e;
mod engine;
mod flood;
mod hostile;
mod lint;
mod locks;
mod offline_psql;
mod onboard;
mod pgbouncer;
mod pki;
mod pools;
mod rollouts;
mod scratch;
mod secret_refs;
mod security;
mod services;
mod startup;
mod telemetry;
mod tls;
