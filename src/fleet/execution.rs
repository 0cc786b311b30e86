//! Running the engine on one tenant under its lock, to the end of the run: behind a
//! transaction-mode pooler, through the session connection when a non-transactional revision
//! needs one; after a lost connection (a cut, a server restart, a COMMIT whose outcome is
//! unknown), on a fresh connection, a bounded number of times — the engine reads the database
//! again under the same lock and fence, so a revision whose COMMIT landed is not applied twice
//! and one that did not is applied now; and never a statement after the lock's lease ended.

use std::time::Duration;

use crate::engine::{Engine, EngineError, Migrated, RunOptions, Settings};
use crate::lock::LockGuard;
use crate::model::Direction;
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
    pub async fn run(&self, conn: PooledClient) -> Ended {
        let mut conn = Some(conn);
        let mut pauses = RECONNECT_PAUSES.iter();
        let mut attempt = 0u32;
        loop {
            let result = match conn.take() {
                Some(c) => self.once(c).await,
                None => match self.pools.get(self.connection).await {
                    Ok(c) => self.once(c).await,
                    Err(e) => Ended::Unreachable(e),
                },
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
            (self.on_reconnect)(attempt, &why);
            tokio::select! {
                _ = tokio::time::sleep(*pause) => {}
                _ = self.guard.lost() => return Ended::LeaseLost,
            }
        }
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
            Some(_) => false,
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
