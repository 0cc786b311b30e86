//! The engine for ONE database: reads its version state, plans against the revision graph,
//! applies revisions (one transaction each, or statement by statement for non-transactional
//! ones), records history, stamps, and renders offline SQL. Knows nothing of etcd or gRPC:
//! callers that hold a distributed lock pass its fencing token.

pub mod adopt;
pub mod blockers;
pub mod error;
pub mod fingerprint;
mod group;
pub mod offline;
mod record;
mod stale;
mod step;
pub mod tables;
mod units;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio_postgres::{Client, SimpleQueryMessage};

pub use error::{ChangedRevision, EngineError, StepFailure};
pub use tables::{TableName, Tables};

use crate::model::{Direction, FenceToken, RevisionId};
use crate::pg::Pooler;
use crate::revision::placeholder::{quote_ident, quote_literal};
use crate::revision::plan::{self, Target};
use crate::revision::{App, Node, Resolved};

/// The tracing target of per-statement spans (exported only when telemetry asks for them).
pub const STATEMENT_TARGET: &str = "fleetmig::statement";

/// How the engine behaves on every database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub tables: Tables,
    /// `lock_timeout` for each revision's statements: short, so a migration waiting on a busy
    /// table does not queue every query behind it; retried with backoff.
    pub lock_timeout: Duration,
    /// `statement_timeout` per statement; zero means none.
    pub statement_timeout: Duration,
    pub idle_in_transaction_timeout: Duration,
    /// Extra attempts after a lock timeout (SQLSTATE 55P03).
    pub lock_retries: u32,
    pub retry_min_delay: Duration,
    pub retry_max_delay: Duration,
    /// The pinned `search_path` of migration sessions.
    pub search_path: Vec<String>,
    /// How the connection reaches the server: behind a transaction-mode pooler nothing is
    /// set for the session, only per transaction.
    pub pooler: Pooler,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            tables: Tables::default().qualified("public"),
            lock_timeout: Duration::from_secs(5),
            statement_timeout: Duration::ZERO,
            idle_in_transaction_timeout: Duration::from_secs(60),
            lock_retries: 5,
            retry_min_delay: Duration::from_millis(200),
            retry_max_delay: Duration::from_secs(10),
            search_path: vec!["public".to_string()],
            pooler: Pooler::None,
        }
    }
}

impl Settings {
    /// Settings for a tenant living in `schema`: bookkeeping tables there, and the schema
    /// alone on the search_path, so that nothing planted in `public` (or any other schema)
    /// can shadow a function or table a revision names.
    pub fn for_schema(&self, schema: Option<&str>) -> Settings {
        let mut s = self.clone();
        if let Some(schema) = schema {
            s.tables = self.tables.in_schema(schema);
            s.search_path = vec![schema.to_string()];
        }
        s
    }

    /// The same settings for a connection through `pooler`.
    pub fn for_pooler(&self, pooler: Pooler) -> Settings {
        Settings {
            pooler,
            ..self.clone()
        }
    }

    fn transaction_pooled(&self) -> bool {
        self.pooler == Pooler::Transaction
    }

    /// The pinned `search_path` value: the configured schemas, quoted, then `pg_temp` last so
    /// that a temporary table or function can never shadow a real one (`pg_catalog` stays
    /// implicitly first).
    pub fn search_path_sql(&self) -> String {
        let mut path: Vec<String> = self.search_path.iter().map(|s| quote_ident(s)).collect();
        path.push("pg_temp".into());
        path.join(", ")
    }

    pub fn validate(&self) -> Result<(), EngineError> {
        if let Some(bad) = self
            .search_path
            .iter()
            .find(|s| !crate::revision::placeholder::is_safe_identifier(s))
        {
            return Err(EngineError::Setting {
                key: "search_path",
                message: format!("{bad:?} is not a schema name"),
            });
        }
        if self.search_path.is_empty() {
            return Err(EngineError::Setting {
                key: "search_path",
                message: "name at least one schema".into(),
            });
        }
        if self.lock_timeout.is_zero() {
            return Err(EngineError::Setting {
                key: "lock_timeout",
                message:
                    "must be above zero: without it a migration can queue every query on its table"
                        .into(),
            });
        }
        Ok(())
    }

    fn backoff(&self) -> impl Iterator<Item = Duration> {
        use backon::BackoffBuilder;
        backon::ExponentialBuilder::default()
            .with_min_delay(self.retry_min_delay)
            .with_max_delay(self.retry_max_delay)
            .with_max_times(self.lock_retries as usize)
            .with_jitter()
            .build()
    }
}

