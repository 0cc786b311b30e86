//! etcd-backed locks: one lease per daemon process, kept alive by our own loop, and one lock
//! key per database created under that lease.
//!
//! - Keep-alive: every TTL/3, one round with a timeout. `safe_until` is the *send* time of the
//!   last acknowledged keep-alive plus the TTL it granted, on the monotonic clock. When it
//!   passes, or etcd says the lease is gone, the session is lost: every guard's `lost()` fires.
//! - Acquire: a transaction creates `<prefix>locks/<database key>` with our lease only if it
//!   does not exist; otherwise we watch it until it is deleted and try again, within our own
//!   timeout. A transaction we stopped waiting for is still seen through: if the server
//!   granted it, the key is deleted (unlike etcd's Lock RPC, whose late grant would otherwise
//!   need the whole process lease revoked).
//! - Fencing token: the lock key's create revision, which grows with every new holder.
//! - Release: the key is deleted if it is still ours. Releases ride on this session's next
//!   acquire transaction (in a fleet job a slot freed is a slot refilled: one etcd write per
//!   tenant instead of two), or go on their own after [`RELEASE_DELAY`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use futures::future::BoxFuture;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{DistributedLock, LockError, LockGuard};
use crate::model::FenceToken;
use crate::registry::DatabaseKey;

/// Pause before the next keep-alive attempt after a failed one.
const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(300);
/// How long a release waits for an acquire to ride on before it is sent alone.
const RELEASE_DELAY: Duration = Duration::from_millis(20);
/// Releases per transaction at most (etcd allows 128 operations, compares counted apart).
const RELEASES_PER_TXN: usize = 32;

/// Lock keys to delete if still ours: (key, create revision).
type Releases = Vec<(String, i64)>;

fn unavailable(e: etcd_client::Error) -> LockError {
    LockError::Unavailable(e.to_string())
}

pub struct EtcdSession {
    client: Client,
    lease: i64,
    prefix: String,
    owner: String,
    lost: CancellationToken,
    safe_until: Arc<Mutex<Instant>>,
    /// Released locks not yet deleted in etcd.
    releases: Arc<Mutex<Releases>>,
    released: Arc<tokio::sync::Notify>,
}

impl EtcdSession {
    /// Grant the lease and start its keep-alive loop (owned by `tracker`, stopped by `stop`).
    pub async fn start(
        client: Client,
        prefix: &str,
        ttl: Duration,
        owner: &str,
        tracker: &TaskTracker,
        stop: CancellationToken,
    ) -> Result<Arc<EtcdSession>, LockError> {
        let ttl_secs = ttl.as_secs().max(2) as i64;
        let sent = Instant::now();
        let grant = client
            .clone()
            .lease_grant(ttl_secs, None)
            .await
            .map_err(unavailable)?;
        let session = Arc::new(EtcdSession {
            client,
            lease: grant.id(),
            prefix: format!("{prefix}locks/"),
            owner: owner.to_string(),
            lost: CancellationToken::new(),
            safe_until: Arc::new(Mutex::new(
                sent + Duration::from_secs(grant.ttl().max(0) as u64),
            )),
            releases: Arc::default(),
            released: Arc::default(),
        });
        tracing::info!(
            lease = format!("{:x}", session.lease),
            ttl_secs,
            "etcd lease granted"
        );
        let s = session.clone();
        let stopped = stop.clone();
        tracker.spawn(async move {
            s.keep_alive(Duration::from_secs(ttl_secs as u64), stopped)
                .await
        });
        let s = session.clone();
        tracker.spawn(async move { s.send_releases(stop).await });
        Ok(session)
    }

