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
        if let Some(d) = &self.detail {
            write!(f, "\n  detail: {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
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
        "another fleetmig process is migrating this database (its migration lock is held); wait for it to finish, or find it in pg_stat_activity where application_name = 'fleetmig'"
    )]
    LockHeld,
    #[error(
        "fence token {ours} is stale: a newer lock holder (token {theirs}) has written to this database; this process stopped before applying anything more"
    )]
    StaleFence { ours: FenceToken, theirs: i64 },
    #[error("the database changed under us: {0}")]
    StateChanged(String),
    #[error(
        "{location}: index {index} was built but is INVALID (pg_index.indisvalid = false); the next run drops and rebuilds it"
    )]
    IndexInvalid { location: String, index: String },
    #[error("stopped before the next revision (cancelled or shutting down){}", applied_note(.applied))]
    Stopped { applied: Vec<RevisionId> },
    #[error(
        "revision {revision} is non-transactional (e.g. CREATE INDEX CONCURRENTLY runs outside a transaction): it cannot run through a transaction-mode pooler. Name a session connection to the same database (the server itself, or a session-mode pool): CLI --session-url (FLEETMIG_SESSION_URL), tenant connection.session_host. Nothing was applied"
    )]
    NeedsSession { revision: RevisionId },
    #[error("invalid setting {key}: {message}")]
    Setting { key: &'static str, message: String },
}

fn applied_note(applied: &[RevisionId]) -> String {
    if applied.is_empty() {
        String::new()
    } else {
        format!(
            " (applied in this run before the failure: {})",
            applied
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
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
