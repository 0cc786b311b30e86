//! Ending a stale holder's session. A run that holds a database's distributed lock with a
//! fence token finds the migration lock (the advisory lock of [`super::Engine::open`]) taken
//! by another session: if that session is fleetmig's, under an older fence token (its
//! `application_name` says which), its holder's lease has ended — it is paused, frozen or cut
//! off, and its session only lingers until TCP gives up. After a grace period it is ended
//! with `pg_terminate_backend`, and the run proceeds. Anything else holding the lock (a
//! developer's `fleetmig` CLI run, another program) is left alone: the run fails as before.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::blockers::key_halves;
use super::{Engine, EngineError, RunOptions, pinned, rows_of};
use crate::model::FenceToken;
use crate::revision::placeholder::quote_literal;

/// How long a stale holder's session gets to let go by itself.
pub const GRACE: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(250);

/// A session holding the migration lock.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Holder {
    pid: i32,
    application_name: String,
    /// When its backend started: with the pid, names the session and no later one that
    /// reuses the pid.
    backend_start: String,
}

impl Holder {
    /// The fence token of a fleetmig run under a distributed lock, from its application_name.
    fn fence(&self) -> Option<FenceToken> {
        self.application_name
            .strip_prefix("fleetmig fence=")
            .and_then(|t| t.parse().ok())
            .map(FenceToken)
    }
}

/// The other sessions holding the advisory lock `key` in this database.
async fn holders(client: &Client, key: i64) -> Result<Vec<Holder>, EngineError> {
    let (hi, lo) = key_halves(key);
    let sql = format!(
        "SELECT a.pid::pg_catalog.text, COALESCE(a.application_name, ''), a.backend_start::pg_catalog.text FROM pg_catalog.pg_locks l \
         JOIN pg_catalog.pg_stat_activity a ON a.pid OPERATOR(pg_catalog.=) l.pid \
         WHERE l.locktype OPERATOR(pg_catalog.=) 'advisory' AND l.granted \
         AND l.database OPERATOR(pg_catalog.=) (SELECT oid FROM pg_catalog.pg_database WHERE datname OPERATOR(pg_catalog.=) pg_catalog.current_database()) \
         AND l.classid OPERATOR(pg_catalog.=) {hi}::pg_catalog.oid AND l.objid OPERATOR(pg_catalog.=) {lo}::pg_catalog.oid \
         AND l.objsubid OPERATOR(pg_catalog.=) 1 AND l.pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid()"
    );
    let rows = rows_of(
        &client
            .simple_query(&pinned(&sql))
            .await
            .map_err(EngineError::db("looking for the migration lock's holder"))?,
    );
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            Some(Holder {
                pid: r.first()?.as_deref()?.parse().ok()?,
                application_name: r.get(1)?.clone().unwrap_or_default(),
                backend_start: r.get(2)?.clone()?,
            })
        })
        .collect())
}

/// Wait for stale holders to let go, end those that do not within [`GRACE`], and return
/// so the caller can take the lock again. [`EngineError::LockHeld`] when a holder is not a
/// stale fleetmig run (or nobody can tell).
pub(crate) async fn end_stale_holder(
    engine: &Engine<'_>,
    client: &Client,
    opts: &RunOptions<'_>,
) -> Result<(), EngineError> {
    let ours = opts.fence.ok_or(EngineError::LockHeld)?;
    let key = engine.lock_key();
    let started = Instant::now();
    loop {
        opts.ensure_live()?;
        let found = holders(client, key).await?;
        if found.is_empty() {
            return Ok(());
        }
        if found
            .iter()
            .any(|h| h.fence().is_none_or(|theirs| theirs >= ours))
        {
            return Err(EngineError::LockHeld);
        }
        if started.elapsed() >= GRACE {
            for h in &found {
                tracing::warn!(
                    pid = h.pid,
                    application_name = %h.application_name,
                    our_fence = ours.0,
                    "ending the session of a stale lock holder (its lease ended; it still held the migration lock)"
                );
                client
                    .simple_query(&terminate_sql(h))
                    .await
                    .map_err(EngineError::db("ending a stale holder's session"))?;
            }
            // The lock goes when the backend has exited.
            let deadline = Instant::now() + GRACE;
            while !holders(client, key).await?.is_empty() {
                if Instant::now() > deadline {
                    return Err(EngineError::LockHeld);
                }
                tokio::time::sleep(POLL).await;
            }
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Ends the holder's session, and only it: a backend that has since exited and left its
/// pid to another session, or that is no longer this stale run's, is not signalled.
fn terminate_sql(h: &Holder) -> String {
    pinned(&format!(
        "SELECT pg_catalog.pg_terminate_backend(a.pid) FROM pg_catalog.pg_stat_activity a \
         WHERE a.pid OPERATOR(pg_catalog.=) {pid} \
           AND a.backend_start OPERATOR(pg_catalog.=) {start}::pg_catalog.timestamptz \
           AND a.application_name OPERATOR(pg_catalog.=) {name}",
        pid = h.pid,
        start = quote_literal(&h.backend_start),
        name = quote_literal(&h.application_name),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_fleetmig_runs_with_a_fence_token_are_recognised() {
        let h = |name: &str| Holder {
            pid: 1,
            application_name: name.into(),
            backend_start: String::new(),
        };
        assert_eq!(h("fleetmig fence=42").fence(), Some(FenceToken(42)));
        assert_eq!(h("fleetmig").fence(), None, "a CLI run");
        assert_eq!(h("api-server").fence(), None);
        assert_eq!(h("fleetmig fence=x").fence(), None);
    }

    #[test]
    fn only_the_seen_session_is_terminated() {
        let sql = terminate_sql(&Holder {
            pid: 4242,
            application_name: "fleetmig fence=7".into(),
            backend_start: "2026-12-06 13:00:00.123+00".into(),
        });
        assert!(sql.contains("a.pid OPERATOR(pg_catalog.=) 4242"), "{sql}");
        assert!(
            sql.contains("a.backend_start OPERATOR(pg_catalog.=) '2026-12-06 13:00:00.123+00'"),
            "{sql}"
        );
        assert!(
            sql.contains("a.application_name OPERATOR(pg_catalog.=) 'fleetmig fence=7'"),
            "{sql}"
        );
    }
}
