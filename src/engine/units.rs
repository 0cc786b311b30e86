//! How a run's steps are applied, for the engine and for offline SQL alike: consecutive
//! transactional revisions share one transaction (Alembic's PostgreSQL default, so a tenant
//! is at its old revision or its target, never in between); a non-transactional revision
//! with statements (CREATE INDEX CONCURRENTLY) runs alone, statement by statement, and ends
//! the group before it. `transaction_per_revision = true` in the app's manifest gives each
//! transactional revision a transaction of its own.

use std::collections::BTreeSet;

use super::EngineError;
use super::record::{self, HistoryRow};
use super::tables::Tables;
use crate::model::{FenceToken, TransactionMode};
use crate::revision::plan::Step;
use crate::revision::render::{self, RenderedRevision};
use crate::revision::{App, Node, Resolved};

/// A planned step with its rendered SQL.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    pub step: Step,
    pub rendered: RenderedRevision,
}

impl Prepared {
    /// Runs statement by statement outside a transaction.
    pub fn autocommit(&self, app: &App) -> bool {
        app.graph.revision(self.step.node).transaction == TransactionMode::None
            && !self.rendered.statements.is_empty()
    }
}

/// Render every step; `recorded_skip(id)`: whether the upgrade of revision `id` was skipped
/// by its condition (a downgrade follows what the upgrade did).
pub(crate) fn prepare(
    app: &App,
    values: &Resolved,
    steps: &[Step],
    recorded_skip: &dyn Fn(&str) -> Option<bool>,
) -> Result<Vec<Prepared>, EngineError> {
    steps
        .iter()
        .map(|step| {
            let rev = app.graph.revision(step.node);
            Ok(Prepared {
                step: step.clone(),
                rendered: render::render(
                    rev,
                    step.direction,
                    values,
                    recorded_skip(rev.id.as_str()),
                )?,
            })
        })
        .collect()
}

/// A unit of work: one transaction (a group of steps), or one non-transactional step.
pub(crate) enum Unit<'p> {
    Transaction(&'p [Prepared]),
    Autocommit(&'p Prepared),
}

/// Cut `prepared` into units, in order.
pub(crate) fn units<'p>(app: &App, prepared: &'p [Prepared]) -> Vec<Unit<'p>> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, p) in prepared.iter().enumerate() {
        if p.autocommit(app) {
            if start < i {
                out.push(Unit::Transaction(&prepared[start..i]));
            }
            out.push(Unit::Autocommit(p));
            start = i + 1;
        } else if app.transaction_per_revision {
            out.push(Unit::Transaction(&prepared[i..=i]));
            start = i + 1;
        }
    }
    if start < prepared.len() {
        out.push(Unit::Transaction(&prepared[start..]));
    }
    out
}

fn ids(app: &App, nodes: &BTreeSet<Node>) -> BTreeSet<String> {
    nodes.iter().map(|&n| app.graph.id(n).to_string()).collect()
}

/// The version rows' change over `members` (from the first one's rows to the last one's)
/// and their history rows, durations between the marks around each revision (mark `k`
/// before member `k`, mark `k + 1` after it).
pub(crate) fn group_bookkeeping(
    app: &App,
    tables: &Tables,
    members: &[Prepared],
    placeholders: &serde_json::Value,
    applied_by: &str,
    fence: Option<FenceToken>,
) -> String {
    let (Some(first), Some(last)) = (members.first(), members.last()) else {
        return String::new();
    };
    let mut sql = record::version_change_sql(
        tables,
        &ids(app, &first.step.rows_before),
        &ids(app, &last.step.rows_after),
    );
    let rows: Vec<HistoryRow<'_>> = members
        .iter()
        .enumerate()
        .map(|(k, m)| {
            let rev = app.graph.revision(m.step.node);
            HistoryRow {
                revision: rev.id.as_str(),
                direction: m.step.direction.as_str(),
                checksum: Some(&rev.checksum),
                placeholders,
                skipped: m.rendered.skipped_by.is_some(),
                duration: record::Duration::BetweenMarks(k, k + 1),
                applied_by,
                fence,
            }
        })
        .collect();
    sql.push_str(&record::history_rows_sql(tables, &rows));
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(per_revision: bool, kinds: &[bool]) -> (tempfile::TempDir, App, Vec<Prepared>) {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("u");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::write(
            a.join("fleetmig.toml"),
            format!("transaction_per_revision = {per_revision}\n"),
        )
        .unwrap();
        let mut parent = String::new();
        for (i, autocommit) in kinds.iter().enumerate() {
            let body = if *autocommit {
                "-- transaction: none\n-- +upgrade\nCREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (x);\n-- +downgrade\nDROP INDEX CONCURRENTLY IF EXISTS i;\n"
            } else {
                "-- +upgrade\nCREATE TABLE t (x int);\n-- +downgrade\nDROP TABLE t;\n"
            };
            std::fs::write(
                a.join(format!("r{i}.sql")),
                format!("-- revision: r{i}\n-- down_revision: {parent}\n{body}"),
            )
            .unwrap();
            parent = format!("r{i}");
        }
        let app = App::load(dir.path(), "u").unwrap();
        let values = app
            .declarations
            .resolve(&|_| None, &Default::default())
            .unwrap();
        let planned = crate::revision::plan::plan(
            &app.graph,
            &[],
            crate::model::Direction::Upgrade,
            &"head".parse().unwrap(),
        )
        .unwrap();
        let prepared = prepare(&app, &values, &planned.steps, &|_| None).unwrap();
        (dir, app, prepared)
    }

    fn shape(app: &App, prepared: &[Prepared]) -> Vec<String> {
        units(app, prepared)
            .iter()
            .map(|u| match u {
                Unit::Transaction(m) => format!("tx{}", m.len()),
                Unit::Autocommit(_) => "auto".into(),
            })
            .collect()
    }

    #[test]
    fn transactional_runs_share_a_transaction_and_a_concurrent_build_ends_them() {
        let (_d, a, p) = app(false, &[false, false, true, false, false, false]);
        assert_eq!(shape(&a, &p), ["tx2", "auto", "tx3"]);
        let (_d, a, p) = app(false, &[true, false]);
        assert_eq!(shape(&a, &p), ["auto", "tx1"]);
        let (_d, a, p) = app(true, &[false, false, true, false]);
        assert_eq!(shape(&a, &p), ["tx1", "tx1", "auto", "tx1"]);
    }
}
