//! Offline mode (`--sql`): the exact SQL a run would execute, version-table statements
//! included, from a given starting point, touching no database. Runnable with `psql -f`:
//! transactional revisions are wrapped in BEGIN/COMMIT, non-transactional statements stand alone.

use std::collections::{BTreeSet, HashMap};

use crate::model::Direction;
use crate::revision::plan::{self, Target};
use crate::revision::{App, Node, Resolved};

use super::record::{self, HistoryRow};
use super::units;
use super::{Engine, EngineError, Settings, millis};
use crate::model::RevisionId;

/// Who the history rows of offline SQL name.
pub const OFFLINE_APPLIED_BY: &str = "fleetmig offline sql";

/// What a run on one database would do now: its version rows, the revisions it would apply,
/// and their SQL.
#[derive(Debug, Clone)]
pub struct Planned {
    pub current: Vec<RevisionId>,
    pub steps: Vec<RevisionId>,
    pub sql: String,
}

impl Engine<'_> {
    /// Plan a run from the database's state, refused as the run itself would be: applied
    /// revision files that changed are reported ([`EngineError::ChecksumMismatch`]) unless
    /// `allow_changed`, also when there is nothing to apply. Reads only.
    pub async fn plan(
        &self,
        client: &tokio_postgres::Client,
        direction: Direction,
        target: &Target,
        allow_changed: bool,
    ) -> Result<Planned, EngineError> {
        let g = &self.app.graph;
        let snapshot = self.snapshot(client, None).await?;
        let rows = plan::rows_from_db(g, &snapshot.rows)?;
        let planned = plan::plan(g, &rows, direction, target)?;
        let changed = self.changed_in(&snapshot.recorded, &plan::applied(g, &rows));
        if !changed.is_empty() && !allow_changed {
            return Err(EngineError::ChecksumMismatch(changed));
        }
        let skips: HashMap<String, bool> = snapshot
            .recorded
            .iter()
            .map(|(k, r)| (k.clone(), r.skipped))
            .collect();
        let from = crate::model::version_label(&snapshot.rows, ",");
        let sql = render_from(
            self.app,
            self.values,
            self.settings,
            direction,
            &rows,
            &from,
            target,
            &skips,
        )?;
        Ok(Planned {
            current: snapshot.rows,
            steps: planned
                .steps
                .iter()
                .map(|s| g.revision(s.node).id.clone())
                .collect(),
            sql,
        })
    }
}

/// One statement as psql must read it: ended by `;` on a line of its own when the statement
/// ends in a `--` comment (on the comment's line, the `;` would be part of the comment, and
/// psql would run the statement together with the next one).
pub fn terminated(sql: &str) -> String {
    if crate::revision::sql::ends_in_line_comment(sql) {
        format!("{sql}\n;\n")
    } else {
        format!("{sql};\n")
    }
}

/// SQL to go from `from` (`base`, `heads`, `head`, a revision or `label@head`, as if those
/// were the version table's rows) to `target`.
pub fn render(
    app: &App,
    values: &Resolved,
    settings: &Settings,
    direction: Direction,
    from: &str,
    target: &Target,
) -> Result<String, EngineError> {
    let rows = app.graph.get_nodes(from).map_err(plan::PlanError::from)?;
    render_from(
        app,
        values,
        settings,
        direction,
        &rows,
        from,
        target,
        &HashMap::new(),
    )
}

/// SQL to go from the version rows `rows` (labelled `from` in the header) to `target`;
/// `recorded_skips`: whether each revision's upgrade was skipped by its condition, as the
/// database's history says (empty offline).
#[allow(clippy::too_many_arguments)]
pub fn render_from(
    app: &App,
    values: &Resolved,
    settings: &Settings,
    direction: Direction,
    rows: &[Node],
    from: &str,
    target: &Target,
    recorded_skips: &HashMap<String, bool>,
) -> Result<String, EngineError> {
    let g = &app.graph;
    let planned = plan::plan(g, rows, direction, target)?;
    let tables = &settings.tables;
    let json = values.to_json();
    let mut out = format!(
        "-- fleetmig offline SQL: app {}, {direction} {from} -> {target}\n-- placeholders: {json}\n\n",
        app.name
    );
    out.push_str(&format!(
        "SET standard_conforming_strings = on;\nSET search_path = {};\n\n",
        settings.search_path_sql()
    ));
    out.push_str(&tables.create_sql());
    out.push('\n');
    let timeouts = format!(
        "SET LOCAL lock_timeout = {};\nSET LOCAL statement_timeout = {};\n",
        millis(settings.lock_timeout),
        millis(settings.statement_timeout)
    );
    let ids = |s: &BTreeSet<Node>| -> BTreeSet<String> {
        s.iter().map(|&n| g.id(n).to_string()).collect()
    };
    // A downgrade follows what the upgrade recorded (run or skipped by its condition).
    let prepared = units::prepare(app, values, &planned.steps, &|id| {
        recorded_skips.get(id).copied()
    })?;
    let header = |p: &units::Prepared| -> String {
        let node = p.step.node;
        let rev = g.revision(node);
        let parents = g
            .parents(node)
            .iter()
            .map(|&p| g.revision(p).id.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let (a, b) = match direction {
            Direction::Upgrade => (parents.as_str(), rev.id.as_str()),
            Direction::Downgrade => (rev.id.as_str(), parents.as_str()),
        };
        let mut h = format!(
            "-- Running {direction} {a} -> {b} ({})\n",
            rev.path.display()
        );
        if let Some(cond) = &p.rendered.skipped_by {
            h.push_str(&format!("-- skipped: condition {cond} is false\n"));
        }
        h
    };
    let body = |p: &units::Prepared| -> String {
        p.rendered
            .statements
            .iter()
            .map(|stmt| terminated(&stmt.sql))
            .chain(p.rendered.analyze.iter().map(|a| terminated(a)))
            .collect()
    };
    // The same units as online: one transaction per group of transactional revisions.
    for unit in units::units(app, &prepared) {
        match unit {
            units::Unit::Transaction(members) => {
                out.push_str("BEGIN;\n");
                out.push_str(&timeouts);
                out.push_str(&terminated(&record::mark_sql(0)));
                for (k, p) in members.iter().enumerate() {
                    out.push_str(&header(p));
                    out.push_str(&body(p));
                    out.push_str(&terminated(&record::mark_sql(k + 1)));
                }
                out.push_str(&units::group_bookkeeping(
                    app,
                    tables,
                    members,
                    &json,
                    OFFLINE_APPLIED_BY,
                    None,
                ));
            }
            units::Unit::Autocommit(p) => {
                let rev = g.revision(p.step.node);
                out.push_str(&header(p));
                out.push_str(&body(p));
                out.push_str("BEGIN;\n");
                out.push_str(&record::version_change_sql(
                    tables,
                    &ids(&p.step.rows_before),
                    &ids(&p.step.rows_after),
                ));
                out.push_str(&record::history_sql(
                    tables,
                    &HistoryRow {
                        revision: rev.id.as_str(),
                        direction: direction.as_str(),
                        checksum: Some(&rev.checksum),
                        placeholders: &json,
                        skipped: p.rendered.skipped_by.is_some(),
                        duration: record::Duration::Millis(0),
                        applied_by: OFFLINE_APPLIED_BY,
                        fence: None,
                    },
                ));
            }
        }
        out.push_str("COMMIT;\n\n");
    }
    Ok(out)
}
