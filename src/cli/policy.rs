//! The blocker-policy flags shared by local upgrades, `fleet upgrade` and `rollout start`:
//! what to do to the sessions that block a revision's lock. Without them, the app's
//! `[blockers]` section decides (report only, by default).

use std::time::Duration;

use clap::Args;

use super::Failure;
use crate::model::{BlockerAction, BlockerPolicy};

#[derive(Debug, Clone, Default, Args)]
pub struct BlockerArgs {
    /// What to do to sessions blocking a revision's lock: `report` (name them), `cancel`
    /// (pg_cancel_backend) or `terminate` (pg_terminate_backend) those matching the flags
    /// below. Default: the app's [blockers] section (report only unless it says otherwise).
    #[arg(long = "blockers", value_name = "ACTION", value_parser = ["report", "cancel", "terminate"])]
    pub action: Option<String>,
    /// End blockers idle in transaction longer than this (e.g. 30s; needs terminate).
    #[arg(long = "blockers-idle-in-transaction", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub idle_in_transaction: Option<Duration>,
    /// End blockers whose transaction is older than this (e.g. 5m).
    #[arg(long = "blockers-older-than", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub older_than: Option<Duration>,
}

impl BlockerArgs {
    /// The policy the flags give, if any flag is given (checked: exit 2 naming the flag).
    pub fn policy(&self) -> Result<Option<BlockerPolicy>, Failure> {
        if self.action.is_none() && self.idle_in_transaction.is_none() && self.older_than.is_none()
        {
            return Ok(None);
        }
        let policy = BlockerPolicy {
            action: self
                .action
                .as_deref()
                .and_then(BlockerAction::parse)
                .unwrap_or_default(),
            idle_in_transaction_after: self.idle_in_transaction,
            older_than: self.older_than,
        };
        policy
            .validate()
            .map_err(|m| Failure::input(format!("--blockers: {m}")))?;
        Ok(Some(policy))
    }

    /// The flags as a request's policy (unset without flags: the daemon's app config decides).
    pub fn to_proto(&self) -> Result<Option<crate::grpc::proto::BlockerPolicy>, Failure> {
        Ok(self
            .policy()?
            .as_ref()
            .map(crate::grpc::convert::blocker_policy_to_proto))
    }
}
