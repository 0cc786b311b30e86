//! Pure planning with Alembic's semantics: from the version table's rows and a target, the
//! ordered revisions to upgrade or downgrade, each with the rows before and after it; the rows
//! a stamp leaves; the revisions a history range lists. No I/O; the engine re-checks the rows
//! before each step. The daemon and the CLI both plan here.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use crate::model::{Direction, RevisionId};
use crate::revision::collect::Side;
use crate::revision::graph::{Graph, Node};
use crate::revision::heads::{Rows, RowsError, StampStep};
use crate::revision::resolve::{At, ResolveError, relative};

/// Where to go, as typed: `head`, `heads`, `base`, a revision (id, unique prefix, label),
/// `label@head`, `label@base`, `label@REV`, `+N`, `-N`, `REV+N`, `REV-N`, `label@+N`,
/// `label@-N`. Its meaning depends on the direction and the rows, as in Alembic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target(String);

impl Target {
    pub fn heads() -> Target {
        Target("heads".into())
    }

    pub fn revision(id: &str) -> Target {
        Target(id.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Target {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Target(s.trim().to_string()))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum PlanError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(
        "the database's version table names revision '{0}', which is not in this app's migrations: Can't locate revision identified by '{0}' (wrong --app, or a revision file missing from this checkout; `stamp --purge` resets the table)"
    )]
    UnknownInDatabase(String),
    #[error(
        "the version table's rows {} overlap: {source} (Alembic refuses such a table; keep only the rows that nothing else among them requires: `fleetmig stamp --purge {}`)",
        rows.join(", "),
        keep.join(" ")
    )]
    OverlappingRows {
        rows: Vec<String>,
        keep: Vec<String>,
        source: ResolveError,
    },
    #[error("Destination {target} is not a valid {direction} target from current head(s)")]
    NotValidTarget {
        direction: Direction,
        target: String,
    },
    #[error(
        "Requested range {start}:{end} does not refer to ancestor/descendant revisions along the same branch"
    )]
    NotAncestor { start: String, end: String },
    #[error(
        "{target} from several current revisions ({}) is ambiguous: name the revision to go down to, or `label@{target}`",
        rows.join(", ")
    )]
    AmbiguousFromHeads { target: String, rows: Vec<String> },
    #[error(transparent)]
    Rows(#[from] RowsError),
    #[error(
        "revision {id} ({path}) is marked irreversible: it cannot be downgraded; stamp past it if you must"
    )]
    Irreversible { id: String, path: String },
    #[error("a history range is START:END, START: or :END, not {0:?}")]
    BadRange(String),
}

/// One revision to apply or unapply, and the version rows before and after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub node: Node,
    pub direction: Direction,
    pub rows_before: BTreeSet<Node>,
    pub rows_after: BTreeSet<Node>,
}

/// The steps of a run and the rows it leaves.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub rows_after: BTreeSet<Node>,
}

impl Plan {
    pub fn nodes(&self) -> Vec<Node> {
        self.steps.iter().map(|s| s.node).collect()
    }
}

/// The version table's rows as revisions; a row this app does not know is refused.
pub fn rows_from_db(graph: &Graph, rows: &[RevisionId]) -> Result<Vec<Node>, PlanError> {
    rows.iter()
        .map(|r| {
            graph
                .node(r.as_str())
                .ok_or_else(|| PlanError::UnknownInDatabase(r.to_string()))
        })
        .collect()
}

/// Everything the rows say is applied: the rows and what they require.
pub fn applied(graph: &Graph, rows: &[Node]) -> BTreeSet<Node> {
    graph.ancestors(rows.iter().copied())
}

/// Rows where one requires another are what Alembic calls overlapping; say how to repair.
fn check_rows(graph: &Graph, rows: &[Node]) -> Result<(), PlanError> {
    graph.ancestors_checked(rows).map(|_| ()).map_err(|source| {
        let keep: Vec<String> = rows
            .iter()
            .filter(|&&r| {
                !rows
                    .iter()
                    .any(|&o| o != r && graph.ancestors([o]).contains(&r))
            })
            .map(|&r| graph.id(r).to_string())
            .collect();
        PlanError::OverlappingRows {
            rows: rows.iter().map(|&r| graph.id(r).to_string()).collect(),
            keep,
            source,
        }
    })
}

fn simulate(
    graph: &Graph,
    rows: &[Node],
    order: Vec<Node>,
    direction: Direction,
) -> Result<Plan, PlanError> {
    let mut state = Rows::new(graph, rows.iter().copied());
    let mut steps = Vec::with_capacity(order.len());
    for node in order {
        let rows_before = state.heads.clone();
        state.revision_step(node, direction == Direction::Upgrade)?;
        steps.push(Step {
            node,
            direction,
            rows_before,
            rows_after: state.heads.clone(),
        });
    }
    Ok(Plan {
        steps,
        rows_after: state.heads,
    })
}

/// `alembic upgrade TARGET` from `rows`.
pub fn upgrade(graph: &Graph, rows: &[Node], target: &Target) -> Result<Plan, PlanError> {
    // Alembic checks the rows only when upgrading (downgrade and stamp take them as they are).
    check_rows(graph, rows)?;
    let (needs, targets) = graph.collect_upgrade(
        Side::Symbol(target.as_str()),
        Side::Rows(rows),
        false,
        true,
        true,
    )?;
    let mut order = graph.topological_sort(&needs, &targets)?;
    order.reverse();
    simulate(graph, rows, order, Direction::Upgrade)
}