/// Progress of a run, for display (CLI) or streaming (daemon).
#[derive(Debug, Clone)]
pub enum Event {
    /// The run's starting point and plan, before any revision.
    Planned {
        before: Vec<RevisionId>,
        steps: Vec<RevisionId>,
    },
    RevisionStarted {
        revision: RevisionId,
        direction: Direction,
    },
    LockRetry {
        revision: RevisionId,
        attempt: u32,
        delay: Duration,
        message: String,
        /// Who held the lock during the attempt (empty when nobody was seen, or without a
        /// [`RunOptions::blockers`]), with what the policy did to each.
        blockers: Vec<blockers::Blocker>,
    },
    InvalidIndexDropped {
        revision: RevisionId,
        index: String,
    },
    RevisionDone(Applied),
}

/// One revision applied (or skipped by its condition) in a run.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub revision: RevisionId,
    pub direction: Direction,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// The condition placeholder that was false, if the SQL was skipped.
    pub skipped_by: Option<String>,
    pub attempts: u32,
}

/// Per-run options.
pub struct RunOptions<'a> {
    pub fence: Option<FenceToken>,
    pub allow_changed: bool,
    /// Who applies: recorded in history.
    pub applied_by: &'a str,
    pub events: &'a (dyn Fn(Event) + Send + Sync),
    /// Checked before each revision: true stops the run there (job cancelled, shutdown).
    pub stop: &'a (dyn Fn() -> bool + Send + Sync),
    /// Asked right before every statement sent: false means the lock this run holds can no
    /// longer be trusted (its lease's deadline passed), and the run stops at once, sending
    /// nothing more. Always true without a distributed lock.
    pub live: &'a (dyn Fn() -> bool + Send + Sync),
    /// Who blocks a revision waiting for a lock, asked from a second connection, and what
    /// to do about them; `None`: lock timeouts are retried without asking.
    pub blockers: Option<blockers::Diagnose<'a>>,
}

impl RunOptions<'_> {
    pub(crate) fn ensure_live(&self) -> Result<(), EngineError> {
        if (self.live)() {
            Ok(())
        } else {
            Err(EngineError::LeaseExpired)
        }
    }
}

/// `fleetmig`, or `fleetmig fence=<token>` for a run under a distributed lock: a newer holder
/// recognises a stale holder's session by it (see [`stale`]).
pub(crate) fn application_name(fence: Option<FenceToken>) -> String {
    match fence {
        Some(t) => format!("fleetmig fence={t}"),
        None => "fleetmig".into(),
    }
}

/// What a run did: the revisions applied, and the version rows before and after.
#[derive(Debug, Clone)]
pub struct Migrated {
    pub applied: Vec<Applied>,
    pub before: Vec<RevisionId>,
    pub after: Vec<RevisionId>,
}

/// The bookkeeping state read at the start of a run.
struct Snapshot {
    all_tables: bool,
    rows: Vec<RevisionId>,
    recorded: HashMap<String, Recorded>,
}

/// A session opened by [`Engine::open`]: which tables exist, and what the version and
/// history tables hold when it could be read in the same round trip.
struct Opened {
    tables: TablesExist,
    snapshot: Option<Vec<Vec<Option<String>>>>,
}

/// Whether the version, history and fence tables exist (a row of `exists_sql`).
#[derive(Debug, Clone)]
struct TablesExist(Vec<bool>);

impl TablesExist {
    fn from_row(row: Option<&Vec<Option<String>>>) -> TablesExist {
        TablesExist(
            row.map(|r| r.iter().map(|c| c.as_deref() == Some("t")).collect())
                .unwrap_or_default(),
        )
    }
}

/// Rows of a multi-statement simple query whose first column tags them.
pub(crate) fn tagged<'r>(
    rows: &'r [Vec<Option<String>>],
    tag: &'r str,
) -> impl Iterator<Item = &'r Vec<Option<String>>> + 'r {
    rows.iter()
        .filter(move |r| r.first().and_then(|c| c.as_deref()) == Some(tag))
}

/// The version rows of a tagged read (`'version', version_num`), sorted (the server sends
/// them in no order).
pub(crate) fn sorted_versions(
    rows: &[Vec<Option<String>>],
) -> Result<Vec<RevisionId>, EngineError> {
    let mut versions = tagged(rows, "version")
        .map(|r| parse_revision(r[1].as_deref()))
        .collect::<Result<Vec<_>, _>>()?;
    versions.sort();
    Ok(versions)
}

