//! One wave of a rollout, as its owner runs it: its own fleet jobs over the wave's tenants,
//! plus what helping replicas report ([`super::helper`]), folded into the document, with the
//! failure budget checked on both. The owner opens the wave to helpers through the gate key,
//! and closes it when it stops taking tenants; it then waits for the helpers' tenants in
//! flight before it records the wave's end.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;

use super::driver::{CONTROL_EVERY, Rollouts};
use super::store::{Desired, StoreError};
use super::{RolloutDoc, Tally, TenantDoc, TenantState, over_budget};
use crate::fleet::events::Failure;
use crate::fleet::{FleetError, JobEvent, JobStream, TenantEvent};
use crate::registry::RegistryError;

/// Per-tenant progress is written to etcd at most this often per 1,000 tenants, carried by
/// the owner's poll: one request per tick, saving or not.
const SAVE_EVERY: Duration = Duration::from_millis(250);
/// How often the owner polls while no helper has reported for [`HELPERS_QUIET`]: pause and
/// cancel asked through this replica wake it at once, through another within this.
const POLL_ALONE: Duration = Duration::from_secs(1);
/// While helpers report, the owner polls every [`CONTROL_EVERY`], so that it sees the
/// tenants they take before it starts them itself.
const HELPERS_QUIET: Duration = Duration::from_secs(5);

pub(super) enum WaveEnd {
    Completed,
    Halted(String),
    /// Pause or cancel was asked for: the loop looks at the control again.
    Interrupted,
    /// Shutdown or lost ownership: stop driving, leave the state for the next owner.
    Stop,
}

/// The owner's running state of one wave.
struct WaveRun {
    w: u32,
    canary: bool,
    halting: Option<String>,
    interrupted: bool,
    lost: bool,
    dirty: bool,
    /// Tenants helpers have (running or finished): the owner's jobs leave them alone.
    taken: Arc<Mutex<HashSet<String>>>,
    /// The etcd revision up to which helpers' results are folded in.
    merged_at: i64,
    /// When a helper's result was last folded in.
    helped_at: Option<Instant>,
    job_id: Option<String>,
    /// Each tenant's position in the document (events name tenants by id).
    index: HashMap<String, usize>,
}

impl WaveRun {
    fn tenant<'d>(&self, doc: &'d mut RolloutDoc, id: &str) -> Option<&'d mut TenantDoc> {
        self.index.get(id).map(|&i| &mut doc.tenants[i])
    }
}

