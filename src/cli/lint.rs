//! `fleetmig lint` (squawk's rules on the revision files, reported for people or CI), the
//! lint part of `fleetmig check`, and the gate local upgrades and downgrades pass (unless
//! `--allow-lint`). Exit code 3 when an error-level finding is not ignored: refused for safety.

use clap::{Args, ValueEnum};

use super::{Context, Failure};
use crate::lint::report::{self, Format, Scope};
use crate::lint::{self, AppLint, Finding, LintError, own};
use crate::model::Direction;
use crate::revision::plan::Target;
use crate::revision::{App, Resolved};

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    /// Annotated statements, for people.
    Human,
    /// One JSON document: every finding, the counts.
    Json,
    /// GitHub Actions workflow commands: annotations on the pull request's files.
    Github,
    /// SARIF 2.1.0 (GitHub code scanning and other tools); ignored findings as suppressions.
    Sarif,
}

#[derive(Debug, Args)]
pub struct LintArgs {
    /// Revisions to lint (ids or unique prefixes); default: every revision of the app(s).
    pub revisions: Vec<String>,
    #[arg(long, value_enum, default_value = "human")]
    pub output: Output,
}

fn lint_error(e: LintError) -> Failure {
    match e {
        LintError::Refused(r) => Failure {
            code: 3,
            message: r.to_string(),
        },
        e @ (LintError::Config { .. } | LintError::Values { .. }) => Failure::input(e),
    }
}

/// The apps `lint` and `check` look at: the one named, or all.
fn app_names(ctx: &Context) -> Result<Vec<String>, Failure> {
    let names = match &ctx.config.app {
        Some(a) => vec![a.clone()],
        None => App::list(&ctx.config.migrations_dir),
    };
    if names.is_empty() {
        return Err(Failure::input(format!(
            "no apps under {}",
            ctx.config.migrations_dir.display()
        )));
    }
    Ok(names)
}

pub fn run(ctx: &Context, args: LintArgs) -> Result<(), Failure> {
    let names = app_names(ctx)?;
    if !args.revisions.is_empty() && names.len() > 1 {
        return Err(Failure::input(format!(
            "revisions named, but {} apps under {} ({}): pick one with --app",
            names.len(),
            ctx.config.migrations_dir.display(),
            names.join(", ")
        )));
    }
    let mut scope = Vec::new();
    let mut lints = Vec::new();
    for name in &names {
        let app = App::load(&ctx.config.migrations_dir, name)?;
        let values = ctx.values(&app)?;
        let lint = lint::lint_app(&app, &values).map_err(lint_error)?;
        let mut chosen = Vec::new();
        for r in &args.revisions {
            let node = app
                .graph
                .get_revision(r)
                .map_err(|e| Failure::input(format!("revision {r:?}: {e}")))?
                .ok_or_else(|| Failure::input(format!("revision {r:?}: names no revision")))?;
            chosen.push(app.graph.revision(node).id.to_string());
        }
        scope.push(Scope {
            app: name.clone(),
            pg_version: lint.config.pg_version.clone(),
            revisions: if chosen.is_empty() {
                lint.revisions.len()
            } else {
                chosen.len()
            },
        });
        lints.push((lint, chosen));
    }
    let findings: Vec<&Finding> = lints
        .iter()
        .flat_map(|(lint, chosen)| {
            lint.revisions
                .iter()
                .filter(move |r| chosen.is_empty() || chosen.contains(&r.revision.to_string()))
                .flat_map(|r| r.findings.iter())
        })
        .collect();
    let format = match args.output {
        Output::Human => Format::Human,
        Output::Json => Format::Json,
        Output::Github => Format::Github,
        Output::Sarif => Format::Sarif,
    };
    print!("{}", report::render(format, &scope, &findings));
    let blocking = findings.iter().filter(|f| f.blocks()).count();
    if blocking > 0 {
        return Err(Failure {
            code: 3,
            message: format!(
                "{blocking} error-level lint finding(s): fix them, or ignore a rule that does not apply in the revision's header with `-- lint-ignore: RULE -- why`"
            ),
        });
    }
    Ok(())
}

/// `check`'s lint part for one app: (errors, warnings), one line each.
pub fn check_lines(app: &App, values: &Resolved) -> Result<(Vec<String>, Vec<String>), String> {
    let lint = lint::lint_app(app, values).map_err(|e| e.to_string())?;
    let line = |f: &Finding| {
        format!(
            "{}: lint {}: {} (revision {}, {})",
            f.location(),
            f.rule,
            f.message,
            f.revision,
            f.direction.map_or("header", |d| d.as_str())
        )
    };
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    // What cannot be rendered, `check` reports already.
    for f in lint
        .findings()
        .filter(|f| f.ignored.is_none() && f.rule != own::UNRENDERABLE)
    {
        if f.blocks() {
            errors.push(line(f));
        } else {
            warnings.push(line(f));
        }
    }
    Ok((errors, warnings))
}

/// The gate of a local upgrade or downgrade: refused (exit 3) when the target can bring an
/// error-level finding nothing ignores, unless `allow`, which says what it lets through.
pub fn gate(
    app: &App,
    values: &Resolved,
    direction: Direction,
    target: &Target,
    allow: bool,
) -> Result<(), Failure> {
    let lint: AppLint = lint::lint_for_run(app, values, direction, target).map_err(lint_error)?;
    match lint::gate::check(&lint, &app.graph, direction, target) {
        Ok(_) => Ok(()),
        Err(LintError::Refused(r)) if allow => {
            eprintln!(
                "WARNING: --allow-lint: going ahead despite {} error-level lint finding(s):",
                r.findings.len()
            );
            for f in &r.findings {
                eprintln!(
                    "  revision {} {}: {}: {}",
                    f.revision,
                    f.location(),
                    f.rule,
                    f.message
                );
            }
            Ok(())
        }
        Err(e) => Err(lint_error(e)),
    }
}