/// What each revision was last upgraded with, from the history rows of
/// [`tables::Tables::applied_checksums_sql`] (`'recorded', revision, checksum, skipped,
/// direction, id`): of its upgrade rows, the one with the highest id.
fn latest_upgrades(rows: &[Vec<Option<String>>]) -> HashMap<String, Recorded> {
    let mut latest: HashMap<String, (i64, Recorded)> = HashMap::new();
    for r in tagged(rows, "recorded") {
        let (Some(revision), Some("upgrade"), Some(id)) = (
            r[1].as_ref(),
            r[4].as_deref(),
            r[5].as_deref().and_then(|id| id.parse::<i64>().ok()),
        ) else {
            continue;
        };
        let recorded = Recorded {
            checksum: r[2].clone(),
            skipped: r[3].as_deref() == Some("t"),
        };
        match latest.get_mut(revision) {
            Some(seen) if seen.0 >= id => {}
            Some(seen) => *seen = (id, recorded),
            None => {
                latest.insert(revision.clone(), (id, recorded));
            }
        }
    }
    latest.into_iter().map(|(rev, (_, r))| (rev, r)).collect()
}

fn parse_revision(s: Option<&str>) -> Result<RevisionId, EngineError> {
    let s = s.unwrap_or_default();
    s.parse().map_err(|_| {
        EngineError::StateChanged(format!(
            "the version table holds {s:?}, which is not a revision id"
        ))
    })
}

/// What the version table says.
#[derive(Debug, Clone, Default)]
pub struct DbState {
    pub version_table_exists: bool,
    pub rows: Vec<RevisionId>,
}

/// The latest upgrade record of a revision in the history table.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub checksum: Option<String>,
    pub skipped: bool,
}

/// `sql` (read-only statements of fleetmig's own) with `search_path = pg_catalog, pg_temp`
/// for its own implicit transaction (one query string of several statements is one): every
/// unqualified function, operator and type then resolves to `pg_catalog`, never to something
/// a tenant planted (PostgreSQL's advice for SECURITY DEFINER functions). Nothing of it
/// outlives the query, even when it fails; safe behind a transaction-mode pooler.
pub fn pinned(sql: &str) -> String {
    format!("SET LOCAL search_path = pg_catalog, pg_temp; {sql}")
}

/// Opens fleetmig's own part of a transaction: the role and search_path in force are saved
/// (to [`Engine::revision_context`]), and fleetmig's statements run as the connecting role
/// with `search_path = pg_catalog, pg_temp`, whatever a revision set before. A zero-column row.
pub(crate) const OWN_CONTEXT: &str = "SELECT FROM pg_catalog.set_config('fleetmig.role', pg_catalog.current_setting('role'), true) r, pg_catalog.set_config('fleetmig.search_path', pg_catalog.current_setting('search_path'), true) p;\nSET LOCAL ROLE NONE;\nSET LOCAL search_path = pg_catalog, pg_temp;\n";

/// Appended to a run's last transaction: a session setting that outlives it only if it
/// commits (see [`Engine::release_if_committed_sql`]).
pub(crate) const RELEASE_IF_COMMITTED_MARK: &str =
    "SELECT FROM pg_catalog.set_config('fleetmig.committed', 'yes', false);\n";

/// Whether [`Engine::release_if_committed_sql`] released the lock.
pub(crate) async fn released(client: &Client, sql: &str) -> bool {
    match client.simple_query(sql).await {
        Ok(m) => rows_of(&m).first().and_then(|r| r[0].as_deref()) == Some("t"),
        Err(_) => false,
    }
}

pub(crate) fn rows_of(messages: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

/// The engine bound to one app, one set of placeholder values and settings.
pub struct Engine<'a> {
    pub app: &'a App,
    pub values: &'a Resolved,
    pub settings: &'a Settings,
}

impl<'a> Engine<'a> {
    pub fn new(app: &'a App, values: &'a Resolved, settings: &'a Settings) -> Self {
        Engine {
            app,
            values,
            settings,
        }
    }

    /// The key of the database's migration lock (a PostgreSQL advisory lock), derived from
    /// the version table's name: two apps with their own version tables do not collide.
    pub fn migration_lock_key(&self) -> i64 {
        self.lock_key()
    }

    fn lock_key(&self) -> i64 {
        let digest =
            Sha256::digest(format!("fleetmig:{}", self.settings.tables.version.sql()).as_bytes());
        i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
    }

