//! Who blocks a migration. While a revision's statement waits for a lock, a second
//! connection to the same database asks PostgreSQL who holds it up: the migrating session is
//! the one waiting, so it cannot ask itself, and between attempts it waits for nothing
//! (`pg_blocking_pids` would name nobody). It is found by the advisory lock it holds for
//! its run (the same key through any pooler), its blockers by `pg_blocking_pids`, described
//! from `pg_stat_activity` and `pg_locks`, their queries normalised (no literal values).
//! Between attempts, an optional [`BlockerPolicy`] cancels or terminates the blockers that
//! match it. The engine's retry paths call [`Watch`]; nothing else here knows about them.

mod query;

use std::future::Future;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Serialize;
use tokio_postgres::Client;

pub(crate) use query::key_halves;
pub use query::normalise;

use crate::model::{BlockerAction, BlockerPolicy};

/// A connection for the diagnosis, to the same database as the migrating one.
pub trait Probe: Send + Sync {
    fn connect(&self) -> BoxFuture<'_, Result<Box<dyn ProbeClient>, String>>;
}

/// A connection a [`Probe`] hands out (a plain client, or one borrowed from a pool).
pub trait ProbeClient: Send + Sync {
    fn client(&self) -> &Client;
}

impl ProbeClient for Client {
    fn client(&self) -> &Client {
        self
    }
}

/// How a run diagnoses the sessions blocking it, and what it does about them.
pub struct Diagnose<'a> {
    pub probe: &'a dyn Probe,
    pub policy: BlockerPolicy,
}

/// A session blocking the migration, as PostgreSQL describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Blocker {
    pub pid: i32,
    pub application_name: String,
    pub user: String,
    /// Empty for a Unix socket (or a session the role may not see).
    pub client_addr: String,
    /// `active`, `idle in transaction`, ...; empty when the role may not see it.
    pub state: String,
    #[serde(with = "humantime_serde")]
    pub transaction_age: Option<Duration>,
    /// How long it has been in its state.
    #[serde(with = "humantime_serde")]
    pub state_age: Option<Duration>,
    /// `type:event` it waits on itself, if any (a blocker may be queued behind another).
    pub wait_event: String,
    /// Its current (or last) query, literals replaced by `$n`.
    pub query: String,
    /// The lock modes it holds on what the migration waits for.
    pub holds: String,
    /// What the migration waits for: `mode on relation`.
    pub wants: String,
    pub backend_type: String,
    /// When the session started: it identifies the session, not only its pid.
    #[serde(skip)]
    pub backend_start: String,
    /// What the policy did to it, if anything.
    pub action: String,
}

/// `14 min`, `3 s`, `250 ms`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{} ms", d.as_millis()),
        1..120 => format!("{s} s"),
        120..7200 => format!("{} min", s / 60),
        _ => format!("{} h", s / 3600),
    }
}

impl Blocker {
    /// `pid 4711 (app api-server, user app, from 10.0.0.5, idle in transaction for 14 min)`.
    pub fn summary(&self) -> String {
        let mut parts = vec![format!(
            "app {}",
            if self.application_name.is_empty() {
                "(none)"
            } else {
                &self.application_name
            }
        )];
        if !self.user.is_empty() {
            parts.push(format!("user {}", self.user));
        }
        if !self.client_addr.is_empty() {
            parts.push(format!("from {}", self.client_addr));
        }
        match (self.state.as_str(), self.state_age) {
            ("", _) => parts.push(
                "state not visible to this role (grant it pg_read_all_stats to see it)".into(),
            ),
            (state, Some(age)) => parts.push(format!("{state} for {}", human(age))),
            (state, None) => parts.push(state.to_string()),
        }
        if let Some(age) = self.transaction_age {
            parts.push(format!("transaction open {}", human(age)));
        }
        if !self.wait_event.is_empty() {
            parts.push(format!("itself waiting on {}", self.wait_event));
        }
        if !self.holds.is_empty() {
            parts.push(format!("holds {}", self.holds));
        }
        format!("pid {} ({})", self.pid, parts.join(", "))
    }

    /// [`Blocker::summary`], its query and what the policy did.
    pub fn describe(&self) -> String {
        let mut s = self.summary();
        if !self.query.is_empty() {
            s.push_str(": ");
            s.push_str(&self.query);
        }
        if !self.action.is_empty() {
            s.push_str(&format!(" [{}]", self.action));
        }
        s
    }

