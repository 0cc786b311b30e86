//! What applying revisions needs in common (failures located in their files, the fence, the
//! version rows read under it, lock-timeout retries, statements in spans), and the
//! non-transactional path: each statement alone, fence checked before each, INVALID index
//! leftovers rebuilt, completion recorded in a final fenced transaction. The transactional
//! path, a group of revisions in one transaction, is [`super::group`].

use std::collections::BTreeSet;
use std::time::Instant;

use tokio_postgres::{Client, GenericClient};
use tracing::Instrument;

use super::blockers::Watch;
use super::error::{EngineError, StepFailure};
use super::record::{self, HistoryRow};
use super::tables::Tables;
use super::units::Prepared;
use super::{Applied, Engine, Event, RunOptions, millis, rows_of, tagged};
use crate::model::{Direction, FenceToken};
use crate::revision::placeholder::quote_literal;
use crate::revision::plan;
use crate::revision::render::{RenderedRevision, RenderedStatement};
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
pub(crate) fn locate(
    rev: &Revision,
    stmt: &RenderedStatement,
    e: &tokio_postgres::Error,
) -> String {
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

pub(crate) fn is_lock_timeout(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| c.code() == LOCK_NOT_AVAILABLE)
}

pub(crate) fn failure(
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
        rolled_back: vec![],
    })
}

/// A lock timeout whose retries ran out, with who held the lock.
pub(crate) fn exhausted(
    engine: &Engine<'_>,
    mut f: Box<StepFailure>,
    watch: &Watch<'_>,
    attempts: u32,
) -> Box<StepFailure> {
    f.blocked = watch.waited(attempts, engine.settings.lock_timeout);
    f
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
    Ok(first_needed(engine, &[step], rows)? == 0)
}

/// Where the version rows read inside a transaction leave a run of consecutive `steps`: the
/// index of the first still to apply (`steps.len()`: all done by another process). Rows that
/// are neither the first step's before nor any step's after mean the database changed under
/// us.
pub(crate) fn first_needed(
    engine: &Engine<'_>,
    steps: &[&plan::Step],
    rows: &[crate::model::RevisionId],
) -> Result<usize, EngineError> {
    let g = &engine.app.graph;
    let now: BTreeSet<&str> = rows.iter().map(|r| r.as_str()).collect();
    let ids = |s: &BTreeSet<Node>| -> BTreeSet<&str> { s.iter().map(|&n| g.id(n)).collect() };
    let first = steps[0];
    if now == ids(&first.rows_before) {
        return Ok(0);
    }
    if let Some(k) = steps.iter().position(|s| now == ids(&s.rows_after)) {
        tracing::info!(revision = %g.id(steps[k].node), "already done by another process");
        return Ok(k + 1);
    }
    Err(EngineError::StateChanged(format!(
        "before {} {} the version table was expected to hold [{}] but holds [{}]: another process changed it",
        first.direction,
        g.id(first.node),
        ids(&first.rows_before)
            .into_iter()
            .collect::<Vec<_>>()
            .join(", "),
        now.into_iter().collect::<Vec<_>>().join(", ")
    )))
}

/// The version/history SQL recording `step`.
fn record_sql(
    engine: &Engine<'_>,
    step: &plan::Step,
    rendered: &RenderedRevision,
    started: Instant,
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
            duration: record::Duration::Millis(started.elapsed().as_millis() as i64),
            applied_by: opts.applied_by,
            fence: opts.fence,
        },
    ));
    sql
}

pub(crate) fn local_timeouts(engine: &Engine<'_>) -> String {
    format!(
        "SET LOCAL lock_timeout = {}; SET LOCAL statement_timeout = {}",
        millis(engine.settings.lock_timeout),
        millis(engine.settings.statement_timeout)
    )
}

/// The fence write (when fenced) and the version rows, to send in one round trip.
pub(crate) fn fence_and_versions_sql(tables: &Tables, fence: Option<FenceToken>) -> String {
    let mut sql = fence
        .map(|t| format!("{};\n", tables.fence_check_sql(t.0)))
        .unwrap_or_default();
    sql.push_str(&tables.tagged_versions_sql());
    sql
}

/// From the rows of [`fence_and_versions_sql`]: stale if the fence did not write, else the
/// version rows.
pub(crate) async fn fenced_versions(
    client: &impl GenericClient,
    tables: &Tables,
    fence: Option<FenceToken>,
    rows: &[Vec<Option<String>>],
) -> Result<Vec<crate::model::RevisionId>, StepError> {
    if let Some(token) = fence {
        check_fence(client, tables, token, rows).await?;
    }
    Ok(super::sorted_versions(rows)?)
}

