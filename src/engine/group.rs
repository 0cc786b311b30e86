//! A group of transactional revisions applied in one transaction (see [`super::units`]). One
//! round trip opens it: BEGIN, fleetmig's own context, the timeouts, the fence, the version
//! rows as this transaction sees them (on a new database, fleetmig's tables first). One more
//! sends, pipelined, every revision's statements with a mark after each (the server's clock,
//! for each history row's duration), then the version change, the history rows in one insert
//! and COMMIT — and, when it ends the run, `DISCARD ALL`. A failure anywhere rolls the whole
//! group back and names the revisions that went with it; a lock timeout retries the group.

use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tracing::Instrument;

use super::blockers::Watch;
use super::record;
use super::step::{
    StepError, execute, exhausted, failure, fence_and_versions_sql, fenced_versions, first_needed,
    is_lock_timeout, local_timeouts, locate, wait_before_retry,
};
use super::units::{Prepared, group_bookkeeping};
use super::{Applied, Engine, EngineError, Event, RunOptions, rows_of};
use crate::model::RevisionId;
use crate::revision::render::RenderedStatement;

/// What else the group's transaction does.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Extras {
    /// Create fleetmig's tables first (a database that has none).
    pub create_tables: bool,
    /// The group ends the run: the migration lock is released right after COMMIT, in the
    /// same round trip, if the COMMIT went through (session mode).
    pub release_after: bool,
}

/// What a group did: each revision applied, and whether the migration lock was released.
pub(crate) struct Done {
    pub applied: Vec<Applied>,
    pub released: bool,
}