    /// Why the policy ends this blocker, if it does.
    fn matches(&self, policy: &BlockerPolicy) -> Option<String> {
        if let (Some(limit), Some(age)) = (policy.idle_in_transaction_after, self.state_age)
            && self.state.starts_with("idle in transaction")
            && age > limit
        {
            return Some(format!(
                "idle in transaction for {} > {}",
                human(age),
                human(limit)
            ));
        }
        if let (Some(limit), Some(age)) = (policy.older_than, self.transaction_age)
            && age > limit
        {
            return Some(format!(
                "transaction open {} > {}",
                human(age),
                human(limit)
            ));
        }
        None
    }
}

/// How long after an attempt starts the first diagnosis runs, at most (then every half
/// lock_timeout while the attempt lasts).
const FIRST_LOOK: Duration = Duration::from_secs(1);
/// How long a diagnosis may take to get its connection.
const CONNECT_WAIT: Duration = Duration::from_secs(5);
/// How long a diagnosis under way may finish after its attempt ended.
const FINISH_WAIT: Duration = Duration::from_millis(500);

/// One revision's (or statement's) watch over its attempts.
pub(crate) struct Watch<'a> {
    diagnose: Option<&'a Diagnose<'a>>,
    key: i64,
    first: Duration,
    every: Duration,
    conn: Option<Box<dyn ProbeClient>>,
    /// The blockers seen during the last attempt.
    pub seen: Vec<Blocker>,
    /// The last blockers seen at all (for the failure when retries run out).
    last: Vec<Blocker>,
    /// Why the diagnosis could not run, once said.
    unavailable: Option<String>,
}

impl<'a> Watch<'a> {
    /// `key`: the run's advisory lock; `lock_timeout`: what each attempt may wait.
    pub fn new(diagnose: Option<&'a Diagnose<'a>>, key: i64, lock_timeout: Duration) -> Self {
        let every = (lock_timeout / 2).max(Duration::from_millis(20));
        Watch {
            diagnose,
            key,
            first: every.min(FIRST_LOOK),
            every,
            conn: None,
            seen: vec![],
            last: vec![],
            unavailable: None,
        }
    }

    fn record(
        seen: &mut Vec<Blocker>,
        last: &mut Vec<Blocker>,
        unavailable: &mut Option<String>,
        found: Result<Vec<Blocker>, String>,
    ) {
        match found {
            Ok(b) if b.is_empty() => {}
            Ok(b) => {
                tracing::info!(blockers = %b.iter().map(Blocker::describe).collect::<Vec<_>>().join("; "), "the migration waits for a lock held by other sessions");
                *seen = b.clone();
                *last = b;
            }
            Err(e) => {
                if unavailable.is_none() {
                    tracing::warn!(error = %e, "cannot tell who blocks the migration");
                }
                *unavailable = Some(e);
            }
        }
    }

    /// Run `attempt`; while it lasts, look for its blockers (from a second connection).
    pub async fn during<T>(&mut self, attempt: impl Future<Output = T>) -> T {
        self.seen.clear();
        let Some(d) = self.diagnose else {
            return attempt.await;
        };
        tokio::pin!(attempt);
        let mut wait = self.first;
        loop {
            tokio::select! {
                biased;
                out = &mut attempt => return out,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = self.every;
            let diag = diagnose(d, self.key, &mut self.conn);
            tokio::pin!(diag);
            let found = tokio::select! {
                biased;
                found = &mut diag => found,
                out = &mut attempt => {
                    // It ended meanwhile; what the diagnosis finds still says who held it up.
                    if let Ok(found) = tokio::time::timeout(FINISH_WAIT, diag).await {
                        Self::record(&mut self.seen, &mut self.last, &mut self.unavailable, found);
                    }
                    return out;
                }
            };
            Self::record(&mut self.seen, &mut self.last, &mut self.unavailable, found);
        }
    }

    /// Between attempts: end the blockers the policy names, recording what was done to each.
    pub async fn act(&mut self) {
        let Some(d) = self.diagnose.filter(|d| d.policy.acts()) else {
            return;
        };
        let action = d.policy.action;
        for b in &mut self.seen {
            let Some(reason) = b.matches(&d.policy) else {
                continue;
            };
            if action == BlockerAction::Cancel && b.state.starts_with("idle in transaction") {
                b.action = "not cancelled: it is idle in transaction and runs no query to cancel (action = terminate would end it)".into();
                continue;
            }
            let (verb, done) = match action {
                BlockerAction::Terminate => ("terminate", "terminated"),
                _ => ("cancel", "cancelled"),
            };
            let outcome = match connection(d, &mut self.conn).await {
                Err(e) => Err(e),
                Ok(c) => c
                    .simple_query(&query::signal_sql(action, b))
                    .await
                    .map_err(|e| crate::engine::error::describe_pg(&e)),
            };
            b.action = match outcome {
                Ok(m)
                    if crate::engine::rows_of(&m)
                        .iter()
                        .any(|r| r[0].as_deref() == Some("t")) =>
                {
                    format!("{done} by fleetmig: {reason}")
                }
                Ok(_) => format!("not {done}: the session ended (or changed) before the signal"),
                Err(e) => format!("{verb} failed: {e}"),
            };
            tracing::warn!(pid = b.pid, application_name = %b.application_name, user = %b.user, outcome = %b.action, "blocker policy");
        }
        self.last.clone_from(&self.seen);
    }

    /// For the failure when retries run out: `waited 3 x 2 s behind pid 4711 (...)`.
    pub fn waited(&self, attempts: u32, lock_timeout: Duration) -> Option<String> {
        if self.last.is_empty() {
            return self
                .unavailable
                .as_ref()
                .map(|e| format!("who held the lock is unknown: {e}"));
        }
        Some(format!(
            "waited {attempts} x {} behind {}",
            human(lock_timeout),
            self.last
                .iter()
                .map(Blocker::describe)
                .collect::<Vec<_>>()
                .join("; and ")
        ))
    }
}

async fn connection<'c>(
    d: &Diagnose<'_>,
    conn: &'c mut Option<Box<dyn ProbeClient>>,
) -> Result<&'c Client, String> {
    if conn.is_none() {
        let c = tokio::time::timeout(CONNECT_WAIT, d.probe.connect())
            .await
            .map_err(|_| {
                format!(
                    "no second connection to the database within {} (a daemon needs pools.per_database_connections >= 2)",
                    human(CONNECT_WAIT)
                )
            })??;
        *conn = Some(c);
    }
    Ok(conn.as_ref().expect("just set").client())
}

