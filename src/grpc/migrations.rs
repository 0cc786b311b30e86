//! `fleetmig.v1.Migrations`: jobs and fleet queries over gRPC.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status};

use super::convert::{self, timestamp};
use super::guard::caller;
use super::proto;
use super::status::invalid;
use super::{audited, audited_job};
use std::collections::HashMap;

use tokio::sync::mpsc::UnboundedReceiver;

use crate::fleet::{Fleet, JobEvent, JobSpec, Outcome, Summary, TenantEvent};
use crate::model::Direction;
use crate::registry::tenant::field_error;
use crate::rollout::driver::{Progress, RolloutError, Rollouts};
use crate::rollout::store::{Desired, StoreError};
use crate::rollout::{
    FailureBudget, RolloutDoc, RolloutSpec, RolloutState, SelectorDoc, TenantState, WavePlan,
};

pub struct MigrationsService {
    pub fleet: Arc<Fleet>,
    pub rollouts: Arc<Rollouts>,
}

pub type EventStream = Pin<Box<dyn Stream<Item = Result<proto::MigrationEvent, Status>> + Send>>;
pub type OnboardStream = Pin<Box<dyn Stream<Item = Result<proto::OnboardEvent, Status>> + Send>>;

/// Requests above this are refused rather than silently clamped.
pub(super) const MAX_REQUESTED_CONCURRENCY: u32 = 10_000;

impl MigrationsService {
    async fn migrate(
        &self,
        request: Request<proto::MigrateRequest>,
        direction: Direction,
    ) -> Result<Response<EventStream>, Status> {
        let caller = caller(&request);
        let rpc = match direction {
            Direction::Upgrade => "Migrations/Upgrade",
            Direction::Downgrade => "Migrations/Downgrade",
        };
        match self
            .start_job(request.into_inner(), direction, caller.clone())
            .await
        {
            Ok((response, job_id)) => {
                audited_job(&self.fleet, &caller, rpc, None, Some(job_id), Ok(response))
            }
            Err(e) => audited(&self.fleet, &caller, rpc, None, Err(e)),
        }
    }

    async fn start_job(
        &self,
        r: proto::MigrateRequest,
        direction: Direction,
        caller: crate::auth::Caller,
    ) -> Result<(Response<EventStream>, String), Status> {
        if r.concurrency > MAX_REQUESTED_CONCURRENCY {
            return Err(invalid(field_error(
                "concurrency",
                format!(
                    "at most {MAX_REQUESTED_CONCURRENCY} (the server also caps it by its own limits)"
                ),
            )));
        }
        let app = convert::app_name("app", &r.app).map_err(invalid)?;
        let target = convert::target("target", &r.target, direction).map_err(invalid)?;
        let selector = convert::selector(r.selector).map_err(invalid)?;
        let blockers = convert::blocker_policy("blockers", r.blockers).map_err(invalid)?;
        if !r.dry_run {
            // A rollout of one wave without a failure budget, driven by this replica: it
            // outlives the stream, shows in Rollouts/List, and other replicas help with it.
            let spec = RolloutSpec {
                app,
                direction,
                target,
                selector: SelectorDoc::from(&selector),
                waves: WavePlan::default(),
                budget: FailureBudget::default(),
                concurrency: r.concurrency,
                idempotency_key: String::new(),
                allow_changed: r.allow_changed,
                blockers,
            };
            let (doc, progress) = self.rollouts.start_here(spec, &caller).await?;
            let id = doc.id.clone();
            return Ok((Response::new(rollout_stream(doc, progress)), id));
        }
        let spec = JobSpec {
            app,
            direction,
            target,
            selector,
            concurrency: r.concurrency as usize,
            dry_run: true,
            allow_changed: r.allow_changed,
            skip_locked: false,
            leave: None,
            caller,
            blockers,
        };
        let job = self.fleet.start(spec).await?;
        let job_id = match &job.accepted {
            crate::fleet::JobEvent::Accepted { job_id, .. } => job_id.clone(),
            _ => String::new(),
        };
        let first = tokio_stream::once(Ok(convert::job_event(job.accepted)));
        let rest = UnboundedReceiverStream::new(job.events).map(|e| Ok(convert::job_event(e)));
        Ok((Response::new(Box::pin(first.chain(rest))), job_id))
    }
}

