//! One tenant of a job: resolve its placeholders, take its database lock, connect, migrate
//! with every write fenced, release. If the lock is lost midway, the in-flight statement is
//! cancelled, the connection is thrown away, and the tenant is reported interrupted.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::events::{Failure, JobEvent, Outcome, TenantEvent};
use super::execution::{Ended, Execution};
use super::run_audit::RunAudit;
use super::{Fleet, JobSpec};
use crate::engine::{self, Engine, EngineError, Event, RunOptions};
use crate::registry::Tenant;
use crate::revision::plan::Target;
use crate::revision::{App, Resolved};

/// The daemon's second connection for asking who blocks a revision: one from the tenant's
/// pool (the migration holds another; the pool allows `pools.per_database_connections`).
struct PoolProbe {
    pools: Arc<crate::registry::Pools>,
    spec: crate::registry::ConnectionSpec,
}

impl engine::blockers::ProbeClient for crate::registry::pools::PooledClient {
    fn client(&self) -> &tokio_postgres::Client {
        self
    }
}

impl engine::blockers::Probe for PoolProbe {
    fn connect(
        &self,
    ) -> futures::future::BoxFuture<'_, Result<Box<dyn engine::blockers::ProbeClient>, String>>
    {
        Box::pin(async move {
            self.pools
                .get(&self.spec)
                .await
                .map(|c| Box::new(c) as Box<dyn engine::blockers::ProbeClient>)
                .map_err(|e| e.to_string())
        })
    }
}

pub(super) struct TenantRun {
    pub fleet: Arc<Fleet>,
    pub app: Arc<App>,
    pub spec: JobSpec,
    pub target: Target,
    pub cancel: CancellationToken,
    pub tx: mpsc::UnboundedSender<JobEvent>,
}

/// A tenant's placeholder values: the app's defaults < the tenant's registry values. The
/// daemon's own environment never leaks into a tenant's schema.
pub fn tenant_values(
    app: &App,
    tenant: &Tenant,
) -> Result<Resolved, crate::revision::placeholder::PlaceholderError> {
    app.declarations.resolve(&|_| None, &tenant.placeholders)
}

fn ids(revs: impl IntoIterator<Item = impl ToString>) -> Vec<String> {
    revs.into_iter().map(|r| r.to_string()).collect()
}

impl TenantRun {
    fn emit(&self, tenant: &Tenant, event: TenantEvent) {
        let _ = self.tx.send(JobEvent::Tenant {
            tenant_id: tenant.id.to_string(),
            event,
        });
    }

    /// The audit record of a tenant that failed before its first revision started (no
    /// revision record says why it stopped): who asked, the fence token if it was locked,
    /// the reason.
    fn audit_early_failure(&self, tenant: &Tenant, fence_token: Option<i64>, reason: &str) {
        let mut record = crate::audit::AuditRecord::new(
            &self.spec.caller,
            format!("{} tenant", self.spec.direction.as_str()),
            format!("failed before any revision: {reason}"),
        )
        .tenant(tenant.id.to_string());
        record.fence_token = fence_token;
        self.fleet.audit().record(record);
    }

    fn fail(&self, tenant: &Tenant, failure: Failure) -> Outcome {
        let span = tracing::Span::current();
        span.record("otel.status_message", failure.message.as_str());
        if !failure.sqlstate.is_empty() {
            span.record("db.response.status_code", failure.sqlstate.as_str());
        }
        tracing::warn!(tenant = %tenant.id, revision = %failure.revision, sqlstate = %failure.sqlstate, error = %failure.message, "tenant failed");
        self.emit(tenant, TenantEvent::Failed(failure));
        Outcome::Failed
    }

    /// The run's audit record ([`RunAudit`]), under the lock's fence token.
    fn run_audit(&self, tenant: &Tenant, fence_token: i64) -> Arc<RunAudit> {
        Arc::new(RunAudit::new(
            self.fleet.audit().clone(),
            &self.spec.caller,
            self.app.clone(),
            self.spec.direction,
            &tenant.id.to_string(),
            fence_token,
        ))
    }