async fn diagnose(
    d: &Diagnose<'_>,
    key: i64,
    conn: &mut Option<Box<dyn ProbeClient>>,
) -> Result<Vec<Blocker>, String> {
    let client = connection(d, conn).await?;
    match client.simple_query(&query::diagnosis_sql(key)).await {
        Ok(m) => Ok(query::blockers(&crate::engine::rows_of(&m))),
        Err(e) => {
            *conn = None;
            Err(format!(
                "the diagnosis query failed: {}",
                crate::engine::error::describe_pg(&e)
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocker(state: &str, state_age: u64, xact_age: u64) -> Blocker {
        Blocker {
            pid: 4711,
            application_name: "api-server".into(),
            user: "app".into(),
            client_addr: "10.0.0.5".into(),
            state: state.into(),
            transaction_age: Some(Duration::from_secs(xact_age)),
            state_age: Some(Duration::from_secs(state_age)),
            wait_event: String::new(),
            query: "UPDATE accounts SET n = $1".into(),
            holds: "RowExclusiveLock".into(),
            wants: "AccessExclusiveLock on public.accounts".into(),
            backend_type: "client backend".into(),
            backend_start: String::new(),
            action: String::new(),
        }
    }

    #[test]
    fn summaries_say_who_and_how_long() {
        let b = blocker("idle in transaction", 14 * 60, 15 * 60);
        assert_eq!(
            b.summary(),
            "pid 4711 (app api-server, user app, from 10.0.0.5, idle in transaction for 14 min, transaction open 15 min, holds RowExclusiveLock)"
        );
        let mut w = Watch::new(None, 1, Duration::from_secs(2));
        w.last = vec![b];
        assert!(
            w.waited(3, Duration::from_secs(2))
                .unwrap()
                .starts_with("waited 3 x 2 s behind pid 4711 (app api-server,")
        );
    }

    #[test]
    fn the_policy_names_its_reason() {
        let terminate = BlockerPolicy {
            action: BlockerAction::Terminate,
            idle_in_transaction_after: Some(Duration::from_secs(30)),
            older_than: None,
        };
        assert_eq!(
            blocker("idle in transaction", 40, 41)
                .matches(&terminate)
                .as_deref(),
            Some("idle in transaction for 40 s > 30 s")
        );
        assert_eq!(
            blocker("idle in transaction", 20, 600).matches(&terminate),
            None
        );
        assert_eq!(blocker("active", 600, 600).matches(&terminate), None);
        let old = BlockerPolicy {
            action: BlockerAction::Cancel,
            idle_in_transaction_after: None,
            older_than: Some(Duration::from_secs(60)),
        };
        assert_eq!(
            blocker("active", 5, 90).matches(&old).as_deref(),
            Some("transaction open 90 s > 60 s")
        );
        assert!(old.validate().is_ok());
        let bad = BlockerPolicy {
            action: BlockerAction::Cancel,
            ..terminate
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .contains("use action = \"terminate\"")
        );
    }
}
