//! Pure planning: from the applied set and a target, the ordered revisions to upgrade or
//! downgrade. No I/O; the engine re-checks the database state before each step.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use crate::model::RevisionId;
use crate::revision::graph::{Graph, Node, ResolveError};

/// Where to go: `head`, `heads`, `base`, a revision (id, prefix, label), `label@head`, `+N`, `-N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Head,
    Heads,
    Base,
    Revision(String),
    BranchHead(String),
    Relative(i64),
}

impl FromStr for Target {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Ok(match s {
            "head" => Target::Head,
            "heads" => Target::Heads,
            "base" => Target::Base,
            _ => {
                if let Some(label) = s.strip_suffix("@head") {
                    Target::BranchHead(label.to_string())
                } else if let Some(n) = (s.starts_with('+') || s.starts_with('-'))
                    .then(|| s.parse::<i64>().ok())
                    .flatten()
                {
                    Target::Relative(n)
                } else {
                    Target::Revision(s.to_string())
                }
            }
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Head => f.write_str("head"),
            Target::Heads => f.write_str("heads"),
            Target::Base => f.write_str("base"),
            Target::Revision(r) => f.write_str(r),
            Target::BranchHead(l) => write!(f, "{l}@head"),
            Target::Relative(n) => write!(f, "{n:+}"),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(
        "the database's version table names revision '{0}', which is not in this app's migrations: Can't locate revision identified by '{0}' (wrong --app, or a revision file missing from this checkout; `stamp --purge` resets the table)"
    )]
    UnknownInDatabase(String),
    #[error(
        "relative target {asked} asks for {asked_abs} step(s) but only {available} are possible from the current state"
    )]
    RelativeTooFar {
        asked: String,
        asked_abs: u64,
        available: u64,
    },
    #[error("ambiguous relative step: the next step could be any of {}; name a target revision or 'label@head'", .0.join(", "))]
    Ambiguous(Vec<String>),
    #[error("{0} is not a valid upgrade target: use head, heads, a revision, label@head or +N")]
    BadUpgradeTarget(String),
    #[error("{0} is not a valid downgrade target: use base, a revision or -N")]
    BadDowngradeTarget(String),
    #[error(
        "revision {0} is not applied, so it is not a valid downgrade target from the current state"
    )]
    NotApplied(String),
    #[error(
        "revision {id} ({path}) is marked irreversible: it cannot be downgraded; stamp past it if you must"
    )]
    Irreversible { id: String, path: String },
}

