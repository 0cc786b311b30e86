//! Before a rollout ends (done, halted, cancelled), its owner makes the document agree with the
//! databases, which are the source of truth. Helpers' results (from any wave) are folded in;
//! then each tenant the rollout may have touched without the document saying how it ended is
//! read from its database under its lock ([`crate::fleet::Fleet::standing`]): running or
//! interrupted (under a dead owner or helper), or pending in a wave that started (an owner
//! may die between finishing a tenant and saving the document). At the target, it is done;
//! otherwise its version rows are recorded, and a tenant a run had started is interrupted.
//! Failed tenants keep their failure: it is a fact about a run, which a later read of the
//! database does not undo.

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;

use super::driver::Rollouts;
use super::store::StoreError;
use super::{RolloutDoc, TenantDoc, TenantState, WaveState};
use crate::registry::TenantId;

/// How long reconciliation waits for a tenant's lock (a helper finishing its revision).
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// Tenants read at once.
const CONCURRENCY: usize = 8;

fn is_final(t: &TenantDoc) -> bool {
    matches!(t.state, TenantState::Done | TenantState::Failed)
}

impl Rollouts {
    pub(super) async fn reconcile(&self, doc: &mut RolloutDoc) -> Result<(), StoreError> {
        for r in self.store.poll(&doc.id, 0).await?.results {
            let Some(t) = doc.tenants.iter_mut().find(|t| t.id == r.id) else {
                continue;
            };
            if is_final(t) {
                continue; // the first final outcome stands
            }
            match r.state {
                TenantState::Done | TenantState::Failed => *t = TenantDoc { wave: t.wave, ..r },
                // Still running on a helper: read below, under its lock, once it lets go.
                TenantState::Running => {
                    t.state = TenantState::Running;
                    t.replica = r.replica;
                }
                _ => {}
            }
        }
        let started: HashSet<u32> = doc
            .waves
            .iter()
            .filter(|w| w.state != WaveState::Pending)
            .map(|w| w.index)
            .collect();
        let touched: Vec<(usize, TenantId)> = doc
            .tenants
            .iter()
            .enumerate()
            .filter(|(_, t)| match t.state {
                TenantState::Running | TenantState::Interrupted => true,
                TenantState::Pending => started.contains(&t.wave),
                _ => false,
            })
            .filter_map(|(i, t)| Some((i, TenantId::parse("tenant", &t.id).ok()?)))
            .collect();
        if touched.is_empty() {
            return Ok(());
        }
        let direction = doc.spec.direction;
        let wait = self.fleet.limits().lock_wait.min(LOCK_WAIT);
        let reads = touched.iter().cloned().map(|(i, id)| {
            let (fleet, target) = (self.fleet.clone(), doc.spec.target.clone());
            async move { (i, fleet.standing(&id, direction, &target, wait).await) }
        });
        let read: Vec<_> = futures::stream::iter(reads)
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let (mut done, mut unread) = (0, 0);
        for (i, standing) in read {
            let t = &mut doc.tenants[i];
            let was_run = matches!(t.state, TenantState::Running | TenantState::Interrupted);
            match standing {
                Ok(s) if s.remaining == 0 => {
                    t.state = TenantState::Done;
                    t.revisions = s.rows;
                    t.error.clear();
                    t.finished_at = Some(Utc::now());
                    done += 1;
                }
                Ok(s) => {
                    t.revisions = s.rows;
                    if was_run {
                        t.state = TenantState::Interrupted;
                    }
                }
                Err(e) => {
                    unread += 1;
                    tracing::warn!(rollout = %doc.id, tenant = %t.id, error = %e, "could not read a tenant's database to reconcile the rollout");
                    if was_run {
                        t.state = TenantState::Interrupted;
                    }
                }
            }
        }
        tracing::info!(rollout = %doc.id, read = touched.len(), done, unread, "rollout reconciled with the databases");
        Ok(())
    }
}
