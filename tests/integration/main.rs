//! Integration tests against real PostgreSQL (with pgvector) and etcd, started by the harness.

mod chaos_fixture;
mod daemon_harness;
mod etcd_cluster;
mod harness;
mod tls_services;

mod adopt;
mod alembic_daemon;
mod alembic_import;
mod alembic_parity;
mod alembic_project;
mod alembic_property;
mod changed;
mod chaos;
mod cli;
mod consistency;
mod daemon;
mod daemon_e2e;
mod engine;
mod flood;
mod hostile;
mod locks;
mod offline_psql;
mod onboard;
mod pg_faults;
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
