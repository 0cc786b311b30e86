//! Integration tests against real PostgreSQL (with pgvector) and etcd, started by the harness.

mod chaos_fixture;
mod daemon_harness;
mod etcd_cluster;
mod harness;
mod tls_services;

mod adopt;
mod alembic_import;
mod chaos;
mod cli;
mod daemon;
mod daemon_e2e;
mod engine;
mod locks;
mod onboard;
mod pgbouncer;
mod pki;
mod pools;
mod rollouts;
mod security;
mod services;
mod telemetry;
mod tls;