/// `alembic downgrade TARGET` from `rows`.
pub fn downgrade(graph: &Graph, rows: &[Node], target: &Target) -> Result<Plan, PlanError> {
    let drop = graph.collect_downgrade(rows, target.as_str(), true)?;
    let order = graph.topological_sort(&drop, rows)?;
    if let Some(&n) = order.iter().find(|&&n| graph.revision(n).irreversible) {
        return Err(PlanError::Irreversible {
            id: graph.id(n).to_string(),
            path: graph.revision(n).path.display().to_string(),
        });
    }
    simulate(graph, rows, order, Direction::Downgrade)
}

/// Either direction.
pub fn plan(
    graph: &Graph,
    rows: &[Node],
    direction: Direction,
    target: &Target,
) -> Result<Plan, PlanError> {
    match direction {
        Direction::Upgrade => upgrade(graph, rows, target),
        Direction::Downgrade => downgrade(graph, rows, target),
    }
}

/// `alembic stamp REV...` from `rows` (`--purge`: pass no rows): the rows afterwards.
pub fn stamp(
    graph: &Graph,
    rows: &[Node],
    revisions: &[String],
) -> Result<BTreeSet<Node>, PlanError> {
    let revisions: Vec<&str> = if revisions.is_empty() {
        vec!["base"]
    } else {
        revisions.iter().map(String::as_str).collect()
    };
    let mut filtered: Vec<Node> = Vec::new();
    for r in revisions.iter().filter(|r| !r.is_empty()) {
        for h in graph.filter_for_lineage(rows, r, true)? {
            if !filtered.contains(&h) {
                filtered.push(h);
            }
        }
    }
    let mut dests: Vec<Option<At>> = Vec::new();
    for r in &revisions {
        dests.extend(graph.get_revisions(r)?);
    }
    if dests.is_empty() {
        dests.push(None);
    }
    let mut steps = Vec::new();
    for dest in dests {
        let dest = match dest {
            None => {
                steps.extend(filtered.iter().map(|&h| StampStep {
                    from: vec![h],
                    to: vec![],
                    upgrade: false,
                    branch_move: true,
                }));
                continue;
            }
            Some(At::Base) => {
                return Err(PlanError::Resolve(ResolveError::NoRevision(
                    revisions.join(" "),
                )));
            }
            Some(At::Rev(n)) => n,
        };
        if filtered.contains(&dest) {
            continue;
        }
        let above = graph.descendants([dest]);
        let below = graph.ancestors([dest]);
        let (upgrade, branch_move, from) = if filtered.iter().any(|h| above.contains(h)) {
            if filtered.iter().any(|h| below.contains(h)) {
                return Err(PlanError::Rows(RowsError(format!(
                    "stamping {} would move rows both up and down",
                    graph.id(dest)
                ))));
            }
            (false, false, filtered.clone())
        } else if filtered.iter().any(|h| below.contains(h)) {
            (true, false, filtered.clone())
        } else {
            (true, true, vec![])
        };
        steps.push(StampStep {
            from,
            to: vec![dest],
            upgrade,
            branch_move,
        });
    }
    let mut state = Rows::new(graph, rows.iter().copied());
    for step in &steps {
        state.stamp_step(step)?;
    }
    Ok(state.heads)
}

/// `alembic history -r START:END`: the revisions in the range, newest first. `current`
/// on either side stands for `rows` (the caller reads them from the database).
pub fn history(
    graph: &Graph,
    range: Option<&str>,
    rows: Option<&[Node]>,
) -> Result<Vec<Node>, PlanError> {
    let (start, end) = match range {
        None => ("", ""),
        Some(r) => {
            let r = r.trim();
            let mut parts = r.split(':');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(s), Some(e), None) => (s, e),
                _ => return Err(PlanError::BadRange(r.to_string())),
            }
        }
    };
    let start = if start.is_empty() { "base" } else { start };
    let end = if end.is_empty() { "heads" } else { end };
    // Alembic: `current` is the rows; with no rows it falls back to `base` / `heads`.
    let current = rows.unwrap_or(&[]);
    let lower = match start {
        "current" if !current.is_empty() => Side::Rows(current),
        "current" => Side::Symbol("base"),
        s => Side::Symbol(s),
    };
    let upper = match end {
        "current" if !current.is_empty() => Side::Rows(current),
        "current" => Side::Symbol("heads"),
        e => Side::Symbol(e),
    };
    let (needs, targets) = graph
        .collect_upgrade(upper, lower, true, false, false)
        .map_err(|e| match e {
            PlanError::NotAncestor { .. } => PlanError::NotAncestor {
                start: start.to_string(),
                end: end.to_string(),
            },
            other => other,
        })?;
    graph.topological_sort(&needs, &targets)
}

/// `alembic current`: what the rows mean, one revision per line of descent.
pub fn current(graph: &Graph, rows: &[Node]) -> Vec<Node> {
    graph.all_current(rows)
}

/// Reject a target the graph cannot resolve whatever the rows (before any tenant is touched).
pub fn check_target(graph: &Graph, direction: Direction, target: &Target) -> Result<(), PlanError> {
    let t = target.as_str();
    match relative(t).filter(|_| graph.node(t).is_none()) {
        Some((label, symbol, rel)) => {
            if let Some(l) = label {
                graph.resolve_branch(l)?;
            }
            match symbol {
                Some(s) => {
                    graph.get_revision(s)?;
                }
                None if (rel > 0) != (direction == Direction::Upgrade) || rel == 0 => {
                    return Err(ResolveError::Revision(format!(
                        "Relative revision {rel:+} didn't produce {} migrations",
                        rel.unsigned_abs()
                    ))
                    .into());
                }
                None => {}
            }
        }
        None => match direction {
            Direction::Upgrade => {
                graph.get_revisions(t)?;
            }
            Direction::Downgrade => {
                let symbol = t.rsplit_once('@').map_or(t, |(_, s)| s);
                graph.get_revision(symbol)?;
            }
        },
    }
    Ok(())
}
