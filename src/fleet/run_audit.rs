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
}

impl Drop for RunAudit {
    /// The run's record, if it touched any revision: `done` when every one was applied or
    /// skipped, or the last one's failure or interruption.
    fn drop(&mut self) {
        let revisions = std::mem::take(
            self.revisions
                .get_mut()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        let Some(last) = revisions.last() else {
            return;
        };
        let mut record = self.record.clone();
        record.outcome = match last.outcome.as_str() {
            o if o == "applied" || o.starts_with("skipped") => "done".into(),
            o => o.to_string(),
        };
        record.revision = Some(last.revision.clone());
        record.revisions = revisions;
        self.log.record(record);
    }
}
