//! Runs rollouts. Every replica supervises: it claims running or paused rollouts that no
//! replica owns (their owner key lives under the owner's etcd lease, so it vanishes when the
//! owner dies) and drives them wave by wave through fleet jobs. Tenants that were in flight
//! under a dead owner are run again: their database's history decides what is left to apply,
//! and the per-database lock and fence keep two replicas off one database.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::store::{Desired, RolloutStore, StoreError};
use super::{
    RolloutDoc, RolloutSpec, RolloutState, SelectorDoc, Tally, TenantDoc, TenantState, WaveState,
    over_budget, plan_waves,
};
use crate::auth::{Caller, Via};
use crate::fleet::{Fleet, FleetError, JobEvent, JobSpec, Selector, TenantEvent};
use crate::registry::tenant::TenantId;

/// How often a replica looks for rollouts nobody drives (also woken by Start).
const CLAIM_EVERY: Duration = Duration::from_secs(1);
/// Per-tenant progress is written to etcd at most this often (state changes at once).
const SAVE_EVERY: Duration = Duration::from_millis(250);
/// How often the owner reads what operators asked for (pause, cancel).
const CONTROL_EVERY: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("rollout {id} is {state}: {what}")]
    State {
        id: String,
        state: &'static str,
        what: &'static str,
    },
}

