//! Applying one revision in one direction: the transactional path (DDL, version rows and
//! history in one transaction, retried on lock timeouts) and the non-transactional path
//! (each statement alone, fence checked before each, INVALID index leftovers rebuilt,
//! completion recorded in a final fenced transaction).

use std::collections::BTreeSet;
use std::time::Instant;

use tokio_postgres::{Client, GenericClient};
use tracing::Instrument;

use super::blockers::Watch;
use super::error::{EngineError, StepFailure};
use super::record::{self, HistoryRow};
use super::tables::Tables;
use super::{Applied, Engine, Event, RunOptions, millis, rows_of, tagged};
use crate::model::{Direction, FenceToken, TransactionMode};
use crate::revision::placeholder::quote_literal;
use crate::revision::plan;
use crate::revision::render::{self, RenderedRevision, RenderedStatement};
use crate::revision::{Node, Revision};

pub(crate) enum StepError {
    /// The revision failed: reported with location and SQLSTATE.
    Failed(Box<StepFailure>),
    /// Anything else (fence, connection, state).
    Engine(EngineError),
}

impl From<EngineError> for StepError {
    fn from(e: EngineError) -> Self {
        StepError::Engine(e)
    }
}

const LOCK_NOT_AVAILABLE: &str = "55P03";

/// Where `stmt` failed: `file:line:column` of the server's error position when it gives one.
fn locate(rev: &Revision, stmt: &RenderedStatement, e: &tokio_postgres::Error) -> String {
    let position = e
        .as_db_error()
        .and_then(|d| d.position())
        .and_then(|p| match p {
            tokio_postgres::error::ErrorPosition::Original(n) => Some(*n as usize),
            // Inside a function body or similar: the statement's own start is what we know.
            tokio_postgres::error::ErrorPosition::Internal { .. } => None,
        });
    stmt.location(rev, position)
}

fn is_lock_timeout(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| c.code() == LOCK_NOT_AVAILABLE)
}

fn failure(
    rev: &Revision,
    direction: Direction,
    location: Option<String>,
    e: &tokio_postgres::Error,
    attempts: u32,
) -> Box<StepFailure> {
    let db = e.as_db_error();
    let mut message = db.map_or_else(|| e.to_string(), |d| d.message().to_string());
    let connection_lost = super::error::connection_broke(e);
    if connection_lost {
        message.push_str(" (connection lost: the outcome of the last statement is unknown; run `fleetmig current` before retrying)");
    }
    Box::new(StepFailure {
        revision: rev.id.clone(),
        direction,
        location,
        sqlstate: e.code().map(|c| c.code().to_string()),
        message,
        detail: db.and_then(|d| d.detail().map(str::to_string)),
        hint: db.and_then(|d| d.hint().map(str::to_string)),
        attempts,
        connection_lost,
        blocked: None,
    })
}

/// A lock timeout whose retries ran out, with who held the lock.
fn exhausted(
    engine: &Engine<'_>,
    mut f: Box<StepFailure>,
    watch: &Watch<'_>,
    attempts: u32,
) -> Box<StepFailure> {
    f.blocked = watch.waited(attempts, engine.settings.lock_timeout);
    f
}

/// Write our fencing token; fails as stale if a newer holder has written.
pub(crate) async fn fence(
    client: &impl GenericClient,
    tables: &Tables,
    token: FenceToken,
) -> Result<(), StepError> {
    let rows = rows_of(
        &client
            .simple_query(&tables.fence_check_sql(token.0))
            .await
            .map_err(|e| StepError::Engine(EngineError::db("checking the fence token")(e)))?,
    );
    check_fence(client, tables, token, &rows).await
}

