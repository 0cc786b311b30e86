//! Giving lock keys back, and making sure none is left behind.
//!
//! - A released lock is queued; the session's next acquire carries it in its transaction, or
//!   it goes alone after [`RELEASE_DELAY`] (carrying the audit records waiting, if any). A
//!   release etcd did not take (a member down, no leader) goes back to the queue and is sent
//!   again, with backoff, until it lands: the key lives under a lease that is alive, so "it
//!   goes with the lease" would mean never.
//! - The sweep: after an acquire whose answer was lost to a timeout or a dead member (it may
//!   have been granted), every [`SWEEP_EVERY`] for [`SWEEP_ROUNDS`] rounds, keys under the
//!   lease in force that no guard of this process holds and no acquire of it is waiting for,
//!   seen twice in a row, are deleted. Otherwise it sends nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::EtcdSession;
use crate::audit::Riding;

/// How long a release waits for an acquire to ride on before it is sent alone.
const RELEASE_DELAY: Duration = Duration::from_millis(20);
/// Releases per transaction at most (etcd allows 128 operations, compares counted apart).
pub(super) const RELEASES_PER_TXN: usize = 32;
/// After a release etcd did not take, the first pause before sending it again (doubling up
/// to [`RELEASE_RETRY_MAX`]).
const RELEASE_RETRY_MIN: Duration = Duration::from_millis(100);
const RELEASE_RETRY_MAX: Duration = Duration::from_secs(2);
/// How often the sweep looks for lock keys of ours that nobody holds.
const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// Rounds the sweep looks after an uncertain acquire (the request may still be applied by
/// etcd a while after its connection failed).
const SWEEP_ROUNDS: u32 = 5;

/// Lock keys to delete if still ours: (key, create revision).
pub(super) type Releases = Vec<(String, i64)>;

/// The session's bookkeeping of its lock keys.
#[derive(Default)]
pub(super) struct Books {
    /// Released locks not yet deleted in etcd.
    releases: Mutex<Releases>,
    released: Notify,
    /// Keys held by guards of this process (or granted and about to be handed over), with
    /// their create revision.
    held: Mutex<HashMap<String, i64>>,
    /// Keys with an acquire transaction in flight, and how many.
    acquiring: Mutex<HashMap<String, usize>>,
    /// Sweep rounds still to run: set after an acquire whose outcome is unknown.
    sweep_rounds: AtomicU32,
}

impl Books {
    /// Queue releases (a guard let go, a rider not carried, a release etcd did not take).
    pub fn queue(&self, releases: Releases) {
        if releases.is_empty() {
            return;
        }
        {
            let mut held = self.held.lock().unwrap();
            for (k, rev) in &releases {
                if held.get(k) == Some(rev) {
                    held.remove(k);
                }
            }
        }
        self.releases.lock().unwrap().extend(releases);
        self.released.notify_one();
    }

    /// An acquire's answer was lost: it may have been granted. The sweep looks.
    pub fn uncertain(&self) {
        self.sweep_rounds.store(SWEEP_ROUNDS, Ordering::SeqCst);
    }

    pub fn hold(&self, key: &str, revision: i64) {
        self.held.lock().unwrap().insert(key.to_string(), revision);
    }

    pub fn start_acquiring(&self, key: &str) {
        *self
            .acquiring
            .lock()
            .unwrap()
            .entry(key.to_string())
            .or_default() += 1;
    }

    pub fn done_acquiring(&self, key: &str) {
        let mut acquiring = self.acquiring.lock().unwrap();
        if let Some(n) = acquiring.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                acquiring.remove(key);
            }
        }
    }

    fn take_all(&self) -> Releases {
        std::mem::take(&mut *self.releases.lock().unwrap())
    }
}

