//! etcd-backed locks: one lease at a time per daemon process, kept alive by our own loop, and
//! one lock key per database created under that lease.
//!
//! - Keep-alive: every TTL/3, one round with a timeout. `safe_until` is the *send* time of the
//!   last acknowledged keep-alive plus the TTL it granted, on the monotonic clock. When it
//!   passes, or etcd says the lease is gone, that lease is lost: every guard taken under it
//!   fires `lost()`, and its deadline never moves again.
//! - A lost lease is revoked as soon as etcd answers (its keys go at once, not a TTL later:
//!   after a quorum loss etcd extends every lease by a TTL) and a new lease is granted; new
//!   locks are taken under it. The daemon keeps serving: no restart is needed after an etcd
//!   outage. Guards of the old lease stay lost.
//! - Acquire ([`acquire`]): a transaction creates `<prefix>locks/<database key>` with our
//!   lease only if it does not exist; otherwise we watch it until it is deleted and try again,
//!   within our own timeout. Transient etcd errors are retried within that timeout.
//! - Fencing token: the lock key's create revision, which grows with every new holder.
//! - Release ([`release`]): the key is deleted if it is still ours, riding on this session's
//!   next acquire or on its own after a moment; a release etcd did not take is queued again
//!   until it lands. A sweep deletes any key under our lease that no guard of ours holds (an
//!   acquire whose outcome never reached us), so no key stays held by a live lease.

mod acquire;
mod release;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::Client;
use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{DistributedLock, LockError, LockGuard};
use crate::audit::{Riding, Shelf};
use crate::registry::DatabaseKey;
use release::Books;

/// Audit records a lock request carries at most: with a lock's put, or with up to
/// [`release::RELEASES_PER_TXN`] releases, well under etcd's default limit of 128 operations
/// per transaction.
const AUDIT_PER_TXN: usize = 64;
/// Pause before the next keep-alive attempt after a failed one.
const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(300);
/// Each attempt to revoke a lost lease or grant a new one waits this long at most.
const RENEW_ROUND: Duration = Duration::from_secs(2);
/// Between attempts to take a new lease while etcd does not answer.
const RENEW_PAUSE: Duration = Duration::from_millis(500);

fn unavailable(e: etcd_client::Error) -> LockError {
    LockError::Unavailable(e.to_string())
}

/// One lease of the session. Once lost, it stays lost.
pub(crate) struct Lease {
    id: i64,
    lost: CancellationToken,
    safe_until: Arc<Mutex<Instant>>,
}

impl Lease {
    fn new(id: i64, safe_until: Instant) -> Arc<Lease> {
        Arc::new(Lease {
            id,
            lost: CancellationToken::new(),
            safe_until: Arc::new(Mutex::new(safe_until)),
        })
    }

    fn live(&self) -> bool {
        !self.lost.is_cancelled() && Instant::now() < *self.safe_until.lock().unwrap()
    }
}

pub struct EtcdSession {
    client: Client,
    prefix: String,
    owner: String,
    ttl: Duration,
    /// The lease in force (or the last one, lost, until a new one is granted).
    lease: watch::Sender<Arc<Lease>>,
    /// Set at shutdown: no new lease is taken after it.
    closing: CancellationToken,
    books: Arc<Books>,
    /// Audit records waiting for etcd: each acquire carries some (see [`Shelf`]).
    audit: std::sync::OnceLock<Arc<Shelf>>,
}

impl EtcdSession {
    /// Grant the lease and start its keep-alive loop and the release queue (owned by
    /// `tracker`, stopped by `stop`).
    pub async fn start(
        client: Client,
        prefix: &str,
        ttl: Duration,
        owner: &str,
        tracker: &TaskTracker,
        stop: CancellationToken,
    ) -> Result<Arc<EtcdSession>, LockError> {
        let ttl = Duration::from_secs(ttl.as_secs().max(2));
        // A member down or an election at start is waited out, within the usual deadline.
        let first =
            crate::etcd::retry::within("granting the daemon's lease", || grant(&client, ttl))
                .await
                .map_err(unavailable)?;
        let session = Arc::new(EtcdSession {
            client,
            prefix: format!("{prefix}locks/"),
            owner: owner.to_string(),
            ttl,
            lease: watch::Sender::new(first),
            closing: CancellationToken::new(),
            books: Arc::default(),
            audit: std::sync::OnceLock::new(),
        });
        tracing::info!(
            lease = format!("{:x}", session.lease_id()),
            ttl_secs = ttl.as_secs(),
            "etcd lease granted"
        );
        let s = session.clone();
        let stopped = stop.clone();
        tracker.spawn(async move { s.keep_leased(stopped).await });
        let s = session.clone();
        let stopped = stop.clone();
        tracker.spawn(async move { s.send_releases(stopped).await });
        let s = session.clone();
        tracker.spawn(async move { s.sweep(stop).await });
        Ok(session)
    }