impl Rollouts {
    pub(super) async fn run_wave(
        &self,
        doc: &mut RolloutDoc,
        w: usize,
        consecutive: &mut u32,
    ) -> Result<WaveEnd, StoreError> {
        let mut run = WaveRun {
            w: w as u32,
            canary: doc.waves[w].name == "canary",
            halting: None,
            interrupted: false,
            lost: false,
            dirty: false,
            taken: Arc::default(),
            merged_at: 0,
            helped_at: None,
            job_id: None,
            index: doc
                .tenants
                .iter()
                .enumerate()
                .map(|(i, t)| (t.id.clone(), i))
                .collect(),
        };
        if !self
            .store
            .set_gate(&doc.id, &self.owner, Some(run.w))
            .await?
        {
            return Ok(WaveEnd::Stop);
        }
        // What helpers reported already (after a takeover, before any tenant is started),
        // and the budget on what the previous owners saw: a takeover does not reset it.
        if self.merge(doc, &mut run, consecutive, false).await? != Desired::Running {
            run.interrupted = true;
        }
        self.check_budget(doc, &mut run, *consecutive);
        let mut closed_at: Option<Instant> = None;
        let mut passes = 0u32;
        let mut busy_since: HashMap<String, Instant> = HashMap::new();
        let lock_wait = self.fleet.limits().lock_wait;
        // Bigger documents are written less often: each write is the whole document, and etcd
        // keeps every version until it is compacted.
        let per_thousand = (doc.tenants.len() as u32).div_ceil(1000).max(1);
        let save_every = SAVE_EVERY * per_thousand;
        let mut saved_at = Instant::now();
        let mut next_poll = Instant::now();
        loop {
            let stopping = run.halting.is_some() || run.interrupted || run.lost;
            if run.lost || self.shutdown.is_cancelled() {
                break; // the next owner picks up whatever is in flight
            }
            if stopping && closed_at.is_none() {
                self.store.set_gate(&doc.id, &self.owner, None).await?;
                closed_at = Some(Instant::now());
            }
            let in_wave = |t: &&TenantDoc| t.wave == run.w;
            let elsewhere = doc
                .tenants
                .iter()
                .filter(in_wave)
                .any(|t| t.state == TenantState::Running && t.replica != self.owner);
            let todo: Vec<String> = if stopping {
                vec![]
            } else {
                let taken = run.taken.lock().unwrap();
                doc.tenants
                    .iter()
                    .filter(in_wave)
                    .filter(|t| matches!(t.state, TenantState::Pending | TenantState::Interrupted))
                    .filter(|t| !taken.contains(&t.id))
                    .map(|t| t.id.clone())
                    .collect()
            };
            if todo.is_empty() && !elsewhere {
                // A helper may still take a tenant just before it sees the gate closed.
                let settled = closed_at.is_some_and(|at| at.elapsed() >= CONTROL_EVERY * 3);
                let all_final = doc
                    .tenants
                    .iter()
                    .filter(in_wave)
                    .all(|t| matches!(t.state, TenantState::Done | TenantState::Failed));
                if (stopping && settled) || (!stopping && all_final) {
                    break;
                }
            }
            let mut job = match todo.is_empty() {
                true => None,
                false => match self.start_job(doc, &run, todo).await {
                    Ok(job) => Some(job),
                    Err(FleetError::ShuttingDown) => break,
                    // A tenant deregistered or moved to another app meanwhile fails alone.
                    Err(FleetError::Registry(RegistryError::NotFound(gone))) => {
                        let failure = Failure {
                            message: "no longer registered".into(),
                            ..Failure::default()
                        };
                        self.fail_here(doc, &mut run, consecutive, gone.as_str(), failure);
                        continue;
                    }
                    Err(FleetError::WrongApp { tenant, actual, .. }) => {
                        let failure = Failure {
                            message: format!("now registered for app '{actual}'"),
                            ..Failure::default()
                        };
                        self.fail_here(doc, &mut run, consecutive, tenant.as_str(), failure);
                        continue;
                    }
                    Err(e) => {
                        // The registry is unreachable, say: try again after the next poll.
                        tracing::warn!(rollout = %doc.id, error = %e, "starting a wave's tenants; retrying");
                        None
                    }
                },
            };
            run.job_id = job.as_ref().and_then(|j| match &j.accepted {
                JobEvent::Accepted { job_id, .. } => Some(job_id.clone()),
                _ => None,
            });
            // One pass: until the job ends, or (without a job) until the next merge.
            let has_job = job.is_some();
            let mut progressed = false;
            loop {
                tokio::select! {
                    event = async { job.as_mut().expect("guarded").events.recv().await }, if job.is_some() => {
                        match event {
                            Some(JobEvent::Tenant { tenant_id, event }) => {
                                // Busy tenants are tried again each pass: their waiting is told once.
                                let waiting = matches!(event, TenantEvent::Queued | TenantEvent::WaitingForLock { .. } | TenantEvent::Busy { .. });
                                if !(waiting && passes > 0) {
                                    self.tell(&doc.id, &tenant_id, &event);
                                }
                                match &event {
                                    TenantEvent::Locked { .. } => {
                                        progressed = true;
                                        busy_since.remove(&tenant_id);
                                    }
                                    TenantEvent::Busy { holder } => {
                                        let since = *busy_since.entry(tenant_id.clone()).or_insert_with(Instant::now);
                                        let helped = run.taken.lock().unwrap().contains(&tenant_id);
                                        if !helped && since.elapsed() >= lock_wait {
                                            let failure = Failure {
                                                message: format!("its database lock stayed held by {holder} for more than {lock_wait:?} (fleet.lock_wait)"),
                                                ..Failure::default()
                                            };
                                            self.fail_here(doc, &mut run, consecutive, &tenant_id, failure);
                                        }
                                        continue;
                                    }
                                    _ => {}
                                }
                                let Some(t) = run.tenant(doc, &tenant_id) else { continue };
                                // The first final outcome stands (a helper's, merged meanwhile).
                                if matches!(t.state, TenantState::Done | TenantState::Failed) {
                                    continue;
                                }
                                let failed = apply(t, event, consecutive, &self.owner);
                                run.dirty |= failed.is_some();
                                if failed == Some(true) {
                                    self.check_budget(doc, &mut run, *consecutive);
                                }
                            }
                            Some(JobEvent::Summary(_)) | None => break,
                            Some(_) => {}
                        }
                    }
                    _ = self.until_poll(next_poll), if !run.lost => {
                        let save = run.dirty && saved_at.elapsed() >= save_every;
                        if save {
                            saved_at = Instant::now();
                        }
                        let merged = self.merge(doc, &mut run, consecutive, save).await;
                        let helped = run.helped_at.is_some_and(|at| at.elapsed() < HELPERS_QUIET);
                        next_poll = Instant::now() + if helped { CONTROL_EVERY } else { POLL_ALONE };
                        match merged {
                            Ok(Desired::Running) => {}
                            Ok(_) if !run.interrupted => {
                                run.interrupted = true;
                                self.cancel_job(&run);
                            }
                            Ok(_) => {}
                            Err(e) => self.check_store(&mut run, Err(e)),
                        }
                        if !has_job {
                            break;
                        }
                    }
                    else => break,
                }
            }
            if has_job {
                passes += 1;
                // A tenant of ours still running after our job ended (its task panicked) is
                // to be run again; not one our own helper pass runs (from before we became
                // the owner): its result comes like any helper's.
                let taken = run.taken.lock().unwrap().clone();
                for t in doc.tenants.iter_mut() {
                    if t.wave == run.w
                        && t.state == TenantState::Running
                        && t.replica == self.owner
                        && !taken.contains(&t.id)
                    {
                        t.state = TenantState::Interrupted;
                    }
                }
                if !progressed {
                    // Every tenant was busy: wait for helpers' results or the holders to let go.
                    tokio::select! {
                        _ = tokio::time::sleep(CONTROL_EVERY) => {}
                        _ = self.shutdown.cancelled() => {}
                    }
                }
            }
        }
        if run.lost {
            tracing::warn!(rollout = %doc.id, "another replica owns this rollout now: stopped driving it");
            return Ok(WaveEnd::Stop);
        }
        doc.consecutive_failures = *consecutive;
        if !self.save(doc).await? || !self.store.set_gate(&doc.id, &self.owner, None).await? {
            return Ok(WaveEnd::Stop);
        }
        Ok(match run.halting {
            Some(reason) => WaveEnd::Halted(reason),
            None if self.shutdown.is_cancelled() => WaveEnd::Stop,
            None if run.interrupted => WaveEnd::Interrupted,
            None => WaveEnd::Completed,
        })
    }

