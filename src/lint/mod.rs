//! The lint gate: squawk's rules (the squawk-linter crate, embedded) on each revision's
//! rendered SQL, in both directions, aware of how fleetmig runs it (inside a transaction
//! block, or statement by statement), weighed by the app's `[lint]` section and the
//! revision's `-- lint-ignore: rule -- reason` headers. Verdicts are computed once per app
//! (when the daemon loads it, or per CLI command), never per tenant; [`gate`] refuses a plan
//! holding an error-level finding that no header ignores. Reporters for people and machines
//! are in [`report`]. Nothing here touches a database.

mod config;
pub mod gate;
mod ignores;
pub mod report;
mod squawk;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use config::{LintConfig, Severity, canonical, own};
pub use gate::{Refusal, RevisionVerdict};

use crate::model::{Direction, RevisionId};
use crate::revision::placeholder::PlaceholderType;
use crate::revision::plan::Target;
use crate::revision::{App, Node, Resolved, Revision, render};

#[derive(Debug, thiserror::Error)]
pub enum LintError {
    /// The app's `[lint]` section is wrong.
    #[error("{}: [lint] {message}", path.display())]
    Config { path: PathBuf, message: String },
    /// The app's placeholder declarations give no values to render with.
    #[error("{}: {message}", path.display())]
    Values { path: PathBuf, message: String },
    /// A plan holds error-level findings nothing ignores.
    #[error("{0}")]
    Refused(Box<Refusal>),
}

/// One thing a rule found, located in the revision file.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub rule: String,
    pub severity: Severity,
    pub revision: RevisionId,
    /// The section it was found in; `None` for the header (its ignores).
    pub direction: Option<Direction>,
    pub file: String,
    /// 1-based, in the file (columns in characters of the rendered statement).
    pub line: usize,
    pub column: usize,
    pub end_line: usize,
    pub end_column: usize,
    /// The offending statement as rendered (placeholders filled), or the header line.
    pub statement: String,
    pub statement_line: usize,
    pub statement_column: usize,
    pub message: String,
    /// squawk's help: what to do instead.
    pub help: Option<String>,
    /// The rule's documentation.
    pub docs: Option<String>,
    /// The reason of the `-- lint-ignore:` header that covers it.
    pub ignored: Option<String>,
}

impl Finding {
    /// `file:line:column`.
    pub fn location(&self) -> String {
        format!("{}:{}:{}", self.file, self.line, self.column)
    }

    /// An error no header ignores: it holds a run that would apply its section.
    pub fn blocks(&self) -> bool {
        self.severity == Severity::Error && self.ignored.is_none()
    }

    /// Whether it concerns `direction` (header findings concern both).
    pub fn applies_to(&self, direction: Direction) -> bool {
        self.direction.is_none_or(|d| d == direction)
    }
}

/// A revision's lint outcome for one direction, in order of weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Clean,
    Warnings,
    /// Error-level findings, all ignored with a reason (or ignored warnings).
    Ignored,
    Errors,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Clean => "clean",
            Verdict::Warnings => "warnings",
            Verdict::Ignored => "ignored",
            Verdict::Errors => "errors",
        }
    }
}

/// Everything found in one revision (both sections and the header).
#[derive(Debug, Clone, Serialize)]
pub struct RevisionLint {
    pub revision: RevisionId,
    pub file: String,
    /// Whether its statements run inside a transaction block.
    pub in_transaction: bool,
    pub findings: Vec<Finding>,
}

impl RevisionLint {
    pub fn findings(&self, direction: Direction) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(move |f| f.applies_to(direction))
    }

    pub fn verdict(&self, direction: Direction) -> Verdict {
        self.findings(direction)
            .map(|f| match (f.ignored.is_some(), f.severity) {
                (true, _) => Verdict::Ignored,
                (false, Severity::Error) => Verdict::Errors,
                (false, Severity::Warning) => Verdict::Warnings,
            })
            .max()
            .unwrap_or(Verdict::Clean)
    }
}

/// Counts over findings: what a summary line says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub errors: usize,
    pub warnings: usize,
    pub ignored: usize,
}

impl Counts {
    pub fn of<'a>(findings: impl IntoIterator<Item = &'a Finding>) -> Counts {
        let mut c = Counts::default();
        for f in findings {
            match (f.ignored.is_some(), f.severity) {
                (true, _) => c.ignored += 1,
                (false, Severity::Error) => c.errors += 1,
                (false, Severity::Warning) => c.warnings += 1,
            }
        }
        c
    }
}

/// An app's lint verdicts, revision by revision (in the graph's order).
#[derive(Debug, Clone)]
pub struct AppLint {
    pub app: String,
    pub config: LintConfig,
    pub revisions: Vec<RevisionLint>,
    index: HashMap<String, usize>,
}

impl AppLint {
    pub fn revision(&self, id: &str) -> Option<&RevisionLint> {
        self.index.get(id).map(|&i| &self.revisions[i])
    }

