//! Distributed locks per database, with fencing tokens. A held lock is a [`LockGuard`]:
//! it carries the token every write must be fenced with, and a `lost()` future that resolves
//! when the lock can no longer be trusted (lease lost or expired), after which the holder must
//! stop issuing SQL at once.
//!
//! Implementations: [`etcd::EtcdSession`] (production) and [`memory::MemoryLocks`] (unit tests).

pub mod etcd;
pub mod memory;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::model::FenceToken;
use crate::registry::DatabaseKey;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("timed out after {waited:?} waiting for the lock on {key} (held by {holder})")]
    Timeout {
        key: DatabaseKey,
        waited: Duration,
        holder: String,
    },
    #[error("the lock on {key} is held by {holder}")]
    Busy { key: DatabaseKey, holder: String },
    #[error(
        "this daemon has no live etcd lease (etcd unreachable, or the lease lost): it takes no locks until etcd grants it a new one"
    )]
    SessionLost,
    #[error("etcd is unavailable: {0}")]
    Unavailable(String),
}

type Releaser = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send + Sync>;

/// A held lock. Release it explicitly; dropping it releases in the background.
pub struct LockGuard {
    key: DatabaseKey,
    token: FenceToken,
    lost: CancellationToken,
    /// The lease's local deadline (monotonic), for holders that check it before each write.
    safe_until: Option<Arc<Mutex<Instant>>>,
    releaser: Option<Releaser>,
}

impl LockGuard {
    pub fn new(
        key: DatabaseKey,
        token: FenceToken,
        lost: CancellationToken,
        releaser: Releaser,
    ) -> LockGuard {
        LockGuard {
            key,
            token,
            lost,
            safe_until: None,
            releaser: Some(releaser),
        }
    }

    /// Tie the guard to its lease's local deadline (see [`LockGuard::valid`]).
    pub fn with_deadline(mut self, safe_until: Arc<Mutex<Instant>>) -> LockGuard {
        self.safe_until = Some(safe_until);
        self
    }

    /// Whether the lock can still be trusted right now: not lost, and its lease's local
    /// deadline not passed. A deadline is that of the lease the lock was taken under: a new
    /// lease of the same daemon never extends it. Check it before each statement sent.
    pub fn valid(&self) -> bool {
        !self.lost.is_cancelled()
            && self
                .safe_until
                .as_ref()
                .is_none_or(|d| Instant::now() < *d.lock().unwrap())
    }

    pub fn key(&self) -> &DatabaseKey {
        &self.key
    }

    /// The fencing token: larger than every earlier holder's.
    pub fn token(&self) -> FenceToken {
        self.token
    }

    /// Resolves when the lock is lost.
    pub fn lost(&self) -> WaitForCancellationFutureOwned {
        self.lost.clone().cancelled_owned()
    }

    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    pub async fn release(mut self) {
        if let Some(r) = self.releaser.take() {
            r().await;
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(r) = self.releaser.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(r());
        }
    }
}

/// A lock service: one lock per database key.
pub trait DistributedLock: Send + Sync + 'static {
    /// Wait up to `timeout` for the lock on `key`.
    fn lock<'a>(
        &'a self,
        key: &'a DatabaseKey,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<LockGuard, LockError>>;

    /// Take the lock on `key` if nobody holds it, else [`LockError::Busy`] at once.
    fn try_lock<'a>(&'a self, key: &'a DatabaseKey) -> BoxFuture<'a, Result<LockGuard, LockError>>;

    /// Fires when every lock this service holds now is lost (the session's lease in force).
    fn session_lost(&self) -> CancellationToken;
}
