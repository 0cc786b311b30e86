//! A tenant's audit record: each revision of the run gets its log line as it ends, and the run
//! one record in etcd naming them all (with checksums and outcomes), written when the run ends,
//! however it ends. One etcd record per tenant, not per revision: a history of hundreds of
//! revisions costs etcd no more requests than a short one, and the store keeps as many runs.

use std::sync::{Arc, Mutex};

use crate::audit::{AuditLog, AuditRecord, RevisionOutcome};
use crate::auth::Caller;
use crate::model::{Direction, RevisionId};
use crate::revision::App;

pub struct RunAudit {
    log: AuditLog,
    app: Arc<App>,
    /// The run's record, without its revisions yet.
    record: AuditRecord,
    revisions: Mutex<Vec<RevisionOutcome>>,
    /// Why the run stopped between two revisions (a cancel, a shutdown), if it did.
    stopped: Mutex<Option<String>>,
}

impl RunAudit {
    pub fn new(
        log: AuditLog,
        caller: &Caller,
        app: Arc<App>,
        direction: Direction,
        tenant: &str,
        fence_token: i64,
    ) -> RunAudit {
        let mut record =
            AuditRecord::new(caller, format!("{} tenant", direction.as_str()), "").tenant(tenant);
        record.fence_token = Some(fence_token);
        RunAudit {
            log,
            app,
            record,
            revisions: Mutex::new(vec![]),
            stopped: Mutex::new(None),
        }
    }

    /// One revision's outcome (`applied`, `skipped (...)`, `failed: ...`, `interrupted: ...`):
    /// its log line now (who asked, the file's checksum, the fence token), its place in the
    /// run's record.
    pub fn revision(&self, direction: Direction, revision: &RevisionId, outcome: String) {
        let checksum = self
            .app
            .graph
            .node(revision.as_str())
            .map(|n| self.app.graph.revision(n).checksum.clone());
        let mut line = self.record.clone();
        line.action = format!("{} revision", direction.as_str());
        line.revision = Some(revision.to_string());
        line.checksum = checksum.clone();
        line.outcome = outcome.clone();
        self.log.log(&line);
        self.revisions.lock().unwrap().push(RevisionOutcome {
            revision: revision.to_string(),
            checksum,
            outcome,
        });
    }

    /// The revisions done so far (applied, or skipped by their condition), in order.
    pub fn done_so_far(&self) -> Vec<String> {
        let revisions = self.revisions.lock().unwrap();
        revisions
            .iter()
            .filter(|r| r.done())
            .map(|r| r.revision.clone())
            .collect()
    }

    /// The run stopped between two revisions (`reason`): the record says so, not `done`.
    pub fn stopped(&self, reason: &str) {
        *self.stopped.lock().unwrap() = Some(format!("interrupted: {reason}"));
    }
}

impl Drop for RunAudit {
    fn drop(&mut self) {
        let revisions = std::mem::take(
            self.revisions
                .get_mut()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        let stopped = self
            .stopped
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(record) = run_record(&self.record, revisions, stopped) {
            self.log.record(record);
        }
    }
}

/// The run's record, if it touched any revision: `done` when every one was applied or
/// skipped, the last one's failure or interruption, or why it stopped between two.
fn run_record(
    base: &AuditRecord,
    revisions: Vec<RevisionOutcome>,
    stopped: Option<String>,
) -> Option<AuditRecord> {
    let last = revisions.last()?;
    let mut record = base.clone();
    record.outcome = match stopped {
        Some(why) => why,
        None if last.done() => "done".into(),
        None => last.outcome.clone(),
    };
    record.revision = Some(last.revision.clone());
    record.revisions = revisions;
    Some(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(revision: &str, outcome: &str) -> RevisionOutcome {
        RevisionOutcome {
            revision: revision.into(),
            checksum: Some(format!("sum-{revision}")),
            outcome: outcome.into(),
        }
    }

    #[test]
    fn a_runs_outcome_is_done_its_failure_or_why_it_stopped() {
        let caller = Caller {
            subject: "ops".into(),
            via: crate::auth::Via::Anonymous,
            scopes: vec![],
            request_id: "r".into(),
            certificate: None,
        };
        let base = AuditRecord::new(&caller, "upgrade tenant", "").tenant("t1");
        // Nothing touched (up to date): no record.
        assert!(run_record(&base, vec![], None).is_none());
        let done = run_record(
            &base,
            vec![
                outcome("a", "applied"),
                outcome("b", "skipped (F is false)"),
            ],
            None,
        )
        .unwrap();
        assert_eq!(
            (done.outcome.as_str(), done.revision.as_deref()),
            ("done", Some("b"))
        );
        assert_eq!(done.revisions.len(), 2);
        assert_eq!(done.tenant.as_deref(), Some("t1"));
        let failed = run_record(
            &base,
            vec![
                outcome("a", "applied"),
                outcome("b", "failed: SQLSTATE 42P07: exists"),
            ],
            None,
        )
        .unwrap();
        assert_eq!(failed.outcome, "failed: SQLSTATE 42P07: exists");
        let stopped = run_record(
            &base,
            vec![outcome("a", "applied")],
            Some("interrupted: the job was cancelled".into()),
        )
        .unwrap();
        assert_eq!(stopped.outcome, "interrupted: the job was cancelled");
        assert_eq!(stopped.revision.as_deref(), Some("a"));
    }
}
