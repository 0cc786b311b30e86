//! Newtypes and enums shared by every layer. No I/O here.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest revision id: `alembic_version.version_num` is `varchar(32)`.
pub const MAX_REVISION_ID_LEN: usize = 32;

/// A revision id, as stored in `alembic_version.version_num`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RevisionId(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid revision id {0:?}: use 1 to {MAX_REVISION_ID_LEN} characters from A-Z a-z 0-9 _ - ."
)]
pub struct InvalidRevisionId(pub String);

impl RevisionId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for RevisionId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl FromStr for RevisionId {
    type Err = InvalidRevisionId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= MAX_REVISION_ID_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if ok {
            Ok(RevisionId(s.to_string()))
        } else {
            Err(InvalidRevisionId(s.to_string()))
        }
    }
}

impl TryFrom<String> for RevisionId {
    type Error = InvalidRevisionId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<RevisionId> for String {
    fn from(r: RevisionId) -> String {
        r.0
    }
}

impl fmt::Display for RevisionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Version rows for people: `base` when there are none, else the rows joined by `sep`.
pub fn version_label<T: fmt::Display>(rows: &[T], sep: &str) -> String {
    if rows.is_empty() {
        "base".to_string()
    } else {
        rows.iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(sep)
    }
}

/// Which way a revision is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Upgrade,
    Downgrade,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Upgrade => "upgrade",
            Direction::Downgrade => "downgrade",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a revision's statements are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransactionMode {
    /// The whole revision, its version-table change and its history row in one transaction.
    #[default]
    Revision,
    /// Each statement alone in autocommit (CREATE INDEX CONCURRENTLY and friends).
    None,
}

impl TransactionMode {
    /// Whether a revision of this mode runs its statements inside a transaction block: the one
    /// place that decides, for the linter (squawk's "assume in transaction") and whatever
    /// else needs to know. A transactional revision is in a transaction whether it runs in its
    /// own or grouped with its transactional neighbours of the same run; a `transaction: none`
    /// revision runs each statement alone, never in one.
    pub fn in_transaction_block(self) -> bool {
        match self {
            TransactionMode::Revision => true,
            TransactionMode::None => false,
        }
    }
}

/// A fencing token: the etcd lock key's create revision. Larger is newer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FenceToken(pub i64);

impl fmt::Display for FenceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_ids_are_validated() {
        assert!("0001".parse::<RevisionId>().is_ok());
        assert!("ae1027a6acf".parse::<RevisionId>().is_ok());
        assert!(
            "20251025_0000_phase2_ml_tables"
                .parse::<RevisionId>()
                .is_ok()
        );
        assert!("".parse::<RevisionId>().is_err());
        assert!("a".repeat(33).parse::<RevisionId>().is_err());
        assert!("x'; drop table t; --".parse::<RevisionId>().is_err());
        assert!("héllo".parse::<RevisionId>().is_err());
    }
}

/// What fleetmig does to the sessions that block a revision's lock (it always names them):
/// nothing (`report`, the default), or end those that match a criterion, with
/// `pg_cancel_backend` (`cancel`: their running query fails, and with it their transaction)
/// or `pg_terminate_backend` (`terminate`: their connection closes). Set per app
/// (`[blockers]` in its fleetmig.toml) or per run (a rollout, a CLI flag), which wins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlockerPolicy {
    pub action: BlockerAction,
    /// Blockers idle in transaction longer than this (holding locks, running nothing).
    #[serde(with = "humantime_serde")]
    pub idle_in_transaction_after: Option<std::time::Duration>,
    /// Blockers whose transaction is older than this, whatever they are doing.
    #[serde(with = "humantime_serde")]
    pub older_than: Option<std::time::Duration>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockerAction {
    #[default]
    Report,
    Cancel,
    Terminate,
}

impl BlockerAction {
    pub fn as_str(self) -> &'static str {
        match self {
            BlockerAction::Report => "report",
            BlockerAction::Cancel => "cancel",
            BlockerAction::Terminate => "terminate",
        }
    }

    pub fn parse(s: &str) -> Option<BlockerAction> {
        match s {
            "report" => Some(BlockerAction::Report),
            "cancel" => Some(BlockerAction::Cancel),
            "terminate" => Some(BlockerAction::Terminate),
            _ => None,
        }
    }
}

impl BlockerPolicy {
    /// Whether it ends any blocker at all.
    pub fn acts(&self) -> bool {
        self.action != BlockerAction::Report
    }

    /// An action needs a criterion and a criterion an action; `cancel` cannot end a session
    /// idle in transaction (it has no query to cancel: PostgreSQL ignores the request).
    pub fn validate(&self) -> Result<(), String> {
        let criteria = self.idle_in_transaction_after.is_some() || self.older_than.is_some();
        match self.action {
            BlockerAction::Report if criteria => Err(
                "idle_in_transaction_after/older_than need action = \"cancel\" or \"terminate\" (the default, \"report\", only names blockers)".into(),
            ),
            BlockerAction::Cancel | BlockerAction::Terminate if !criteria => Err(format!(
                "action = \"{}\" needs idle_in_transaction_after or older_than: which blockers to end",
                self.action.as_str()
            )),
            BlockerAction::Cancel if self.idle_in_transaction_after.is_some() => Err(
                "action = \"cancel\" cannot end a session idle in transaction (it runs no query, and PostgreSQL ignores the cancel); use action = \"terminate\" with idle_in_transaction_after".into(),
            ),
            _ => Ok(()),
        }
    }
}