/// Given the rows of a fence check, fail as stale (reading the newer token) if it did not write.
async fn check_fence(
    client: &impl GenericClient,
    tables: &Tables,
    token: FenceToken,
    rows: &[Vec<Option<String>>],
) -> Result<(), StepError> {
    if tagged(rows, "fence").any(|r| r.get(1).and_then(|c| c.as_deref()) == Some("1")) {
        return Ok(());
    }
    // The simple protocol: no prepared statement, safe behind a transaction-mode pooler.
    let theirs = client
        .simple_query(&tables.fence_token_sql())
        .await
        .ok()
        .and_then(|m| {
            rows_of(&m)
                .first()
                .and_then(|r| r[0].as_deref()?.parse().ok())
        })
        .unwrap_or(-1);
    tracing::warn!(
        ours = token.0,
        theirs,
        "fence rejected: a newer lock holder has written to this database"
    );
    Err(StepError::Engine(EngineError::StaleFence {
        ours: token,
        theirs,
    }))
}

/// Is `step` still to be applied, given the rows read inside our transaction? `Ok(false)`:
/// the rows are already what the step leaves (someone else did it); rows that are neither
/// the plan's before nor its after mean the database changed under us.
fn still_needed(
    engine: &Engine<'_>,
    rows: &[crate::model::RevisionId],
    step: &plan::Step,
) -> Result<bool, EngineError> {
    let g = &engine.app.graph;
    let now: BTreeSet<&str> = rows.iter().map(|r| r.as_str()).collect();
    let ids = |s: &BTreeSet<Node>| -> BTreeSet<&str> { s.iter().map(|&n| g.id(n)).collect() };
    if now == ids(&step.rows_before) {
        Ok(true)
    } else if now == ids(&step.rows_after) {
        Ok(false)
    } else {
        Err(EngineError::StateChanged(format!(
            "before {} {} the version table was expected to hold [{}] but holds [{}]: another process changed it",
            step.direction,
            g.id(step.node),
            ids(&step.rows_before)
                .into_iter()
                .collect::<Vec<_>>()
                .join(", "),
            now.into_iter().collect::<Vec<_>>().join(", ")
        )))
    }
}

/// The version/history SQL recording `step`.
fn record_sql(
    engine: &Engine<'_>,
    step: &plan::Step,
    rendered: &RenderedRevision,
    started: Option<Instant>,
    opts: &RunOptions<'_>,
) -> String {
    let g = &engine.app.graph;
    let ids = |s: &BTreeSet<Node>| -> BTreeSet<String> {
        s.iter().map(|&n| g.id(n).to_string()).collect()
    };
    let rev = g.revision(step.node);
    let mut sql = record::version_change_sql(
        &engine.settings.tables,
        &ids(&step.rows_before),
        &ids(&step.rows_after),
    );
    sql.push_str(&record::history_sql(
        &engine.settings.tables,
        &HistoryRow {
            revision: rev.id.as_str(),
            direction: step.direction.as_str(),
            checksum: Some(&rev.checksum),
            placeholders: &engine.values.to_json(),
            skipped: rendered.skipped_by.is_some(),
            duration: match started {
                Some(at) => record::Duration::Millis(at.elapsed().as_millis() as i64),
                None => record::Duration::SinceTransactionStart,
            },
            applied_by: opts.applied_by,
            fence: opts.fence,
        },
    ));
    sql
}

pub(crate) async fn apply(
    engine: &Engine<'_>,
    client: &mut Client,
    step: &plan::Step,
    recorded_skip: Option<bool>,
    opts: &RunOptions<'_>,
) -> Result<Applied, StepError> {
    let direction = step.direction;
    let rev = engine.app.graph.revision(step.node);
    let span = tracing::info_span!(
        "revision",
        otel.name = %format!("{direction} {}", rev.id),
        fleetmig.revision.id = %rev.id,
        fleetmig.revision.direction = %direction,
        fleetmig.revision.transactional = rev.transaction == TransactionMode::Revision,
        fleetmig.revision.attempts = tracing::field::Empty,
        fleetmig.revision.skipped_by = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        otel.status_message = tracing::field::Empty,
        db.response.status_code = tracing::field::Empty,
    );
    let result = apply_in_span(engine, client, step, recorded_skip, opts)
        .instrument(span.clone())
        .await;
    match &result {
        Ok(a) => {
            span.record("fleetmig.revision.attempts", a.attempts);
            if let Some(cond) = &a.skipped_by {
                span.record("fleetmig.revision.skipped_by", cond.as_str());
            }
        }
        Err(e) => {
            span.record("otel.status_code", "error");
            match e {
                StepError::Failed(f) => {
                    span.record("otel.status_message", f.message.as_str());
                    span.record("fleetmig.revision.attempts", f.attempts);
                    if let Some(code) = &f.sqlstate {
                        span.record("db.response.status_code", code.as_str());
                    }
                }
                StepError::Engine(e) => {
                    span.record("otel.status_message", e.to_string().as_str());
                }
            }
        }
    }
    result
}

