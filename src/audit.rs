//! Audit records: one for every mutating RPC, and one for every tenant a job migrated, naming
//! each revision it applied, skipped or failed; who (token subject or certificate), request
//! id, tenant, revision(s) with checksums, fence token and outcome. Each revision is also a
//! structured log line of its own (target `fleetmig::audit`, like every record). In the
//! daemon, records are keys under `<prefix>audit/` in etcd, written in the background (an RPC
//! never waits on it; while tenants are being locked, the records ride on the lock acquires,
//! see [`Shelf`]) and rotated: once over `audit.max_records`, trimmed to the newest nine
//! tenths of it, counted more often as the store fills (see [`SHARED_BY`]), and at shutdown.
//! One record per tenant, not per revision: a history of hundreds of revisions costs etcd no
//! more requests than a short one, and the store keeps as many tenants' runs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Caller;

/// `[audit]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Records kept in etcd; older ones are deleted. The log keeps them all.
    pub max_records: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            max_records: 10_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub at: DateTime<Utc>,
    pub who: String,
    pub request_id: String,
    /// The RPC (`Tenants/Register`), `upgrade tenant` / `downgrade tenant` (a tenant's run),
    /// `stamp revision`, ...
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_token: Option<i64>,
    /// The job an Upgrade/Downgrade started, or the one Cancel stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// `ok`, `done`, `stamped`, or the error (gRPC code or SQLSTATE and message).
    pub outcome: String,
    /// A tenant's run: each revision it applied, skipped or failed, in order, under the
    /// record's fence token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revisions: Vec<RevisionOutcome>,
}

/// One revision of a tenant's run, in the run's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevisionOutcome {
    pub revision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// `applied`, `skipped (FLAG is false)`, `failed: ...`, `interrupted: ...`.
    pub outcome: String,
}

impl RevisionOutcome {
    /// Applied, or skipped by its condition: done either way.
    pub fn done(&self) -> bool {
        self.outcome == "applied" || self.outcome.starts_with("skipped")
    }
}

impl AuditRecord {
    pub fn new(caller: &Caller, action: impl Into<String>, outcome: impl Into<String>) -> Self {
        AuditRecord {
            at: Utc::now(),
            who: caller.who(),
            request_id: caller.request_id.clone(),
            action: action.into(),
            tenant: None,
            revision: None,
            checksum: None,
            fence_token: None,
            job_id: None,
            outcome: outcome.into(),
            revisions: vec![],
        }
    }

    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }
}

/// Where records go. Cloning is cheap; `AuditLog::log_only()` writes only the log line.
#[derive(Clone)]
pub struct AuditLog {
    etcd: Option<Arc<Shelf>>,
}

/// Records waiting for etcd; beyond this they are only logged (and a warning says so).
const BACKLOG: usize = 4096;
/// The etcd records are counted (and trimmed to `max_records`) again after this replica has
/// written this many, or a [`SHARED_BY`]th of the room left if more.
const TRIM_EVERY: usize = 64;
/// Up to this many replicas writing records as fast as this one keep the store under
/// `max_records` between counts; beyond, it may hold more until the next count. Every writer
/// trims when it stops.
const SHARED_BY: usize = 4;
/// Records per etcd request at most (etcd's default limit is 128 operations per txn).
const BATCH: usize = 64;
/// Bytes of records per etcd request at most, beyond the first record (etcd's default limit
/// is 1.5 MiB per request; a tenant's record of a long history is some 100 bytes a revision).
const BATCH_BYTES: usize = 512 * 1024;
/// How long a record waits for a carrier (a lock acquire, or releases sent alone) before the
/// writer writes it, with whatever else is waiting: while tenants are being locked, records
/// never wait that long, and cost no request of their own (the writer used to write what was
/// waiting a second after the first record of a batch, however young the rest: about one
/// request a second while a rollout ran). The log line is immediate; the etcd copy is for
/// tooling, and a second later is soon enough.
const BATCH_WINDOW: Duration = Duration::from_secs(1);

impl AuditLog {
    pub fn log_only() -> AuditLog {
        AuditLog { etcd: None }
    }

    /// Write records under `<prefix>audit/` until `stop`, then flush what is queued.
    pub fn to_etcd(
        client: etcd_client::Client,
        prefix: &str,
        max_records: usize,
        tracker: &TaskTracker,
        stop: CancellationToken,
    ) -> AuditLog {
        let shelf = Arc::new(Shelf::new(format!("{prefix}audit/")));
        let writer = Writer {
            client,
            shelf: shelf.clone(),
            max_records,
            since_count: 0,
            count_after: TRIM_EVERY,
        };
        tracker.spawn(writer.run(stop));
        AuditLog { etcd: Some(shelf) }
    }