    pub async fn run(self, tenant: Tenant) -> Outcome {
        let c = &tenant.connection;
        let span = tracing::info_span!(
            "tenant",
            otel.name = %format!("tenant {}", tenant.id),
            fleetmig.tenant.id = %tenant.id,
            fleetmig.app = %tenant.app,
            server.address = %c.host,
            server.port = c.port,
            db.namespace = %c.dbname,
            fleetmig.revision.from = tracing::field::Empty,
            fleetmig.revision.to = tracing::field::Empty,
            fleetmig.outcome = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            otel.status_message = tracing::field::Empty,
            db.response.status_code = tracing::field::Empty,
        );
        let m = crate::metrics::metrics();
        m.tenants_in_flight.add(1, &[]);
        let app = tenant.app.clone();
        let outcome = self.run_in_span(tenant).instrument(span.clone()).await;
        m.tenants_in_flight.add(-1, &[]);
        let name = match outcome {
            Outcome::Done => "done",
            Outcome::UpToDate => "up_to_date",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
            Outcome::Interrupted => "interrupted",
            Outcome::Planned => "planned",
        };
        span.record("fleetmig.outcome", name);
        if matches!(outcome, Outcome::Failed | Outcome::Interrupted) {
            span.record("otel.status_code", "error");
        }
        m.tenants.add(
            1,
            &crate::metrics::attrs(&[("app", &app), ("outcome", name)]),
        );
        outcome
    }

