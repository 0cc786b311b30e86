//! Fleet-wide rollouts: an upgrade or downgrade of many tenants that lives in etcd, runs in
//! waves (a canary, then batches) under a failure budget, and survives the replica driving
//! it. This module holds the persisted document and the pure parts (wave planning, the
//! failure budget); [`store`] keeps it in etcd, [`driver`] runs it, [`watch`] follows it.

pub mod driver;
mod helper;
mod reconcile;
pub mod store;
pub mod watch;
mod wave;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::Direction;
use crate::registry::Tenant;

/// Which tenants: a serializable mirror of [`crate::fleet::Selector`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SelectorDoc {
    Ids(Vec<String>),
    Labels(BTreeMap<String, String>),
    All,
}

impl From<&crate::fleet::Selector> for SelectorDoc {
    fn from(s: &crate::fleet::Selector) -> SelectorDoc {
        use crate::fleet::Selector;
        match s {
            Selector::Ids(ids) => SelectorDoc::Ids(ids.iter().map(|i| i.to_string()).collect()),
            Selector::Labels(l) => SelectorDoc::Labels(l.clone()),
            Selector::All => SelectorDoc::All,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WavePlan {
    pub canary_count: u32,
    pub canary_labels: BTreeMap<String, String>,
    pub batch_count: u32,
    pub batch_percent: u32,
    pub order_label: String,
    pub order_values: Vec<String>,
    pub bake_seconds: u32,
}

/// 0: no limit of that kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FailureBudget {
    pub max_failures: u32,
    pub max_failure_percent: u32,
    pub max_consecutive_failures: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutSpec {
    pub app: String,
    pub direction: Direction,
    pub target: String,
    pub selector: SelectorDoc,
    pub waves: WavePlan,
    pub budget: FailureBudget,
    /// Tenants at once, on each replica taking part.
    pub concurrency: u32,
    pub idempotency_key: String,
    /// Proceed on tenants whose applied revision files changed since.
    #[serde(default)]
    pub allow_changed: bool,
    /// What to do to sessions blocking a revision; `None`: the app's `[blockers]`.
    #[serde(default)]
    pub blockers: Option<crate::model::BlockerPolicy>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutState {
    Running,
    Paused,
    Halted,
    Cancelled,
    Done,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Halted => "halted",
            RolloutState::Cancelled => "cancelled",
            RolloutState::Done => "done",
        }
    }

    /// Halted, cancelled or done: no replica drives it.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RolloutState::Halted | RolloutState::Cancelled | RolloutState::Done
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantState {
    Pending,
    Running,
    Done,
    Failed,
    Skipped,
    Interrupted,
}

impl TenantState {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantState::Pending => "pending",
            TenantState::Running => "running",
            TenantState::Done => "done",
            TenantState::Failed => "failed",
            TenantState::Skipped => "skipped",
            TenantState::Interrupted => "interrupted",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WaveState {
    Pending,
    Running,
    Baking,
    Done,
    Halted,
}

impl WaveState {
    pub fn as_str(self) -> &'static str {
        match self {
            WaveState::Pending => "pending",
            WaveState::Running => "running",
            WaveState::Baking => "baking",
            WaveState::Done => "done",
            WaveState::Halted => "halted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaveDoc {
    pub index: u32,
    pub name: String,
    pub tenant_ids: Vec<String>,
    pub state: WaveState,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantDoc {
    pub id: String,
    pub wave: u32,
    pub state: TenantState,
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub revisions: Vec<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub attempts: u32,
    /// The replica that ran it last.
    #[serde(default)]
    pub replica: String,
    /// Revisions its last run applied (0: it was already at the target).
    #[serde(default)]
    pub applied: u32,
    /// Lock timeouts retried on it.
    #[serde(default)]
    pub lock_retries: u32,
    /// Who held the lock at its last lock timeout, one line each (what the policy did too).
    #[serde(default)]
    pub blocked_by: Vec<String>,
}

/// The rollout as persisted under `<prefix>rollouts/<id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutDoc {
    pub id: String,
    pub spec: RolloutSpec,
    pub state: RolloutState,
    #[serde(default)]
    pub reason: String,
    pub waves: Vec<WaveDoc>,
    pub tenants: Vec<TenantDoc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: String,
    /// The request that started it: audit records of its revisions carry it.
    #[serde(default)]
    pub request_id: String,
    /// The replica that wrote this version (its owner then); empty once it is over.
    #[serde(default)]
    pub owner: String,
    /// Failures in a row so far (the budget's `max_consecutive_failures`), kept here so a
    /// new owner goes on counting where the last one stopped.
    #[serde(default)]
    pub consecutive_failures: u32,
    /// The lint verdict of each revision it may apply, as the gate saw them at its start.
    #[serde(default)]
    pub lint: Vec<crate::lint::RevisionVerdict>,
}

impl RolloutDoc {
    pub fn counts(&self) -> BTreeMap<&'static str, u32> {
        let mut counts = BTreeMap::new();
        for t in &self.tenants {
            *counts.entry(t.state.as_str()).or_insert(0) += 1;
        }
        counts
    }
}

/// Order tenants (by `order_label` in `order_values`' order, others after; then by id) and
/// cut them into waves: the canary (by count or labels), then batches by count or percent.
pub fn plan_waves(tenants: &[Tenant], plan: &WavePlan) -> Vec<WaveDoc> {
    let rank = |t: &Tenant| {
        t.labels
            .get(&plan.order_label)
            .and_then(|v| plan.order_values.iter().position(|o| o == v))
            .unwrap_or(plan.order_values.len())
    };
    let mut ordered: Vec<&Tenant> = tenants.iter().collect();
    ordered.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.id.cmp(&b.id)));
    let (canary, rest): (Vec<&Tenant>, Vec<&Tenant>) = if !plan.canary_labels.is_empty() {
        ordered.into_iter().partition(|t| {
            plan.canary_labels
                .iter()
                .all(|(k, v)| t.labels.get(k) == Some(v))
        })
    } else {
        let n = (plan.canary_count as usize).min(ordered.len());
        let rest = ordered.split_off(n);
        (ordered, rest)
    };
    let mut waves = vec![];
    let ids = |ts: &[&Tenant]| ts.iter().map(|t| t.id.to_string()).collect::<Vec<_>>();
    if !canary.is_empty() {
        waves.push(ids(&canary));
    }
    let batch = if plan.batch_count > 0 {
        plan.batch_count as usize
    } else if plan.batch_percent > 0 {
        (tenants.len() * plan.batch_percent.min(100) as usize).div_ceil(100)
    } else {
        rest.len()
    }
    .max(1);
    for chunk in rest.chunks(batch) {
        waves.push(ids(chunk));
    }
    let has_canary = !canary.is_empty();
    waves
        .into_iter()
        .enumerate()
        .map(|(i, tenant_ids)| WaveDoc {
            index: i as u32,
            name: if has_canary && i == 0 {
                "canary".into()
            } else {
                format!("wave {}", i + 1)
            },
            tenant_ids,
            state: WaveState::Pending,
        })
        .collect()
}

/// Failures counted for the budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub attempted: u32,
    pub failed: u32,
}

impl Tally {
    pub fn of<'a>(tenants: impl Iterator<Item = &'a TenantDoc>) -> Tally {
        let mut t = Tally::default();
        for d in tenants {
            match d.state {
                TenantState::Done => t.attempted += 1,
                TenantState::Failed => {
                    t.attempted += 1;
                    t.failed += 1;
                }
                _ => {}
            }
        }
        t
    }
}

/// Why the rollout must halt, if it must: the canary tolerates no failure; otherwise the
/// budget applies to the wave and to the whole rollout.
pub fn over_budget(
    budget: &FailureBudget,
    canary: bool,
    wave: Tally,
    overall: Tally,
    consecutive: u32,
) -> Option<String> {
    if canary && wave.failed > 0 {
        return Some("a canary tenant failed".into());
    }
    for (scope, t) in [("in this wave", wave), ("overall", overall)] {
        if budget.max_failures > 0 && t.failed > budget.max_failures {
            return Some(format!(
                "{} failures {scope}, more than the budget of {}",
                t.failed, budget.max_failures
            ));
        }
        if budget.max_failure_percent > 0
            && t.attempted > 0
            && u64::from(t.failed) * 100
                > u64::from(budget.max_failure_percent) * u64::from(t.attempted)
        {
            return Some(format!(
                "{} of {} attempted tenants failed {scope}, more than {}%",
                t.failed, t.attempted, budget.max_failure_percent
            ));
        }
    }
    if budget.max_consecutive_failures > 0 && consecutive >= budget.max_consecutive_failures {
        return Some(format!("{consecutive} consecutive failures"));
    }
    None
}

#[cfg(test)]
mod tests;