    /// The session settings of a migration connection, as SET (session) or SET LOCAL
    /// (behind a transaction-mode pooler, once per transaction). The server's TCP keepalives
    /// are short, so the session of a client that vanished (and its locks) goes within about
    /// 25 s, not the kernel's two hours.
    fn session_settings(&self, scope: &str, fence: Option<FenceToken>) -> String {
        format!(
            "SET {scope} application_name = {}; SET {scope} standard_conforming_strings = on; SET {scope} search_path = {}; SET {scope} idle_in_transaction_session_timeout = '{}ms'; SET {scope} tcp_keepalives_idle = 10; SET {scope} tcp_keepalives_interval = 5; SET {scope} tcp_keepalives_count = 3",
            quote_literal(&application_name(fence)),
            self.settings.search_path_sql(),
            self.settings.idle_in_transaction_timeout.as_millis(),
        )
    }

    /// Statements opening each transaction fleetmig starts behind a transaction-mode pooler:
    /// the settings for this transaction only, and the local migration lock, also for this
    /// transaction only (its row is checked by [`check_xact_lock`]). Empty otherwise: the
    /// session already has both.
    pub(crate) fn transaction_preamble(&self, fence: Option<FenceToken>) -> String {
        if !self.settings.transaction_pooled() {
            return String::new();
        }
        format!(
            "{};\nSELECT 'xlock', pg_catalog.pg_try_advisory_xact_lock({})::text;\n",
            self.session_settings("LOCAL", fence),
            self.lock_key()
        )
    }

    /// Gives a transaction opened with [`OWN_CONTEXT`] back to the revisions: the role saved,
    /// and the search_path saved (behind a transaction-mode pooler: the app's, as SET LOCAL).
    pub(crate) fn revision_context(&self) -> String {
        let path = if self.settings.transaction_pooled() {
            format!(
                "SET LOCAL search_path = {};\n",
                self.settings.search_path_sql()
            )
        } else {
            "SELECT FROM pg_catalog.set_config('search_path', pg_catalog.current_setting('fleetmig.search_path'), true);\n".into()
        };
        path + "SELECT FROM pg_catalog.set_config('role', pg_catalog.current_setting('fleetmig.role'), true);\n"
    }

