//! What a job reports, as plain data (the gRPC layer converts it to protobuf).

use std::time::Duration;

use crate::model::Direction;

#[derive(Debug, Clone, PartialEq)]
pub enum JobEvent {
    Accepted {
        job_id: String,
        app: String,
        target: String,
        direction: Direction,
        tenant_ids: Vec<String>,
        dry_run: bool,
    },
    Tenant {
        tenant_id: String,
        event: TenantEvent,
    },
    Summary(Summary),
}

#[derive(Debug, Clone, PartialEq)]
pub enum TenantEvent {
    Queued,
    WaitingForLock {
        database_key: String,
    },
    Locked {
        fence_token: i64,
        wait: Duration,
    },
    RevisionStarted {
        revision: String,
        direction: Direction,
    },
    RevisionApplied {
        revision: String,
        direction: Direction,
        duration: Duration,
        skipped_by_condition: Option<String>,
        attempts: u32,
    },
    LockRetry {
        revision: String,
        attempt: u32,
        delay: Duration,
        message: String,
        blockers: Vec<crate::engine::blockers::Blocker>,
    },
    /// The connection was lost (or a COMMIT's outcome was unknown): a new one is made and the
    /// run resumes from what the database recorded, under the same lock.
    Reconnected {
        attempt: u32,
        reason: String,
    },
    UpToDate {
        revisions: Vec<String>,
    },
    Done {
        revisions: Vec<String>,
        applied: u32,
        duration: Duration,
    },
    Failed(Failure),
    Skipped {
        reason: String,
    },
    /// Left to another holder of its lock (another replica sharing the rollout, or another
    /// job): not attempted by this job.
    Busy {
        holder: String,
    },
    Interrupted {
        reason: String,
        applied: Vec<String>,
    },
    Planned {
        revisions: Vec<String>,
        sql: String,
    },
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Failure {
    pub revision: String,
    pub sqlstate: String,
    pub message: String,
    pub location: String,
    pub applied: Vec<String>,
}

/// How each tenant of a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    UpToDate,
    Failed,
    Skipped,
    Interrupted,
    Planned,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Summary {
    pub job_id: String,
    pub tenants: u32,
    pub done: u32,
    pub up_to_date: u32,
    pub failed: u32,
    pub skipped: u32,
    pub interrupted: u32,
    pub planned: u32,
    pub wall_time: Duration,
    pub cancelled: bool,
}

impl Summary {
    pub fn count(&mut self, outcome: Outcome) {
        let slot = match outcome {
            Outcome::Done => &mut self.done,
            Outcome::UpToDate => &mut self.up_to_date,
            Outcome::Failed => &mut self.failed,
            Outcome::Skipped => &mut self.skipped,
            Outcome::Interrupted => &mut self.interrupted,
            Outcome::Planned => &mut self.planned,
        };
        *slot += 1;
    }
}
