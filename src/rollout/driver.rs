//! Runs rollouts. Every replica supervises: it claims running or paused rollouts that no
//! replica owns (their owner key lives under the owner's etcd lease, so it vanishes when the
//! owner dies) and drives them wave by wave ([`super::wave`]); rollouts another replica owns,
//! it helps with ([`super::helper`]). Tenants that were in flight under a dead owner are run
//! again: their database's history decides what is left to apply, and the per-database lock
//! and fence keep two replicas off one database.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::store::{Claimable, Desired, RolloutStore, StoreError};
use super::wave::WaveEnd;
use super::{
    RolloutDoc, RolloutSpec, RolloutState, SelectorDoc, TenantDoc, TenantState, WaveState,
    plan_waves,
};
use crate::auth::{Caller, Via};
use crate::fleet::{Fleet, FleetError, JobSpec, Leave, Selector, TenantEvent};
use crate::registry::tenant::TenantId;

/// How often a replica looks for rollouts to drive or help with (also woken by Start): a
/// dead owner is replaced within its lease TTL plus this.
const CLAIM_EVERY: Duration = Duration::from_secs(1);

/// The lease in force of this replica (it changes after a lease is lost and taken anew).
pub type LeaseOf = Arc<dyn Fn() -> i64 + Send + Sync>;
/// How often helpers read the gate, and the owner what operators asked for (pause, cancel)
/// while helpers report (alone, it polls less often: [`super::wave`]).
pub(super) const CONTROL_EVERY: Duration = Duration::from_millis(200);

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
    pub(super) fleet: Arc<Fleet>,
    pub(super) store: RolloutStore,
    /// This replica's name in owner keys and tenant records.
    pub(super) owner: String,
    /// This replica's etcd lease: ownership and helpers' claims live under it.
    lease: LeaseOf,
    /// How long a control call waits for the owner to act on it.
    answer_within: Duration,
    driving: Mutex<HashSet<String>>,
    /// Rollouts this replica helps with now; a pass stops when this replica becomes the owner.
    helping: Mutex<HashMap<String, CancellationToken>>,
    /// The claim loop's view as an owner's poll last carried it, and when.
    claimable_seen: Mutex<Option<(tokio::time::Instant, Claimable)>>,
    listeners: Mutex<HashMap<String, Vec<mpsc::UnboundedSender<Progress>>>>,
    wake: Notify,
    /// Pause, resume or cancel reached this replica: its owner loops poll at once.
    pub(super) controlled: Notify,
    tracker: TaskTracker,
    pub(super) shutdown: CancellationToken,
}

/// What a stream on the replica that started and drives a rollout hears (Migrations/Upgrade).
#[derive(Debug, Clone)]
pub enum Progress {
    /// This replica's own events, as its jobs report them; tenants another replica ran
    /// appear with their final event only.
    Tenant {
        tenant_id: String,
        event: TenantEvent,
    },
    /// The rollout reached a final state.
    Ended(Box<RolloutDoc>),
    /// This replica stopped driving it (shutdown, or ownership lost); it goes on elsewhere.
    Left(String),
}