async fn apply_in_span(
    engine: &Engine<'_>,
    client: &mut Client,
    step: &plan::Step,
    recorded_skip: Option<bool>,
    opts: &RunOptions<'_>,
) -> Result<Applied, StepError> {
    let direction = step.direction;
    let rev = engine.app.graph.revision(step.node);
    let rendered =
        render::render(rev, direction, engine.values, recorded_skip).map_err(EngineError::from)?;
    (opts.events)(Event::RevisionStarted {
        revision: rev.id.clone(),
        direction,
    });
    let started = Instant::now();
    let attempts = if rev.transaction == TransactionMode::None && !rendered.statements.is_empty() {
        autocommit(engine, client, step, &rendered, started, opts).await?
    } else {
        transactional(engine, client, step, &rendered, opts).await?
    };
    Ok(Applied {
        revision: rev.id.clone(),
        direction,
        duration: started.elapsed(),
        skipped_by: rendered.skipped_by.clone(),
        attempts,
    })
}

fn local_timeouts(engine: &Engine<'_>) -> String {
    format!(
        "SET LOCAL lock_timeout = {}; SET LOCAL statement_timeout = {}",
        millis(engine.settings.lock_timeout),
        millis(engine.settings.statement_timeout)
    )
}

/// Returns the number of attempts it took.
async fn transactional(
    engine: &Engine<'_>,
    client: &mut Client,
    step: &plan::Step,
    rendered: &RenderedRevision,
    opts: &RunOptions<'_>,
) -> Result<u32, StepError> {
    let direction = step.direction;
    let rev = engine.app.graph.revision(step.node);
    let mut delays = engine.settings.backoff();
    let mut attempt = 0u32;
    let mut watch = Watch::new(
        opts.blockers.as_ref(),
        engine.lock_key(),
        engine.settings.lock_timeout,
    );
    loop {
        attempt += 1;
        let once = transactional_once(engine, client, step, rendered, opts);
        match watch.during(once).await {
            Ok(()) => return Ok(attempt),
            Err(Attempt::Sql(e, location)) if is_lock_timeout(&e) => match delays.next() {
                Some(delay) => {
                    wait_before_retry(rev, attempt, delay, &e, &mut watch, opts).await;
                }
                None => {
                    let f = failure(rev, direction, location, &e, attempt);
                    return Err(StepError::Failed(exhausted(engine, f, &watch, attempt)));
                }
            },
            Err(Attempt::Sql(e, location)) => {
                return Err(StepError::Failed(failure(
                    rev, direction, location, &e, attempt,
                )));
            }
            Err(Attempt::Other(e)) => return Err(e),
        }
    }
}

enum Attempt {
    Sql(tokio_postgres::Error, Option<String>),
    Other(StepError),
}

impl From<StepError> for Attempt {
    fn from(e: StepError) -> Self {
        Attempt::Other(e)
    }
}

impl From<EngineError> for Attempt {
    fn from(e: EngineError) -> Self {
        Attempt::Other(StepError::Engine(e))
    }
}