    pub fn findings(&self) -> impl Iterator<Item = &Finding> {
        self.revisions.iter().flat_map(|r| r.findings.iter())
    }

    pub fn counts(&self) -> Counts {
        Counts::of(self.findings())
    }
}

/// Lint every revision of `app`, rendered with `values`.
pub fn lint_app(app: &App, values: &Resolved) -> Result<AppLint, LintError> {
    lint_revisions(app, values, None)
}

/// What a gate needs before one run towards `target`: the revisions it may apply
/// ([`gate::candidates`]), linted in `direction` only (the other sections are not parsed: half
/// the work on a long history, on every CLI call). Both directions when an unused ignore is an
/// error, since whether an ignore is used depends on both.
pub fn lint_for_run(
    app: &App,
    values: &Resolved,
    direction: Direction,
    target: &Target,
) -> Result<AppLint, LintError> {
    let nodes = gate::candidates(&app.graph, direction, target).unwrap_or_default();
    lint_revisions(app, values, Some((direction, &nodes)))
}

fn lint_revisions(
    app: &App,
    values: &Resolved,
    only: Option<(Direction, &BTreeSet<Node>)>,
) -> Result<AppLint, LintError> {
    let config = LintConfig::parse(&app.lint, &app.dir.join(crate::revision::MANIFEST))?;
    let unused_blocks = config.runs(own::UNUSED_IGNORE)
        && config.severity(own::UNUSED_IGNORE, Direction::Upgrade) == Some(Severity::Error);
    let direction = only.map(|(d, _)| d).filter(|_| !unused_blocks);
    let revisions: Vec<RevisionLint> = app
        .graph
        .revisions()
        .filter(|(n, _)| only.is_none_or(|(_, nodes)| nodes.contains(n)))
        .map(|(_, rev)| lint_sections(rev, values, &config, direction))
        .collect();
    let index = revisions
        .iter()
        .enumerate()
        .map(|(i, r)| (r.revision.to_string(), i))
        .collect();
    Ok(AppLint {
        app: app.name.clone(),
        config,
        revisions,
        index,
    })
}

/// [`lint_app`] without a tenant: the declared defaults, and a sample value of its type for a
/// placeholder without one. What the daemon computes once per app when it loads it.
pub fn lint_at_load(app: &App) -> Result<AppLint, LintError> {
    lint_app(app, &load_values(app)?)
}

fn load_values(app: &App) -> Result<Resolved, LintError> {
    let samples: BTreeMap<String, String> = app
        .declarations
        .0
        .iter()
        .filter(|(_, d)| d.default.is_none())
        .map(|(name, d)| {
            let v = match d.ty {
                PlaceholderType::Int => "1",
                PlaceholderType::Bool => "true",
                PlaceholderType::Identifier | PlaceholderType::String => "sample",
            };
            (name.clone(), v.to_string())
        })
        .collect();
    app.declarations
        .resolve(&|_| None, &samples)
        .map_err(|e| LintError::Values {
            path: app.dir.join(crate::revision::MANIFEST),
            message: e.to_string(),
        })
}

/// One revision's section in `only` (`None`: both), its ignores applied; whether an ignore is
/// used at all is judged only when both were linted.
fn lint_sections(
    rev: &Revision,
    values: &Resolved,
    config: &LintConfig,
    only: Option<Direction>,
) -> RevisionLint {
    let in_transaction = rev.transaction.in_transaction_block();
    let mut findings = Vec::new();
    for direction in [Direction::Upgrade, Direction::Downgrade] {
        if (direction == Direction::Downgrade && rev.downgrade.is_none())
            || only.is_some_and(|d| d != direction)
        {
            continue;
        }
        match render::render_for_lint(rev, direction, values) {
            Ok(r) => findings.extend(squawk::lint(
                rev,
                direction,
                &r.statements,
                in_transaction,
                config,
            )),
            Err(e) => findings.push(unrenderable(rev, direction, &e)),
        }
    }
    ignores::apply(rev, &mut findings, config, only.is_none());
    RevisionLint {
        revision: rev.id.clone(),
        file: rev.path.display().to_string(),
        in_transaction,
        findings,
    }
}

fn unrenderable(rev: &Revision, direction: Direction, e: &render::RenderError) -> Finding {
    // Render errors start with `file:line`.
    let text = e.to_string();
    let line = text
        .strip_prefix(&format!("{}:", rev.path.display()))
        .and_then(|rest| rest.split(':').next())
        .and_then(|l| l.parse().ok())
        .unwrap_or(1);
    Finding {
        rule: own::UNRENDERABLE.into(),
        severity: Severity::Error,
        revision: rev.id.clone(),
        direction: Some(direction),
        file: rev.path.display().to_string(),
        line,
        column: 1,
        end_line: line,
        end_column: 1,
        statement: String::new(),
        statement_line: line,
        statement_column: 1,
        message: format!("the {direction} section cannot be checked: {text}"),
        help: Some("`fleetmig check` reports the same problem: fix it first".into()),
        docs: None,
        ignored: None,
    }
}

#[cfg(test)]
mod tests;