    /// Releases no acquire took along: sent after [`RELEASE_DELAY`], and at shutdown.
    async fn send_releases(&self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = self.released.notified() => {}
                _ = stop.cancelled() => break,
            }
            tokio::select! {
                _ = tokio::time::sleep(RELEASE_DELAY) => {}
                _ = stop.cancelled() => break,
            }
            let due = std::mem::take(&mut *self.releases.lock().unwrap());
            release_all(self.client.clone(), due).await;
        }
        let due = std::mem::take(&mut *self.releases.lock().unwrap());
        release_all(self.client.clone(), due).await;
    }

    /// Queued releases for an acquire of `lock_key` to carry (never that key itself: a txn
    /// may not touch one key twice; its release is sent first). Taken off the queue without
    /// an await after it: the caller hands them to the acquire txn's task at once.
    async fn riders(&self, lock_key: &str) -> Releases {
        let same: Releases = {
            let mut queued = self.releases.lock().unwrap();
            let (same, others) = std::mem::take(&mut *queued)
                .into_iter()
                .partition(|(k, _)| k == lock_key);
            *queued = others;
            same
        };
        send_releases_detached(self.client.clone(), same).await;
        let mut queued = self.releases.lock().unwrap();
        let n = queued.len().min(RELEASES_PER_TXN);
        queued.drain(..n).collect()
    }

    fn lose(&self, why: &str) {
        tracing::error!(
            lease = format!("{:x}", self.lease),
            why,
            "etcd lease lost: stopping all tenant work"
        );
        self.lost.cancel();
    }

    async fn keep_alive(&self, ttl: Duration, stop: CancellationToken) {
        let interval = ttl / 3;
        let mut wait = interval;
        let mut channel = None;
        loop {
            let deadline = *self.safe_until.lock().unwrap();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(deadline) => return self.lose("the lease deadline passed without an acknowledged keep-alive"),
                _ = tokio::time::sleep(wait) => {}
            }
            let sent = Instant::now();
            // A round never outlives the deadline: the loss is noticed the moment it happens.
            let round_limit = interval.min(deadline.saturating_duration_since(sent));
            let round = tokio::time::timeout(round_limit, async {
                if channel.is_none() {
                    channel = Some(self.client.clone().lease_keep_alive(self.lease).await?);
                }
                let (keeper, stream) = channel.as_mut().expect("just set");
                keeper.keep_alive().await?;
                stream.message().await
            })
            .await;
            match round {
                Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
                    *self.safe_until.lock().unwrap() =
                        sent + Duration::from_secs(resp.ttl() as u64);
                    wait = interval;
                }
                Ok(Ok(Some(_))) => return self.lose("etcd says the lease has expired"),
                Ok(Err(e)) if e.to_string().contains("lease not found") => {
                    return self.lose("etcd no longer knows the lease");
                }
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                    let why = match round {
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => "no answer within the round timeout".into(),
                        _ => "keep-alive stream closed".into(),
                    };
                    crate::metrics::metrics().keepalive_failures.add(1, &[]);
                    tracing::warn!(lease = format!("{:x}", self.lease), %why, "etcd keep-alive failed; retrying until the lease deadline");
                    channel = None;
                    // Retry soon: a TTL/3 pause would leave one attempt per lease.
                    wait = RETRY_AFTER_FAILURE;
                }
            }
        }
    }

    /// The lease every key of this daemon lives under (locks, rollout ownership).
    pub fn lease_id(&self) -> i64 {
        self.lease
    }

    /// Treat every lock as lost (stop all tenant SQL) without revoking the lease yet.
    pub fn abandon(&self) {
        self.lose("shutting down after the grace period");
    }

    /// Revoke the lease: every lock key goes with it. Called at shutdown.
    pub async fn revoke(&self) {
        self.lost.cancel();
        match tokio::time::timeout(
            Duration::from_secs(2),
            self.client.clone().lease_revoke(self.lease),
        )
        .await
        {
            Ok(Ok(_)) => tracing::info!(lease = format!("{:x}", self.lease), "etcd lease revoked"),
            _ => tracing::warn!(
                lease = format!("{:x}", self.lease),
                "could not revoke the etcd lease; it expires by its TTL"
            ),
        }
    }

    fn lock_key(&self, key: &DatabaseKey) -> String {
        format!("{}{}", self.prefix, key)
    }

    /// Take the lock, waiting up to `timeout` for its holder to let go if `wait`.
    async fn acquire(
        &self,
        key: &DatabaseKey,
        timeout: Duration,
        wait: bool,
    ) -> Result<LockGuard, LockError> {
        let started = Instant::now();
        let deadline = started + timeout;
        let lock_key = self.lock_key(key);
        let mut client = self.client.clone();
        loop {
            if self.lost.is_cancelled() {
                return Err(LockError::SessionLost);
            }
            let riders = self.riders(&lock_key).await;
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
                        Some(PutOptions::new().with_lease(self.lease)),
                    ))
                    .chain(deletes(&riders))
                    .collect::<Vec<_>>(),
                )
                .or_else([TxnOp::get(lock_key.clone(), None)]);
            // The txn runs to completion on its own task: if we stop waiting (timeout, or our
            // caller is cancelled), a lock the server granted late is released, not leaked.
            let mut pending = PendingAcquire {
                txn: Some(tokio::spawn({
                    let mut c = client.clone();
                    async move { c.txn(txn).await }
                })),
                client: self.client.clone(),
                lock_key: lock_key.clone(),
                riders: riders.clone(),
            };
            let resp = tokio::time::timeout_at(deadline, pending.txn.as_mut().expect("just set"))
                .await
                .map_err(|_| LockError::Timeout {
                    key: key.clone(),
                    waited: started.elapsed(),
                    holder: "(etcd did not answer)".into(),
                })?
                .expect("the txn task does not panic");
            pending.txn = None;
            let resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    send_releases_detached(self.client.clone(), riders).await;
                    return Err(unavailable(e));
                }
            };
            if resp.succeeded() {
                let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
                let token = FenceToken(revision);
                let (releases, released, lock_key) = (
                    self.releases.clone(),
                    self.released.clone(),
                    lock_key.clone(),
                );
                return Ok(LockGuard::new(
                    key.clone(),
                    token,
                    self.lost.child_token(),
                    Box::new(move || {
                        Box::pin(async move {
                            releases.lock().unwrap().push((lock_key, revision));
                            released.notify_one();
                        })
                    }),
                )
                .with_deadline(self.safe_until.clone()));
            }
            if !riders.is_empty() {
                // Held, or a rider no longer ours: send the riders alone, then ask again.
                send_releases_detached(self.client.clone(), riders).await;
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
            let mut watch = tokio::time::timeout_at(
                deadline,
                client.watch(
                    lock_key.clone(),
                    Some(WatchOptions::new().with_start_revision(header_rev + 1)),
                ),
            )
            .await
            .map_err(|_| LockError::Timeout {
                key: key.clone(),
                waited: started.elapsed(),
                holder: holder.clone(),
            })?
            .map_err(unavailable)?;
            let deleted = async {
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
                _ = self.lost.cancelled() => return Err(LockError::SessionLost),
            }
        }
    }
}