pub struct Rollouts {
    fleet: Arc<Fleet>,
    store: RolloutStore,
    owner: String,
    lease: i64,
    driving: Mutex<HashSet<String>>,
    wake: Notify,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

enum WaveEnd {
    Completed,
    Halted(String),
    /// Pause or cancel was asked for: the loop looks at the control again.
    Interrupted,
    /// Shutdown or lost ownership: stop driving, leave the state for the next owner.
    Stop,
}

impl Rollouts {
    pub fn new(
        fleet: Arc<Fleet>,
        store: RolloutStore,
        owner: String,
        lease: i64,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Arc<Rollouts> {
        Arc::new(Rollouts {
            fleet,
            store,
            owner,
            lease,
            driving: Mutex::default(),
            wake: Notify::new(),
            tracker,
            shutdown,
        })
    }

    /// Rollouts this replica drives now.
    pub fn driving(&self) -> usize {
        self.driving.lock().unwrap().len()
    }

    pub fn store(&self) -> &RolloutStore {
        &self.store
    }

    /// Plan the waves and persist the rollout (or return the one its idempotency key names).
    /// `true`: created now.
    pub async fn start(
        &self,
        spec: RolloutSpec,
        caller: &Caller,
    ) -> Result<(RolloutDoc, bool), RolloutError> {
        if self.shutdown.is_cancelled() {
            return Err(FleetError::ShuttingDown.into());
        }
        let app = self.fleet.app(&spec.app)?.clone();
        let target: crate::revision::plan::Target = spec.target.parse().expect("infallible");
        Fleet::check_target(&app, spec.direction, &target)?;
        let selector = match &spec.selector {
            // Validated by the caller (the gRPC layer).
            SelectorDoc::Ids(ids) => Selector::Ids(
                ids.iter()
                    .filter_map(|i| TenantId::parse("selector", i).ok())
                    .collect(),
            ),
            SelectorDoc::Labels(l) => Selector::Labels(l.clone()),
            SelectorDoc::All => Selector::All,
        };
        let tenants = self.fleet.select(&spec.app, &selector).await?;
        let waves = plan_waves(&tenants, &spec.waves);
        let mut docs = vec![];
        for w in &waves {
            for id in &w.tenant_ids {
                docs.push(TenantDoc {
                    id: id.clone(),
                    wave: w.index,
                    state: TenantState::Pending,
                    error: String::new(),
                    revisions: vec![],
                    started_at: None,
                    finished_at: None,
                    attempts: 0,
                });
            }
        }
        let now = Utc::now();
        let doc = RolloutDoc {
            id: uuid::Uuid::new_v4().simple().to_string()[..16].to_string(),
            spec,
            state: RolloutState::Running,
            reason: String::new(),
            waves,
            tenants: docs,
            created_at: now,
            updated_at: now,
            created_by: caller.who(),
        };
        let created = self.store.create(&doc).await?;
        if created.1 {
            tracing::info!(rollout = %doc.id, app = %doc.spec.app, tenants = doc.tenants.len(), waves = doc.waves.len(), "rollout started");
            self.wake.notify_one();
        }
        Ok(created)
    }

    /// Pause, resume or cancel: recorded for the owner, which follows within a moment.
    pub async fn control(&self, id: &str, desired: Desired) -> Result<RolloutDoc, RolloutError> {
        let (doc, _) = self.store.get(id).await?;
        if doc.state.is_final() {
            return Err(RolloutError::State {
                id: id.into(),
                state: doc.state.as_str(),
                what: "it is over (RetryFailed restarts a halted or finished one)",
            });
        }
        self.store.set_desired(id, desired).await?;
        Ok(doc)
    }

    /// Failed tenants back to pending and the rollout running again.
    pub async fn retry_failed(&self, id: &str) -> Result<RolloutDoc, RolloutError> {
        let (mut doc, revision) = self.store.get(id).await?;
        if !doc.state.is_final() {
            return Err(RolloutError::State {
                id: id.into(),
                state: doc.state.as_str(),
                what: "RetryFailed applies to a halted, cancelled or finished rollout",
            });
        }
        for t in &mut doc.tenants {
            if t.state == TenantState::Failed {
                t.state = TenantState::Pending;
            }
        }
        let pending: HashSet<u32> = doc
            .tenants
            .iter()
            .filter(|t| t.state != TenantState::Done)
            .map(|t| t.wave)
            .collect();
        for w in &mut doc.waves {
            if pending.contains(&w.index) {
                w.state = WaveState::Pending;
            }
        }
        doc.state = RolloutState::Running;
        doc.reason = String::new();
        doc.updated_at = Utc::now();
        if !self.store.restart(&doc, revision).await? {
            return Err(RolloutError::State {
                id: id.into(),
                state: "changing",
                what: "it changed meanwhile; try again",
            });
        }
        self.wake.notify_one();
        Ok(doc)
    }

    /// Claim and drive rollouts nobody drives, until `stop`.
    pub fn supervise(self: &Arc<Self>, stop: CancellationToken) {
        let me = self.clone();
        self.tracker.spawn(async move {
            loop {
                if let Err(e) = me.claim_unowned().await {
                    tracing::warn!(error = %e, "looking for rollouts to drive");
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = me.wake.notified() => {}
                    _ = tokio::time::sleep(CLAIM_EVERY) => {}
                }
            }
        });
    }

    async fn claim_unowned(self: &Arc<Self>) -> Result<(), StoreError> {
        if self.shutdown.is_cancelled() {
            return Ok(());
        }
        for id in self.store.active_ids().await? {
            if self.driving.lock().unwrap().contains(&id) {
                continue;
            }
            if self.store.claim(&id, &self.owner, self.lease).await? {
                tracing::info!(rollout = %id, "driving rollout");
                self.driving.lock().unwrap().insert(id.clone());
                let me = self.clone();
                self.tracker.spawn(async move {
                    if let Err(e) = me.drive(&id).await {
                        tracing::error!(rollout = %id, error = %e, "rollout driver stopped");
                    }
                    let _ = me.store.release(&id, &me.owner).await;
                    me.driving.lock().unwrap().remove(&id);
                });
            }
        }
        Ok(())
    }

    async fn save(&self, doc: &mut RolloutDoc) -> Result<bool, StoreError> {
        doc.updated_at = Utc::now();
        self.store.save_owned(doc, &self.owner).await
    }

    async fn drive(&self, id: &str) -> Result<(), StoreError> {
        let (mut doc, _) = self.store.get(id).await?;
        // Taken over, or restarted: tenants a previous owner left mid-flight run again.
        for t in &mut doc.tenants {
            if matches!(t.state, TenantState::Running | TenantState::Interrupted) {
                t.state = TenantState::Pending;
            }
        }
        let mut consecutive = 0;
        loop {
            if self.shutdown.is_cancelled() {
                self.save(&mut doc).await?;
                return Ok(());
            }
            match self.store.desired(id).await? {
                Desired::Cancelled => {
                    doc.state = RolloutState::Cancelled;
                    doc.reason = "cancelled by request".into();
                    self.save(&mut doc).await?;
                    tracing::info!(rollout = %id, "rollout cancelled");
                    return Ok(());
                }
                Desired::Paused => {
                    if doc.state != RolloutState::Paused {
                        doc.state = RolloutState::Paused;
                        if !self.save(&mut doc).await? {
                            return Ok(());
                        }
                        tracing::info!(rollout = %id, "rollout paused");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(CONTROL_EVERY) => {}
                        _ = self.shutdown.cancelled() => {}
                    }
                    continue;
                }
                Desired::Running if doc.state == RolloutState::Paused => {
                    doc.state = RolloutState::Running;
                    if !self.save(&mut doc).await? {
                        return Ok(());
                    }
                    tracing::info!(rollout = %id, "rollout resumed");
                }
                Desired::Running => {}
            }
            let Some(w) = doc.waves.iter().position(|w| w.state != WaveState::Done) else {
                doc.state = RolloutState::Done;
                self.save(&mut doc).await?;
                tracing::info!(rollout = %id, counts = ?doc.counts(), "rollout done");
                return Ok(());
            };
            let todo: Vec<String> = doc
                .tenants
                .iter()
                .filter(|t| {
                    t.wave == w as u32
                        && matches!(t.state, TenantState::Pending | TenantState::Interrupted)
                })
                .map(|t| t.id.clone())
                .collect();
            if todo.is_empty() {
                let last = w + 1 == doc.waves.len();
                let bake = Duration::from_secs(u64::from(doc.spec.waves.bake_seconds));
                if !last && !bake.is_zero() && doc.waves[w].state != WaveState::Baking {
                    doc.waves[w].state = WaveState::Baking;
                    if !self.save(&mut doc).await? {
                        return Ok(());
                    }
                    if !self.bake(id, bake).await? {
                        continue; // paused or cancelled while baking: bake again after resume
                    }
                }
                doc.waves[w].state = WaveState::Done;
                if !self.save(&mut doc).await? {
                    return Ok(());
                }
                continue;
            }
            doc.waves[w].state = WaveState::Running;
            if !self.save(&mut doc).await? {
                return Ok(());
            }
            match self.run_wave(&mut doc, w, todo, &mut consecutive).await? {
                WaveEnd::Completed | WaveEnd::Interrupted => {}
                WaveEnd::Stop => return Ok(()),
                WaveEnd::Halted(reason) => {
                    tracing::warn!(rollout = %id, %reason, "rollout halted");
                    doc.waves[w].state = WaveState::Halted;
                    doc.state = RolloutState::Halted;
                    doc.reason = reason;
                    self.save(&mut doc).await?;
                    return Ok(());
                }
            }
        }
    }

    /// Sleep `bake`, watching the control. `false`: interrupted by a pause or cancel.
    async fn bake(&self, id: &str, bake: Duration) -> Result<bool, StoreError> {
        let until = tokio::time::Instant::now() + bake;
        while tokio::time::Instant::now() < until {
            if self.store.desired(id).await? != Desired::Running || self.shutdown.is_cancelled() {
                return Ok(false);
            }
            tokio::time::sleep(CONTROL_EVERY.min(until - tokio::time::Instant::now())).await;
        }
        Ok(true)
    }

    async fn run_wave(
        &self,
        doc: &mut RolloutDoc,
        w: usize,
        todo: Vec<String>,
        consecutive: &mut u32,
    ) -> Result<WaveEnd, StoreError> {
        let caller = Caller {
            subject: format!("rollout {} started by {}", doc.id, doc.created_by),
            via: Via::OnBehalf,
            scopes: vec![],
            request_id: doc.id.clone(),
            certificate: None,
        };
        let ids = todo
            .iter()
            .filter_map(|i| TenantId::parse("tenant", i).ok())
            .collect();
        let spec = JobSpec {
            app: doc.spec.app.clone(),
            direction: doc.spec.direction,
            target: doc.spec.target.clone(),
            selector: Selector::Ids(ids),
            concurrency: doc.spec.concurrency as usize,
            dry_run: false,
            allow_changed: false,
            caller,
        };
        let mut job = match self.fleet.start(spec).await {
            Ok(job) => job,
            Err(FleetError::ShuttingDown) => return Ok(WaveEnd::Stop),
            Err(e) => return Ok(WaveEnd::Halted(format!("wave {}: {e}", w + 1))),
        };
        let job_id = match &job.accepted {
            JobEvent::Accepted { job_id, .. } => job_id.clone(),
            _ => String::new(),
        };
        let canary = doc.waves[w].name == "canary";
        let (mut halting, mut interrupted, mut lost) = (None, false, false);
        let mut dirty = false;
        let mut save_tick = tokio::time::interval(SAVE_EVERY);
        let mut control_tick = tokio::time::interval(CONTROL_EVERY);
        loop {
            tokio::select! {
                event = job.events.recv() => {
                    let Some(JobEvent::Tenant { tenant_id, event }) = event else {
                        if matches!(event, Some(JobEvent::Summary(_)) | None) { break; }
                        continue;
                    };
                    let Some(t) = doc.tenant_mut(&tenant_id) else { continue };
                    dirty |= apply(t, event, consecutive);
                    if t.state == TenantState::Failed && halting.is_none() {
                        let wave = Tally::of(doc.tenants.iter().filter(|t| t.wave == w as u32));
                        let overall = Tally::of(doc.tenants.iter());
                        if let Some(reason) = over_budget(&doc.spec.budget, canary, wave, overall, *consecutive) {
                            halting = Some(reason);
                            let _ = self.fleet.cancel(&job_id);
                        }
                    }
                }
                _ = save_tick.tick(), if dirty && !lost => {
                    dirty = false;
                    if !self.save(doc).await? {
                        lost = true;
                        let _ = self.fleet.cancel(&job_id);
                    }
                }
                _ = control_tick.tick(), if !interrupted && !lost => {
                    if self.store.desired(&doc.id).await? != Desired::Running {
                        interrupted = true;
                        let _ = self.fleet.cancel(&job_id);
                    }
                }
            }
        }
        if lost {
            tracing::warn!(rollout = %doc.id, "another replica owns this rollout now: stopped driving it");
            return Ok(WaveEnd::Stop);
        }
        if !self.save(doc).await? {
            return Ok(WaveEnd::Stop);
        }
        Ok(match halting {
            Some(reason) => WaveEnd::Halted(reason),
            None if self.shutdown.is_cancelled() => WaveEnd::Stop,
            None if interrupted => WaveEnd::Interrupted,
            None => WaveEnd::Completed,
        })
    }
}

/// One job event into the tenant's rollout state. `true`: it changed.
fn apply(t: &mut TenantDoc, event: TenantEvent, consecutive: &mut u32) -> bool {
    let now = Some(Utc::now());
    match event {
        TenantEvent::Locked { .. } => {
            t.state = TenantState::Running;
            t.started_at = now;
            t.attempts += 1;
        }
        TenantEvent::UpToDate { revisions } | TenantEvent::Done { revisions, .. } => {
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
        }
        // Not started (pause, cancel, halt, shutdown): it stays to do.
        TenantEvent::Skipped { .. } => t.state = TenantState::Pending,
        TenantEvent::Interrupted { .. } => t.state = TenantState::Interrupted,
        _ => return false,
    }
    true
}