    /// Lock acquires (and releases sent alone) carry the audit records waiting on `shelf`
    /// from now on.
    pub fn carry_audit(&self, shelf: Arc<Shelf>) {
        let _ = self.audit.set(shelf);
    }

    /// The audit records a lock request is to carry now (none before [`Self::carry_audit`]).
    fn riding_audit(&self) -> Option<Riding> {
        self.audit
            .get()
            .map(|shelf| Riding::take(shelf, AUDIT_PER_TXN))
    }

    fn current(&self) -> Arc<Lease> {
        self.lease.borrow().clone()
    }

    /// The lease every key of this daemon lives under now (locks, rollout ownership, helpers'
    /// claims). It changes after a lease is lost.
    pub fn lease_id(&self) -> i64 {
        self.current().id
    }

    /// Fires when the lease in force now is lost.
    pub fn lost_token(&self) -> CancellationToken {
        self.current().lost.clone()
    }

    /// Resolves once a live lease is in force (at once if it is), or never after shutdown.
    pub async fn live(&self) {
        let mut rx = self.lease.subscribe();
        loop {
            if rx.borrow_and_update().live() {
                return;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// A live lease, waiting for one up to `deadline` (after a loss, until etcd grants anew).
    async fn live_lease(&self, deadline: Instant) -> Result<Arc<Lease>, LockError> {
        let mut rx = self.lease.subscribe();
        loop {
            if self.closing.is_cancelled() {
                return Err(LockError::SessionLost);
            }
            let lease = rx.borrow_and_update().clone();
            if lease.live() {
                return Ok(lease);
            }
            tokio::select! {
                _ = rx.changed() => {}
                _ = tokio::time::sleep_until(deadline) => return Err(LockError::SessionLost),
                _ = self.closing.cancelled() => return Err(LockError::SessionLost),
            }
        }
    }

    fn lose(&self, lease: &Lease, why: &str) {
        if lease.lost.is_cancelled() {
            return;
        }
        tracing::error!(
            lease = format!("{:x}", lease.id),
            why,
            "etcd lease lost: stopping all tenant work under it"
        );
        crate::metrics::metrics().leases_lost.add(1, &[]);
        lease.lost.cancel();
    }

    /// Keep the lease in force alive; when it is lost, revoke it and take a new one.
    async fn keep_leased(&self, stop: CancellationToken) {
        loop {
            let lease = self.current();
            self.keep_alive(&lease, &stop).await;
            if stop.is_cancelled() || self.closing.is_cancelled() {
                return;
            }
            if !self.renew(&lease, &stop).await {
                return;
            }
        }
    }

    async fn keep_alive(&self, lease: &Lease, stop: &CancellationToken) {
        let interval = self.ttl / 3;
        let mut wait = interval;
        let mut channel = None;
        loop {
            let deadline = *lease.safe_until.lock().unwrap();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = lease.lost.cancelled() => return, // abandoned at shutdown
                _ = tokio::time::sleep_until(deadline) => return self.lose(lease, "the lease deadline passed without an acknowledged keep-alive"),
                _ = tokio::time::sleep(wait) => {}
            }
            let sent = Instant::now();
            // A round never outlives the deadline: the loss is noticed the moment it happens.
            let round_limit = interval.min(deadline.saturating_duration_since(sent));
            let round = tokio::time::timeout(round_limit, async {
                if channel.is_none() {
                    channel = Some(self.client.clone().lease_keep_alive(lease.id).await?);
                }
                let (keeper, stream) = channel.as_mut().expect("just set");
                keeper.keep_alive().await?;
                stream.message().await
            })
            .await;
            match round {
                Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
                    let until = sent + Duration::from_secs(resp.ttl() as u64);
                    let mut safe_until = lease.safe_until.lock().unwrap();
                    // Lost meanwhile (abandoned): its deadline never moves again.
                    if !lease.lost.is_cancelled() {
                        *safe_until = until;
                    }
                    wait = interval;
                }
                Ok(Ok(Some(_))) => return self.lose(lease, "etcd says the lease has expired"),
                Ok(Err(e)) if e.to_string().contains("lease not found") => {
                    return self.lose(lease, "etcd no longer knows the lease");
                }
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                    let why = match round {
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => "no answer within the round timeout".into(),
                        _ => "keep-alive stream closed".into(),
                    };
                    crate::metrics::metrics().keepalive_failures.add(1, &[]);
                    tracing::warn!(lease = format!("{:x}", lease.id), %why, "etcd keep-alive failed; retrying until the lease deadline");
                    channel = None;
                    // Retry soon: a TTL/3 pause would leave one attempt per lease.
                    wait = RETRY_AFTER_FAILURE;
                }
            }
        }
    }