impl Rollouts {
    pub fn new(
        fleet: Arc<Fleet>,
        store: RolloutStore,
        owner: String,
        lease: LeaseOf,
        answer_within: Duration,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Arc<Rollouts> {
        Arc::new(Rollouts {
            fleet,
            store,
            owner,
            lease,
            answer_within,
            driving: Mutex::default(),
            helping: Mutex::default(),
            claimable_seen: Mutex::default(),
            listeners: Mutex::default(),
            wake: Notify::new(),
            controlled: Notify::new(),
            tracker,
            shutdown,
        })
    }

    /// The lease this replica's keys go under now.
    pub(super) fn lease(&self) -> i64 {
        (self.lease)()
    }

    /// Rollouts this replica drives now.
    pub fn driving(&self) -> usize {
        self.driving.lock().unwrap().len()
    }

    pub fn store(&self) -> &RolloutStore {
        &self.store
    }

    /// Plan the waves and persist the rollout (or return the one its idempotency key names),
    /// for whichever replica claims it first. `true`: created now.
    pub async fn start(
        &self,
        spec: RolloutSpec,
        caller: &Caller,
    ) -> Result<(RolloutDoc, bool), RolloutError> {
        let doc = self.plan(spec, caller).await?;
        let created = self.store.create(&doc, None).await?;
        if created.1 {
            tracing::info!(rollout = %doc.id, app = %doc.spec.app, tenants = doc.tenants.len(), waves = doc.waves.len(), "rollout started");
            self.wake.notify_one();
        }
        Ok(created)
    }

    /// Start a rollout driven by this replica from the start, and follow it here.
    pub async fn start_here(
        self: &Arc<Self>,
        spec: RolloutSpec,
        caller: &Caller,
    ) -> Result<(RolloutDoc, mpsc::UnboundedReceiver<Progress>), RolloutError> {
        let doc = self.plan(spec, caller).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        self.listeners
            .lock()
            .unwrap()
            .insert(doc.id.clone(), vec![tx]);
        self.driving.lock().unwrap().insert(doc.id.clone());
        if let Err(e) = self
            .store
            .create(&doc, Some((&self.owner, self.lease())))
            .await
        {
            self.listeners.lock().unwrap().remove(&doc.id);
            self.driving.lock().unwrap().remove(&doc.id);
            return Err(e.into());
        }
        tracing::info!(rollout = %doc.id, app = %doc.spec.app, tenants = doc.tenants.len(), "rollout started (driven here)");
        // Its jobs' spans continue the caller's trace.
        self.spawn_drive(doc.id.clone(), tracing::Span::current());
        Ok((doc, rx))
    }

    async fn plan(&self, spec: RolloutSpec, caller: &Caller) -> Result<RolloutDoc, RolloutError> {
        if self.shutdown.is_cancelled() {
            return Err(FleetError::ShuttingDown.into());
        }
        let app = self.fleet.app(&spec.app)?.clone();
        let target: crate::revision::plan::Target = spec.target.parse().expect("infallible");
        Fleet::check_target(&app, spec.direction, &target)?;
        // Before any tenant is selected: a refusal touches nothing.
        let lint = self.fleet.lint_gate(&app, spec.direction, &target)?;
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
                    replica: String::new(),
                    applied: 0,
                    lock_retries: 0,
                    blocked_by: vec![],
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
            request_id: caller.request_id.clone(),
            owner: String::new(),
            consecutive_failures: 0,
            lint,
        };
        Ok(doc)
    }

