//! Taking a database lock: a compare-and-create transaction under the lease in force, then (if
//! held) a watch for the key's deletion, within the caller's timeout. Transient etcd errors
//! (a member down, an election) are retried within that timeout rather than failing the
//! tenant. A transaction we stop waiting for is still seen through: if the server granted it,
//! the key is released (unlike etcd's Lock RPC, whose late grant would otherwise need the
//! whole process lease revoked).

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::time::Instant;

use super::release::{Books, Releases, deletes, still_ours};
use super::{EtcdSession, unavailable};
use crate::audit::Riding;
use crate::etcd::retry::transient;
use crate::lock::{LockError, LockGuard};
use crate::model::FenceToken;
use crate::registry::DatabaseKey;

/// First pause after a transient etcd error (doubling up to [`RETRY_MAX`]).
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);
type TxnResult = Result<etcd_client::TxnResponse, etcd_client::Error>;

impl EtcdSession {
    /// Take the lock, waiting up to `timeout` for its holder to let go if `wait`.
    pub(super) async fn acquire(
        &self,
        key: &DatabaseKey,
        timeout: Duration,
        wait: bool,
    ) -> Result<LockGuard, LockError> {
        let started = Instant::now();
        let deadline = started + timeout;
        let lock_key = self.lock_key(key);
        let mut pause = RETRY_MIN;
        let mut last_error = None;
        loop {
            let lease = match self.live_lease(deadline).await {
                Ok(l) => l,
                // Out of time after an etcd error: say what etcd said.
                Err(_) if last_error.is_some() && !self.closing.is_cancelled() => {
                    return Err(unavailable(last_error.expect("checked")));
                }
                Err(e) => return Err(e),
            };
            let riders = self.riders(&lock_key).await;
            // Written in either branch: the records need not wait for their own request.
            let audit = self.riding_audit();
            let audit_puts = || audit.iter().flat_map(Riding::puts);
            let txn = Txn::new()
                .when(
                    std::iter::once(Compare::create_revision(
                        lock_key.clone(),
                        CompareOp::Equal,
                        0,
                    ))
                    .chain(still_ours(&riders))
                    .collect::<Vec<_>>(),
                )
                .and_then(
                    std::iter::once(TxnOp::put(
                        lock_key.clone(),
                        self.owner.clone(),
                        Some(PutOptions::new().with_lease(lease.id)),
                    ))
                    .chain(deletes(&riders))
                    .chain(audit_puts())
                    .collect::<Vec<_>>(),
                )
                .or_else(
                    std::iter::once(TxnOp::get(lock_key.clone(), None))
                        .chain(audit_puts())
                        .collect::<Vec<_>>(),
                );
            // The txn runs to completion on its own task: if we stop waiting (timeout, or our
            // caller is cancelled), a lock the server granted late is released, not leaked.
            let mut pending = PendingAcquire::send(
                self.client.clone(),
                self.books.clone(),
                lock_key.clone(),
                riders.clone(),
                audit,
                txn,
            );
            // No answer in time is etcd's failure, not a holder's.
            let resp = tokio::time::timeout_at(deadline, pending.txn.as_mut().expect("just set"))
                .await
                .map_err(|_| {
                    LockError::Unavailable(match &last_error {
                        Some(e) => {
                            format!("no answer after {:?}; before that: {e}", started.elapsed())
                        }
                        None => format!("no answer after {:?}", started.elapsed()),
                    })
                })?
                .expect("the txn task does not panic");
            pending.txn = None;
            let resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    // Not carried: they go back to the queue.
                    self.books.queue(riders);
                    if !transient(&e) {
                        return Err(unavailable(e));
                    }
                    tracing::debug!(key = %lock_key, error = %e, "lock request failed; retrying");
                    crate::metrics::metrics().etcd_retries.add(1, &[]);
                    last_error = Some(e);
                    if Instant::now() + pause >= deadline {
                        return Err(unavailable(last_error.expect("just set")));
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX);
                    continue;
                }
            };
            if resp.succeeded() {
                let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
                let books = self.books.clone();
                let released_key = lock_key.clone();
                return Ok(LockGuard::new(
                    key.clone(),
                    FenceToken(revision),
                    lease.lost.child_token(),
                    Box::new(move || {
                        Box::pin(async move { books.queue(vec![(released_key, revision)]) })
                    }),
                )
                .with_deadline(lease.safe_until.clone()));
            }
            if !riders.is_empty() {
                // Held, or a rider no longer ours: the riders go alone, then ask again.
                self.send_alone(riders).await;
                continue;
            }
            // Held: by whom, and since which revision; wait for its deletion.
            let (holder, seen) = resp
                .op_responses()
                .into_iter()
                .find_map(|op| match op {
                    TxnOpResponse::Get(g) => g.kvs().first().map(|kv| {
                        (
                            String::from_utf8_lossy(kv.value()).to_string(),
                            kv.mod_revision(),
                        )
                    }),
                    _ => None,
                })
                .unwrap_or_default();
            if !wait {
                return Err(LockError::Busy {
                    key: key.clone(),
                    holder,
                });
            }
            let header_rev = resp.header().map(|h| h.revision()).unwrap_or(seen);
            let deleted = async {
                let Ok(mut watch) = self
                    .client
                    .clone()
                    .watch(
                        lock_key.clone(),
                        Some(WatchOptions::new().with_start_revision(header_rev + 1)),
                    )
                    .await
                else {
                    // etcd away: ask again after a pause (the loop's deadline bounds it).
                    tokio::time::sleep(pause).await;
                    return;
                };
                // A watch broken with its member ends here too: the txn tells what happened.
                while let Ok(Some(msg)) = watch.message().await {
                    if msg
                        .events()
                        .iter()
                        .any(|e| e.event_type() == EventType::Delete)
                    {
                        return;
                    }
                }
            };
            tokio::select! {
                _ = deleted => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(LockError::Timeout { key: key.clone(), waited: started.elapsed(), holder });
                }
                _ = lease.lost.cancelled() => {} // the next round waits for a new lease
            }
        }
    }
}

