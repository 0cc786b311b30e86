//! Errors of the single-database engine. Each says what happened and what to do.

use std::fmt;

use crate::model::{Direction, FenceToken, RevisionId};
use crate::revision::plan::PlanError;
use crate::revision::render::RenderError;

/// Where and how one revision failed.
#[derive(Debug, Clone)]
pub struct StepFailure {
    pub revision: RevisionId,
    pub direction: Direction,
    /// `file:line` of the failing statement, when a statement failed.
    pub location: Option<String>,
    pub sqlstate: Option<String>,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    pub attempts: u32,
    /// The connection broke during the statement: its outcome (a COMMIT's too) is unknown
    /// until the database is read again.
    pub connection_lost: bool,
    /// Who held the lock when the lock_timeout retries ran out: `waited 3 x 2 s behind ...`.
    pub blocked: Option<String>,
    /// Revisions of the same transaction before this one, rolled back with it.
    pub rolled_back: Vec<RevisionId>,
}

impl fmt::Display for StepFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} of revision {} failed", self.direction, self.revision)?;
        if let Some(loc) = &self.location {
            write!(f, " at {loc}")?;
        }
        if let Some(code) = &self.sqlstate {
            write!(f, ": SQLSTATE {code}")?;
        }
        write!(f, ": {}", self.message)?;
        if self.attempts > 1 {
            write!(f, " (after {} attempts)", self.attempts)?;
        }
        if let Some(b) = &self.blocked {
            write!(f, "\n  blocked: {b}")?;
        }
        if let Some(d) = &self.detail {
            write!(f, "\n  detail: {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        if !self.rolled_back.is_empty() {
            write!(
                f,
                "\n  rolled back with it (the same transaction): {}",
                self.rolled_back
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )?;
        }
        Ok(())
    }
}

