//! Helping with a rollout another replica owns: while its owner keeps the gate open on a
//! wave, take that wave's tenants nobody has taken, through their database locks (a held
//! lock means another replica has the tenant: skip it), and report each one under
//! `rollout-tenants/` for the owner to fold in. A claim lives under this replica's lease
//! until the tenant is final, so if this replica dies the owner runs the tenant again.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::driver::{CONTROL_EVERY, Rollouts};
use super::store::StoreError;
use super::wave::apply;
use super::{RolloutState, TenantState};
use crate::fleet::{FleetError, JobEvent};

impl Rollouts {
    /// One helping pass over the open wave of rollout `id` (the supervisor starts the next),
    /// until `stop` (this replica became the owner) or the owner closes the gate.
    pub(super) async fn help(&self, id: &str, stop: CancellationToken) -> Result<(), StoreError> {
        if stop.is_cancelled() {
            return Ok(());
        }
        let Some(w) = self.store.open_wave(id).await? else {
            return Ok(());
        };
        let (doc, _) = self.store.get(id).await?;
        if doc.state != RolloutState::Running {
            return Ok(());
        }
        let taken = self.store.result_ids(id).await?;
        let mut todo: Vec<_> = doc
            .tenants
            .iter()
            .filter(|t| t.wave == w && !taken.contains(&t.id))
            .filter(|t| matches!(t.state, TenantState::Pending | TenantState::Interrupted))
            .cloned()
            .collect();
        if todo.is_empty() {
            return Ok(());
        }
        // Another order than the owner's (wave order) and other helpers', so they rarely meet.
        todo.sort_by_key(|t| {
            let mut h = std::hash::DefaultHasher::new();
            (&self.owner, &t.id).hash(&mut h);
            h.finish()
        });
        // Tenants others finished or took since this pass began: refreshed every second, asked
        // before each tenant starts.
        let done: Arc<Mutex<HashSet<String>>> = Arc::default();
        let spec = Self::wave_job(&doc, todo.iter().map(|t| t.id.as_str()), done.clone());
        let mut job = match self.fleet.start(spec).await {
            Ok(job) => job,
            Err(FleetError::ShuttingDown) => return Ok(()),
            Err(e) => {
                tracing::warn!(rollout = %id, error = %e, "could not help with the rollout");
                return Ok(());
            }
        };
        let job_id = match &job.accepted {
            JobEvent::Accepted { job_id, .. } => job_id.clone(),
            _ => String::new(),
        };
        tracing::info!(rollout = %id, wave = w, tenants = todo.len(), "helping with a rollout");
        let mut tenants: HashMap<String, _> = todo.into_iter().map(|t| (t.id.clone(), t)).collect();
        let mut control_tick = tokio::time::interval(CONTROL_EVERY);
        let mut ticks = 0u32;
        let mut stopped = false;
        // Every event is drained to the end: a claim written must become final (or vanish
        // with the lease), or the owner would wait for it.
        loop {
            tokio::select! {
                event = job.events.recv() => match event {
                    Some(JobEvent::Tenant { tenant_id, event }) => {
                        let Some(t) = tenants.get_mut(&tenant_id) else { continue };
                        if apply(t, event, &mut 0, &self.owner).is_none() {
                            continue;
                        }
                        let lease = match t.state {
                            TenantState::Running => Some(self.lease()),
                            TenantState::Done | TenantState::Failed | TenantState::Interrupted => None,
                            _ => continue,
                        };
                        self.report(id, t, lease).await;
                    }
                    Some(JobEvent::Summary(_)) | None => break,
                    Some(_) => {}
                },
                _ = stop.cancelled(), if !stopped => {
                    stopped = true;
                    let _ = self.fleet.cancel(&job_id);
                }
                _ = control_tick.tick(), if !stopped => {
                    // The owner closed the gate (halt, pause, cancel, wave over) or is gone.
                    if !matches!(self.store.open_wave(id).await, Ok(Some(open)) if open == w) {
                        stopped = true;
                        let _ = self.fleet.cancel(&job_id);
                    }
                    ticks += 1;
                    if ticks.is_multiple_of(5) && !stopped {
                        // Bounded: events (a lease lost) must not wait behind an etcd outage.
                        let _ = tokio::time::timeout(CONTROL_EVERY * 5, self.refresh_done(id, w, &done)).await;
                    }
                }
            }
        }
        Ok(())
    }

    async fn refresh_done(&self, id: &str, w: u32, done: &Mutex<HashSet<String>>) {
        let (Ok(taken), Ok((doc, _))) = (self.store.result_ids(id).await, self.store.get(id).await)
        else {
            return; // etcd hiccup: the next refresh
        };
        let finished = doc.tenants.into_iter().filter(|t| {
            t.wave == w && !matches!(t.state, TenantState::Pending | TenantState::Interrupted)
        });
        let mut set = done.lock().unwrap();
        set.extend(taken);
        set.extend(finished.map(|t| t.id));
    }

    /// Write a tenant's result until etcd takes it: the owner waits for a claimed tenant's
    /// final result (or for the claim to vanish with this replica's lease, at shutdown).
    async fn report(&self, id: &str, t: &super::TenantDoc, lease: Option<i64>) {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.store.put_result(id, t, lease).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(rollout = %id, tenant = %t.id, error = %e, "reporting a tenant's result; retrying");
                    if self.shutdown.is_cancelled() {
                        return;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}
