//! Jobs over many tenants: selection, concurrency limits (global, per job; per host through
//! the connection budget), the per-tenant pipeline (lock, fence, migrate, release) and
//! progress events. Also the fleet's read paths (current, history, plan) and stamp.
//! Knows nothing of gRPC.

pub mod events;
mod execution;
mod onboard;
mod queries;
mod run_audit;
mod standing;
mod tenant_run;
mod verify;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use events::{JobEvent, Outcome, Summary, TenantEvent};
pub use onboard::{OnboardEvent, OnboardSpec};
pub use queries::{CurrentReport, HistoryEntry, TenantPlan, TenantVersion};
pub use standing::Standing;
pub use verify::{DriftReport, TenantDrift};

use crate::engine::{EngineError, Settings};
use crate::lock::{DistributedLock, LockError};
use crate::model::Direction;
use crate::registry::{PoolError, Pools, Registry, RegistryError, Tenant, TenantId};
use crate::revision::App;
use crate::revision::placeholder::PlaceholderError;
use crate::revision::plan::{PlanError, Target};

#[derive(Debug, Clone)]
pub struct FleetLimits {
    /// Tenants migrated at once across all jobs of this daemon.
    pub global_concurrency: usize,
    /// A job's concurrency when the request gives none.
    pub default_job_concurrency: usize,
    /// The most a request may ask for.
    pub max_job_concurrency: usize,
    /// How long a tenant waits for its database lock before it is reported failed.
    pub lock_wait: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("app: unknown app '{app}' (this daemon serves: {})", available.join(", "))]
    UnknownApp { app: String, available: Vec<String> },
    #[error("target: {0}")]
    Target(PlanError),
    /// A Stamp's revision this app does not have.
    #[error("revision: {0}")]
    StampRevision(PlanError),
    #[error("selector: {0}")]
    Selector(String),
    #[error("tenant {tenant} belongs to app '{actual}', not '{requested}'")]
    WrongApp {
        tenant: TenantId,
        actual: String,
        requested: String,
    },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("job {0} is not known to this daemon")]
    UnknownJob(String),
    #[error("the daemon is shutting down and accepts no new jobs")]
    ShuttingDown,
    #[error("tenant {tenant}: {source}")]
    Placeholders {
        tenant: TenantId,
        source: PlaceholderError,
    },
    #[error("tenant {tenant}: {source}")]
    Engine {
        tenant: TenantId,
        source: Box<EngineError>,
    },
    #[error("tenant {tenant}: {source}")]
    Connect { tenant: TenantId, source: PoolError },
    #[error("tenant {tenant}: {source}")]
    Lock { tenant: TenantId, source: LockError },
    /// The lint gate refused the run.
    #[error(transparent)]
    Lint(#[from] crate::lint::LintError),
}

/// Which tenants of an app a request acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Ids(Vec<TenantId>),
    Labels(BTreeMap<String, String>),
    All,
}

#[derive(Debug, Clone)]
pub struct JobSpec {
    pub app: String,
    pub direction: Direction,
    pub target: String,
    pub selector: Selector,
    /// 0: the daemon's default.
    pub concurrency: usize,
    pub dry_run: bool,
    pub allow_changed: bool,
    /// A tenant whose database lock is held elsewhere is skipped at once instead of waited
    /// for (replicas sharing a rollout claim tenants this way).
    pub skip_locked: bool,
    /// Asked before each tenant starts: `true` leaves it alone (another replica has it).
    pub leave: Option<Leave>,
    /// Who asked: audit records of applied revisions name them.
    pub caller: crate::auth::Caller,
    /// What to do to sessions blocking a revision; `None`: the app's `[blockers]`.
    pub blockers: Option<crate::model::BlockerPolicy>,
}

/// A predicate over tenant ids; see [`JobSpec::leave`].
#[derive(Clone)]
pub struct Leave(pub Arc<dyn Fn(&str) -> bool + Send + Sync>);

impl std::fmt::Debug for Leave {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Leave(..)")
    }
}

struct JobControl {
    cancel: CancellationToken,
    finished: AtomicBool,
    finished_at: Mutex<Option<Instant>>,
}

