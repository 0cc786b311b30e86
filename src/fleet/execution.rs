//! Running the engine on one tenant under its lock, to the end of the run: behind a
//! transaction-mode pooler, through the session connection when a non-transactional revision
//! needs one; after a lost connection (a cut, a server restart, a COMMIT whose outcome is
//! unknown), on a fresh connection, a bounded number of times — the engine reads the database
//! again under the same lock and fence, so a revision whose COMMIT landed is not applied twice
//! and one that did not is applied now; and never a statement after the lock's lease ended.

use std::time::Duration;

use std::collections::HashSet;

use tokio_postgres::SimpleQueryMessage;

use crate::engine::{Applied, Engine, EngineError, Event, Migrated, RunOptions, Settings, pinned};
use crate::lock::LockGuard;
use crate::model::{Direction, RevisionId};
use crate::registry::pools::PooledClient;
use crate::registry::{ConnectionSpec, Pools};
use crate::revision::plan::Target;
use crate::revision::{App, Resolved};

/// Reconnects after a lost connection, with these pauses: about 15 s in all, long enough for a
/// server restart or a failover of a managed database's proxy.
const RECONNECT_PAUSES: [Duration; 5] = [
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
];

/// How a run under a lock ended.
pub(super) enum Ended {
    /// The engine's answer.
    Ran(Result<Migrated, EngineError>),
    /// The lock's lease ended (lost, or its deadline passed): nothing more was sent, the
    /// connection in use was cancelled and thrown away.
    LeaseLost,
    /// After a lost connection, no new one could be made.
    Unreachable(crate::registry::pools::PoolError),
}

/// One tenant's run: what to apply, where, under which lock.
pub(super) struct Execution<'a> {
    pub pools: &'a Pools,
    pub app: &'a App,
    pub values: &'a Resolved,
    pub settings: &'a Settings,
    pub connection: &'a ConnectionSpec,
    pub direction: Direction,
    pub target: &'a Target,
    pub guard: &'a LockGuard,
    pub opts: &'a RunOptions<'a>,
    /// Told before each reconnect: the attempt (1-based) and why.
    pub on_reconnect: &'a (dyn Fn(u32, &str) + Send + Sync),
}