/// The applied set named by `alembic_version` rows: the rows and everything they require.
pub fn applied_from_rows(graph: &Graph, rows: &[RevisionId]) -> Result<BTreeSet<Node>, PlanError> {
    let nodes = rows
        .iter()
        .map(|r| {
            graph
                .node(r.as_str())
                .ok_or_else(|| PlanError::UnknownInDatabase(r.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(graph.ancestors(nodes))
}

fn ids(graph: &Graph, nodes: impl IntoIterator<Item = Node>) -> Vec<String> {
    nodes
        .into_iter()
        .map(|n| graph.revision(n).id.to_string())
        .collect()
}

/// The revisions to apply, in order, to reach `target` from `applied`.
pub fn upgrade(
    graph: &Graph,
    applied: &BTreeSet<Node>,
    target: &Target,
) -> Result<Vec<Node>, PlanError> {
    let goal: Vec<Node> = match target {
        Target::Head => graph.single_head()?.into_iter().collect(),
        Target::Heads => graph.heads(),
        Target::Revision(r) => vec![graph.resolve(r)?],
        Target::BranchHead(l) => vec![graph.branch_head(l)?],
        Target::Relative(n) if *n > 0 => return relative_up(graph, applied, *n as u64, target),
        Target::Relative(0) => return Ok(vec![]),
        Target::Base | Target::Relative(_) => {
            return Err(PlanError::BadUpgradeTarget(target.to_string()));
        }
    };
    let needed: BTreeSet<Node> = graph.ancestors(goal).difference(applied).copied().collect();
    Ok(graph.topo_order(&needed))
}

fn relative_up(
    graph: &Graph,
    applied: &BTreeSet<Node>,
    n: u64,
    target: &Target,
) -> Result<Vec<Node>, PlanError> {
    let mut applied = applied.clone();
    let mut out = Vec::new();
    for step in 0..n {
        let candidates: Vec<Node> = graph
            .revisions()
            .map(|(i, _)| i)
            .filter(|i| {
                !applied.contains(i) && graph.requires(*i).iter().all(|r| applied.contains(r))
            })
            .collect();
        match candidates.as_slice() {
            [] => {
                return Err(PlanError::RelativeTooFar {
                    asked: target.to_string(),
                    asked_abs: n,
                    available: step,
                });
            }
            [one] => {
                applied.insert(*one);
                out.push(*one);
            }
            many => return Err(PlanError::Ambiguous(ids(graph, many.iter().copied()))),
        }
    }
    Ok(out)
}

/// What `stamp <target>` records as applied: `base`, `head`, `heads`, `label@head` or a
/// revision, with their ancestors.
pub fn stamped(graph: &Graph, target: &str) -> Result<BTreeSet<Node>, PlanError> {
    Ok(match target {
        "base" => BTreeSet::new(),
        "heads" => graph.ancestors(graph.heads()),
        "head" => graph.ancestors(graph.single_head()?),
        t => match t.strip_suffix("@head") {
            Some(l) => graph.ancestors([graph.branch_head(l)?]),
            None => graph.ancestors([graph.resolve(t)?]),
        },
    })
}

/// The revisions to unapply, in order (newest first), to reach `target` from `applied`.
pub fn downgrade(
    graph: &Graph,
    applied: &BTreeSet<Node>,
    target: &Target,
) -> Result<Vec<Node>, PlanError> {
    let remove: BTreeSet<Node> = match target {
        Target::Base => applied.clone(),
        Target::Revision(r) => {
            let t = graph.resolve(r)?;
            if !applied.contains(&t) {
                return Err(PlanError::NotApplied(graph.revision(t).id.to_string()));
            }
            graph
                .descendants(t)
                .intersection(applied)
                .copied()
                .filter(|&n| n != t)
                .collect()
        }
        Target::Relative(n) if *n < 0 => {
            return relative_down(graph, applied, n.unsigned_abs(), target);
        }
        Target::Relative(0) => BTreeSet::new(),
        _ => return Err(PlanError::BadDowngradeTarget(target.to_string())),
    };
    let mut order = graph.topo_order(&remove);
    order.reverse();
    check_reversible(graph, &order)?;
    Ok(order)
}

fn relative_down(
    graph: &Graph,
    applied: &BTreeSet<Node>,
    n: u64,
    target: &Target,
) -> Result<Vec<Node>, PlanError> {
    let mut applied = applied.clone();
    let mut out = Vec::new();
    for step in 0..n {
        // Removable: applied revisions nothing applied requires.
        let candidates: Vec<Node> = applied
            .iter()
            .copied()
            .filter(|&a| !applied.iter().any(|&b| graph.requires(b).contains(&a)))
            .collect();
        match candidates.as_slice() {
            [] => {
                return Err(PlanError::RelativeTooFar {
                    asked: target.to_string(),
                    asked_abs: n,
                    available: step,
                });
            }
            [one] => {
                applied.remove(one);
                out.push(*one);
            }
            many => return Err(PlanError::Ambiguous(ids(graph, many.iter().copied()))),
        }
    }
    check_reversible(graph, &out)?;
    Ok(out)
}

fn check_reversible(graph: &Graph, order: &[Node]) -> Result<(), PlanError> {
    match order.iter().find(|&&n| graph.revision(n).irreversible) {
        Some(&n) => Err(PlanError::Irreversible {
            id: graph.revision(n).id.to_string(),
            path: graph.revision(n).path.display().to_string(),
        }),
        None => Ok(()),
    }
}
