//! `fleetmig.v1.Rollouts`: fleet-wide rollouts over gRPC (validation, conversion, one call
//! into [`crate::rollout`], audit of the control calls).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert::{self, timestamp};
use super::guard::caller;
use super::proto;
use super::status::invalid;
use super::{audited, audited_job};
use crate::fleet::Fleet;
use crate::registry::tenant::{field_error, validate_labels};
use crate::rollout::driver::{RolloutError, Rollouts};
use crate::rollout::store::{Desired, StoreError};
use crate::rollout::watch::WatchEvent;
use crate::rollout::{
    FailureBudget, RolloutDoc, RolloutSpec, RolloutState, SelectorDoc, TenantDoc, WavePlan,
};

pub struct RolloutsService {
    pub fleet: Arc<Fleet>,
    pub rollouts: Arc<Rollouts>,
}

pub type RolloutEventStream =
    Pin<Box<dyn Stream<Item = Result<proto::RolloutEvent, Status>> + Send>>;

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        match e {
            StoreError::NotFound(_) => Status::not_found(e.to_string()),
            StoreError::Etcd(_) => Status::unavailable(e.to_string()),
            StoreError::Corrupt { .. } => Status::data_loss(e.to_string()),
        }
    }
}

impl From<RolloutError> for Status {
    fn from(e: RolloutError) -> Status {
        match e {
            RolloutError::Fleet(f) => f.into(),
            RolloutError::Store(s) => s.into(),
            RolloutError::State { .. } => Status::failed_precondition(e.to_string()),
        }
    }
}

fn rollout_id(id: &str) -> Result<String, Status> {
    convert::job_id("id", id, "the rollout id Start returned").map_err(invalid)
}

/// What a control call did, as the state it answers with: the state reached once the driving
/// replica has acted, or, if it has not yet, what was asked (`cancelling`, not `running`,
/// which would read as if nothing happened).
fn answered_state(now: RolloutState, desired: Desired) -> &'static str {
    match (desired, now) {
        (Desired::Cancelled, s) if !s.is_final() => "cancelling",
        (Desired::Paused, RolloutState::Running) => "pausing",
        (Desired::Running, RolloutState::Paused) => "resuming",
        (_, s) => s.as_str(),
    }
}

fn spec(r: proto::StartRolloutRequest) -> Result<RolloutSpec, Status> {
    let direction = convert::direction("direction", &r.direction).map_err(invalid)?;
    let selector = SelectorDoc::from(&convert::selector(r.selector).map_err(invalid)?);
    let w = r.waves.unwrap_or_default();
    let bad = |field: &str, message: &str| Err(invalid(field_error(field, message)));
    if w.canary_count > 0 && !w.canary_labels.is_empty() {
        return bad("waves", "set canary_count or canary_labels, not both");
    }
    if w.batch_count > 0 && w.batch_percent > 0 {
        return bad("waves", "set batch_count or batch_percent, not both");
    }
    if w.batch_percent > 100 {
        return bad("waves.batch_percent", "at most 100");
    }
    if w.bake_seconds > 86_400 {
        return bad("waves.bake_seconds", "at most 86400 (a day)");
    }
    let canary_labels: BTreeMap<String, String> = w.canary_labels.into_iter().collect();
    validate_labels("waves.canary_labels", &canary_labels).map_err(invalid)?;
    if !w.order_label.is_empty() {
        let probe = BTreeMap::from([(w.order_label.clone(), String::new())]);
        validate_labels("waves.order_label", &probe).map_err(invalid)?;
        for (i, v) in w.order_values.iter().enumerate() {
            let value = BTreeMap::from([(w.order_label.clone(), v.clone())]);
            validate_labels(&format!("waves.order_values[{i}]"), &value).map_err(invalid)?;
        }
    }
    let b = r.budget.unwrap_or_default();
    if b.max_failure_percent > 100 {
        return bad("budget.max_failure_percent", "at most 100");
    }
    if r.concurrency > super::migrations::MAX_REQUESTED_CONCURRENCY {
        return bad("concurrency", "at most 10000");
    }
    let key_ok = r.idempotency_key.len() <= 128
        && r.idempotency_key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    if !key_ok {
        return bad(
            "idempotency_key",
            "at most 128 characters from A-Z a-z 0-9 _ - . :",
        );
    }
    Ok(RolloutSpec {
        app: convert::app_name("app", &r.app).map_err(invalid)?,
        direction,
        target: convert::target("target", &r.target, direction).map_err(invalid)?,
        selector,
        waves: WavePlan {
            canary_count: w.canary_count,
            canary_labels,
            batch_count: w.batch_count,
            batch_percent: w.batch_percent,
            order_label: w.order_label,
            order_values: w.order_values,
            bake_seconds: w.bake_seconds,
        },
        budget: FailureBudget {
            max_failures: b.max_failures,
            max_failure_percent: b.max_failure_percent,
            max_consecutive_failures: b.max_consecutive_failures,
        },
        concurrency: r.concurrency,
        idempotency_key: r.idempotency_key,
        allow_changed: r.allow_changed,
        blockers: convert::blocker_policy("blockers", r.blockers).map_err(invalid)?,
    })
}