    async fn run_in_span(self, tenant: Tenant) -> Outcome {
        if self.cancel.is_cancelled() {
            self.emit(
                &tenant,
                TenantEvent::Skipped {
                    reason: super::skipped_reason(&self.fleet.shutdown),
                },
            );
            return Outcome::Skipped;
        }
        let values = match tenant_values(&self.app, &tenant) {
            Ok(v) => v,
            Err(e) => {
                self.audit_early_failure(&tenant, None, &format!("placeholders: {e}"));
                return self.fail(
                    &tenant,
                    Failure {
                        message: format!("placeholders: {e}"),
                        ..Failure::default()
                    },
                );
            }
        };
        let settings = self.fleet.settings_for(&tenant.connection);
        if self.spec.dry_run {
            return self.dry_run(&tenant, &values, &settings).await;
        }
        let key = tenant.connection.database_key();
        self.emit(
            &tenant,
            TenantEvent::WaitingForLock {
                database_key: key.to_string(),
            },
        );
        let waiting = Instant::now();
        let lock_span = tracing::info_span!(
            "lock",
            otel.name = %format!("lock {key}"),
            fleetmig.database_key = %key,
            fleetmig.lock.wait_ms = tracing::field::Empty,
            fleetmig.fence_token = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        // A try-lock answers at once, so start connecting meanwhile: one round trip fewer per
        // tenant, and nothing is written before the lock is held. A waiting lock may take long:
        // then no connection is taken while it waits.
        let locking = if self.spec.skip_locked {
            self.fleet.locks.try_lock(&key)
        } else {
            self.fleet.locks.lock(&key, self.fleet.limits.lock_wait)
        };
        let locking = locking.instrument(lock_span.clone());
        let connecting = self.fleet.pools.get(&tenant.connection);
        tokio::pin!(locking, connecting);
        let mut early_conn = None;
        let guard = loop {
            tokio::select! {
                g = &mut locking => break g,
                c = &mut connecting, if self.spec.skip_locked && early_conn.is_none() => early_conn = Some(c),
                _ = self.cancel.cancelled() => {
                    self.emit(&tenant, TenantEvent::Skipped { reason: super::skipped_reason(&self.fleet.shutdown) });
                    return Outcome::Skipped;
                }
            }
        };
        let waited = waiting.elapsed();
        lock_span.record("fleetmig.lock.wait_ms", waited.as_millis() as u64);
        crate::metrics::metrics().lock_wait.record(
            waited.as_secs_f64(),
            &crate::metrics::attrs(&[("app", &tenant.app)]),
        );
        match &guard {
            Ok(g) => {
                lock_span.record("fleetmig.fence_token", g.token().0);
            }
            Err(e) => {
                lock_span.record("otel.status_code", "error");
                let _enter = lock_span.enter();
                tracing::warn!(error = %e, "lock not acquired");
            }
        }
        drop(lock_span);
        let guard = match guard {
            Ok(g) => g,
            Err(crate::lock::LockError::Busy { holder, .. }) => {
                self.emit(&tenant, TenantEvent::Busy { holder });
                return Outcome::Skipped;
            }
            // etcd's failure, not the tenant's: nothing ran; a later pass (or retry) takes it.
            Err(
                e @ (crate::lock::LockError::SessionLost | crate::lock::LockError::Unavailable(_)),
            ) => {
                self.emit(
                    &tenant,
                    TenantEvent::Interrupted {
                        reason: e.to_string(),
                        applied: vec![],
                    },
                );
                return Outcome::Interrupted;
            }
            Err(e) => {
                self.audit_early_failure(&tenant, None, &e.to_string());
                return self.fail(
                    &tenant,
                    Failure {
                        message: e.to_string(),
                        ..Failure::default()
                    },
                );
            }
        };
        self.emit(
            &tenant,
            TenantEvent::Locked {
                fence_token: guard.token().0,
                wait: waiting.elapsed(),
            },
        );
        let connected = match early_conn {
            Some(c) => c,
            None => connecting.await,
        };
        let conn = match connected {
            Ok(c) => Ok(c),
            // A server restarting or failing over: connect again under the lock, as after a
            // connection lost mid-run.
            Err(crate::registry::pools::PoolError::Connect { source, .. })
                if source.transient() =>
            {
                tracing::warn!(tenant = %tenant.id, error = %source, "first connection failed as a restarting server fails; retrying");
                Err(source.to_string())
            }
            Err(e) => {
                self.audit_early_failure(&tenant, Some(guard.token().0), &e.to_string());
                guard.release().await;
                return self.fail(
                    &tenant,
                    Failure {
                        sqlstate: e.sqlstate().unwrap_or_default().to_string(),
                        message: e.to_string(),
                        ..Failure::default()
                    },
                );
            }
        };
        let started = Instant::now();
        let tx = self.tx.clone();
        let app_name = self.app.name.clone();
        let tenant_id = tenant.id.to_string();
        // Written when the run ends, however it ends (the last reference goes with this
        // function's locals, after the lock's release was queued). What it names as done, as
        // the engine reported it, is the truth for interrupted runs too.
        let audit = self.run_audit(&tenant, guard.token().0);
        let revision_audit = audit.clone();
        // The revision started and not yet done: what a failure outside a step interrupted.
        let in_flight = std::sync::Arc::new(std::sync::Mutex::new(None));
        let in_flight_log = in_flight.clone();
        // Who blocked a revision goes on the tenant's span; a blocker the policy ended, to
        // the audit trail.
        let tenant_span = tracing::Span::current();
        let blocker_audit = {
            let (log, caller, tenant, fence) = (
                self.fleet.audit().clone(),
                self.spec.caller.clone(),
                tenant.id.to_string(),
                guard.token().0,
            );
            move |revision: &crate::model::RevisionId, b: &engine::blockers::Blocker| {
                let mut record = crate::audit::AuditRecord::new(
                    &caller,
                    "end blocking session",
                    format!("{}: {}", b.action, b.describe()),
                )
                .tenant(tenant.clone());
                record.revision = Some(revision.to_string());
                record.fence_token = Some(fence);
                log.record(record);
            }
        };
        let events = move |e: Event| {
            let event = match e {
                Event::Planned { before, .. } => {
                    let from = crate::model::version_label(&before, ",");
                    tracing::Span::current().record("fleetmig.revision.from", from.as_str());
                    return;
                }
                Event::RevisionStarted {
                    revision,
                    direction,
                } => {
                    *in_flight_log.lock().unwrap() = Some(revision.clone());
                    TenantEvent::RevisionStarted {
                        revision: revision.to_string(),
                        direction,
                    }
                }
                Event::RevisionDone(a) => {
                    in_flight_log.lock().unwrap().take();
                    revision_audit.revision(
                        a.direction,
                        &a.revision,
                        match &a.skipped_by {
                            Some(flag) => format!("skipped ({flag} is false)"),
                            None => "applied".into(),
                        },
                    );
                    crate::metrics::metrics().revision_duration.record(
                        a.duration.as_secs_f64(),
                        &crate::metrics::attrs(&[
                            ("app", app_name.as_str()),
                            ("direction", a.direction.as_str()),
                        ]),
                    );
                    TenantEvent::RevisionApplied {
                        revision: a.revision.to_string(),
                        direction: a.direction,
                        duration: a.duration,
                        skipped_by_condition: a.skipped_by,
                        attempts: a.attempts,
                    }
                }
                Event::LockRetry {
                    revision,
                    attempt,
                    delay,
                    message,
                    blockers,
                } => {
                    let blocked_by: Vec<String> = blockers.iter().map(|b| b.describe()).collect();
                    tracing::info!(parent: &tenant_span, fleetmig.revision.id = %revision, fleetmig.lock.attempt = attempt, fleetmig.lock.blockers = %blocked_by.join("; "), "lock timeout: blocked by other sessions; retrying");
                    for b in blockers.iter().filter(|b| !b.action.is_empty()) {
                        blocker_audit(&revision, b);
                    }
                    TenantEvent::LockRetry {
                        revision: revision.to_string(),
                        attempt,
                        delay,
                        message,
                        blockers,
                    }
                }
                Event::InvalidIndexDropped { revision, index } => {
                    tracing::warn!(tenant = %tenant_id, %revision, %index, "dropped an INVALID index left by an earlier failed build");
                    return;
                }
            };
            let _ = tx.send(JobEvent::Tenant {
                tenant_id: tenant_id.clone(),
                event,
            });
        };
        let (cancel, shutdown) = (self.cancel.clone(), self.fleet.shutdown.clone());
        let stop = move || cancel.is_cancelled() || shutdown.is_cancelled();
        let live = || guard.valid();
        let probe = PoolProbe {
            pools: self.fleet.pools.clone(),
            spec: tenant.connection.clone(),
        };
        let opts = RunOptions {
            fence: Some(guard.token()),
            allow_changed: self.spec.allow_changed,
            applied_by: &self.fleet.owner,
            events: &events,
            stop: &stop,
            live: &live,
            blockers: Some(engine::blockers::Diagnose {
                probe: &probe,
                policy: self
                    .spec
                    .blockers
                    .clone()
                    .unwrap_or_else(|| self.app.blockers.clone()),
            }),
        };
        let on_reconnect = |attempt: u32, why: &str| {
            tracing::warn!(tenant = %tenant.id, attempt, reason = %why, "reconnected after a lost connection; resuming from what the database recorded");
            self.emit(
                &tenant,
                TenantEvent::Reconnected {
                    attempt,
                    reason: why.to_string(),
                },
            );
        };
        let execution = Execution {
            pools: &self.fleet.pools,
            app: &self.app,
            values: &values,
            settings: &settings,
            connection: &tenant.connection,
            direction: self.spec.direction,
            target: &self.target,
            guard: &guard,
            opts: &opts,
            on_reconnect: &on_reconnect,
        };
        let result = match execution.run(conn).await {
            Ended::Ran(result) => result,
            Ended::LeaseLost => {
                let reason = "this daemon's etcd lease ended; it issued no SQL after that, another daemon or a retry will finish this tenant".to_string();
                if let Some(revision) = in_flight.lock().unwrap().take() {
                    audit.revision(
                        self.spec.direction,
                        &revision,
                        "interrupted: lease lost".into(),
                    );
                }
                tracing::error!(tenant = %tenant.id, "interrupted: lease lost");
                let applied = audit.done_so_far();
                self.emit(&tenant, TenantEvent::Interrupted { reason, applied });
                return Outcome::Interrupted;
            }
            Ended::Unreachable(e) => {
                let guard_token = guard.token().0;
                guard.release().await;
                if audit.done_so_far().is_empty() {
                    self.audit_early_failure(&tenant, Some(guard_token), &e.to_string());
                }
                return self.fail(
                    &tenant,
                    Failure {
                        sqlstate: e.sqlstate().unwrap_or_default().to_string(),
                        message: format!("{e} (the connection was lost, and reconnecting failed)"),
                        applied: audit.done_so_far(),
                        ..Failure::default()
                    },
                );
            }
        };
        let label = |rows: &[crate::model::RevisionId]| crate::model::version_label(rows, ",");
        if let Ok(run) = &result {
            let span = tracing::Span::current();
            span.record("fleetmig.revision.to", label(&run.after).as_str());
        }
        let guard_token = guard.token().0;
        // Queued, not sent: it rides on the acquire of the tenant that takes this job slot
        // next. Queued here, before the slot is freed, or that acquire would leave without it
        // and the release would cost an etcd write of its own.
        guard.release().await;
        match result {
            Ok(run) if run.applied.is_empty() => {
                self.emit(
                    &tenant,
                    TenantEvent::UpToDate {
                        revisions: ids(run.after),
                    },
                );
                Outcome::UpToDate
            }
            Ok(run) => {
                self.emit(
                    &tenant,
                    TenantEvent::Done {
                        revisions: ids(run.after),
                        applied: run.applied.len() as u32,
                        duration: started.elapsed(),
                    },
                );
                Outcome::Done
            }
            Err(EngineError::Stopped { applied }) => {
                let reason = super::skipped_reason(&self.fleet.shutdown);
                audit.stopped(&reason);
                self.emit(
                    &tenant,
                    TenantEvent::Interrupted {
                        reason,
                        applied: ids(applied),
                    },
                );
                Outcome::Interrupted
            }
            Err(EngineError::StepFailed { failure, applied }) => {
                audit.revision(
                    self.spec.direction,
                    &failure.revision,
                    format!(
                        "failed: {}{}",
                        failure
                            .sqlstate
                            .as_deref()
                            .map(|s| format!("SQLSTATE {s}: "))
                            .unwrap_or_default(),
                        failure.message
                    ),
                );
                self.fail(
                    &tenant,
                    Failure {
                        revision: failure.revision.to_string(),
                        sqlstate: failure.sqlstate.clone().unwrap_or_default(),
                        message: failure.to_string(),
                        location: failure.location.clone().unwrap_or_default(),
                        applied: ids(applied),
                    },
                )
            }
            Err(e) => {
                match in_flight.lock().unwrap().take() {
                    Some(revision) => {
                        audit.revision(self.spec.direction, &revision, format!("failed: {e}"))
                    }
                    None if audit.done_so_far().is_empty() => {
                        self.audit_early_failure(&tenant, Some(guard_token), &e.to_string())
                    }
                    None => {}
                }
                self.fail(
                    &tenant,
                    Failure {
                        sqlstate: e.sqlstate().unwrap_or_default().to_string(),
                        message: e.to_string(),
                        applied: audit.done_so_far(),
                        ..Failure::default()
                    },
                )
            }
        }
    }

    async fn dry_run(
        &self,
        tenant: &Tenant,
        values: &Resolved,
        settings: &engine::Settings,
    ) -> Outcome {
        let conn = match self.fleet.pools.get(&tenant.connection).await {
            Ok(c) => c,
            Err(e) => {
                return self.fail(
                    tenant,
                    Failure {
                        message: e.to_string(),
                        ..Failure::default()
                    },
                );
            }
        };
        let planned = Engine::new(&self.app, values, settings)
            .plan(
                &conn,
                self.spec.direction,
                &self.target,
                self.spec.allow_changed,
            )
            .await
            .map(|p| {
                (
                    p.steps.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
                    p.sql,
                )
            });
        match planned {
            Ok((revisions, sql)) => {
                self.emit(tenant, TenantEvent::Planned { revisions, sql });
                Outcome::Planned
            }
            Err(e) => self.fail(
                tenant,
                Failure {
                    message: e.to_string(),
                    ..Failure::default()
                },
            ),
        }
    }
}