    /// Statements closing each transaction behind a transaction-mode pooler: whatever a
    /// revision set for the session goes back to its default before the server connection
    /// passes to another client.
    pub(crate) fn transaction_epilogue(&self) -> &'static str {
        if self.settings.transaction_pooled() {
            "RESET ALL;\nRESET ROLE;\n"
        } else {
            ""
        }
    }

    /// A clean session, its settings, the local migration lock, and which bookkeeping tables
    /// exist, in one round trip. `DISCARD ALL` first: whatever an earlier user of a pooled
    /// connection (or a revision) set — role, search_path, TimeZone, prepared statements,
    /// temporary tables — is gone. The lock is non-blocking and session-level: a second
    /// fleetmig on the same database fails fast instead of queueing (a blocking advisory lock
    /// can deadlock with CREATE INDEX CONCURRENTLY). Behind a transaction-mode pooler nothing
    /// is set here: each transaction sets and locks for itself.
    ///
    /// The snapshot of the version and history tables goes in the same round trip, on the
    /// bet that they exist (a database fleetmig migrated before); when they do not, its error
    /// is ignored and there is nothing to read.
    async fn open(&self, client: &Client, opts: &RunOptions<'_>) -> Result<Opened, EngineError> {
        opts.ensure_live()?;
        let snapshot_sql = pinned(&format!(
            "{};\n{}",
            self.settings.tables.tagged_versions_sql(),
            self.settings.tables.applied_checksums_sql()
        ));
        if self.settings.transaction_pooled() {
            let exists_sql = pinned(&self.settings.tables.exists_sql());
            let (exists, snapshot) = futures::join!(
                client.simple_query(&exists_sql),
                client.simple_query(&snapshot_sql)
            );
            let exists = exists.map_err(EngineError::db("looking for fleetmig's tables"))?;
            return Ok(Opened {
                tables: TablesExist::from_row(rows_of(&exists).first()),
                snapshot: snapshot.ok().map(|m| rows_of(&m)),
            });
        }
        // Pipelined: DISCARD ALL cannot share a query string (it refuses transaction blocks).
        let sql = format!(
            "{}; SELECT pg_catalog.pg_try_advisory_lock({}); {}",
            self.session_settings("", opts.fence),
            self.lock_key(),
            self.settings.tables.exists_sql(),
        );
        let (discarded, messages, snapshot) = futures::join!(
            client.simple_query("DISCARD ALL"),
            client.simple_query(&sql),
            client.simple_query(&snapshot_sql)
        );
        discarded.map_err(EngineError::db("resetting the session (DISCARD ALL)"))?;
        client.clear_type_cache();
        let rows = rows_of(&messages.map_err(EngineError::db("preparing the session"))?);
        match rows.first().and_then(|r| r[0].as_deref()) {
            Some("t") => Ok(Opened {
                tables: TablesExist::from_row(rows.get(1)),
                snapshot: snapshot.ok().map(|m| rows_of(&m)),
            }),
            _ => Err(EngineError::LockHeld),
        }
    }

    /// The statement that releases the migration lock after a COMMIT, if that COMMIT went
    /// through: [`RELEASE_IF_COMMITTED_MARK`] in the committed transaction says so (a failed
    /// attempt rolls the mark back, and keeps the lock for its retry). One row: `t` when
    /// released.
    pub(crate) fn release_if_committed_sql(&self) -> String {
        format!(
            "SELECT CASE WHEN pg_catalog.current_setting('fleetmig.committed', true) OPERATOR(pg_catalog.=) 'yes' THEN pg_catalog.pg_advisory_unlock({}) END, pg_catalog.set_config('fleetmig.committed', '', false)",
            self.lock_key()
        )
    }

    /// Leave the session as it was found: `DISCARD ALL` drops the migration lock and whatever
    /// the revisions set, before the connection goes back to its pool.
    async fn unlock(&self, client: &Client, opts: &RunOptions<'_>) {
        // Past the lease's deadline nothing more is sent: the caller throws the connection
        // away, and the session's end releases the lock.
        if self.settings.transaction_pooled() || !(opts.live)() {
            return;
        }
        match client.simple_query("DISCARD ALL").await {
            Ok(_) => client.clear_type_cache(),
            Err(e) => {
                tracing::debug!(error = %e, "DISCARD ALL failed (the session end releases the lock)")
            }
        }
    }

    /// Which bookkeeping tables exist, the version rows and what history recorded: two round
    /// trips, or none when [`Engine::open`] already read them.
    async fn snapshot(
        &self,
        client: &Client,
        known: Option<Opened>,
    ) -> Result<Snapshot, EngineError> {
        let tables = &self.settings.tables;
        let (known, read) = match known {
            Some(Opened { tables, snapshot }) => (Some(tables), snapshot),
            None => (None, None),
        };
        let TablesExist(flags) = match known {
            Some(k) => k,
            None => TablesExist::from_row(
                rows_of(
                    &client
                        .simple_query(&pinned(&tables.exists_sql()))
                        .await
                        .map_err(EngineError::db("looking for fleetmig's tables"))?,
                )
                .first(),
            ),
        };
        let (version, history) = (flags.first() == Some(&true), flags.get(1) == Some(&true));
        let mut sql = String::new();
        if version {
            sql.push_str(&tables.tagged_versions_sql());
            sql.push_str(";\n");
        }
        if history {
            sql.push_str(&tables.applied_checksums_sql());
        }
        let rows = if sql.is_empty() {
            vec![]
        } else if let Some(rows) = read.filter(|_| version && history) {
            rows
        } else {
            rows_of(
                &client
                    .simple_query(&pinned(sql.trim_end().trim_end_matches(';')))
                    .await
                    .map_err(EngineError::db("reading the version and history tables"))?,
            )
        };
        Ok(Snapshot {
            all_tables: flags.len() == 3 && flags.iter().all(|f| *f),
            rows: sorted_versions(&rows)?,
            recorded: latest_upgrades(&rows),
        })
    }

    /// The version table's rows (empty when it does not exist).
    pub async fn state(&self, client: &Client) -> Result<DbState, EngineError> {
        let exists = client
            .simple_query(&pinned(&self.settings.tables.exists_sql()))
            .await
            .map_err(EngineError::db("looking for the version table"))?;
        let version_table_exists =
            rows_of(&exists).first().and_then(|r| r[0].as_deref()) == Some("t");
        if !version_table_exists {
            return Ok(DbState::default());
        }
        let rows = client
            .simple_query(&pinned(&self.settings.tables.tagged_versions_sql()))
            .await
            .map_err(EngineError::db("reading the version table"))?;
        Ok(DbState {
            version_table_exists,
            rows: sorted_versions(&rows_of(&rows))?,
        })
    }

    async fn ensure_tables(
        &self,
        client: &Client,
        fence: Option<FenceToken>,
    ) -> Result<(), EngineError> {
        client
            .batch_execute(&format!(
                "BEGIN;\n{OWN_CONTEXT}{}{}{}COMMIT;",
                self.transaction_preamble(fence),
                self.settings.tables.create_sql(),
                self.transaction_epilogue(),
            ))
            .await
            .map_err(EngineError::db("creating the version and history tables"))
    }

    /// Applied revisions (see [`plan::applied`]) whose files changed since.
    pub async fn changed_revisions(
        &self,
        client: &Client,
        applied: &BTreeSet<Node>,
    ) -> Result<Vec<ChangedRevision>, EngineError> {
        let recorded = self.snapshot(client, None).await?.recorded;
        Ok(self.changed_in(&recorded, applied))
    }

    fn changed_in(
        &self,
        recorded: &HashMap<String, Recorded>,
        applied: &BTreeSet<Node>,
    ) -> Vec<ChangedRevision> {
        applied
            .iter()
            .filter_map(|&n| {
                let rev = self.app.graph.revision(n);
                let applied_checksum = recorded.get(rev.id.as_str())?.checksum.clone()?;
                (applied_checksum != rev.checksum).then(|| ChangedRevision {
                    revision: rev.id.clone(),
                    path: rev.path.display().to_string(),
                    applied_checksum,
                    file_checksum: rev.checksum.clone(),
                })
            })
            .collect()
    }

    /// Upgrade or downgrade to `target`. Stops at the first failure, leaving the database at
    /// the last fully applied revision; the error lists what this run applied before it.
    pub async fn migrate(
        &self,
        client: &mut Client,
        direction: Direction,
        target: &Target,
        opts: &RunOptions<'_>,
    ) -> Result<Migrated, EngineError> {
        let mut ended_stale_holder = false;
        loop {
            let result = async {
                let opened = self.open(client, opts).await?;
                let mut released = false;
                let result = self
                    .migrate_locked(client, direction, target, opts, opened, &mut released)
                    .await;
                if !released {
                    self.unlock(client, opts).await;
                }
                result
            }
            .await;
            match result {
                // We hold the database's distributed lock with a newer fence token: a session
                // still holding the migration lock is a holder whose lease ended (paused,
                // frozen, cut off); it gets a grace period, then is ended.
                Err(EngineError::LockHeld) if opts.fence.is_some() && !ended_stale_holder => {
                    ended_stale_holder = true;
                    stale::end_stale_holder(self, client, opts).await?;
                }
                other => return other,
            }
        }
    }

    /// The run, with the session open; `released`: set when the migration lock was released
    /// with the run's last COMMIT (the next run's `DISCARD ALL` cleans the rest).
    async fn migrate_locked(
        &self,
        client: &mut Client,
        direction: Direction,
        target: &Target,
        opts: &RunOptions<'_>,
        opened: Opened,
        released: &mut bool,
    ) -> Result<Migrated, EngineError> {
        let g = &self.app.graph;
        let snapshot = self.snapshot(client, Some(opened)).await?;
        let rows = plan::rows_from_db(g, &snapshot.rows)?;
        let planned = plan::plan(g, &rows, direction, target)?;
        let before = snapshot.rows.clone();
        // Changed files are refused at head too: "nothing to do" would hide them.
        let recorded = snapshot.recorded;
        let changed = self.changed_in(&recorded, &plan::applied(g, &rows));
        if !changed.is_empty() && !opts.allow_changed {
            return Err(EngineError::ChecksumMismatch(changed));
        }
        if planned.steps.is_empty() {
            return Ok(Migrated {
                applied: vec![],
                after: before.clone(),
                before,
            });
        }
        (opts.events)(Event::Planned {
            before: before.clone(),
            steps: planned
                .steps
                .iter()
                .map(|s| g.revision(s.node).id.clone())
                .collect(),
        });
        let prepared = units::prepare(self.app, self.values, &planned.steps, &|id| {
            recorded.get(id).map(|r| r.skipped)
        })?;
        let work = units::units(self.app, &prepared);
        if self.settings.transaction_pooled()
            && let Some(units::Unit::Autocommit(p)) = work
                .iter()
                .find(|u| matches!(u, units::Unit::Autocommit(_)))
        {
            return Err(EngineError::NeedsSession {
                revision: g.revision(p.step.node).id.clone(),
            });
        }
        let mut tables_missing = !snapshot.all_tables;
        let fresh_database = snapshot.rows.is_empty();
        let mut done: Vec<Applied> = Vec::with_capacity(planned.steps.len());
        let last = work.len() - 1;
        for (i, unit) in work.iter().enumerate() {
            opts.ensure_live()?;
            if (opts.stop)() {
                return Err(EngineError::Stopped {
                    applied: done.into_iter().map(|a| a.revision).collect(),
                });
            }
            let result = match unit {
                units::Unit::Transaction(members) => {
                    let extras = group::Extras {
                        // A new database's tables are made in its first transaction.
                        create_tables: std::mem::take(&mut tables_missing),
                        release_after: i == last,
                    };
                    group::apply(self, client, members, extras, opts)
                        .await
                        .map(|d| (d.applied, d.released))
                }
                units::Unit::Autocommit(p) => {
                    if std::mem::take(&mut tables_missing) {
                        self.ensure_tables(client, opts.fence).await?;
                    }
                    step::apply_autocommit(self, client, p, i == last, opts)
                        .await
                        .map(|(a, released)| (vec![a], released))
                }
            };
            match result {
                Ok((applied, lock_released)) => {
                    *released |= lock_released;
                    for a in applied {
                        (opts.events)(Event::RevisionDone(a.clone()));
                        done.push(a);
                    }
                }
                Err(step::StepError::Failed(mut failure)) => {
                    if fresh_database
                        && matches!(
                            failure.sqlstate.as_deref(),
                            Some("42P07" | "42710" | "42701")
                        )
                        && done.is_empty()
                    {
                        failure.hint = Some(format!(
                            "this database has objects but no {} rows: it was built outside fleetmig (create_all, by hand, or a lost Alembic state). Find the revision its schema matches and run `fleetmig stamp <revision>`, then `fleetmig upgrade`",
                            self.settings.tables.version.name
                        ));
                    }
                    return Err(EngineError::StepFailed {
                        failure,
                        applied: done.into_iter().map(|a| a.revision).collect(),
                    });
                }
                Err(step::StepError::Engine(e)) => return Err(e),
            }
        }
        Ok(Migrated {
            applied: done,
            before,
            after: ids_of(g, &planned.rows_after),
        })
    }

    /// Set the version table to `targets` (Alembic's `stamp REV...`) without running any SQL.
    /// `purge` first empties the table even if it names revisions unknown to this app.
    pub async fn stamp(
        &self,
        client: &mut Client,
        targets: &[String],
        purge: bool,
        opts: &RunOptions<'_>,
    ) -> Result<Vec<RevisionId>, EngineError> {
        let mut ended_stale_holder = false;
        loop {
            let result = async {
                let opened = self.open(client, opts).await?;
                let result = self
                    .stamp_locked(client, targets, purge, opts, opened)
                    .await;
                self.unlock(client, opts).await;
                result
            }
            .await;
            match result {
                Err(EngineError::LockHeld) if opts.fence.is_some() && !ended_stale_holder => {
                    ended_stale_holder = true;
                    stale::end_stale_holder(self, client, opts).await?;
                }
                other => return other,
            }
        }
    }

    async fn stamp_locked(
        &self,
        client: &mut Client,
        targets: &[String],
        purge: bool,
        opts: &RunOptions<'_>,
        opened: Opened,
    ) -> Result<Vec<RevisionId>, EngineError> {
        let g = &self.app.graph;
        // Resolve the targets before touching anything (the rows are read again below).
        for t in targets {
            g.get_revisions(t).map_err(plan::PlanError::from)?;
        }
        if !self.snapshot(client, Some(opened)).await?.all_tables {
            opts.ensure_live()?;
            self.ensure_tables(client, opts.fence).await?;
        }
        opts.ensure_live()?;
        // Two round trips: BEGIN, the lock behind a pooler, the fence and the version rows;
        // then the rows written and COMMIT. Anything failing in between rolls back.
        let tables = &self.settings.tables;
        let opening = format!(
            "BEGIN;\n{OWN_CONTEXT}{}{}",
            self.transaction_preamble(opts.fence),
            step::fence_and_versions_sql(tables, opts.fence)
        );
        let stamped = async {
            let tagged_rows = rows_of(
                &client
                    .simple_query(&opening)
                    .await
                    .map_err(EngineError::db("reading the version table"))?,
            );
            check_xact_lock(&tagged_rows)?;
            let rows = step::fenced_versions(&*client, tables, opts.fence, &tagged_rows)
                .await
                .map_err(step_to_engine)?;
            let current = if purge {
                vec![]
            } else {
                plan::rows_from_db(g, &rows)?
            };
            let after_nodes = plan::stamp(g, &current, targets)?;
            let before: BTreeSet<String> = rows.iter().map(|r| r.to_string()).collect();
            let after: BTreeSet<String> =
                after_nodes.iter().map(|&n| g.id(n).to_string()).collect();
            let mut sql = record::version_change_sql(tables, &before, &after);
            let json = self.values.to_json();
            let stamped: Vec<String> = if after.is_empty() {
                vec!["base".to_string()]
            } else {
                after.iter().cloned().collect()
            };
            for r in &stamped {
                let checksum = g.node(r).map(|n| g.revision(n).checksum.clone());
                sql.push_str(&record::history_sql(
                    tables,
                    &record::HistoryRow {
                        revision: r,
                        direction: "stamp",
                        checksum: checksum.as_deref(),
                        placeholders: &json,
                        skipped: false,
                        duration: record::Duration::Millis(0),
                        applied_by: opts.applied_by,
                        fence: opts.fence,
                    },
                ));
            }
            sql.push_str(self.transaction_epilogue());
            sql.push_str("COMMIT;\n");
            client.batch_execute(&sql).await.map_err(EngineError::db(
                "writing the version table and committing the stamp",
            ))?;
            Ok(after_nodes)
        }
        .await;
        let after_nodes = match stamped {
            Ok(nodes) => nodes,
            Err(e) => {
                group::rollback(client).await;
                return Err(e);
            }
        };
        Ok(ids_of(g, &after_nodes))
    }
}