async fn transactional_once(
    engine: &Engine<'_>,
    client: &mut Client,
    step: &plan::Step,
    rendered: &RenderedRevision,
    opts: &RunOptions<'_>,
) -> Result<(), Attempt> {
    let direction = step.direction;
    let rev = engine.app.graph.revision(step.node);
    let tables = &engine.settings.tables;
    opts.ensure_live()?;
    let tx = client
        .transaction()
        .await
        .map_err(|e| Attempt::Sql(e, None))?;
    // One round trip: timeouts, fence, and the version rows as this transaction sees them
    // (behind a transaction-mode pooler, the session settings and lock first).
    let preamble = format!(
        "{}{}{};\n{};\n{}",
        super::OWN_CONTEXT,
        engine.transaction_preamble(opts.fence),
        local_timeouts(engine),
        fence_and_versions_sql(tables, opts.fence),
        engine.revision_context(),
    );
    let rows = rows_of(
        &tx.simple_query(&preamble)
            .await
            .map_err(|e| Attempt::Sql(e, None))?,
    );
    super::check_xact_lock(&rows)?;
    let versions = fenced_versions(&tx, tables, opts.fence, &rows).await?;
    if !still_needed(engine, &versions, step)? {
        tracing::info!(revision = %rev.id, %direction, "already done by another process; nothing to do");
        return Ok(());
    }
    // The statements, ANALYZE, the bookkeeping and COMMIT, pipelined on the connection: sent
    // in order without waiting for each answer. After the first failure the server rejects
    // the rest (25P02) and the COMMIT rolls back, so the first error in order is the one to
    // report.
    let mut bookkeeping = super::BOOKKEEPING_CONTEXT.to_string();
    bookkeeping.push_str(&record_sql(engine, step, rendered, None, opts));
    bookkeeping.push_str(engine.transaction_epilogue());
    // What each piece is, for the location of a failure: a statement of the file, the
    // header's ANALYZE, or fleetmig's own bookkeeping.
    let located = rendered
        .statements
        .iter()
        .map(|stmt| (stmt.sql.as_str(), Some(stmt), true))
        .chain(rendered.analyze.iter().map(|a| (a.as_str(), None, true)))
        .chain([(bookkeeping.as_str(), None, false), ("COMMIT", None, false)]);
    let (sqls, places): (Vec<&str>, Vec<(Option<&RenderedStatement>, bool)>) =
        located.map(|(sql, stmt, ours)| (sql, (stmt, ours))).unzip();
    opts.ensure_live()?;
    let results = futures::future::join_all(sqls.iter().map(|sql| execute(&tx, sql))).await;
    if let Some((e, (stmt, in_file))) = results
        .into_iter()
        .zip(places)
        .find_map(|(r, p)| r.err().map(|e| (e, p)))
    {
        let location = match stmt {
            Some(stmt) => Some(locate(rev, stmt, &e)),
            None => in_file.then(|| rev.location(1)),
        };
        return Err(Attempt::Sql(e, location));
    }
    committed(tx);
    Ok(())
}

/// The transaction's COMMIT went out with its last statements and succeeded: forget the
/// guard, whose drop would send a ROLLBACK (one more round trip, and a server warning).
fn committed(tx: tokio_postgres::Transaction<'_>) {
    std::mem::forget(tx);
}

/// The fence write (when fenced) and the version rows, to send in one round trip.
fn fence_and_versions_sql(tables: &Tables, fence: Option<FenceToken>) -> String {
    let mut sql = fence
        .map(|t| format!("{};\n", tables.fence_check_sql(t.0)))
        .unwrap_or_default();
    sql.push_str(&tables.tagged_versions_sql());
    sql
}

/// From the rows of [`fence_and_versions_sql`]: stale if the fence did not write, else the
/// version rows.
async fn fenced_versions(
    client: &impl GenericClient,
    tables: &Tables,
    fence: Option<FenceToken>,
    rows: &[Vec<Option<String>>],
) -> Result<Vec<crate::model::RevisionId>, StepError> {
    if let Some(token) = fence {
        check_fence(client, tables, token, rows).await?;
    }
    Ok(versions_of(rows)?)
}

/// The version rows of a tagged query (`'version', version_num`).
fn versions_of(rows: &[Vec<Option<String>>]) -> Result<Vec<crate::model::RevisionId>, EngineError> {
    tagged(rows, "version")
        .map(|r| r[1].as_deref().unwrap_or_default().parse())
        .collect::<Result<Vec<crate::model::RevisionId>, _>>()
        .map_err(|_| {
            EngineError::StateChanged(
                "the version table holds a value that is not a revision id".into(),
            )
        })
}