/// An acquire transaction we may stop waiting for. Dropped while still pending, it waits for
/// the outcome in the background and releases the lock if it was granted after all.
struct PendingAcquire {
    txn: Option<tokio::task::JoinHandle<Result<etcd_client::TxnResponse, etcd_client::Error>>>,
    client: Client,
    lock_key: String,
    /// Releases carried by the txn: done if it succeeded, still to send if not.
    riders: Releases,
}

impl Drop for PendingAcquire {
    fn drop(&mut self) {
        if let Some(txn) = self.txn.take() {
            let (client, lock_key) = (self.client.clone(), self.lock_key.clone());
            let riders = std::mem::take(&mut self.riders);
            tokio::spawn(async move {
                if let Ok(Ok(resp)) = txn.await
                    && resp.succeeded()
                {
                    let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
                    tracing::info!(key = %lock_key, "releasing a lock granted after its waiter gave up");
                    release_all(client, vec![(lock_key, revision)]).await;
                } else {
                    release_all(client, riders).await;
                }
            });
        }
    }
}

/// [`release_all`] on a task of its own, awaited: a caller cancelled meanwhile (a job
/// cancelled, an RPC dropped) cannot lose releases it had taken off the queue.
async fn send_releases_detached(client: Client, releases: Releases) {
    if releases.is_empty() {
        return;
    }
    let _ = tokio::spawn(release_all(client, releases)).await;
}

/// Compares that each key still has the create revision we took it at.
fn still_ours(releases: &[(String, i64)]) -> Vec<Compare> {
    releases
        .iter()
        .map(|(k, rev)| Compare::create_revision(k.clone(), CompareOp::Equal, *rev))
        .collect()
}

fn deletes(releases: &[(String, i64)]) -> Vec<TxnOp> {
    releases
        .iter()
        .map(|(k, _)| TxnOp::delete(k.clone(), None))
        .collect()
}

/// Delete these lock keys where still ours: in one transaction, or (one is no longer ours,
/// or etcd failed) one by one. A key that could not be deleted goes with the lease.
async fn release_all(client: Client, releases: Releases) {
    for chunk in releases.chunks(RELEASES_PER_TXN) {
        match delete_if_ours(&client, chunk).await {
            Ok(true) => {}
            _ if chunk.len() > 1 => {
                for one in chunk {
                    if let Err(error) = delete_if_ours(&client, std::slice::from_ref(one)).await {
                        tracing::warn!(key = %one.0, %error, "could not release the lock; it goes with the lease");
                    }
                }
            }
            Ok(false) => {} // no longer ours: nothing to release
            Err(error) => {
                tracing::warn!(key = %chunk[0].0, %error, "could not release the lock; it goes with the lease");
            }
        }
    }
}

/// One transaction deleting all these keys if all are still ours; `Ok(false)` if one is not.
async fn delete_if_ours(client: &Client, releases: &[(String, i64)]) -> Result<bool, String> {
    let txn = Txn::new()
        .when(still_ours(releases))
        .and_then(deletes(releases));
    match tokio::time::timeout(Duration::from_secs(5), client.clone().txn(txn)).await {
        Ok(Ok(r)) => Ok(r.succeeded()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timeout".into()),
    }
}

impl DistributedLock for EtcdSession {
    fn lock<'a>(
        &'a self,
        key: &'a DatabaseKey,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<LockGuard, LockError>> {
        Box::pin(self.acquire(key, timeout, true))
    }

    fn try_lock<'a>(&'a self, key: &'a DatabaseKey) -> BoxFuture<'a, Result<LockGuard, LockError>> {
        // One transaction; the etcd client's request timeout is the backstop.
        Box::pin(self.acquire(key, Duration::from_secs(30), false))
    }

    fn session_lost(&self) -> CancellationToken {
        self.lost.clone()
    }
}