/// The row of [`Engine::transaction_preamble`]'s lock, if there is one: refused when another
/// fleetmig holds the database's migration lock.
pub(crate) fn check_xact_lock(rows: &[Vec<Option<String>>]) -> Result<(), EngineError> {
    match tagged(rows, "xlock").next() {
        Some(r) if r.get(1).and_then(|c| c.as_deref()) != Some("true") => {
            Err(EngineError::LockHeld)
        }
        _ => Ok(()),
    }
}

/// The ids of `nodes`, in node (id) order.
pub(crate) fn ids_of(g: &crate::revision::Graph, nodes: &BTreeSet<Node>) -> Vec<RevisionId> {
    nodes.iter().map(|&n| g.revision(n).id.clone()).collect()
}

fn step_to_engine(e: step::StepError) -> EngineError {
    match e {
        step::StepError::Engine(e) => e,
        step::StepError::Failed(f) => EngineError::StepFailed {
            failure: f,
            applied: vec![],
        },
    }
}

/// `'{ms}ms'` for a SET.
pub(crate) fn millis(d: Duration) -> String {
    quote_literal(&format!("{}ms", d.as_millis()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cells: &[Option<&str>]) -> Vec<Option<String>> {
        cells.iter().map(|c| c.map(str::to_string)).collect()
    }

    #[test]
    fn the_latest_upgrade_of_each_revision_wins_whatever_order_the_rows_come_in() {
        let upgrade = |rev, sum, skipped, id| {
            row(&[
                Some("recorded"),
                Some(rev),
                sum,
                Some(skipped),
                Some("upgrade"),
                Some(id),
            ])
        };
        let mut rows = vec![
            upgrade("0001", Some("new"), "f", "7"),
            row(&[Some("version"), Some("0002")]),
            upgrade("0001", Some("old"), "f", "3"),
            // A later downgrade does not replace what 0001 was last upgraded with.
            row(&[
                Some("recorded"),
                Some("0001"),
                Some("gone"),
                Some("f"),
                Some("downgrade"),
                Some("9"),
            ]),
            upgrade("0002", None, "t", "10"),
            // 10 > 9 numerically, not as text.
            upgrade("0002", Some("stale"), "f", "9"),
            row(&[Some("version"), Some("0001")]),
        ];
        for _ in 0..2 {
            let latest = latest_upgrades(&rows);
            assert_eq!(latest.len(), 2);
            assert_eq!(latest["0001"].checksum.as_deref(), Some("new"));
            assert!(!latest["0001"].skipped);
            assert_eq!(latest["0002"].checksum, None);
            assert!(latest["0002"].skipped);
            let versions = sorted_versions(&rows).unwrap();
            assert_eq!(versions, ["0001".parse().unwrap(), "0002".parse().unwrap()]);
            rows.reverse();
        }
    }
}
