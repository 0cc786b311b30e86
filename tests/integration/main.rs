//! Integration tests against real PostgreSQL (with pgvector) and etcd, started by the harness.

mod harness;

mod cli;
mod engine;
mod services;
