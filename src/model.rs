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