/// Non-transactional revision: statement by statement in autocommit.
async fn autocommit(
    engine: &Engine<'_>,
    client: &mut Client,
    step: &plan::Step,
    rendered: &RenderedRevision,
    started: Instant,
    opts: &RunOptions<'_>,
) -> Result<u32, StepError> {
    let direction = step.direction;
    let rev = engine.app.graph.revision(step.node);
    let tables = &engine.settings.tables;
    let sql_err = |e: tokio_postgres::Error, line: Option<usize>, attempts: u32| {
        StepError::Failed(failure(
            rev,
            direction,
            line.map(|l| rev.location(l)),
            &e,
            attempts,
        ))
    };
    // Precheck, one round trip in one implicit transaction: the fence, whether the revision
    // is still needed, then the session's timeouts for the statements (set after the fence,
    // which waits for a fence row another transaction holds; reset when the revision is
    // recorded, or by the unlock).
    let precheck = format!(
        "BEGIN;\n{}{};\n{}SET lock_timeout = {}; SET statement_timeout = {};\nCOMMIT",
        super::OWN_CONTEXT,
        fence_and_versions_sql(tables, opts.fence),
        engine.revision_context(),
        millis(engine.settings.lock_timeout),
        millis(engine.settings.statement_timeout)
    );
    opts.ensure_live()?;
    let rows = rows_of(
        &client
            .simple_query(&precheck)
            .await
            .map_err(|e| sql_err(e, None, 1))?,
    );
    let versions = fenced_versions(&*client, tables, opts.fence, &rows).await?;
    if !still_needed(engine, &versions, step)? {
        return Ok(1);
    }
    // The precheck has just fenced: the first statement's first attempt needs no other check.
    let mut fenced = opts.fence.is_some();
    let mut max_attempts = 1;
    for stmt in &rendered.statements {
        let attempts = run_with_retries(
            engine,
            client,
            rev,
            &stmt.sql,
            stmt.index_build.as_ref(),
            opts,
            &mut fenced,
        )
        .await
        .map_err(|f| f.at(rev, direction, |e| Some(locate(rev, stmt, e))))?;
        max_attempts = max_attempts.max(attempts);
        if let Some(build) = &stmt.index_build
            && index_validity(client, build)
                .await
                .map_err(|e| sql_err(e, Some(stmt.line), attempts))?
                == Some(false)
        {
            return Err(StepError::Engine(EngineError::IndexInvalid {
                location: rev.location(stmt.line),
                index: build.index.clone(),
            }));
        }
    }
    for analyze in &rendered.analyze {
        run_with_retries(engine, client, rev, analyze, None, opts, &mut fenced)
            .await
            .map_err(|f| f.at(rev, direction, |_| Some(rev.location(1))))?;
    }
    // Record completion in a fenced transaction, the session's timeouts reset in it.
    opts.ensure_live()?;
    let tx = client
        .transaction()
        .await
        .map_err(|e| sql_err(e, None, 1))?;
    let check = format!(
        "RESET lock_timeout; RESET statement_timeout;\n{}{}",
        super::OWN_CONTEXT,
        fence_and_versions_sql(tables, opts.fence)
    );
    let rows = rows_of(
        &tx.simple_query(&check)
            .await
            .map_err(|e| sql_err(e, None, 1))?,
    );
    let versions = fenced_versions(&tx, tables, opts.fence, &rows).await?;
    let mut sql = String::new();
    if still_needed(engine, &versions, step)? {
        sql = record_sql(engine, step, rendered, Some(started), opts);
    }
    sql.push_str("COMMIT");
    tx.batch_execute(&sql)
        .await
        .map_err(|e| sql_err(e, None, 1))?;
    committed(tx);
    Ok(max_attempts)
}