    /// The records waiting for etcd, for other writers to carry ([`Shelf`]).
    pub fn shelf(&self) -> Option<Arc<Shelf>> {
        self.etcd.clone()
    }

    /// The log line, and the etcd record.
    pub fn record(&self, r: AuditRecord) {
        self.log(&r);
        if let Some(shelf) = &self.etcd
            && !shelf.push(&r)
        {
            tracing::warn!("audit backlog full (etcd slow?): this record is only in the log");
        }
    }

    /// The log line alone (a revision's: its tenant's record in etcd names it).
    pub fn log(&self, r: &AuditRecord) {
        tracing::info!(
            target: "fleetmig::audit",
            who = %r.who,
            request_id = %r.request_id,
            action = %r.action,
            tenant = r.tenant.as_deref().unwrap_or(""),
            revision = r.revision.as_deref().unwrap_or(""),
            checksum = r.checksum.as_deref().unwrap_or(""),
            fence_token = r.fence_token.unwrap_or(0),
            job_id = r.job_id.as_deref().unwrap_or(""),
            revisions = r.revisions.len(),
            outcome = %r.outcome,
            "audit"
        );
    }
}

/// An audit record as an etcd key and value.
pub type AuditPut = (String, Vec<u8>);

/// Audit records encoded for etcd and not written yet. The writer writes them once the oldest
/// has waited a [`BATCH_WINDOW`], unless a lock acquire took them first: its transaction
/// writes them in either branch, so while tenants are being locked the records cost no etcd
/// request of their own. A carrier that gets no answer puts them back (a record written twice
/// is the same key with the same value).
pub struct Shelf {
    dir: String,
    /// Each record with when it was queued, oldest first.
    puts: Mutex<Vec<(Instant, AuditPut)>>,
    arrived: Notify,
    /// Records written by carriers since the writer last looked.
    carried: AtomicUsize,
}

impl Shelf {
    fn new(dir: String) -> Shelf {
        Shelf {
            dir,
            puts: Mutex::new(Vec::new()),
            arrived: Notify::new(),
            carried: AtomicUsize::new(0),
        }
    }

    /// Queue a record; `false` when the backlog is full (it is only in the log then).
    fn push(&self, r: &AuditRecord) -> bool {
        let nanos = r.at.timestamp_nanos_opt().unwrap_or_default();
        let key = format!("{}{nanos:020}-{:08x}", self.dir, rand::random::<u32>());
        let value = serde_json::to_vec(r).expect("serializable");
        {
            let mut puts = self.puts.lock().unwrap();
            if puts.len() >= BACKLOG {
                return false;
            }
            puts.push((Instant::now(), (key, value)));
        }
        self.arrived.notify_one();
        true
    }

    /// Up to `max` of the oldest records, to write: within [`BATCH_BYTES`], but at least one.
    pub fn take(&self, max: usize) -> Vec<AuditPut> {
        let mut puts = self.puts.lock().unwrap();
        let (mut n, mut bytes) = (0, 0);
        for (_, (k, v)) in puts.iter().take(max) {
            bytes += k.len() + v.len();
            if n > 0 && bytes > BATCH_BYTES {
                break;
            }
            n += 1;
        }
        puts.drain(..n).map(|(_, put)| put).collect()
    }

    /// When the oldest record waiting was queued (`None`: nothing waits).
    fn oldest(&self) -> Option<Instant> {
        self.puts.lock().unwrap().first().map(|(at, _)| *at)
    }

    /// Records a carrier could not write, back at the front of the queue (they wait a
    /// [`BATCH_WINDOW`] again for another carrier, or the writer).
    pub fn put_back(&self, records: Vec<AuditPut>) {
        if records.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut puts = self.puts.lock().unwrap();
        let rest = std::mem::take(&mut *puts);
        *puts = records.into_iter().map(|put| (now, put)).collect();
        puts.extend(rest);
        drop(puts);
        self.arrived.notify_one();
    }

    /// A carrier wrote `n` records (they count towards the next trim).
    pub fn carried(&self, n: usize) {
        self.carried.fetch_add(n, Ordering::Relaxed);
    }
}