    /// Pause, resume or cancel: recorded for the owner, which follows within a moment (a dead
    /// owner is replaced first). Answers the rollout once the owner acted (a cancelled one
    /// reconciled with its databases), or as it stands after [`Rollouts::new`]'s
    /// `answer_within` if no owner acted by then.
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
        self.wake.notify_one();
        self.controlled.notify_waiters();
        let acted = |d: &RolloutDoc| {
            d.state.is_final()
                || match desired {
                    Desired::Running => d.state == RolloutState::Running,
                    Desired::Paused => d.state == RolloutState::Paused,
                    Desired::Cancelled => false,
                }
        };
        let until = tokio::time::Instant::now() + self.answer_within;
        let mut last = doc;
        while !acted(&last) && tokio::time::Instant::now() < until {
            tokio::select! {
                _ = tokio::time::sleep(CONTROL_EVERY) => {}
                _ = self.shutdown.cancelled() => break,
            }
            if let Ok((d, _)) = self.store.get(id).await {
                last = d;
            }
        }
        if !acted(&last) {
            tracing::warn!(rollout = %id, ?desired, "no owner acted on the request in time; it stays recorded and the next owner follows it");
        }
        Ok(last)
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
            let mut woken = true;
            loop {
                if let Err(e) = me.claim_unowned(woken).await {
                    tracing::warn!(error = %e, "looking for rollouts to drive");
                }
                woken = tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = me.wake.notified() => true,
                    _ = tokio::time::sleep(CLAIM_EVERY) => false,
                };
            }
        });
    }

    /// An owner's poll carried the claim loop's view: the next look may do without a read.
    pub(super) fn saw_claimable(&self, claimable: Claimable) {
        *self.claimable_seen.lock().unwrap() = Some((tokio::time::Instant::now(), claimable));
    }

    /// The claim loop's view carried by an owner's poll since the last look (none once it is
    /// older than a claim period).
    fn fresh_claimable(&self) -> Option<Claimable> {
        let seen = self.claimable_seen.lock().unwrap().take()?;
        (seen.0.elapsed() < CLAIM_EVERY).then_some(seen.1)
    }

    /// Whether a look at `view` would claim, drive again or help with any rollout.
    fn anything_to_do(&self, view: &Claimable) -> bool {
        let driving = self.driving.lock().unwrap().clone();
        let helping: HashSet<String> = self.helping.lock().unwrap().keys().cloned().collect();
        anything_to_do(view, &self.owner, &driving, &helping)
    }

    /// `woken`: a rollout was started or controlled through this replica, so read now.
    /// Otherwise, while this replica drives a rollout, its poll carries the same two ranges
    /// (at most a claim period old): when they show nothing to do, no read of its own; when
    /// they do, it reads afresh before it acts.
    async fn claim_unowned(self: &Arc<Self>, woken: bool) -> Result<(), StoreError> {
        if self.shutdown.is_cancelled() {
            return Ok(());
        }
        let carried = if woken { None } else { self.fresh_claimable() };
        if carried.is_some_and(|view| !self.anything_to_do(&view)) {
            return Ok(());
        }
        // The active rollouts and every owner in one request, not one per rollout.
        let Claimable { active, owners } = self.store.active_and_owners().await?;
        for id in active {
            if self.driving.lock().unwrap().contains(&id) {
                continue;
            }
            let owner = owners.get(&id);
            // Ours while not driven here: our driver stopped on an etcd error.
            let ours_again = owner == Some(&self.owner);
            // Also while our own helper pass runs on it: a dead owner is replaced within a
            // lease TTL and a claim period, whatever this replica is doing. The pass stops
            // taking tenants; those it runs report like any helper's and are folded in.
            if ours_again
                || (owner.is_none() && self.store.claim(&id, &self.owner, self.lease()).await?)
            {
                if let Some(pass) = self.helping.lock().unwrap().get(&id) {
                    pass.cancel();
                }
                tracing::info!(rollout = %id, again = ours_again, "driving rollout");
                self.driving.lock().unwrap().insert(id.clone());
                let span = tracing::info_span!("rollout", fleetmig.rollout.id = %id);
                self.spawn_drive(id, span);
                continue;
            }
            let pass = CancellationToken::new();
            let new = {
                let mut helping = self.helping.lock().unwrap();
                !helping.contains_key(&id) && helping.insert(id.clone(), pass.clone()).is_none()
            };
            if new {
                let me = self.clone();
                self.tracker.spawn(async move {
                    if let Err(e) = me.help(&id, pass).await {
                        tracing::warn!(rollout = %id, error = %e, "helping with a rollout");
                    }
                    me.helping.lock().unwrap().remove(&id);
                });
            }
        }
        Ok(())
    }

    fn spawn_drive(self: &Arc<Self>, id: String, span: tracing::Span) {
        use tracing::Instrument;
        let me = self.clone();
        let drive = async move {
            // An etcd error stops one drive; while we still own the rollout, drive it again
            // (local streams stay attached). So after our lease was lost: the ownership went
            // with it, and if nobody took the rollout meanwhile we take it again under the
            // new lease.
            loop {
                let over = match me.drive(&id).await {
                    Ok(over) => over,
                    Err(e) => {
                        tracing::error!(rollout = %id, error = %e, "rollout driver stopped; retrying in a second");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = me.shutdown.cancelled() => break,
                        }
                        false
                    }
                };
                if over || me.shutdown.is_cancelled() {
                    break;
                }
                match me.store.owner(&id).await {
                    Ok(Some(o)) if o == me.owner => {}
                    Ok(None) => match me.store.claim(&id, &me.owner, me.lease()).await {
                        Ok(true) => {
                            tracing::info!(rollout = %id, "driving the rollout again under this replica's new lease")
                        }
                        Ok(false) => break,
                        Err(_) => {} // etcd still away
                    },
                    Ok(Some(_)) => break,
                    Err(_) => {} // etcd still away: our lease decides
                }
            }
            let _ = me.store.release(&id, &me.owner).await;
            me.driving.lock().unwrap().remove(&id);
            let listeners = me.listeners.lock().unwrap().remove(&id).unwrap_or_default();
            if !listeners.is_empty() {
                let end = match me.store.get(&id).await {
                    Ok((doc, _)) if doc.state.is_final() => Progress::Ended(Box::new(doc)),
                    Ok(_) if me.shutdown.is_cancelled() => {
                        Progress::Left("this replica is shutting down".into())
                    }
                    Ok(_) => Progress::Left("another replica drives it now".into()),
                    Err(e) => Progress::Left(e.to_string()),
                };
                for l in listeners {
                    let _ = l.send(end.clone());
                }
            }
        };
        self.tracker.spawn(drive.instrument(span));
    }

    /// Tell local streams following rollout `id`.
    pub(super) fn tell(&self, id: &str, tenant_id: &str, event: &TenantEvent) {
        if let Some(ls) = self.listeners.lock().unwrap().get(id) {
            for l in ls {
                let _ = l.send(Progress::Tenant {
                    tenant_id: tenant_id.to_string(),
                    event: event.clone(),
                });
            }
        }
    }

    /// A job over some of a wave's tenants, as the owner and helpers run them: a tenant whose
    /// lock is held elsewhere is skipped (tried again later), and one in `leave` is left alone.
    pub(super) fn wave_job<'a>(
        doc: &RolloutDoc,
        tenant_ids: impl Iterator<Item = &'a str>,
        leave: Arc<Mutex<HashSet<String>>>,
    ) -> JobSpec {
        JobSpec {
            app: doc.spec.app.clone(),
            direction: doc.spec.direction,
            target: doc.spec.target.clone(),
            selector: Selector::Ids(
                tenant_ids
                    .filter_map(|i| TenantId::parse("tenant", i).ok())
                    .collect(),
            ),
            concurrency: doc.spec.concurrency as usize,
            dry_run: false,
            allow_changed: doc.spec.allow_changed,
            skip_locked: true,
            leave: Some(Leave(Arc::new(move |id| {
                leave.lock().unwrap().contains(id)
            }))),
            caller: Self::caller_for(doc),
            blockers: doc.spec.blockers.clone(),
        }
    }

    /// Revisions a rollout applies are audited as done on behalf of whoever started it.
    pub(super) fn caller_for(doc: &RolloutDoc) -> Caller {
        Caller {
            subject: format!("rollout {} started by {}", doc.id, doc.created_by),
            via: Via::OnBehalf,
            scopes: vec![],
            request_id: if doc.request_id.is_empty() {
                doc.id.clone()
            } else {
                doc.request_id.clone()
            },
            certificate: None,
        }
    }

    pub(super) async fn save(&self, doc: &mut RolloutDoc) -> Result<bool, StoreError> {
        self.stamp(doc);
        self.store.save_owned(doc, &self.owner).await
    }

    /// A document about to be saved: when, and by which owner (none once it is over).
    pub(super) fn stamp(&self, doc: &mut RolloutDoc) {
        doc.updated_at = Utc::now();
        doc.owner = if doc.state.is_final() {
            String::new()
        } else {
            self.owner.clone()
        };
    }

    /// End the rollout in `state`: helpers' results folded in and every tenant it touched
    /// reconciled with its database first ([`super::reconcile`]). `false`: ownership lost.
    async fn finish(
        &self,
        doc: &mut RolloutDoc,
        state: RolloutState,
        reason: &str,
        consecutive: u32,
    ) -> Result<bool, StoreError> {
        self.reconcile(doc).await?;
        doc.state = state;
        doc.reason = reason.to_string();
        doc.consecutive_failures = consecutive;
        self.save(doc).await
    }

    /// Drive the rollout until it is over (`Ok(true)`), or this replica stops driving it
    /// (`Ok(false)`: shutdown, or the ownership was lost).
    async fn drive(&self, id: &str) -> Result<bool, StoreError> {
        let (mut doc, _) = self.store.get(id).await?;
        // Taken over, or restarted: tenants a previous owner left mid-flight run again.
        for t in &mut doc.tenants {
            if matches!(t.state, TenantState::Running | TenantState::Interrupted) {
                t.state = TenantState::Pending;
            }
        }
        // The failure budget goes on counting across a takeover.
        let mut consecutive = doc.consecutive_failures;
        loop {
            if self.shutdown.is_cancelled() {
                self.save(&mut doc).await?;
                return Ok(false);
            }
            match self.store.desired(id).await? {
                Desired::Cancelled => {
                    let saved = self
                        .finish(
                            &mut doc,
                            RolloutState::Cancelled,
                            "cancelled by request",
                            consecutive,
                        )
                        .await?;
                    tracing::info!(rollout = %id, counts = ?doc.counts(), "rollout cancelled");
                    return Ok(saved);
                }
                Desired::Paused => {
                    if doc.state != RolloutState::Paused {
                        doc.state = RolloutState::Paused;
                        if !self.save(&mut doc).await? {
                            return Ok(false);
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
                        return Ok(false);
                    }
                    tracing::info!(rollout = %id, "rollout resumed");
                }
                Desired::Running => {}
            }
            let Some(w) = doc.waves.iter().position(|w| w.state != WaveState::Done) else {
                let saved = self
                    .finish(&mut doc, RolloutState::Done, "", consecutive)
                    .await?;
                tracing::info!(rollout = %id, counts = ?doc.counts(), "rollout done");
                return Ok(saved);
            };
            if doc.waves[w].state != WaveState::Baking {
                doc.waves[w].state = WaveState::Running;
                doc.consecutive_failures = consecutive;
                if !self.save(&mut doc).await? {
                    return Ok(false);
                }
                match self.run_wave(&mut doc, w, &mut consecutive).await? {
                    WaveEnd::Completed => {}
                    WaveEnd::Interrupted => continue,
                    WaveEnd::Stop => return Ok(false),
                    WaveEnd::Halted(reason) => {
                        tracing::warn!(rollout = %id, %reason, "rollout halted");
                        doc.waves[w].state = WaveState::Halted;
                        return self
                            .finish(&mut doc, RolloutState::Halted, &reason, consecutive)
                            .await;
                    }
                }
            }
            let last = w + 1 == doc.waves.len();
            let bake = Duration::from_secs(u64::from(doc.spec.waves.bake_seconds));
            if !last && !bake.is_zero() {
                if doc.waves[w].state != WaveState::Baking {
                    doc.waves[w].state = WaveState::Baking;
                    if !self.save(&mut doc).await? {
                        return Ok(false);
                    }
                }
                if !self.bake(id, bake).await? {
                    continue; // paused or cancelled while baking: bake again after resume
                }
            }
            doc.waves[w].state = WaveState::Done;
            doc.consecutive_failures = consecutive;
            if !self.save(&mut doc).await? {
                return Ok(false);
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
}

/// Whether the claim loop, looking at `view`, would act: an active rollout not driven here
/// that nobody owns (claim it), that is ours (drive it again), or that another replica owns
/// and no helper pass of ours runs on (help).
pub(super) fn anything_to_do(
    view: &Claimable,
    me: &str,
    driving: &HashSet<String>,
    helping: &HashSet<String>,
) -> bool {
    view.active
        .iter()
        .filter(|id| !driving.contains(*id))
        .any(|id| match view.owners.get(id) {
            Some(owner) if owner != me => !helping.contains(id),
            _ => true,
        })
}