    /// Revoke the lost lease (its keys go at once) and grant a new one, trying until etcd
    /// answers. `false`: stopped first.
    async fn renew(&self, old: &Lease, stop: &CancellationToken) -> bool {
        let started = Instant::now();
        let mut revoked = false;
        loop {
            if stop.is_cancelled() || self.closing.is_cancelled() {
                return false;
            }
            if !revoked {
                match tokio::time::timeout(RENEW_ROUND, self.client.clone().lease_revoke(old.id))
                    .await
                {
                    Ok(Ok(_)) => revoked = true,
                    Ok(Err(e)) if e.to_string().contains("lease not found") => revoked = true,
                    Ok(Err(e)) => {
                        tracing::warn!(lease = format!("{:x}", old.id), error = %e, "could not revoke the lost lease yet")
                    }
                    Err(_) => {}
                }
            }
            // A lease etcd does not let us revoke expires by its TTL: take a new one anyway.
            if revoked || started.elapsed() >= crate::etcd::retry::RETRY_WITHIN {
                match tokio::time::timeout(RENEW_ROUND, grant(&self.client, self.ttl)).await {
                    Ok(Ok(lease)) => {
                        tracing::info!(
                            lease = format!("{:x}", lease.id),
                            old = format!("{:x}", old.id),
                            after_ms = started.elapsed().as_millis() as u64,
                            "new etcd lease granted: taking work again"
                        );
                        self.lease.send_replace(lease);
                        return true;
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "could not take a new etcd lease yet"),
                    Err(_) => {}
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(RENEW_PAUSE) => {}
                _ = stop.cancelled() => return false,
            }
        }
    }

    /// Treat every lock as lost (stop all tenant SQL) without revoking the lease yet, and take
    /// no new lease.
    pub fn abandon(&self) {
        self.closing.cancel();
        self.lose(&self.current(), "shutting down after the grace period");
    }

    /// Revoke the lease: every lock key goes with it. Called at shutdown.
    pub async fn revoke(&self) {
        self.closing.cancel();
        let lease = self.current();
        lease.lost.cancel();
        match tokio::time::timeout(
            Duration::from_secs(2),
            self.client.clone().lease_revoke(lease.id),
        )
        .await
        {
            Ok(Ok(_)) => tracing::info!(lease = format!("{:x}", lease.id), "etcd lease revoked"),
            _ => tracing::warn!(
                lease = format!("{:x}", lease.id),
                "could not revoke the etcd lease; it expires by its TTL"
            ),
        }
    }

    fn lock_key(&self, key: &DatabaseKey) -> String {
        format!("{}{}", self.prefix, key)
    }
}

/// A new lease; its deadline counts from the request's send time.
async fn grant(client: &Client, ttl: Duration) -> Result<Arc<Lease>, etcd_client::Error> {
    let sent = Instant::now();
    let grant = client
        .clone()
        .lease_grant(ttl.as_secs() as i64, None)
        .await?;
    Ok(Lease::new(
        grant.id(),
        sent + Duration::from_secs(grant.ttl().max(0) as u64),
    ))
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
        // Transient etcd errors are retried within this; a held lock answers at once.
        Box::pin(self.acquire(key, crate::etcd::retry::RETRY_WITHIN, false))
    }

    fn session_lost(&self) -> CancellationToken {
        self.lost_token()
    }
}