fn spec_to_proto(s: &RolloutSpec) -> proto::StartRolloutRequest {
    let mut selector = proto::Selector::default();
    match &s.selector {
        SelectorDoc::Ids(ids) => selector.tenant_ids = ids.clone(),
        SelectorDoc::Labels(l) => selector.labels = l.clone().into_iter().collect(),
        SelectorDoc::All => selector.all = true,
    }
    proto::StartRolloutRequest {
        app: s.app.clone(),
        direction: s.direction.as_str().into(),
        target: s.target.clone(),
        selector: Some(selector),
        waves: Some(proto::WavePlan {
            canary_count: s.waves.canary_count,
            canary_labels: s.waves.canary_labels.clone().into_iter().collect(),
            batch_count: s.waves.batch_count,
            batch_percent: s.waves.batch_percent,
            order_label: s.waves.order_label.clone(),
            order_values: s.waves.order_values.clone(),
            bake_seconds: s.waves.bake_seconds,
        }),
        budget: Some(proto::FailureBudget {
            max_failures: s.budget.max_failures,
            max_failure_percent: s.budget.max_failure_percent,
            max_consecutive_failures: s.budget.max_consecutive_failures,
        }),
        concurrency: s.concurrency,
        idempotency_key: s.idempotency_key.clone(),
        allow_changed: s.allow_changed,
        blockers: s.blockers.as_ref().map(convert::blocker_policy_to_proto),
    }
}

fn tenant_to_proto(t: &TenantDoc) -> proto::RolloutTenant {
    proto::RolloutTenant {
        tenant_id: t.id.clone(),
        wave: t.wave,
        state: t.state.as_str().into(),
        error: t.error.clone(),
        revisions: t.revisions.clone(),
        started_at: t.started_at.map(timestamp),
        finished_at: t.finished_at.map(timestamp),
        attempts: t.attempts,
        replica: t.replica.clone(),
        lock_retries: t.lock_retries,
        blocked_by: t.blocked_by.clone(),
    }
}

/// The rollout as the API shows it; `with_tenants: false` leaves the tenant list out.
pub fn rollout_to_proto(d: &RolloutDoc, owner: String, with_tenants: bool) -> proto::Rollout {
    proto::Rollout {
        id: d.id.clone(),
        app: d.spec.app.clone(),
        direction: d.spec.direction.as_str().into(),
        target: d.spec.target.clone(),
        state: d.state.as_str().into(),
        reason: d.reason.clone(),
        waves: d
            .waves
            .iter()
            .map(|w| proto::RolloutWave {
                index: w.index,
                name: w.name.clone(),
                tenant_ids: w.tenant_ids.clone(),
                state: w.state.as_str().into(),
            })
            .collect(),
        tenants: if with_tenants {
            d.tenants.iter().map(tenant_to_proto).collect()
        } else {
            vec![]
        },
        counts: d
            .counts()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        owner,
        created_at: Some(timestamp(d.created_at)),
        updated_at: Some(timestamp(d.updated_at)),
        spec: Some(spec_to_proto(&d.spec)),
        created_by: d.created_by.clone(),
        lint: d
            .lint
            .iter()
            .map(|v| proto::LintVerdict {
                revision: v.revision.clone(),
                verdict: v.verdict.as_str().into(),
                errors: v.errors,
                warnings: v.warnings,
                ignored: v.ignored.clone(),
            })
            .collect(),
    }
}

impl RolloutsService {
    async fn show(&self, doc: &RolloutDoc) -> Result<proto::Rollout, Status> {
        let owner = self
            .rollouts
            .store()
            .owner(&doc.id)
            .await?
            .unwrap_or_default();
        Ok(rollout_to_proto(doc, owner, true))
    }

    async fn control(
        &self,
        request: Request<proto::RolloutControlRequest>,
        rpc: &str,
        desired: Option<Desired>,
    ) -> Result<Response<proto::Rollout>, Status> {
        let caller = caller(&request);
        let raw = request.into_inner().id;
        let result = async {
            let id = rollout_id(&raw)?;
            let (doc, state) = match desired {
                Some(d) => {
                    let doc = self.rollouts.control(&id, d).await?;
                    let state = answered_state(doc.state, d);
                    (doc, state)
                }
                None => {
                    let doc = self.rollouts.retry_failed(&id).await?;
                    let state = doc.state.as_str();
                    (doc, state)
                }
            };
            tracing::info!(rollout = %id, rpc, state, "rollout control");
            let mut shown = self.show(&doc).await?;
            shown.state = state.to_string();
            Ok(Response::new(shown))
        }
        .await;
        let id = (!raw.is_empty()).then(|| raw.chars().take(64).collect());
        audited_job(&self.fleet, &caller, rpc, None, id, result)
    }
}