enum Attempt {
    /// A statement failed: which member, and where in its file.
    Sql(tokio_postgres::Error, usize, Option<String>),
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

pub(crate) async fn apply(
    engine: &Engine<'_>,
    client: &Client,
    members: &[Prepared],
    extras: Extras,
    opts: &RunOptions<'_>,
) -> Result<Done, StepError> {
    let g = &engine.app.graph;
    let spans: Vec<tracing::Span> = members
        .iter()
        .map(|m| {
            let rev = g.revision(m.step.node);
            tracing::info_span!(
                "revision",
                otel.name = %format!("{} {}", m.step.direction, rev.id),
                fleetmig.revision.id = %rev.id,
                fleetmig.revision.direction = %m.step.direction,
                fleetmig.revision.transactional = true,
                fleetmig.revision.group_size = members.len(),
                fleetmig.revision.attempts = tracing::field::Empty,
                fleetmig.revision.skipped_by = tracing::field::Empty,
                fleetmig.revision.duration_ms = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
                otel.status_message = tracing::field::Empty,
                db.response.status_code = tracing::field::Empty,
            )
        })
        .collect();
    for m in members {
        (opts.events)(Event::RevisionStarted {
            revision: g.revision(m.step.node).id.clone(),
            direction: m.step.direction,
        });
    }
    let mut delays = engine.settings.backoff();
    let mut attempt = 0u32;
    let mut watch = Watch::new(
        opts.blockers.as_ref(),
        engine.lock_key(),
        engine.settings.lock_timeout,
    );
    loop {
        attempt += 1;
        let once = once(engine, client, members, &spans, extras, opts);
        let failed = match watch.during(once).await {
            Ok((durations, released)) => {
                let applied = members
                    .iter()
                    .zip(durations)
                    .zip(&spans)
                    .map(|((m, duration), span)| {
                        span.record("fleetmig.revision.attempts", attempt);
                        span.record("fleetmig.revision.duration_ms", duration.as_millis() as u64);
                        if let Some(cond) = &m.rendered.skipped_by {
                            span.record("fleetmig.revision.skipped_by", cond.as_str());
                        }
                        Applied {
                            revision: g.revision(m.step.node).id.clone(),
                            direction: m.step.direction,
                            duration,
                            skipped_by: m.rendered.skipped_by.clone(),
                            attempts: attempt,
                        }
                    })
                    .collect();
                return Ok(Done { applied, released });
            }
            Err(Attempt::Sql(e, k, location)) => {
                let rev = g.revision(members[k].step.node);
                if is_lock_timeout(&e) {
                    if let Some(delay) = delays.next() {
                        wait_before_retry(rev, attempt, delay, &e, &mut watch, opts).await;
                        continue;
                    }
                    let f = failure(rev, members[k].step.direction, location, &e, attempt);
                    StepError::Failed(exhausted(engine, f, &watch, attempt))
                } else {
                    StepError::Failed(failure(
                        rev,
                        members[k].step.direction,
                        location,
                        &e,
                        attempt,
                    ))
                }
                .with_rolled_back(ids(engine, &members[..k]))
            }
            Err(Attempt::Other(e)) => e,
        };
        if let StepError::Failed(f) = &failed {
            let span = &spans[members
                .iter()
                .position(|m| g.revision(m.step.node).id == f.revision)
                .unwrap_or(0)];
            span.record("otel.status_code", "error");
            span.record("otel.status_message", f.message.as_str());
            if let Some(code) = &f.sqlstate {
                span.record("db.response.status_code", code.as_str());
            }
        }
        return Err(failed);
    }
}

fn ids(engine: &Engine<'_>, members: &[Prepared]) -> Vec<RevisionId> {
    members
        .iter()
        .map(|m| engine.app.graph.revision(m.step.node).id.clone())
        .collect()
}

impl StepError {
    /// The revisions of the group before the failing one, rolled back with it.
    fn with_rolled_back(self, rolled_back: Vec<RevisionId>) -> StepError {
        match self {
            StepError::Failed(mut f) => {
                f.rolled_back = rolled_back;
                StepError::Failed(f)
            }
            other => other,
        }
    }
}

/// One attempt: each member's duration (client-side, between the answers to the marks), and
/// whether the migration lock was released after COMMIT.
async fn once(
    engine: &Engine<'_>,
    client: &Client,
    members: &[Prepared],
    spans: &[tracing::Span],
    extras: Extras,
    opts: &RunOptions<'_>,
) -> Result<(Vec<Duration>, bool), Attempt> {
    let tables = &engine.settings.tables;
    opts.ensure_live()?;
    let preamble = format!(
        "BEGIN;\n{}{}{}{};\n{};\n{}{};\n",
        if extras.create_tables {
            tables.create_sql()
        } else {
            String::new()
        },
        super::OWN_CONTEXT,
        engine.transaction_preamble(opts.fence),
        local_timeouts(engine),
        fence_and_versions_sql(tables, opts.fence),
        engine.revision_context(),
        record::mark_sql(0),
    );
    let opened = async {
        let rows = rows_of(
            &client
                .simple_query(&preamble)
                .await
                .map_err(|e| Attempt::Sql(e, 0, None))?,
        );
        super::check_xact_lock(&rows)?;
        let versions = fenced_versions(client, tables, opts.fence, &rows).await?;
        let steps: Vec<&crate::revision::plan::Step> = members.iter().map(|m| &m.step).collect();
        Ok::<_, Attempt>(first_needed(engine, &steps, &versions)?)
    }
    .await;
    let start = match opened {
        Ok(start) => start,
        Err(e) => {
            rollback(client).await;
            return Err(e);
        }
    };
    if start == members.len() {
        rollback(client).await;
        return Ok((vec![Duration::ZERO; members.len()], false));
    }
    let todo = &members[start..];
    let mut bookkeeping = super::OWN_CONTEXT.to_string();
    bookkeeping.push_str(&group_bookkeeping(
        engine.app,
        tables,
        todo,
        &engine.values.to_json(),
        opts.applied_by,
        opts.fence,
    ));
    let release = extras.release_after && !engine.settings.transaction_pooled();
    if release {
        bookkeeping.push_str(super::RELEASE_IF_COMMITTED_MARK);
    }
    bookkeeping.push_str(engine.transaction_epilogue());
    // Every piece, in order, with what it belongs to for the location of a failure: a
    // statement of a member's file, its ANALYZE, the mark after it, or fleetmig's own.
    enum Piece<'s> {
        Statement(usize, &'s RenderedStatement),
        Analyze(usize),
        Mark(usize),
        Ours,
    }
    let marks: Vec<String> = (1..=todo.len()).map(record::mark_sql).collect();
    let mut pieces: Vec<(&str, Piece<'_>)> = Vec::new();
    for (i, m) in todo.iter().enumerate() {
        let k = start + i;
        pieces.extend(
            m.rendered
                .statements
                .iter()
                .map(|s| (s.sql.as_str(), Piece::Statement(k, s))),
        );
        pieces.extend(
            m.rendered
                .analyze
                .iter()
                .map(|a| (a.as_str(), Piece::Analyze(k))),
        );
        pieces.push((marks[i].as_str(), Piece::Mark(k)));
    }
    pieces.push((bookkeeping.as_str(), Piece::Ours));
    pieces.push(("COMMIT", Piece::Ours));
    let release_sql = engine.release_if_committed_sql();
    opts.ensure_live()?;
    // Sent in order without waiting for each answer. After the first failure the server
    // rejects the rest (25P02) and the COMMIT rolls back, so the first error in order is the
    // one to report.
    let sent = Instant::now();
    let all = futures::future::join_all(pieces.iter().map(|(sql, piece)| {
        let span = match piece {
            Piece::Statement(k, _) | Piece::Analyze(k) | Piece::Mark(k) => spans[*k].clone(),
            Piece::Ours => tracing::Span::current(),
        };
        async move {
            let r = execute(client, sql).await;
            (r, Instant::now())
        }
        .instrument(span)
    }));
    // After COMMIT, in the same round trip: the lock goes only if the COMMIT went through (a
    // failed attempt keeps it for the retry).
    let (results, released) = if release {
        let (results, released) = futures::join!(all, super::released(client, &release_sql));
        (results, released)
    } else {
        (all.await, false)
    };
    let mut durations = vec![Duration::ZERO; members.len()];
    let mut previous = sent;
    for ((result, at), (_, piece)) in results.into_iter().zip(&pieces) {
        match (result, piece) {
            (Ok(()), Piece::Mark(k)) => {
                durations[*k] = at.saturating_duration_since(previous);
                previous = at;
            }
            (Ok(()), _) => {}
            (Err(e), Piece::Statement(k, stmt)) => {
                let rev = engine.app.graph.revision(members[*k].step.node);
                let location = Some(locate(rev, stmt, &e));
                return Err(Attempt::Sql(e, *k, location));
            }
            (Err(e), Piece::Analyze(k)) => {
                let rev = engine.app.graph.revision(members[*k].step.node);
                return Err(Attempt::Sql(e, *k, Some(rev.location(1))));
            }
            (Err(e), Piece::Mark(k)) => return Err(Attempt::Sql(e, *k, None)),
            (Err(e), Piece::Ours) => return Err(Attempt::Sql(e, members.len() - 1, None)),
        }
    }
    Ok((durations, released))
}

/// End a transaction that will not commit (its statements failed, or the fence refused it).
pub(crate) async fn rollback(client: &Client) {
    if let Err(e) = client.batch_execute("ROLLBACK").await {
        tracing::debug!(error = %e, "ROLLBACK failed (the connection is thrown away)");
    }
}