/// Audit records taken off the shelf by a lock request (an acquire, or releases sent alone):
/// its transaction writes them in both branches; [`Riding::settle`] once it has an answer.
pub struct Riding {
    shelf: Arc<Shelf>,
    records: Vec<AuditPut>,
}

impl Riding {
    /// Up to `max` of the oldest records on `shelf`.
    pub fn take(shelf: &Arc<Shelf>, max: usize) -> Riding {
        Riding {
            shelf: shelf.clone(),
            records: shelf.take(max),
        }
    }

    /// The puts for the transaction (put them in both branches).
    pub fn puts(&self) -> impl Iterator<Item = etcd_client::TxnOp> + '_ {
        self.records
            .iter()
            .map(|(k, v)| etcd_client::TxnOp::put(k.as_str(), v.clone(), None))
    }

    /// `answered`: the transaction ran (either branch wrote them); otherwise they go back.
    pub fn settle(self, answered: bool) {
        match answered {
            true => self.shelf.carried(self.records.len()),
            false => self.shelf.put_back(self.records),
        }
    }
}

struct Writer {
    client: etcd_client::Client,
    shelf: Arc<Shelf>,
    max_records: usize,
    /// Records written since the store was last counted.
    since_count: usize,
    /// Count it again once `since_count` reaches this.
    count_after: usize,
}

/// Records to write before the next count, when the store held `held` of `max` after a trim:
/// counting every [`TRIM_EVERY`] records of a store far from full is a request per few
/// tenants for nothing.
fn count_after(max: usize, held: usize) -> usize {
    TRIM_EVERY.max(max.saturating_sub(held) / SHARED_BY)
}

/// What a trim leaves of a store over `max`: a tenth below it, so that a full store is not
/// counted and trimmed (three requests) every [`TRIM_EVERY`] records.
fn low_water(max: usize) -> usize {
    max - max / 10
}

impl Writer {
    async fn run(mut self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = self.shelf.arrived.notified() => {}
                _ = stop.cancelled() => break,
            }
            // Records ride on lock requests meanwhile, or wait together until the oldest has
            // waited the window: etcd round trips do not grow with the number of revisions a
            // job applies (the log line is immediate).
            while let Some(oldest) = self.shelf.oldest() {
                // After a failed write (etcd unreachable), the rest waits a window again.
                let due = match oldest.elapsed() >= BATCH_WINDOW {
                    true if self.write_all().await => continue,
                    true => Instant::now() + BATCH_WINDOW,
                    false => oldest + BATCH_WINDOW,
                };
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => {}
                    _ = stop.cancelled() => break,
                }
                // Carriers' records count towards the next trim, though the writer writes
                // nothing itself while they carry everything.
                self.trim_if_due().await;
            }
            if stop.is_cancelled() {
                break;
            }
        }
        // Shutting down: what is queued is still written, briefly.
        let flush = async {
            self.write_all().await;
            // Nothing written since the last count: nothing to trim.
            if self.since_count > 0 {
                self.trim().await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), flush).await;
    }

    /// Write what is on the shelf, [`BATCH`] records per request; trim when due. `false` when
    /// a request failed (its records are only in the log; the rest stays on the shelf).
    async fn write_all(&mut self) -> bool {
        let mut written = true;
        loop {
            let batch = self.shelf.take(BATCH);
            if batch.is_empty() {
                break;
            }
            let n = batch.len();
            let puts: Vec<etcd_client::TxnOp> = batch
                .iter()
                .map(|(k, v)| etcd_client::TxnOp::put(k.as_str(), v.clone(), None))
                .collect();
            if let Err(e) = self
                .client
                .txn(etcd_client::Txn::new().and_then(puts))
                .await
            {
                tracing::warn!(error = %e, records = n, "audit records not written to etcd (they are in the log)");
                written = false;
                break;
            }
            self.since_count += n;
        }
        self.trim_if_due().await;
        written
    }

    /// Count the store (and trim it) once `count_after` records were written since the last
    /// count, by the writer or by carriers.
    async fn trim_if_due(&mut self) {
        self.since_count += self.shelf.carried.swap(0, Ordering::Relaxed);
        if self.since_count >= self.count_after {
            self.trim().await;
        }
    }

    /// Over `max_records`: delete the oldest records down to [`low_water`] (keys sort by time).
    async fn trim(&mut self) {
        use etcd_client::{DeleteOptions, GetOptions};
        let count = self
            .client
            .get(
                self.shelf.dir.as_str(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .map(|r| r.count() as usize);
        let Ok(count) = count else { return };
        self.since_count = 0;
        if count <= self.max_records {
            self.count_after = count_after(self.max_records, count);
            return;
        }
        let keep = low_water(self.max_records);
        self.count_after = count_after(self.max_records, keep);
        let excess = count - keep;
        let oldest = self
            .client
            .get(
                self.shelf.dir.as_str(),
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_keys_only()
                        .with_limit(excess as i64),
                ),
            )
            .await;
        let Some(last) = oldest
            .ok()
            .and_then(|r| r.kvs().last().map(|kv| kv.key().to_vec()))
        else {
            return;
        };
        let mut end = last;
        end.push(0);
        if let Err(e) = self
            .client
            .delete(
                self.shelf.dir.as_str(),
                Some(DeleteOptions::new().with_range(end)),
            )
            .await
        {
            tracing::warn!(error = %e, "trimming old audit records");
        }
    }
}