#[tonic::async_trait]
impl proto::rollouts_server::Rollouts for RolloutsService {
    type WatchStream = RolloutEventStream;

    async fn start(
        &self,
        request: Request<proto::StartRolloutRequest>,
    ) -> Result<Response<proto::Rollout>, Status> {
        let caller = caller(&request);
        let result = async {
            let spec = spec(request.into_inner())?;
            let (doc, _created) = self.rollouts.start(spec, &caller).await?;
            Ok::<_, Status>((self.show(&doc).await?, doc.id))
        }
        .await;
        match result {
            Ok((r, id)) => audited_job(
                &self.fleet,
                &caller,
                "Rollouts/Start",
                None,
                Some(id),
                Ok(Response::new(r)),
            ),
            Err(e) => audited(&self.fleet, &caller, "Rollouts/Start", None, Err(e)),
        }
    }

    async fn get(
        &self,
        request: Request<proto::GetRolloutRequest>,
    ) -> Result<Response<proto::Rollout>, Status> {
        let id = rollout_id(&request.into_inner().id)?;
        let (doc, _) = self.rollouts.store().get(&id).await?;
        Ok(Response::new(self.show(&doc).await?))
    }

    async fn list(
        &self,
        request: Request<proto::ListRolloutsRequest>,
    ) -> Result<Response<proto::ListRolloutsResponse>, Status> {
        let r = request.into_inner();
        if !matches!(
            r.state.as_str(),
            "" | "running" | "paused" | "halted" | "cancelled" | "done"
        ) {
            return Err(invalid(field_error(
                "state",
                "one of running, paused, halted, cancelled, done (or empty)",
            )));
        }
        let mut docs: Vec<RolloutDoc> = self
            .rollouts
            .store()
            .list()
            .await?
            .into_iter()
            .filter(|d| r.app.is_empty() || d.spec.app == r.app)
            .filter(|d| r.state.is_empty() || d.state.as_str() == r.state)
            .collect();
        docs.sort_by_key(|d| std::cmp::Reverse(d.created_at));
        let mut owners = self.rollouts.store().owners().await?;
        let rollouts = docs
            .iter()
            .map(|d| rollout_to_proto(d, owners.remove(&d.id).unwrap_or_default(), false))
            .collect();
        Ok(Response::new(proto::ListRolloutsResponse { rollouts }))
    }

    async fn watch(
        &self,
        request: Request<proto::GetRolloutRequest>,
    ) -> Result<Response<RolloutEventStream>, Status> {
        let id = rollout_id(&request.into_inner().id)?;
        let rx = crate::rollout::watch::watch(self.rollouts.store().clone(), &id).await?;
        let stream = ReceiverStream::new(rx).map(|e| match e {
            Ok(WatchEvent::Snapshot(doc)) => Ok(proto::RolloutEvent {
                kind: "snapshot".into(),
                rollout: Some(rollout_to_proto(&doc, doc.owner.clone(), true)),
                changed: vec![],
            }),
            Ok(WatchEvent::Update { rollout, changed }) => Ok(proto::RolloutEvent {
                kind: "update".into(),
                rollout: Some(rollout_to_proto(&rollout, rollout.owner.clone(), false)),
                changed: changed.iter().map(tenant_to_proto).collect(),
            }),
            Err(e) => Err(Status::from(e)),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn pause(
        &self,
        request: Request<proto::RolloutControlRequest>,
    ) -> Result<Response<proto::Rollout>, Status> {
        self.control(request, "Rollouts/Pause", Some(Desired::Paused))
            .await
    }

    async fn resume(
        &self,
        request: Request<proto::RolloutControlRequest>,
    ) -> Result<Response<proto::Rollout>, Status> {
        self.control(request, "Rollouts/Resume", Some(Desired::Running))
            .await
    }

    async fn cancel(
        &self,
        request: Request<proto::RolloutControlRequest>,
    ) -> Result<Response<proto::Rollout>, Status> {
        self.control(request, "Rollouts/Cancel", Some(Desired::Cancelled))
            .await
    }

    async fn retry_failed(
        &self,
        request: Request<proto::RolloutControlRequest>,
    ) -> Result<Response<proto::Rollout>, Status> {
        self.control(request, "Rollouts/RetryFailed", None).await
    }
}
