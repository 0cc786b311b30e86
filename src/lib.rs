//! fleetmig: Alembic-style schema revisions for fleets of PostgreSQL databases.
//!
//! Module map (dependencies point downwards):
//! - [`etcd`]: the daemon's etcd client (member failover, transient-error retries).
//! - [`cli`]: command-line front end (local commands on one `DATABASE_URL`, daemon client).
//! - [`app`]: composition root of `fleetmig serve`; [`transport`]: its TLS edges;
//!   [`listen`]: limits of every port it serves.
//! - [`grpc`]: tonic services and the auth layer; [`auth`]: callers and scopes;
//!   [`audit`]: audit records.
//! - [`rollout`]: fleet-wide rollouts in waves, persisted in etcd, driven by one replica and
//!   shared with the others.
//! - [`fleet`]: jobs over many tenants; [`registry`]: tenants and pools; [`lock`]: etcd locks.
//! - [`pg`]: the one way to connect to PostgreSQL (libpq conventions, TLS, poolers).
//! - [`engine`]: one database: version and history tables, apply, stamp, offline SQL.
//! - [`lint`]: squawk's rules on each revision, the gate before a run, reports.
//! - [`revision`]: revision files, placeholders, SQL splitting, the graph, pure planning.
//! - [`config`]: typed, layered configuration.
//! - [`model`]: newtypes and enums shared by all layers.

pub mod app;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod engine;
pub mod etcd;
pub mod fleet;
pub mod grpc;
pub mod lint;
pub mod listen;
pub mod lock;
pub mod metrics;
pub mod model;
pub mod pg;
pub mod registry;
pub mod revision;
pub mod rollout;
pub mod telemetry;
pub mod transport;