    /// Until the owner's next poll is due, or a control call reached this replica.
    async fn until_poll(&self, due: Instant) {
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = self.controlled.notified() => {}
        }
    }

    async fn start_job(
        &self,
        doc: &RolloutDoc,
        run: &WaveRun,
        todo: Vec<String>,
    ) -> Result<JobStream, FleetError> {
        let taken = run.taken.clone();
        // A tenant a helper holds is left for now and looked at again after this pass.
        let spec = Self::wave_job(doc, todo.iter().map(String::as_str), taken);
        self.fleet.start(spec).await
    }

    /// After a write fenced by ownership: on `Ok(false)` (ownership lost) stop taking
    /// tenants; the job still runs to its end, its events drained and told. An etcd error is
    /// retried at the next tick: tenant work goes on (if etcd stays away, the lease and with
    /// it every lock is lost, and the tenants stop on their own).
    fn check_store(&self, run: &mut WaveRun, outcome: Result<bool, StoreError>) {
        match outcome {
            Ok(true) => {}
            Ok(false) => {
                run.lost = true;
                self.cancel_job(run);
            }
            Err(e) => {
                tracing::warn!(error = %e, "etcd failed while driving a rollout; retrying");
                run.dirty = true;
            }
        }
    }

    /// Record a failure found by the owner itself (not by a tenant run).
    fn fail_here(
        &self,
        doc: &mut RolloutDoc,
        run: &mut WaveRun,
        consecutive: &mut u32,
        tenant_id: &str,
        failure: Failure,
    ) {
        tracing::warn!(rollout = %doc.id, tenant = %tenant_id, error = %failure.message, "tenant failed");
        let event = TenantEvent::Failed(failure);
        self.tell(&doc.id, tenant_id, &event);
        if let Some(t) = run.tenant(doc, tenant_id) {
            t.state = TenantState::Pending; // apply() sets the failure on a tenant not final
            apply(t, event, consecutive, &self.owner);
            run.dirty = true;
            self.check_budget(doc, run, *consecutive);
        }
    }

    fn cancel_job(&self, run: &WaveRun) {
        if let Some(id) = &run.job_id {
            let _ = self.fleet.cancel(id);
        }
    }

    fn check_budget(&self, doc: &RolloutDoc, run: &mut WaveRun, consecutive: u32) {
        if run.halting.is_some() {
            return;
        }
        let wave = Tally::of(doc.tenants.iter().filter(|t| t.wave == run.w));
        let overall = Tally::of(doc.tenants.iter());
        if let Some(reason) = over_budget(&doc.spec.budget, run.canary, wave, overall, consecutive)
        {
            run.halting = Some(reason);
            self.cancel_job(run);
        }
    }

    /// Fold in what helpers reported since the last merge (a tenant a dead helper was running,
    /// its claim gone with its lease, is to be run again); return what operators want. With
    /// `save`, the document goes in the same request (ownership lost: `run.lost`).
    async fn merge(
        &self,
        doc: &mut RolloutDoc,
        run: &mut WaveRun,
        consecutive: &mut u32,
        save: bool,
    ) -> Result<Desired, StoreError> {
        let polled = if save {
            run.dirty = false;
            doc.consecutive_failures = *consecutive;
            self.stamp(doc);
            let (saved, polled) = self
                .store
                .save_and_poll(doc, &self.owner, run.merged_at)
                .await?;
            self.check_store(run, Ok(saved));
            polled
        } else {
            self.store.poll(&doc.id, run.merged_at).await?
        };
        self.saw_claimable(polled.claimable);
        let (desired, results, at) = (polled.desired, polled.results, polled.at);
        run.merged_at = at;
        if !results.is_empty() {
            run.helped_at = Some(Instant::now());
        }
        let mut finished = vec![];
        for r in results {
            let Some(t) = run.tenant(doc, &r.id) else {
                continue;
            };
            match r.state {
                TenantState::Running
                    if matches!(t.state, TenantState::Pending | TenantState::Interrupted) =>
                {
                    run.taken.lock().unwrap().insert(r.id.clone());
                    *t = TenantDoc { wave: t.wave, ..r };
                    run.dirty = true;
                }
                // The first final outcome stands: a helper that ran a tenant again from a
                // stale list (finding it up to date, or failing) does not rewrite it.
                TenantState::Done | TenantState::Failed
                    if !matches!(t.state, TenantState::Done | TenantState::Failed) =>
                {
                    run.taken.lock().unwrap().insert(r.id.clone());
                    finished.push((r.id.clone(), remote_event(&r)));
                    *t = TenantDoc { wave: t.wave, ..r };
                    run.dirty = true;
                }
                TenantState::Interrupted if t.state == TenantState::Running => {
                    run.taken.lock().unwrap().remove(&r.id);
                    t.state = TenantState::Interrupted;
                    run.dirty = true;
                }
                _ => {}
            }
        }
        for (tenant_id, event) in finished {
            self.tell(&doc.id, &tenant_id, &event);
            if matches!(event, TenantEvent::Failed(_)) {
                *consecutive += 1;
                self.check_budget(doc, run, *consecutive);
            } else {
                *consecutive = 0;
            }
        }
        let elsewhere = |t: &TenantDoc| {
            t.wave == run.w && t.state == TenantState::Running && t.replica != self.owner
        };
        if doc.tenants.iter().any(elsewhere) {
            // A claim's key lives under its helper's lease until the result is final: absent
            // means the helper died (a final result written since is still present).
            let present = self.store.result_ids(&doc.id).await?;
            for t in doc.tenants.iter_mut() {
                if elsewhere(t) && !present.contains(&t.id) {
                    tracing::warn!(rollout = %doc.id, tenant = %t.id, replica = %t.replica, "a helping replica went away mid-tenant: it runs again");
                    run.taken.lock().unwrap().remove(&t.id);
                    t.state = TenantState::Interrupted;
                    run.dirty = true;
                }
            }
        }
        Ok(desired)
    }
}