impl Execution<'_> {
    /// Runs on the first connection, or, when it failed as a restarting server fails (`Err`
    /// with why), on a new one after the first pause.
    pub async fn run(&self, first: Result<PooledClient, String>) -> Ended {
        let mut pauses = RECONNECT_PAUSES.iter();
        let mut attempt = 0u32;
        let mut conn = None;
        match first {
            Ok(c) => conn = Some(c),
            Err(why) => {
                attempt += 1;
                let pause = pauses.next().expect("pauses");
                if !self.pause_before(attempt, &why, *pause).await {
                    return Ended::LeaseLost;
                }
            }
        }
        // Revisions this hold committed before the last lost connection, and those already told.
        let mut confirmed: Vec<Applied> = vec![];
        let mut told: HashSet<RevisionId> = HashSet::new();
        loop {
            let result = match conn.take() {
                Some(c) => self.once(c).await,
                None => match self.pools.get(self.connection).await {
                    Ok(c) => {
                        confirmed = self.committed_under_this_lock(&c).await;
                        for a in confirmed.iter().filter(|a| !told.contains(&a.revision)) {
                            (self.opts.events)(Event::RevisionDone(a.clone()));
                        }
                        told.extend(confirmed.iter().map(|a| a.revision.clone()));
                        self.once(c).await
                    }
                    Err(e) => Ended::Unreachable(e),
                },
            };
            let result = match result {
                Ended::Ran(Ok(mut run)) if !confirmed.is_empty() => {
                    run.applied.splice(0..0, confirmed);
                    return Ended::Ran(Ok(run));
                }
                Ended::Ran(Err(EngineError::StepFailed {
                    failure,
                    mut applied,
                })) => {
                    told.extend(applied.iter().cloned());
                    let earlier = confirmed.iter().map(|a| a.revision.clone());
                    applied.splice(0..0, earlier);
                    Ended::Ran(Err(EngineError::StepFailed { failure, applied }))
                }
                other => other,
            };
            let why = match &result {
                Ended::Ran(Err(e)) if e.connection_lost() => e.to_string(),
                // Still down (restarting): reconnects left are spent waiting for it.
                Ended::Unreachable(e @ crate::registry::pools::PoolError::Connect { .. }) => {
                    e.to_string()
                }
                _ => return result,
            };
            let Some(pause) = pauses.next().filter(|_| self.guard.valid()) else {
                return result;
            };
            attempt += 1;
            tracing::warn!(attempt, error = %why, "connection lost: reconnecting, then resuming from what the database recorded");
            if !self.pause_before(attempt, &why, *pause).await {
                return Ended::LeaseLost;
            }
        }
    }

    /// Tells reconnect `attempt` and why, then waits `pause`; `false` when the lease ended
    /// meanwhile (nothing more is sent then).
    async fn pause_before(&self, attempt: u32, why: &str, pause: Duration) -> bool {
        (self.on_reconnect)(attempt, why);
        tokio::select! {
            _ = tokio::time::sleep(pause) => true,
            _ = self.guard.lost() => false,
        }
    }

    /// What the database recorded under this lock's fence token, in order: after a lost
    /// connection, the revisions whose COMMIT landed though its answer never came (told now).
    /// Empty when nothing was, or the history table is not there yet.
    async fn committed_under_this_lock(&self, conn: &PooledClient) -> Vec<Applied> {
        let Some(fence) = self.opts.fence else {
            return vec![];
        };
        let sql = pinned(&format!(
            "SELECT revision, direction, duration_ms::pg_catalog.text, skipped::pg_catalog.text FROM {} WHERE fence_token OPERATOR(pg_catalog.=) {} ORDER BY id",
            self.settings.tables.history.sql(),
            fence.0
        ));
        let Ok(messages) = conn.simple_query(&sql).await else {
            return vec![];
        };
        messages
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            })
            .filter_map(|r| {
                let revision: RevisionId = r.get(0)?.parse().ok()?;
                let skipped_by = (r.get(3) == Some("t"))
                    .then(|| self.app.graph.node(revision.as_str()))
                    .flatten()
                    .and_then(|n| self.app.graph.revision(n).condition.clone());
                Some(Applied {
                    revision,
                    direction: match r.get(1)? {
                        "downgrade" => Direction::Downgrade,
                        _ => Direction::Upgrade,
                    },
                    duration: Duration::from_millis(r.get(2)?.parse().ok()?),
                    skipped_by,
                    attempts: 1,
                })
            })
            .collect()
    }

    /// One engine run on `conn` (and on the session connection if it asks for one).
    async fn once(&self, mut conn: PooledClient) -> Ended {
        let engine = Engine::new(self.app, self.values, self.settings);
        let result = self.guarded(&engine, &mut conn).await;
        if let Ended::Ran(Err(EngineError::NeedsSession { revision })) = &result
            && self.connection.options.session.is_some()
        {
            tracing::info!(%revision, "non-transactional revision: running through the session connection");
            drop(conn);
            let direct = self.settings.for_pooler(crate::pg::Pooler::None);
            let engine = Engine::new(self.app, self.values, &direct);
            return match self.pools.get(&self.connection.session_spec()).await {
                Err(e) => Ended::Ran(Err(EngineError::Setting {
                    key: "connection.session_host",
                    message: e.to_string(),
                })),
                Ok(mut session) => self.guarded(&engine, &mut session).await,
            };
        }
        result
    }

    /// The engine on `conn`, stopped at once when the lease ends: the statement in flight is
    /// cancelled and the connection never reused.
    async fn guarded(&self, engine: &Engine<'_>, conn: &mut PooledClient) -> Ended {
        let result = tokio::select! {
            r = engine.migrate(conn, self.direction, self.target, self.opts) => Some(r),
            _ = self.guard.lost() => None,
        };
        let lease_ended = match &result {
            None | Some(Err(EngineError::LeaseExpired)) => true,
            // Whatever went wrong, after the deadline the run is the next holder's.
            Some(Err(_)) if !self.guard.valid() => true,
            Some(Err(e)) if e.connection_lost() => {
                conn.poison();
                false
            }
            // Its work on this database is done: the connection is not kept idle.
            Some(_) => {
                conn.retire();
                false
            }
        };
        if lease_ended {
            let _ = conn.canceller().cancel().await;
            conn.poison();
            self.pools.discard(&self.connection.database_key());
            return Ended::LeaseLost;
        }
        Ended::Ran(result.expect("checked"))
    }
}
