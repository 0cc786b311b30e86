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

// The keep-alive loop keeps its deadline on tokio's clock (its timers use it).
use tokio::time::Instant;

use futures::future::BoxFuture;
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
    #[error("this daemon's etcd lease is lost: it holds no locks and takes none until restarted")]
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
    /// Until when the lock can be trusted (the lease's deadline on the monotonic clock),
    /// moved forward by each acknowledged keep-alive.
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

    /// The lock is trusted only until this deadline (shared with the keep-alive loop).
    pub fn with_deadline(mut self, safe_until: Arc<Mutex<Instant>>) -> LockGuard {
        self.safe_until = Some(safe_until);
        self
    }

    /// Whether the lock can still be trusted *now*: not lost, and its lease's deadline not
    /// passed. Asked right before each statement sent under the lock, so a holder that was
    /// paused past its deadline sends nothing, even before the keep-alive loop notices.
    pub fn is_live(&self) -> bool {
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

    /// Fires when every lock of this service is lost (the session's lease).
    fn session_lost(&self) -> CancellationToken;
}