/// Report a lock-timeout retry (log, span event, progress event) with who held the lock,
/// end the blockers the policy names, and wait.
async fn wait_before_retry(
    rev: &Revision,
    attempt: u32,
    delay: std::time::Duration,
    e: &tokio_postgres::Error,
    watch: &mut Watch<'_>,
    opts: &RunOptions<'_>,
) {
    let message = e
        .as_db_error()
        .map_or_else(|| e.to_string(), |d| d.message().to_string());
    // Ending a blocker is a statement sent under the lock: never after its lease's deadline.
    if (opts.live)() {
        watch.act().await;
    }
    let blockers = watch.seen.clone();
    let blocked_by = blockers
        .iter()
        .map(super::blockers::Blocker::describe)
        .collect::<Vec<_>>()
        .join("; ");
    tracing::info!(revision = %rev.id, attempt, ?delay, %message, %blocked_by, "lock timeout; retrying");
    (opts.events)(Event::LockRetry {
        revision: rev.id.clone(),
        attempt,
        delay,
        message,
        blockers,
    });
    tokio::time::sleep(delay).await;
}

/// A failed autocommit statement: a fence/engine error, or SQL with its attempt count (and,
/// for a lock timeout whose retries ran out, who held the lock).
enum StatementError {
    Step(StepError),
    Sql(tokio_postgres::Error, u32, Option<String>),
}

impl StatementError {
    fn at(
        self,
        rev: &Revision,
        direction: Direction,
        locate: impl FnOnce(&tokio_postgres::Error) -> Option<String>,
    ) -> StepError {
        match self {
            StatementError::Step(e) => e,
            StatementError::Sql(e, attempts, blocked) => {
                let location = locate(&e);
                let mut f = failure(rev, direction, location, &e, attempts);
                f.blocked = blocked;
                StepError::Failed(f)
            }
        }
    }
}

/// One autocommit statement, retried on lock timeouts. Every attempt is fenced first, and an
/// index build first drops an INVALID leftover (a build that timed out leaves one behind).
async fn run_with_retries(
    engine: &Engine<'_>,
    client: &Client,
    rev: &Revision,
    sql: &str,
    index_build: Option<&crate::revision::sql::ConcurrentIndexBuild>,
    opts: &RunOptions<'_>,
    fenced: &mut bool,
) -> Result<u32, StatementError> {
    let mut delays = engine.settings.backoff();
    let mut attempt = 0u32;
    let mut watch = Watch::new(
        opts.blockers.as_ref(),
        engine.lock_key(),
        engine.settings.lock_timeout,
    );
    loop {
        attempt += 1;
        opts.ensure_live()
            .map_err(|e| StatementError::Step(StepError::Engine(e)))?;
        if let Some(token) = opts.fence
            && !std::mem::take(fenced)
        {
            fence(client, &engine.settings.tables, token)
                .await
                .map_err(StatementError::Step)?;
        }
        if let Some(build) = index_build {
            drop_invalid_leftover(client, rev, build, opts)
                .await
                .map_err(|e| StatementError::Sql(e, attempt, None))?;
        }
        match watch.during(execute(client, sql)).await {
            Ok(()) => return Ok(attempt),
            Err(e) if is_lock_timeout(&e) => match delays.next() {
                Some(delay) => {
                    wait_before_retry(rev, attempt, delay, &e, &mut watch, opts).await;
                }
                None => {
                    let blocked = watch.waited(attempt, engine.settings.lock_timeout);
                    return Err(StatementError::Sql(e, attempt, blocked));
                }
            },
            Err(e) => return Err(StatementError::Sql(e, attempt, None)),
        }
    }
}

/// `Some(valid)` for an index of that name in the table's schema; `None` if absent (or the
/// table does not exist yet).
async fn index_validity(
    client: &Client,
    build: &crate::revision::sql::ConcurrentIndexBuild,
) -> Result<Option<bool>, tokio_postgres::Error> {
    // The simple protocol, values as literals: one round trip instead of prepare + execute.
    let rows = rows_of(
        &client
            .simple_query(&format!(
                "SELECT i.indisvalid FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) i.indexrelid \
                 WHERE c.relname OPERATOR(pg_catalog.=) {} AND c.relnamespace OPERATOR(pg_catalog.=) (SELECT relnamespace FROM pg_catalog.pg_class WHERE oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass({}))",
                quote_literal(&build.index),
                quote_literal(&build.table)
            ))
            .await?,
    );
    Ok(rows.first().map(|r| r[0].as_deref() == Some("t")))
}