/// A rollout's progress as a job's event stream: accepted, tenant events, a summary.
fn rollout_stream(doc: RolloutDoc, progress: UnboundedReceiver<Progress>) -> EventStream {
    let started = std::time::Instant::now();
    let target: crate::revision::plan::Target = doc.spec.target.parse().expect("infallible");
    let accepted = JobEvent::Accepted {
        job_id: doc.id.clone(),
        app: doc.spec.app.clone(),
        target: target.to_string(),
        direction: doc.spec.direction,
        tenant_ids: doc.tenants.iter().map(|t| t.id.clone()).collect(),
        dry_run: false,
    };
    let first = tokio_stream::once(Ok(convert::job_event(accepted)));
    let mut last: HashMap<String, Outcome> = HashMap::new();
    let rest = UnboundedReceiverStream::new(progress).map(move |p| match p {
        Progress::Tenant { tenant_id, event } => {
            let outcome = match &event {
                TenantEvent::Done { .. } => Some(Outcome::Done),
                TenantEvent::UpToDate { .. } => Some(Outcome::UpToDate),
                TenantEvent::Failed(_) => Some(Outcome::Failed),
                TenantEvent::Skipped { .. } => Some(Outcome::Skipped),
                TenantEvent::Interrupted { .. } => Some(Outcome::Interrupted),
                _ => None,
            };
            if let Some(o) = outcome {
                last.insert(tenant_id.clone(), o);
            }
            Ok(convert::job_event(JobEvent::Tenant { tenant_id, event }))
        }
        Progress::Ended(doc) => {
            let mut summary = Summary {
                job_id: doc.id.clone(),
                tenants: doc.tenants.len() as u32,
                wall_time: started.elapsed(),
                cancelled: doc.state == RolloutState::Cancelled,
                ..Summary::default()
            };
            for t in &doc.tenants {
                summary.count(last.get(&t.id).copied().unwrap_or(match t.state {
                    TenantState::Done => Outcome::Done,
                    TenantState::Failed => Outcome::Failed,
                    TenantState::Interrupted => Outcome::Interrupted,
                    _ => Outcome::Skipped,
                }));
            }
            Ok(convert::job_event(JobEvent::Summary(summary)))
        }
        Progress::Left(why) => Err(Status::unavailable(format!(
            "{why}: the upgrade goes on as rollout {}; follow it with Rollouts/Watch",
            doc.id
        ))),
    });
    Box::pin(first.chain(rest))
}