/// A non-transactional revision, statement by statement, in its own span; with
/// `release_after` (it ends the run), the migration lock is released with its final COMMIT.
/// Returns what it applied and whether the lock was released.
pub(crate) async fn apply_autocommit(
    engine: &Engine<'_>,
    client: &Client,
    prepared: &Prepared,
    release_after: bool,
    opts: &RunOptions<'_>,
) -> Result<(Applied, bool), StepError> {
    let step = &prepared.step;
    let rev = engine.app.graph.revision(step.node);
    let span = tracing::info_span!(
        "revision",
        otel.name = %format!("{} {}", step.direction, rev.id),
        fleetmig.revision.id = %rev.id,
        fleetmig.revision.direction = %step.direction,
        fleetmig.revision.transactional = false,
        fleetmig.revision.attempts = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        otel.status_message = tracing::field::Empty,
        db.response.status_code = tracing::field::Empty,
    );
    (opts.events)(Event::RevisionStarted {
        revision: rev.id.clone(),
        direction: step.direction,
    });
    let started = Instant::now();
    let result = autocommit(
        engine,
        client,
        step,
        &prepared.rendered,
        started,
        release_after,
        opts,
    )
    .instrument(span.clone())
    .await;
    match &result {
        Ok((attempts, _)) => {
            span.record("fleetmig.revision.attempts", attempts);
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
    let (attempts, released) = result?;
    Ok((
        Applied {
            revision: rev.id.clone(),
            direction: step.direction,
            duration: started.elapsed(),
            skipped_by: prepared.rendered.skipped_by.clone(),
            attempts,
        },
        released,
    ))
}

/// Non-transactional revision: statement by statement in autocommit. Returns the attempts it
/// took and whether the migration lock was released after it.
async fn autocommit(
    engine: &Engine<'_>,
    client: &Client,
    step: &plan::Step,
    rendered: &RenderedRevision,
    started: Instant,
    release_after: bool,
    opts: &RunOptions<'_>,
) -> Result<(u32, bool), StepError> {
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
    // One query string: one implicit transaction, gone whatever happens in it.
    // The first statement's index build, if any, has its leftover check here too (under the
    // revision's search_path, which names the table as the statement will).
    let first_build = rendered
        .statements
        .first()
        .and_then(|s| s.index_build.as_ref());
    let precheck = format!(
        "{}{};\n{}{}SET lock_timeout = {}; SET statement_timeout = {}",
        super::OWN_CONTEXT,
        fence_and_versions_sql(tables, opts.fence),
        engine.revision_context(),
        first_build
            .map(|b| format!("{};\n", index_validity_sql(b)))
            .unwrap_or_default(),
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
    let versions = fenced_versions(client, tables, opts.fence, &rows).await?;
    if !still_needed(engine, &versions, step)? {
        return Ok((1, false));
    }
    // The precheck has just fenced (and looked for the first build's leftover): the first
    // statement's first attempt needs no other check.
    let mut checked = Checked {
        fence: opts.fence.is_some(),
        index: first_build.map(|_| validity_of(&rows)),
    };
    let mut max_attempts = 1;
    for stmt in &rendered.statements {
        let attempts = run_with_retries(
            engine,
            client,
            rev,
            &stmt.sql,
            stmt.index_build.as_ref(),
            opts,
            &mut checked,
        )
        .await
        .map_err(|f| f.at(rev, direction, |e| Some(locate(rev, stmt, e))))?;
        max_attempts = max_attempts.max(attempts);
    }
    // ANALYZE changes statistics, never the schema: it runs unfenced (still never after the
    // lease's deadline), and a stale holder's ANALYZE would only refresh them again.
    for analyze in &rendered.analyze {
        let mut unfenced = Checked {
            fence: true,
            index: None,
        };
        run_with_retries(engine, client, rev, analyze, None, opts, &mut unfenced)
            .await
            .map_err(|f| f.at(rev, direction, |_| Some(rev.location(1))))?;
    }
    // Record completion in a fenced transaction, the session's timeouts reset in it: BEGIN
    // and the check in one round trip, the record and COMMIT (and the session's reset when
    // the run ends here) in another.
    opts.ensure_live()?;
    let release = release_after && !engine.settings.transaction_pooled();
    let check = format!(
        "BEGIN;\nRESET lock_timeout; RESET statement_timeout;\n{}{}",
        super::OWN_CONTEXT,
        fence_and_versions_sql(tables, opts.fence)
    );
    let recorded = async {
        let rows = rows_of(
            &client
                .simple_query(&check)
                .await
                .map_err(|e| sql_err(e, None, 1))?,
        );
        let versions = fenced_versions(client, tables, opts.fence, &rows).await?;
        let mut sql = String::new();
        if still_needed(engine, &versions, step)? {
            sql = record_sql(engine, step, rendered, started, opts);
        }
        if release {
            sql.push_str(super::RELEASE_IF_COMMITTED_MARK);
        }
        sql.push_str(engine.transaction_epilogue());
        sql.push_str("COMMIT");
        Ok::<_, StepError>(sql)
    }
    .await;
    let sql = match recorded {
        Ok(sql) => sql,
        Err(e) => {
            super::group::rollback(client).await;
            return Err(e);
        }
    };
    let (committed, released) = if release {
        let release_sql = engine.release_if_committed_sql();
        futures::join!(
            client.batch_execute(&sql),
            super::released(client, &release_sql)
        )
    } else {
        (client.batch_execute(&sql).await, false)
    };
    committed.map_err(|e| sql_err(e, None, 1))?;
    Ok((max_attempts, released))
}

/// Report a lock-timeout retry (log, span event, progress event) with who held the lock,
/// end the blockers the policy names, and wait.
pub(crate) async fn wait_before_retry(
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

/// What the round trip before a statement's first attempt has already checked.
struct Checked {
    /// The fence was written.
    fence: bool,
    /// The index build's leftover was looked for: `Some(validity)`.
    index: Option<Option<bool>>,
}

/// One autocommit statement, retried on lock timeouts. Every attempt is fenced first, and an
/// index build first drops an INVALID leftover (a build that timed out leaves one behind):
/// both checks in one round trip. A build that then succeeds leaves a valid index (Postgres
/// marks it valid before answering; `IF NOT EXISTS` can no longer skip over an INVALID one).
async fn run_with_retries(
    engine: &Engine<'_>,
    client: &Client,
    rev: &Revision,
    sql: &str,
    index_build: Option<&crate::revision::sql::ConcurrentIndexBuild>,
    opts: &RunOptions<'_>,
    checked: &mut Checked,
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
        // Later attempts check again.
        let done = std::mem::replace(
            checked,
            Checked {
                fence: false,
                index: None,
            },
        );
        let token = opts.fence.filter(|_| !done.fence);
        let build = index_build.filter(|_| done.index.is_none());
        let mut validity = done.index.flatten();
        if token.is_some() || build.is_some() {
            let tables = &engine.settings.tables;
            let mut check: Vec<String> =
                token.iter().map(|t| tables.fence_check_sql(t.0)).collect();
            check.extend(build.map(index_validity_sql));
            let rows = rows_of(
                &client
                    .simple_query(&check.join(";\n"))
                    .await
                    .map_err(|e| StatementError::Sql(e, attempt, None))?,
            );
            if let Some(token) = token {
                check_fence(client, tables, token, &rows)
                    .await
                    .map_err(StatementError::Step)?;
            }
            if build.is_some() {
                validity = validity_of(&rows);
            }
        }
        if let Some(build) = index_build
            && validity == Some(false)
        {
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

/// Rows `('index', indisvalid)` for an index of that name in the table's schema; none if
/// absent (or the table does not exist yet). The simple protocol, values as literals: it
/// rides in the round trip of a fence check or precheck.
fn index_validity_sql(build: &crate::revision::sql::ConcurrentIndexBuild) -> String {
    format!(
        "SELECT 'index', i.indisvalid::pg_catalog.text FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) i.indexrelid \
         WHERE c.relname OPERATOR(pg_catalog.=) {} AND c.relnamespace OPERATOR(pg_catalog.=) (SELECT relnamespace FROM pg_catalog.pg_class WHERE oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass({}))",
        quote_literal(&build.index),
        quote_literal(&build.table)
    )
}

/// `Some(valid)` from the rows of [`index_validity_sql`]; `None`: no such index.
fn validity_of(rows: &[Vec<Option<String>>]) -> Option<bool> {
    tagged(rows, "index")
        .next()
        .map(|r| r.get(1).and_then(|c| c.as_deref()) == Some("true"))
}

/// An INVALID index left by an interrupted CREATE INDEX CONCURRENTLY would make
/// `IF NOT EXISTS` skip the build and report success: drop it so the build runs again
/// (called once its check found it INVALID).
async fn drop_invalid_leftover(
    client: &Client,
    rev: &Revision,
    build: &crate::revision::sql::ConcurrentIndexBuild,
    opts: &RunOptions<'_>,
) -> Result<(), tokio_postgres::Error> {
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
pub(crate) async fn execute(
    client: &impl GenericClient,
    sql: &str,
) -> Result<(), tokio_postgres::Error> {
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
