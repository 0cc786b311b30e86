//! In-memory locks for unit tests of pure logic: same contract as etcd, one process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{DistributedLock, LockError, LockGuard};
use crate::model::FenceToken;
use crate::registry::DatabaseKey;

#[derive(Default)]
struct State {
    held: HashMap<DatabaseKey, i64>,
    next_token: i64,
}

#[derive(Clone, Default)]
pub struct MemoryLocks {
    state: Arc<Mutex<State>>,
    released: Arc<Notify>,
    lost: CancellationToken,
}

impl MemoryLocks {
    /// Simulate losing the session: every guard's `lost()` resolves.
    pub fn lose_all(&self) {
        self.lost.cancel();
    }
}

impl DistributedLock for MemoryLocks {
    fn lock<'a>(
        &'a self,
        key: &'a DatabaseKey,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<LockGuard, LockError>> {
        Box::pin(self.acquire(key, timeout, true))
    }

    fn try_lock<'a>(&'a self, key: &'a DatabaseKey) -> BoxFuture<'a, Result<LockGuard, LockError>> {
        Box::pin(self.acquire(key, Duration::ZERO, false))
    }

    fn session_lost(&self) -> CancellationToken {
        self.lost.clone()
    }
}

impl MemoryLocks {
    async fn acquire(
        &self,
        key: &DatabaseKey,
        timeout: Duration,
        wait: bool,
    ) -> Result<LockGuard, LockError> {
        {
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                if self.lost.is_cancelled() {
                    return Err(LockError::SessionLost);
                }
                let notified = self.released.notified();
                {
                    let mut s = self.state.lock().unwrap();
                    if !s.held.contains_key(key) {
                        s.next_token += 1;
                        let token = s.next_token;
                        s.held.insert(key.clone(), token);
                        let (state, released, k) =
                            (self.state.clone(), self.released.clone(), key.clone());
                        return Ok(LockGuard::new(
                            key.clone(),
                            FenceToken(token),
                            self.lost.child_token(),
                            Box::new(move || {
                                Box::pin(async move {
                                    state.lock().unwrap().held.remove(&k);
                                    released.notify_waiters();
                                })
                            }),
                        ));
                    }
                }
                if !wait {
                    return Err(LockError::Busy {
                        key: key.clone(),
                        holder: "another holder".into(),
                    });
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    return Err(LockError::Timeout {
                        key: key.clone(),
                        waited: timeout,
                        holder: "another holder".into(),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_grow_and_holders_exclude_each_other() {
        let locks = MemoryLocks::default();
        let key = DatabaseKey("h:5432/db".into());
        let a = locks.lock(&key, Duration::from_millis(10)).await.unwrap();
        assert!(matches!(
            locks.lock(&key, Duration::from_millis(20)).await,
            Err(LockError::Timeout { .. })
        ));
        let t = a.token();
        a.release().await;
        let b = locks.lock(&key, Duration::from_millis(10)).await.unwrap();
        assert!(b.token() > t);
        assert!(matches!(
            locks.try_lock(&key).await,
            Err(LockError::Busy { .. })
        ));
        locks.lose_all();
        b.lost().await;
        assert!(b.is_lost());
    }
}
