//! The gate: which revisions a run may apply, and whether their lint verdicts let it start.
//! The daemon asks before it starts an Upgrade or a rollout, the CLI before it migrates
//! (unless `--allow-lint`). The revisions are those the target can bring to *some* database,
//! not only to the ones at hand: a tenant onboarded tomorrow starts at base.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{AppLint, Finding, LintError, Verdict};
use crate::model::Direction;
use crate::revision::graph::Graph;
use crate::revision::plan::{PlanError, Target};
use crate::revision::{Node, plan};

/// The revisions a run towards `target` may apply in `direction`, on a database at any
/// state: for an upgrade to a revision (or head, heads, a branch head) the revision and all
/// it requires; for a downgrade to a revision, everything above it; a relative target or a
/// downgrade to base may touch any revision.
pub fn candidates(
    graph: &Graph,
    direction: Direction,
    target: &Target,
) -> Result<BTreeSet<Node>, PlanError> {
    let all = || {
        graph
            .revisions()
            .map(|(n, _)| n)
            .collect::<BTreeSet<Node>>()
    };
    // A relative target moves from wherever a database stands: any revision may be next.
    let t = target.as_str();
    let relative = t.starts_with(['+', '-']) || t.contains("@+") || t.contains("@-");
    Ok(match direction {
        _ if relative => all(),
        Direction::Upgrade => plan::plan(graph, &[], Direction::Upgrade, target)?
            .nodes()
            .into_iter()
            .collect(),
        Direction::Downgrade => match graph.get_revision(t) {
            Ok(Some(n)) => graph
                .descendants([n])
                .into_iter()
                .filter(|&d| d != n)
                .collect(),
            _ => all(),
        },
    })
}

/// One revision's verdict as a rollout document records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionVerdict {
    pub revision: String,
    pub verdict: Verdict,
    #[serde(default)]
    pub errors: u32,
    #[serde(default)]
    pub warnings: u32,
    /// `rule: reason` of each ignored finding.
    #[serde(default)]
    pub ignored: Vec<String>,
}

/// A run refused: its error-level findings nothing ignores.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub direction: Direction,
    pub target: String,
    pub findings: Vec<Finding>,
}

/// How many findings a refusal spells out (the rest are counted).
const SHOWN: usize = 5;

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "lint: the {} to {} would apply {} error-level finding(s) no revision ignores:",
            self.direction,
            self.target,
            self.findings.len()
        )?;
        for x in self.findings.iter().take(SHOWN) {
            write!(
                f,
                "\n  revision {} ({}) {}: {}: {}",
                x.revision,
                x.direction.map_or("header", |d| d.as_str()),
                x.location(),
                x.rule,
                x.message
            )?;
            if let Some(help) = &x.help {
                write!(f, " ({help})")?;
            }
        }
        if self.findings.len() > SHOWN {
            write!(f, "\n  ... and {} more", self.findings.len() - SHOWN)?;
        }
        write!(
            f,
            "\n  fix the revision, or, if the rule does not apply there, ignore it in the revision's header with a reason: `-- lint-ignore: RULE -- why` (`fleetmig lint` shows every finding)"
        )
    }
}

/// The verdict of each revision `target` may bring, or the refusal.
pub fn check(
    lint: &AppLint,
    graph: &Graph,
    direction: Direction,
    target: &Target,
) -> Result<Vec<RevisionVerdict>, LintError> {
    // An unresolvable target is the planner's to report (with its own status).
    let nodes = candidates(graph, direction, target).unwrap_or_default();
    let mut verdicts = Vec::new();
    let mut blocking = Vec::new();
    for node in graph.topo_order(&nodes) {
        let id = graph.revision(node).id.as_str();
        let Some(r) = lint.revision(id) else { continue };
        let findings: Vec<&Finding> = r.findings(direction).collect();
        blocking.extend(findings.iter().filter(|f| f.blocks()).map(|f| (*f).clone()));
        let counts = super::Counts::of(findings.iter().copied());
        verdicts.push(RevisionVerdict {
            revision: id.to_string(),
            verdict: r.verdict(direction),
            errors: counts.errors as u32,
            warnings: counts.warnings as u32,
            ignored: findings
                .iter()
                .filter_map(|f| Some(format!("{}: {}", f.rule, f.ignored.as_deref()?)))
                .collect(),
        });
    }
    if blocking.is_empty() {
        Ok(verdicts)
    } else {
        Err(LintError::Refused(Box::new(Refusal {
            direction,
            target: target.to_string(),
            findings: blocking,
        })))
    }
}