/// The audit records kept in etcd, oldest first (for tests and `fleetmig` tooling).
pub async fn read_all(
    client: &mut etcd_client::Client,
    prefix: &str,
) -> Result<Vec<AuditRecord>, etcd_client::Error> {
    let r = client
        .get(
            format!("{prefix}audit/"),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await?;
    Ok(r.kvs()
        .iter()
        .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_far_from_full_is_counted_rarely_and_a_full_one_often() {
        // The default cap, nearly empty: counted again after 2,500 records, not 64.
        assert_eq!(count_after(10_000, 0), 2_500);
        assert_eq!(count_after(10_000, 9_000), 250);
        // Full (just trimmed), or a small cap: every TRIM_EVERY records, as before.
        assert_eq!(count_after(10_000, 10_000), TRIM_EVERY);
        assert_eq!(count_after(4, 4), TRIM_EVERY);
        assert_eq!(count_after(100, 0), TRIM_EVERY);
    }

    #[test]
    fn a_full_store_is_trimmed_a_tenth_below_its_cap() {
        assert_eq!(low_water(10_000), 9_000);
        // Counted again after 250 records, not 64: three requests per 250 tenants.
        assert_eq!(count_after(10_000, low_water(10_000)), 250);
        // A small cap is trimmed to itself.
        assert_eq!(low_water(4), 4);
    }

    fn caller() -> Caller {
        Caller {
            subject: "tester".into(),
            via: crate::auth::Via::Anonymous,
            scopes: vec![],
            request_id: "r".into(),
            certificate: None,
        }
    }

    #[test]
    fn records_put_back_by_a_carrier_go_first_in_their_order() {
        let shelf = Shelf::new("p/audit/".into());
        let caller = caller();
        for action in ["a", "b", "c"] {
            assert!(shelf.push(&AuditRecord::new(&caller, action, "ok")));
        }
        let carried = shelf.take(2);
        assert_eq!(carried.len(), 2);
        assert!(carried.iter().all(|(k, _)| k.starts_with("p/audit/")));
        shelf.put_back(carried);
        let actions: Vec<String> = shelf
            .take(10)
            .iter()
            .map(|(_, v)| serde_json::from_slice::<AuditRecord>(v).unwrap().action)
            .collect();
        assert_eq!(actions, ["a", "b", "c"]);
        assert!(shelf.take(10).is_empty());
    }

    #[test]
    fn a_request_takes_records_within_its_byte_budget_and_always_one() {
        let shelf = Shelf::new("p/audit/".into());
        let caller = caller();
        // Records of long histories, a little under a third of the budget each: three fit
        // in one request, the fourth waits for the next.
        let big = "x".repeat(BATCH_BYTES / 3 - 1000);
        for _ in 0..4 {
            assert!(shelf.push(&AuditRecord::new(&caller, "upgrade tenant", big.as_str())));
        }
        assert_eq!(shelf.take(BATCH).len(), 3);
        assert_eq!(shelf.take(BATCH).len(), 1);
        // One record over the whole budget still goes, alone.
        let huge = "x".repeat(BATCH_BYTES * 2);
        assert!(shelf.push(&AuditRecord::new(&caller, "upgrade tenant", huge.as_str())));
        assert!(shelf.push(&AuditRecord::new(&caller, "upgrade tenant", "done")));
        assert_eq!(shelf.take(BATCH).len(), 1);
        assert_eq!(shelf.take(BATCH).len(), 1);
        assert!(shelf.take(BATCH).is_empty());
    }
}