/// Finished jobs are remembered this long (so Cancel can say "already finished").
const FINISHED_JOB_MEMORY: Duration = Duration::from_secs(600);

pub struct Fleet {
    apps: BTreeMap<String, Arc<App>>,
    /// Each app's lint verdicts, computed when it was loaded.
    lints: BTreeMap<String, Arc<crate::lint::AppLint>>,
    registry: Registry,
    locks: Arc<dyn DistributedLock>,
    pools: Arc<Pools>,
    settings: Settings,
    limits: FleetLimits,
    global: Arc<Semaphore>,
    jobs: Mutex<HashMap<String, Arc<JobControl>>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    /// Recorded in history rows: which daemon applied.
    owner: String,
    /// Expected schema fingerprints by (app, version rows, placeholder values).
    expected: Mutex<HashMap<String, crate::engine::fingerprint::Fingerprint>>,
    audit: crate::audit::AuditLog,
}

/// A started job: its first event, and the rest as they happen.
pub struct JobStream {
    pub accepted: JobEvent,
    pub events: mpsc::UnboundedReceiver<JobEvent>,
}

impl Fleet {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        apps: BTreeMap<String, Arc<App>>,
        lints: BTreeMap<String, Arc<crate::lint::AppLint>>,
        registry: Registry,
        locks: Arc<dyn DistributedLock>,
        pools: Arc<Pools>,
        settings: Settings,
        limits: FleetLimits,
        tracker: TaskTracker,
        shutdown: CancellationToken,
        owner: String,
        audit: crate::audit::AuditLog,
    ) -> Fleet {
        let global = Arc::new(Semaphore::new(limits.global_concurrency));
        Fleet {
            apps,
            lints,
            registry,
            locks,
            pools,
            settings,
            limits,
            global,
            jobs: Mutex::default(),
            tracker,
            shutdown,
            owner,
            expected: Mutex::default(),
            audit,
        }
    }

    pub fn audit(&self) -> &crate::audit::AuditLog {
        &self.audit
    }

    /// Whether the daemon's connection policy accepts this connection (see
    /// [`Pools::check_policy`]).
    pub fn check_connection_policy(
        &self,
        c: &crate::registry::ConnectionSpec,
    ) -> Result<(), String> {
        self.pools.check_policy(c)
    }

    /// The engine settings for one tenant's connection: its schema, its pooler.
    pub fn settings_for(&self, c: &crate::registry::ConnectionSpec) -> Settings {
        self.settings
            .for_schema(c.schema.as_deref())
            .for_pooler(c.options.pooler)
    }

    pub fn limits(&self) -> &FleetLimits {
        &self.limits
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn app(&self, name: &str) -> Result<&Arc<App>, FleetError> {
        self.apps.get(name).ok_or_else(|| FleetError::UnknownApp {
            app: name.to_string(),
            available: self.apps.keys().cloned().collect(),
        })
    }

    pub fn apps(&self) -> impl Iterator<Item = &Arc<App>> {
        self.apps.values()
    }

    /// The lint gate: each revision a run of `app` to `target` may apply, with its verdict,
    /// or the refusal naming every error-level finding no revision's header ignores.
    pub fn lint_gate(
        &self,
        app: &App,
        direction: Direction,
        target: &Target,
    ) -> Result<Vec<crate::lint::RevisionVerdict>, FleetError> {
        let Some(lint) = self.lints.get(&app.name) else {
            return Ok(vec![]);
        };
        Ok(crate::lint::gate::check(
            lint, &app.graph, direction, target,
        )?)
    }

    /// Reject a target the graph cannot resolve before any tenant is touched.
    pub(crate) fn check_target(
        app: &App,
        direction: Direction,
        target: &Target,
    ) -> Result<(), FleetError> {
        crate::revision::plan::check_target(&app.graph, direction, target)
            .map_err(FleetError::Target)
    }

    /// The tenants a selector names, all of `app`, in id order.
    pub async fn select(&self, app: &str, selector: &Selector) -> Result<Vec<Tenant>, FleetError> {
        self.app(app)?;
        match selector {
            Selector::All => Ok(self.registry.select(app, &BTreeMap::new()).await?),
            Selector::Labels(labels) => Ok(self.registry.select(app, labels).await?),
            Selector::Ids(ids) => {
                let mut seen = std::collections::BTreeSet::new();
                let unique: Vec<TenantId> =
                    ids.iter().filter(|id| seen.insert(*id)).cloned().collect();
                let tenants = self.registry.get_many(&unique).await?;
                if let Some(t) = tenants.iter().find(|t| t.app != app) {
                    return Err(FleetError::WrongApp {
                        tenant: t.id.clone(),
                        actual: t.app.clone(),
                        requested: app.to_string(),
                    });
                }
                Ok(tenants)
            }
        }
    }

    /// Start a job; it runs to its end even if nobody reads its events.
    pub async fn start(self: &Arc<Self>, spec: JobSpec) -> Result<JobStream, FleetError> {
        if self.shutdown.is_cancelled() {
            return Err(FleetError::ShuttingDown);
        }
        let app = self.app(&spec.app)?.clone();
        let target: Target = spec.target.parse().expect("infallible");
        Self::check_target(&app, spec.direction, &target)?;
        let tenants = self.select(&spec.app, &spec.selector).await?;
        let job_id = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
        let accepted = JobEvent::Accepted {
            job_id: job_id.clone(),
            app: spec.app.clone(),
            target: target.to_string(),
            direction: spec.direction,
            tenant_ids: tenants.iter().map(|t| t.id.to_string()).collect(),
            dry_run: spec.dry_run,
        };
        let control = Arc::new(JobControl {
            cancel: self.shutdown.child_token(),
            finished: AtomicBool::new(false),
            finished_at: Mutex::new(None),
        });
        {
            let mut jobs = self.jobs.lock().unwrap();
            jobs.retain(|_, j| {
                j.finished_at
                    .lock()
                    .unwrap()
                    .is_none_or(|at| at.elapsed() < FINISHED_JOB_MEMORY)
            });
            jobs.insert(job_id.clone(), control.clone());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let fleet = self.clone();
        tracing::info!(job = %job_id, app = %spec.app, target = %target, direction = %spec.direction, tenants = tenants.len(), dry_run = spec.dry_run, "job accepted");
        // One trace per job, continuing the caller's (the RPC span is its parent): the job's
        // tenants, locks, revisions and statements hang below it.
        let job_span = tracing::info_span!(
            "job",
            otel.name = %format!("{} {} to {}", spec.direction, spec.app, target),
            fleetmig.job.id = %job_id,
            fleetmig.app = %spec.app,
            fleetmig.target = %target,
            fleetmig.direction = %spec.direction,
            fleetmig.tenants = tenants.len(),
            fleetmig.dry_run = spec.dry_run,
            fleetmig.job.done = tracing::field::Empty,
            fleetmig.job.failed = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        self.tracker.spawn(
            async move {
                fleet
                    .run_job(job_id, spec, target, app, tenants, control, tx)
                    .await
            }
            .instrument(job_span),
        );
        Ok(JobStream {
            accepted,
            events: rx,
        })
    }

    /// Jobs still running.
    pub fn running_jobs(&self) -> usize {
        self.jobs
            .lock()
            .unwrap()
            .values()
            .filter(|j| !j.finished.load(Ordering::SeqCst))
            .count()
    }

    /// Stop a job after the revisions in flight. `Ok(false)`: it had already finished.
    pub fn cancel(&self, job_id: &str) -> Result<bool, FleetError> {
        let jobs = self.jobs.lock().unwrap();
        let job = jobs
            .get(job_id)
            .ok_or_else(|| FleetError::UnknownJob(job_id.to_string()))?;
        if job.finished.load(Ordering::SeqCst) {
            return Ok(false);
        }
        tracing::info!(job = %job_id, "job cancelled by request");
        job.cancel.cancel();
        Ok(true)
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_job(
        self: Arc<Self>,
        job_id: String,
        spec: JobSpec,
        target: Target,
        app: Arc<App>,
        tenants: Vec<Tenant>,
        control: Arc<JobControl>,
        tx: mpsc::UnboundedSender<JobEvent>,
    ) {
        let started = Instant::now();
        crate::metrics::metrics().jobs_running.add(1, &[]);
        let emit = |tenant_id: &TenantId, event: TenantEvent| {
            let _ = tx.send(JobEvent::Tenant {
                tenant_id: tenant_id.to_string(),
                event,
            });
        };
        let concurrency = if spec.concurrency == 0 {
            self.limits.default_job_concurrency
        } else {
            spec.concurrency.min(self.limits.max_job_concurrency)
        }
        .max(1);
        let job_slots = Arc::new(Semaphore::new(concurrency));
        let mut summary = Summary {
            job_id: job_id.clone(),
            tenants: tenants.len() as u32,
            ..Summary::default()
        };
        for t in &tenants {
            emit(&t.id, TenantEvent::Queued);
        }
        let mut running = tokio::task::JoinSet::new();
        let mut pending = tenants.into_iter();
        for tenant in pending.by_ref() {
            let slots = tokio::select! {
                biased;
                _ = control.cancel.cancelled() => None,
                permits = async {
                    let job = job_slots.clone().acquire_owned().await.expect("never closed");
                    let global = self.global.clone().acquire_owned().await.expect("never closed");
                    (job, global)
                } => Some(permits),
            };
            let Some(permits) = slots else {
                summary.count(Outcome::Skipped);
                emit(
                    &tenant.id,
                    TenantEvent::Skipped {
                        reason: skipped_reason(&self.shutdown),
                    },
                );
                break;
            };
            if let Some(leave) = &spec.leave
                && (leave.0)(tenant.id.as_str())
            {
                summary.count(Outcome::Skipped);
                emit(
                    &tenant.id,
                    TenantEvent::Busy {
                        holder: "another replica sharing the rollout".into(),
                    },
                );
                continue;
            }
            let run = tenant_run::TenantRun {
                fleet: self.clone(),
                app: app.clone(),
                spec: spec.clone(),
                target: target.clone(),
                cancel: control.cancel.clone(),
                tx: tx.clone(),
            };
            // Spawned tasks do not inherit the current span: hand the job's span over.
            running.spawn(
                async move {
                    let outcome = run.run(tenant).await;
                    drop(permits);
                    outcome
                }
                .instrument(tracing::Span::current()),
            );
            // Reap finished tenants as we go, so counts stay current.
            while let Some(done) = running.try_join_next() {
                summary.count(done.unwrap_or(Outcome::Failed));
            }
        }
        for tenant in pending {
            summary.count(Outcome::Skipped);
            emit(
                &tenant.id,
                TenantEvent::Skipped {
                    reason: skipped_reason(&self.shutdown),
                },
            );
        }
        while let Some(done) = running.join_next().await {
            summary.count(done.unwrap_or_else(|e| {
                tracing::error!(error = %e, "a tenant task panicked");
                Outcome::Failed
            }));
        }
        summary.wall_time = started.elapsed();
        crate::metrics::metrics().jobs_running.add(-1, &[]);
        let span = tracing::Span::current();
        span.record("fleetmig.job.done", summary.done + summary.up_to_date);
        span.record("fleetmig.job.failed", summary.failed + summary.interrupted);
        if summary.failed + summary.interrupted > 0 {
            span.record("otel.status_code", "error");
        }
        summary.cancelled = control.cancel.is_cancelled();
        tracing::info!(job = %job_id, done = summary.done, up_to_date = summary.up_to_date, failed = summary.failed, skipped = summary.skipped, interrupted = summary.interrupted, wall_ms = summary.wall_time.as_millis() as u64, "job finished");
        control.finished.store(true, Ordering::SeqCst);
        *control.finished_at.lock().unwrap() = Some(Instant::now());
        let _ = tx.send(JobEvent::Summary(summary));
    }
}

fn skipped_reason(shutdown: &CancellationToken) -> String {
    if shutdown.is_cancelled() {
        "the daemon is shutting down".into()
    } else {
        "job cancelled".into()
    }
}