/// A revision whose file changed after it was applied.
#[derive(Debug, Clone)]
pub struct ChangedRevision {
    pub revision: RevisionId,
    pub path: String,
    pub applied_checksum: String,
    pub file_checksum: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Connect(#[source] crate::pg::ConnectError),
    #[error("database error while {context}: {}", describe_pg(source))]
    Database {
        context: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error("{failure}\n  the database is left at the last fully applied revision{}", applied_note(.applied))]
    StepFailed {
        failure: Box<StepFailure>,
        applied: Vec<RevisionId>,
    },
    #[error("{}\n  revert the file(s), or pass --allow-changed if the change is intended (the database keeps the old version)", changed_list(.0))]
    ChecksumMismatch(Vec<ChangedRevision>),
    #[error(
        "another fleetmig process is migrating this database (its migration lock is held); wait for it to finish, or find it in pg_stat_activity where application_name LIKE 'fleetmig%'"
    )]
    LockHeld,
    #[error(
        "fence token {ours} is stale: a newer lock holder (token {theirs}) has written to this database; this process stopped before applying anything more"
    )]
    StaleFence { ours: FenceToken, theirs: i64 },
    #[error("the database changed under us: {0}")]
    StateChanged(String),
    #[error("stopped before the next revision (cancelled or shutting down){}", applied_note(.applied))]
    Stopped { applied: Vec<RevisionId> },
    #[error(
        "revision {revision} is non-transactional (e.g. CREATE INDEX CONCURRENTLY runs outside a transaction): it cannot run through a transaction-mode pooler. Name a session connection to the same database (the server itself, or a session-mode pool): CLI --session-url (FLEETMIG_SESSION_URL), tenant connection.session_host. Nothing was applied"
    )]
    NeedsSession { revision: RevisionId },
    #[error(
        "the distributed lock's lease deadline passed: stopped before sending anything more (another holder or a retry finishes this database)"
    )]
    LeaseExpired,
    #[error("invalid setting {key}: {message}")]
    Setting { key: &'static str, message: String },
    /// A statement of the app's scratch prelude failed.
    #[error("{location}: {}", describe_pg(source))]
    Prelude {
        location: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// Something failed on a scratch database (adopt, verify): never the user's own.
    #[error("{}", on_scratch(.database, .template, .manifest, .source))]
    Scratch {
        database: String,
        template: String,
        /// The app's manifest, where `[scratch]` is declared.
        manifest: String,
        source: Box<EngineError>,
    },
}

fn on_scratch(database: &str, template: &str, manifest: &str, source: &EngineError) -> String {
    let what = match source {
        // The scratch database is dropped: "the database is left at ..." would mislead.
        EngineError::StepFailed { failure, applied } => format!(
            "{failure}{}",
            if applied.is_empty() {
                String::new()
            } else {
                format!(
                    "\n  replayed there before the failure: {}",
                    summary(applied)
                )
            }
        ),
        other => other.to_string(),
    };
    format!(
        "on the scratch database {database} (created from {template} on the same server to replay this app's revisions, then dropped; your database was not changed): {what}\n  if the revisions assume objects made outside them, declare what scratch databases need in {manifest}: [scratch] template = \"<a database that has them>\" or prelude = \"<a SQL file in the app directory>\""
    )
}

fn applied_note(applied: &[RevisionId]) -> String {
    if applied.is_empty() {
        String::new()
    } else {
        format!(
            " (applied in this run before the failure: {})",
            summary(applied)
        )
    }
}

/// Revisions of a run for a message: how many, the first and the last (a list of all of
/// them made a 4.7 kB line at 246 revisions).
pub fn summary(revisions: &[RevisionId]) -> String {
    match revisions {
        [] => "none".to_string(),
        [one] => format!("1 revision, {one}"),
        [first, .., last] => format!("{} revisions, from {first} to {last}", revisions.len()),
    }
}

fn changed_list(changed: &[ChangedRevision]) -> String {
    let mut s = String::from("revision file(s) changed since they were applied to this database:");
    for c in changed {
        s.push_str(&format!(
            "\n  {} ({}): applied with checksum {}, file now {}",
            c.revision,
            c.path,
            &c.applied_checksum[..c.applied_checksum.len().min(12)],
            &c.file_checksum[..12]
        ));
    }
    s
}

impl EngineError {
    pub(crate) fn db(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> EngineError {
        move |source| EngineError::Database { context, source }
    }

    /// The connection broke or could not be made: reconnecting may finish the run (the
    /// database, read again under the same lock, says what the last COMMIT did).
    pub fn connection_lost(&self) -> bool {
        match self {
            EngineError::StepFailed { failure, .. } => failure.connection_lost,
            EngineError::Database { source, .. } => connection_broke(source),
            EngineError::Connect(_) => true,
            _ => false,
        }
    }

    /// The SQLSTATE of the underlying failure, if any.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            EngineError::StepFailed { failure, .. } => failure.sqlstate.as_deref(),
            EngineError::Database { source, .. } => source.code().map(|c| c.code()),
            EngineError::Connect(source) => source.sqlstate(),
            _ => None,
        }
    }
}

/// Whether `e` means the connection is gone (closed, reset, or the server shutting down or
/// ending this session), rather than a statement the server refused.
pub(crate) fn connection_broke(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        // admin_shutdown, crash_shutdown, cannot_connect_now, database_dropped
        Some(c) => matches!(c.code(), "57P01" | "57P02" | "57P03" | "57P04"),
        None => e.as_db_error().is_none(),
    }
}

/// A tokio-postgres error with what the server said (its `Display` alone says only "db error").
pub fn describe_pg(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => {
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(inner) = source {
                s.push_str(&format!(": {inner}"));
                source = inner.source();
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_run_is_summarised_not_listed() {
        let applied: Vec<RevisionId> = (1..=246)
            .map(|i| format!("r{i:03}").parse().unwrap())
            .collect();
        let e = EngineError::StepFailed {
            failure: Box::new(StepFailure {
                revision: "r247".parse().unwrap(),
                direction: Direction::Upgrade,
                location: Some("m/r247.sql:4:9".into()),
                sqlstate: Some("42P01".into()),
                message: "relation \"nowhere\" does not exist".into(),
                blocked: None,
                detail: None,
                hint: None,
                attempts: 1,
                connection_lost: false,
                rolled_back: vec![],
            }),
            applied: applied.clone(),
        };
        let m = e.to_string();
        assert!(
            m.contains(
                "(applied in this run before the failure: 246 revisions, from r001 to r246)"
            ),
            "{m}"
        );
        assert!(m.len() < 300, "{} bytes: {m}", m.len());
        assert!(
            EngineError::Stopped {
                applied: applied[..1].to_vec()
            }
            .to_string()
            .ends_with("(applied in this run before the failure: 1 revision, r001)")
        );
    }
}