/// A helper's final result as the event a local stream shows.
fn remote_event(t: &TenantDoc) -> TenantEvent {
    if t.state == TenantState::Failed {
        return TenantEvent::Failed(Failure {
            message: format!("on replica {}: {}", t.replica, t.error),
            ..Default::default()
        });
    }
    if t.applied == 0 {
        return TenantEvent::UpToDate {
            revisions: t.revisions.clone(),
        };
    }
    let duration = match (t.started_at, t.finished_at) {
        (Some(a), Some(b)) => (b - a).to_std().unwrap_or_default(),
        _ => Duration::ZERO,
    };
    TenantEvent::Done {
        revisions: t.revisions.clone(),
        applied: t.applied,
        duration,
    }
}

/// One job event into the tenant's rollout state. `None`: no change; `Some(failed)`.
pub(super) fn apply(
    t: &mut TenantDoc,
    event: TenantEvent,
    consecutive: &mut u32,
    replica: &str,
) -> Option<bool> {
    let now = Some(Utc::now());
    match event {
        TenantEvent::Locked { .. } => {
            t.state = TenantState::Running;
            t.started_at = now;
            t.attempts += 1;
            t.replica = replica.to_string();
        }
        TenantEvent::LockRetry { blockers, .. } => {
            t.lock_retries += 1;
            if !blockers.is_empty() {
                t.blocked_by = blockers.iter().map(|b| b.describe()).collect();
            }
        }
        TenantEvent::UpToDate { revisions } => {
            t.state = TenantState::Done;
            t.revisions = revisions;
            t.applied = 0;
            t.error.clear();
            t.finished_at = now;
            *consecutive = 0;
        }
        TenantEvent::Done {
            revisions, applied, ..
        } => {
            t.applied = applied;
            t.state = TenantState::Done;
            t.revisions = revisions;
            t.error.clear();
            t.finished_at = now;
            *consecutive = 0;
        }
        TenantEvent::Failed(f) => {
            t.state = TenantState::Failed;
            t.error = [
                (!f.revision.is_empty()).then(|| format!("revision {}", f.revision)),
                (!f.sqlstate.is_empty()).then(|| format!("SQLSTATE {}", f.sqlstate)),
                (!f.location.is_empty()).then(|| f.location.clone()),
                Some(f.message),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(": ");
            t.finished_at = now;
            *consecutive += 1;
            return Some(true);
        }
        // Not started (pause, cancel, halt, shutdown): it stays to do, unless another
        // replica has it meanwhile.
        TenantEvent::Skipped { .. }
            if matches!(t.state, TenantState::Pending | TenantState::Interrupted) =>
        {
            t.state = TenantState::Pending
        }
        TenantEvent::Interrupted { .. }
            if t.replica == replica
                || matches!(t.state, TenantState::Pending | TenantState::Interrupted) =>
        {
            t.state = TenantState::Interrupted
        }
        _ => return None,
    }
    Some(false)
}