impl EtcdSession {
    /// Releases no acquire took along: sent after [`RELEASE_DELAY`], again after a failure,
    /// and a last time at shutdown.
    pub(super) async fn send_releases(&self, stop: CancellationToken) {
        let mut retry = RELEASE_RETRY_MIN;
        loop {
            tokio::select! {
                _ = self.books.released.notified() => {}
                _ = stop.cancelled() => break,
            }
            tokio::select! {
                _ = tokio::time::sleep(RELEASE_DELAY) => {}
                _ = stop.cancelled() => break,
            }
            let due = self.books.take_all();
            let failed = release_all(&self.client, due, self.riding_audit()).await;
            if failed.is_empty() {
                retry = RELEASE_RETRY_MIN;
                continue;
            }
            self.books.queue(failed);
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                _ = stop.cancelled() => break,
            }
            retry = (retry * 2).min(RELEASE_RETRY_MAX);
        }
        // Shutdown: the lease is revoked next, which takes whatever is left.
        let due = self.books.take_all();
        release_all(&self.client, due, None).await;
    }

    /// Queued releases for an acquire of `lock_key` to carry (never that key itself: a txn
    /// may not touch one key twice; its release is sent first). Taken off the queue without
    /// an await after it: the caller hands them to the acquire txn's task at once.
    pub(super) async fn riders(&self, lock_key: &str) -> Releases {
        let same: Releases = {
            let mut queued = self.books.releases.lock().unwrap();
            let (same, others) = std::mem::take(&mut *queued)
                .into_iter()
                .partition(|(k, _)| k == lock_key);
            *queued = others;
            same
        };
        self.send_alone(same).await;
        let mut queued = self.books.releases.lock().unwrap();
        let n = queued.len().min(RELEASES_PER_TXN);
        queued.drain(..n).collect()
    }

    /// Send these releases now, on a task of their own (an acquire given up meanwhile loses
    /// none); those etcd does not take go back to the queue.
    pub(super) async fn send_alone(&self, releases: Releases) {
        if releases.is_empty() {
            return;
        }
        let (client, books) = (self.client.clone(), self.books.clone());
        let _ = tokio::spawn(async move {
            let failed = release_all(&client, releases, None).await;
            books.queue(failed);
        })
        .await;
    }

    /// Delete keys under the lease in force that nothing of ours holds or waits for.
    pub(super) async fn sweep(&self, stop: CancellationToken) {
        let mut suspects: HashMap<String, i64> = HashMap::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(SWEEP_EVERY) => {}
                _ = stop.cancelled() => return,
            }
            let due = self
                .books
                .sweep_rounds
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if !due && suspects.is_empty() {
                continue; // no acquire's outcome in doubt: nothing can be orphaned
            }
            let lease = self.current();
            if !lease.live() {
                suspects.clear();
                continue;
            }
            let Ok(Ok(r)) = tokio::time::timeout(
                SWEEP_EVERY,
                self.client
                    .clone()
                    .get(self.prefix.as_str(), Some(GetOptions::new().with_prefix())),
            )
            .await
            else {
                continue; // etcd away: the next round
            };
            let ours: HashMap<String, i64> = r
                .kvs()
                .iter()
                .filter(|kv| kv.lease() == lease.id)
                .map(|kv| {
                    (
                        String::from_utf8_lossy(kv.key()).to_string(),
                        kv.create_revision(),
                    )
                })
                .collect();
            let orphans: HashMap<String, i64> = {
                let (held, acquiring) = (
                    self.books.held.lock().unwrap(),
                    self.books.acquiring.lock().unwrap(),
                );
                ours.into_iter()
                    .filter(|(k, _)| !held.contains_key(k) && !acquiring.contains_key(k))
                    .collect()
            };
            let confirmed: Releases = orphans
                .iter()
                .filter(|(k, rev)| suspects.get(*k) == Some(rev))
                .map(|(k, rev)| (k.clone(), *rev))
                .collect();
            for (key, _) in &confirmed {
                tracing::warn!(%key, "a lock key under this daemon's lease that no tenant holds (an acquire whose answer was lost): deleting it");
            }
            self.books.queue(confirmed);
            suspects = orphans;
        }
    }
}

/// Compares that each key still has the create revision we took it at.
pub(super) fn still_ours(releases: &[(String, i64)]) -> Vec<Compare> {
    releases
        .iter()
        .map(|(k, rev)| Compare::create_revision(k.clone(), CompareOp::Equal, *rev))
        .collect()
}

pub(super) fn deletes(releases: &[(String, i64)]) -> Vec<TxnOp> {
    releases
        .iter()
        .map(|(k, _)| TxnOp::delete(k.clone(), None))
        .collect()
}

/// Delete these lock keys where still ours: [`RELEASES_PER_TXN`] per transaction, or (one is
/// no longer ours, or etcd failed) one by one; the first transaction carries `audit`'s records
/// (written in either branch). Returns those etcd did not take, to be sent again.
pub(super) async fn release_all(
    client: &Client,
    releases: Releases,
    mut audit: Option<Riding>,
) -> Releases {
    let mut failed = vec![];
    for chunk in releases.chunks(RELEASES_PER_TXN) {
        let riding = audit.take();
        let outcome = delete_if_ours(client, chunk, riding.iter().flat_map(Riding::puts)).await;
        if let Some(riding) = riding {
            riding.settle(outcome.is_ok());
        }
        match outcome {
            Ok(true) => {}
            _ if chunk.len() > 1 => {
                for one in chunk {
                    let alone = std::slice::from_ref(one);
                    if let Err(error) = delete_if_ours(client, alone, std::iter::empty()).await {
                        tracing::warn!(key = %one.0, %error, "could not release the lock yet; sending it again shortly");
                        failed.push(one.clone());
                    }
                }
            }
            Ok(false) => {} // no longer ours: nothing to release
            Err(error) => {
                tracing::warn!(key = %chunk[0].0, %error, "could not release the lock yet; sending it again shortly");
                failed.extend_from_slice(chunk);
            }
        }
    }
    if let Some(unused) = audit {
        unused.settle(false);
    }
    failed
}

/// One transaction deleting all these keys if all are still ours (`Ok(false)` if one is not),
/// with `puts` in both branches.
async fn delete_if_ours(
    client: &Client,
    releases: &[(String, i64)],
    puts: impl Iterator<Item = TxnOp>,
) -> Result<bool, String> {
    let puts: Vec<TxnOp> = puts.collect();
    let txn = Txn::new()
        .when(still_ours(releases))
        .and_then(
            deletes(releases)
                .into_iter()
                .chain(puts.clone())
                .collect::<Vec<_>>(),
        )
        .or_else(puts);
    match tokio::time::timeout(Duration::from_secs(5), client.clone().txn(txn)).await {
        Ok(Ok(r)) => Ok(r.succeeded()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timeout".into()),
    }
}
