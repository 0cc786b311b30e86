//! The tenant registry (records in etcd) and the connections to tenant databases
//! (bounded pools per database under a budget per Postgres host).

pub mod pools;
pub mod secrets;
pub mod store;
pub mod tenant;

#[cfg(test)]
mod hostile_tests;

pub use pools::{PoolError, Pools};
pub use store::{Registry, RegistryError, RequestRecord};
pub use tenant::{ConnectionSpec, DatabaseKey, FieldError, PasswordRef, SslMode, Tenant, TenantId};