/// An acquire transaction we may stop waiting for. Dropped while still pending, it waits for
/// the outcome in the background and releases the lock if it was granted after all.
struct PendingAcquire {
    txn: Option<tokio::task::JoinHandle<TxnResult>>,
    books: Arc<Books>,
    lock_key: String,
    /// Releases carried by the txn: done if it succeeded, still to send if not.
    riders: Releases,
}

impl PendingAcquire {
    /// Send the txn on a task of its own. While it is in flight the sweep leaves the key
    /// alone; a grant is booked as held before anyone can see the key unaccounted for.
    fn send(
        client: Client,
        books: Arc<Books>,
        lock_key: String,
        riders: Releases,
        audit: Option<Riding>,
        txn: Txn,
    ) -> PendingAcquire {
        books.start_acquiring(&lock_key);
        let (b, k) = (books.clone(), lock_key.clone());
        let task = tokio::spawn(async move {
            let r = client.clone().txn(txn).await;
            if r.is_err() {
                b.uncertain();
            }
            if let Some(audit) = audit {
                audit.settle(r.is_ok());
            }
            if let Ok(resp) = &r
                && resp.succeeded()
            {
                b.hold(&k, resp.header().map(|h| h.revision()).unwrap_or_default());
            }
            b.done_acquiring(&k);
            r
        });
        PendingAcquire {
            txn: Some(task),
            books,
            lock_key,
            riders,
        }
    }
}

impl Drop for PendingAcquire {
    fn drop(&mut self) {
        if let Some(txn) = self.txn.take() {
            let (books, lock_key) = (self.books.clone(), self.lock_key.clone());
            let riders = std::mem::take(&mut self.riders);
            tokio::spawn(async move {
                match txn.await {
                    Ok(Ok(resp)) if resp.succeeded() => {
                        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
                        tracing::info!(key = %lock_key, "releasing a lock granted after its waiter gave up");
                        books.queue(vec![(lock_key, revision)]);
                    }
                    _ => books.queue(riders),
                }
            });
        }
    }
}