/// An INVALID index left by an interrupted CREATE INDEX CONCURRENTLY would make
/// `IF NOT EXISTS` skip the build and report success: drop it so the build runs again.
async fn drop_invalid_leftover(
    client: &Client,
    rev: &Revision,
    build: &crate::revision::sql::ConcurrentIndexBuild,
    opts: &RunOptions<'_>,
) -> Result<(), tokio_postgres::Error> {
    if index_validity(client, build).await? != Some(false) {
        return Ok(());
    }
    // The simple protocol, values as literals: no prepared statement (a transaction-mode
    // pooler would lose it), everything named in pg_catalog.
    let rows = rows_of(
        &client
            .simple_query(&format!(
                "SELECT n.nspname::pg_catalog.text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass({})",
                quote_literal(&build.table)
            ))
            .await?,
    );
    let Some(schema) = rows.first().and_then(|r| r[0].clone()) else {
        return Ok(());
    };
    let qualified = format!(
        "{}.{}",
        crate::revision::placeholder::quote_ident(&schema),
        crate::revision::placeholder::quote_ident(&build.index)
    );
    tracing::warn!(revision = %rev.id, index = %qualified, "dropping an INVALID index left by an earlier failed build");
    execute(
        client,
        &format!("DROP INDEX CONCURRENTLY IF EXISTS {qualified}"),
    )
    .await?;
    (opts.events)(Event::InvalidIndexDropped {
        revision: rev.id.clone(),
        index: build.index.clone(),
    });
    Ok(())
}

/// The operation a statement performs, for span names: keywords only, never identifiers or
/// values (a statement may carry data).
pub(crate) fn operation(sql: &str) -> String {
    let w = crate::revision::sql::leading_keywords(sql, 4);
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    let op = match w.as_slice() {
        ["CREATE", "OR", "REPLACE", kind, ..] => format!("CREATE {kind}"),
        ["CREATE", "UNIQUE", "INDEX", ..] => "CREATE INDEX".into(),
        [
            verb @ ("CREATE" | "ALTER" | "DROP" | "COMMENT" | "REINDEX" | "REFRESH"),
            kind,
            ..,
        ] => format!("{verb} {kind}"),
        [first, ..] => first.to_string(),
        [] => "EMPTY".into(),
    };
    // Keep only keyword-like words (a quoted identifier would carry its own spelling).
    if op.bytes().all(|b| b.is_ascii_uppercase() || b == b' ') {
        op
    } else {
        "STATEMENT".into()
    }
}

/// Run one statement in a span named by its operation (never its text).
async fn execute(client: &impl GenericClient, sql: &str) -> Result<(), tokio_postgres::Error> {
    let op = operation(sql);
    let span = tracing::debug_span!(
        target: super::STATEMENT_TARGET,
        "statement",
        otel.name = %op,
        db.system.name = "postgresql",
        db.operation.name = %op,
        otel.status_code = tracing::field::Empty,
        db.response.status_code = tracing::field::Empty,
    );
    let result = client.batch_execute(sql).instrument(span.clone()).await;
    if let Err(e) = &result {
        span.record("otel.status_code", "error");
        if let Some(code) = e.code() {
            span.record("db.response.status_code", code.code());
        }
    }
    result
}

#[cfg(test)]
mod tests {
    #[test]
    fn operations_name_statements_without_their_data() {
        use super::operation;
        assert_eq!(operation("CREATE TABLE t (x int)"), "CREATE TABLE");
        assert_eq!(
            operation("create unique index concurrently i on t (x)"),
            "CREATE INDEX"
        );
        assert_eq!(operation("INSERT INTO t VALUES ('secret')"), "INSERT");
        assert_eq!(
            operation("CREATE OR REPLACE FUNCTION f() ..."),
            "CREATE FUNCTION"
        );
        assert_eq!(operation("ALTER \"Weird\" x"), "STATEMENT");
    }
}