impl MigrationsService {
    /// An Upgrade or Downgrade is a rollout (cancelled through etcd, from any replica); a
    /// dry run is a job of this replica.
    async fn cancel_job(&self, id: &str) -> Result<Response<proto::CancelResponse>, Status> {
        match self.rollouts.store().get(id).await {
            Ok((doc, _)) if doc.state.is_final() => {
                Ok(Response::new(proto::CancelResponse { cancelled: false }))
            }
            Ok(_) => {
                match self.rollouts.control(id, Desired::Cancelled).await {
                    Ok(_) => Ok(Response::new(proto::CancelResponse { cancelled: true })),
                    // It ended meanwhile.
                    Err(RolloutError::State { .. }) => {
                        Ok(Response::new(proto::CancelResponse { cancelled: false }))
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Err(StoreError::NotFound(_)) => self
                .fleet
                .cancel(id)
                .map(|cancelled| Response::new(proto::CancelResponse { cancelled }))
                .map_err(Status::from),
            Err(e) => Err(e.into()),
        }
    }
}

#[tonic::async_trait]
impl proto::migrations_server::Migrations for MigrationsService {
    type UpgradeStream = EventStream;
    type DowngradeStream = EventStream;
    type OnboardStream = OnboardStream;

    async fn upgrade(
        &self,
        request: Request<proto::MigrateRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.migrate(request, Direction::Upgrade).await
    }

    async fn downgrade(
        &self,
        request: Request<proto::MigrateRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.migrate(request, Direction::Downgrade).await
    }

    async fn cancel(
        &self,
        request: Request<proto::CancelRequest>,
    ) -> Result<Response<proto::CancelResponse>, Status> {
        let caller = caller(&request);
        let id = request.into_inner().job_id;
        let result = match convert::job_id("job_id", &id, "the job id from the accepted event") {
            Ok(id) => self.cancel_job(&id).await,
            Err(e) => Err(invalid(e)),
        };
        let job = (!id.is_empty()).then(|| id.chars().take(64).collect());
        audited_job(&self.fleet, &caller, "Migrations/Cancel", None, job, result)
    }

    async fn current(
        &self,
        request: Request<proto::CurrentRequest>,
    ) -> Result<Response<proto::CurrentResponse>, Status> {
        let r = request.into_inner();
        let app = convert::app_name("app", &r.app).map_err(invalid)?;
        let selector = convert::selector_or_all(r.selector).map_err(invalid)?;
        let report = self.fleet.current(&app, &selector).await?;
        Ok(Response::new(proto::CurrentResponse {
            tenants: report
                .tenants
                .into_iter()
                .map(|t| proto::TenantVersion {
                    tenant_id: t.tenant_id,
                    revisions: t.revisions,
                    at_head: t.at_head,
                    error: t.error.unwrap_or_default(),
                })
                .collect(),
            tenants_by_version: report.by_version.into_iter().collect(),
            heads: report.heads,
            at_head: report.at_head,
            behind: report.behind,
            unreachable: report.unreachable,
        }))
    }

    async fn history(
        &self,
        request: Request<proto::HistoryRequest>,
    ) -> Result<Response<proto::HistoryResponse>, Status> {
        let r = request.into_inner();
        let id = convert::tenant_id("tenant_id", &r.tenant_id).map_err(invalid)?;
        let limit = match r.limit {
            0 => 100,
            n if n <= 10_000 => n,
            _ => return Err(invalid(field_error("limit", "at most 10000"))),
        };
        let entries = self.fleet.history(&id, limit).await?;
        Ok(Response::new(proto::HistoryResponse {
            entries: entries
                .into_iter()
                .map(|e| proto::HistoryEntry {
                    id: e.id,
                    revision: e.revision,
                    direction: e.direction,
                    checksum: e.checksum,
                    placeholders_json: e.placeholders_json,
                    skipped: e.skipped,
                    applied_at: Some(timestamp(e.applied_at)),
                    duration_ms: e.duration_ms.max(0) as u64,
                    applied_by: e.applied_by,
                    fence_token: e.fence_token.unwrap_or_default(),
                })
                .collect(),
        }))
    }

    async fn heads(
        &self,
        request: Request<proto::HeadsRequest>,
    ) -> Result<Response<proto::HeadsResponse>, Status> {
        let app = convert::app_name("app", &request.into_inner().app).map_err(invalid)?;
        let app = self.fleet.app(&app)?;
        let g = &app.graph;
        Ok(Response::new(proto::HeadsResponse {
            heads: g
                .heads()
                .into_iter()
                .map(|h| {
                    let rev = g.revision(h);
                    proto::RevisionInfo {
                        revision: rev.id.to_string(),
                        down_revisions: rev.parents.iter().map(|p| p.to_string()).collect(),
                        message: rev.message.clone(),
                        file: rev.path.display().to_string(),
                    }
                })
                .collect(),
        }))
    }

    async fn plan(
        &self,
        request: Request<proto::PlanRequest>,
    ) -> Result<Response<proto::PlanResponse>, Status> {
        let r = request.into_inner();
        let id = convert::tenant_id("tenant_id", &r.tenant_id).map_err(invalid)?;
        let direction = convert::direction("direction", &r.direction).map_err(invalid)?;
        let target = convert::target("target", &r.target, direction).map_err(invalid)?;
        let plan = self
            .fleet
            .plan(&id, direction, &target, r.allow_changed)
            .await?;
        Ok(Response::new(proto::PlanResponse {
            current: plan.current,
            revisions: plan.revisions,
            sql: plan.sql,
        }))
    }

    async fn stamp(
        &self,
        request: Request<proto::StampRequest>,
    ) -> Result<Response<proto::StampResponse>, Status> {
        let caller = caller(&request);
        let named = Some(request.get_ref().tenant_id.clone());
        let result = self.stamp_tenant(request.into_inner(), &caller).await;
        audited(&self.fleet, &caller, "Migrations/Stamp", named, result)
    }

    async fn verify(
        &self,
        request: Request<proto::VerifyRequest>,
    ) -> Result<Response<proto::VerifyResponse>, Status> {
        self.verify_fleet(request.into_inner()).await
    }

    async fn onboard(
        &self,
        request: Request<proto::OnboardRequest>,
    ) -> Result<Response<Self::OnboardStream>, Status> {
        let caller = caller(&request);
        let named = request.get_ref().tenant.as_ref().map(|t| t.id.clone());
        let result = self
            .onboard_tenant(request.into_inner(), caller.clone())
            .await;
        audited(&self.fleet, &caller, "Migrations/Onboard", named, result)
    }
}

impl MigrationsService {
    async fn stamp_tenant(
        &self,
        r: proto::StampRequest,
        caller: &crate::auth::Caller,
    ) -> Result<Response<proto::StampResponse>, Status> {
        let id = convert::tenant_id("tenant_id", &r.tenant_id).map_err(invalid)?;
        if r.revision.is_empty() {
            return Err(invalid(field_error(
                "revision",
                "required: a revision, head, heads, label@head or base",
            )));
        }
        let revision =
            convert::target("revision", &r.revision, Direction::Upgrade).map_err(invalid)?;
        let revisions = self.fleet.stamp(&id, &revision, r.purge, caller).await?;
        tracing::info!(tenant = %id, ?revisions, purge = r.purge, "tenant stamped");
        Ok(Response::new(proto::StampResponse { revisions }))
    }

    async fn verify_fleet(
        &self,
        r: proto::VerifyRequest,
    ) -> Result<Response<proto::VerifyResponse>, Status> {
        let app = convert::app_name("app", &r.app).map_err(invalid)?;
        let selector = convert::selector_or_all(r.selector).map_err(invalid)?;
        let report = self.fleet.verify(&app, &selector).await?;
        Ok(Response::new(proto::VerifyResponse {
            tenants: report
                .tenants
                .into_iter()
                .map(|t| proto::TenantDrift {
                    tenant_id: t.tenant_id,
                    revisions: t.revisions,
                    drifted: !t.differences.is_empty(),
                    differences: t.differences,
                    invalid_indexes: t.invalid_indexes,
                    error: t.error.unwrap_or_default(),
                })
                .collect(),
            tenants_by_version: report.by_version.into_iter().collect(),
            drifted: report.drifted,
            with_invalid_indexes: report.with_invalid_indexes,
            unreachable: report.unreachable,
        }))
    }

    async fn onboard_tenant(
        &self,
        r: proto::OnboardRequest,
        caller: crate::auth::Caller,
    ) -> Result<Response<OnboardStream>, Status> {
        let ok_id = !r.request_id.is_empty()
            && r.request_id.len() <= 64
            && r.request_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok_id {
            return Err(invalid(field_error(
                "request_id",
                "required: 1-64 characters from A-Z a-z 0-9 _ - (retries with the same id do not onboard twice)",
            )));
        }
        let tenant = super::tenants::new_tenant(&self.fleet, r.tenant, "tenant")?;
        if tenant.connection.schema.is_some() {
            return Err(invalid(field_error(
                "tenant.connection.schema",
                "onboarding creates a database: leave schema empty",
            )));
        }
        for (i, e) in r.extensions.iter().enumerate() {
            if !crate::revision::placeholder::is_safe_identifier(e) {
                return Err(invalid(field_error(
                    format!("extensions[{i}]"),
                    "not an extension name",
                )));
            }
        }
        let admin = super::tenants::admin(r.admin_user, r.admin_password)?;
        let spec = crate::fleet::OnboardSpec {
            request_id: r.request_id,
            tenant,
            admin_user: admin.as_ref().map(|a| a.0.clone()),
            admin_password: admin.and_then(|a| a.1),
            extensions: r.extensions,
            use_template: r.use_template,
            caller,
        };
        let events = self.fleet.onboard(spec).await?;
        let stream = UnboundedReceiverStream::new(events).map(|e| {
            Ok(proto::OnboardEvent {
                step: e.step,
                status: e.status,
                message: e.message,
                duration_ms: e.duration.as_millis() as u64,
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
