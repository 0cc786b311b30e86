//! Commands that write revision files: new revision and merge, with Alembic's guards (the
//! parent must be a head unless `--splice`; a branch label must be new; the new graph must
//! load before anything is written), and `check`. Printing the graph lives in `show.rs`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::Args;

use super::{Context, Failure};
use crate::model::RevisionId;
use crate::revision::resolve::{At, ResolveError};
use crate::revision::{App, Graph, Node, Revision, plan};

#[derive(Debug, Args)]
pub struct RevisionArgs {
    /// Message describing the revision.
    #[arg(short, long)]
    pub message: String,
    /// Parent revision(s): a head (default `head`, the single head), `label@head`, `base` for
    /// a new root, or any revision with --splice.
    #[arg(long)]
    pub head: Option<String>,
    /// Allow a --head that is not a head: the new revision starts a new branch from it.
    #[arg(long)]
    pub splice: bool,
    /// Branch label(s) for the new revision.
    #[arg(long)]
    pub branch_label: Vec<String>,
    /// Revision(s) or branch label(s) this one depends on without being their child.
    #[arg(long)]
    pub depends_on: Vec<String>,
    /// Use this revision id instead of a fresh random one.
    #[arg(long)]
    pub rev_id: Option<String>,
    /// Statements run one by one outside a transaction (CREATE INDEX CONCURRENTLY).
    #[arg(long)]
    pub non_transactional: bool,
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Message describing the merge.
    #[arg(short, long)]
    pub message: String,
    /// Heads to join (or `heads`).
    #[arg(required = true)]
    pub revisions: Vec<String>,
    /// Branch label(s) for the merge revision.
    #[arg(long)]
    pub branch_label: Vec<String>,
    #[arg(long)]
    pub rev_id: Option<String>,
}

fn slug(message: &str) -> String {
    let s: String = message
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let s = s
        .split('_')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("_");
    s.chars().take(40).collect()
}

fn new_id(app: &App, given: Option<String>) -> Result<RevisionId, Failure> {
    let id: RevisionId = match given {
        Some(g) => g.parse().map_err(Failure::input)?,
        None => uuid::Uuid::new_v4().simple().to_string()[20..]
            .parse()
            .expect("12 hex digits are a valid id"),
    };
    if app.graph.node(id.as_str()).is_some() {
        return Err(Failure::input(format!(
            "revision id {id} already exists in app {}",
            app.name
        )));
    }
    Ok(id)
}

/// What a new revision file says.
struct NewRevision<'a> {
    id: &'a RevisionId,
    parents: &'a [String],
    labels: &'a [String],
    depends_on: &'a [String],
    message: &'a str,
    non_transactional: bool,
}

/// Write the file, after proving the app still loads as one graph with it (a label in use,
/// a label that is an id, an unknown dependency: refused, nothing written).
fn write_revision(app: &App, new: &NewRevision<'_>) -> Result<PathBuf, Failure> {
    if new.message.contains('\n') {
        return Err(Failure::input("the message must be one line"));
    }
    let mut text = format!(
        "-- revision: {}\n-- down_revision: {}\n",
        new.id,
        new.parents.join(", ")
    );
    if !new.labels.is_empty() {
        text.push_str(&format!("-- branch_labels: {}\n", new.labels.join(", ")));
    }
    if !new.depends_on.is_empty() {
        text.push_str(&format!("-- depends_on: {}\n", new.depends_on.join(", ")));
    }
    text.push_str(&format!("-- message: {}\n", new.message));
    if new.non_transactional {
        text.push_str("-- transaction: none\n");
    }
    text.push_str("\n-- +upgrade\n\n\n-- +downgrade\n\n");
    let path = app
        .dir
        .join(format!("{}_{}.sql", new.id, slug(new.message)));
    let parsed = Revision::parse(&path, &text).map_err(Failure::input)?;
    let mut all: Vec<Revision> = app.graph.revisions().map(|(_, r)| r.clone()).collect();
    all.push(parsed);
    Graph::new(all).map_err(|e| Failure::input(format!("refused, nothing written: {e}")))?;
    if path.exists() {
        return Err(Failure::input(format!("{} already exists", path.display())));
    }
    std::fs::write(&path, text).map_err(|e| Failure {
        code: 1,
        message: format!("{}: {e}", path.display()),
    })?;
    Ok(path)
}

fn id_of(app: &App, n: Node) -> String {
    app.graph.id(n).to_string()
}

/// The parents `--head` (or `merge`'s revisions) name, as Alembic's `generate_revision`
/// resolves them: `base` gives none; each must be a head unless `splice`.
fn parents_of(
    app: &App,
    symbols: &[String],
    splice: bool,
    several_heads: &str,
) -> Result<Vec<String>, Failure> {
    let g = &app.graph;
    let mut parents: Vec<Node> = Vec::new();
    for symbol in symbols {
        let found = g.get_revisions(symbol).map_err(|e| match e {
            ResolveError::MultipleHeads { heads, .. } => Failure {
                code: 3,
                message: format!("{several_heads} (heads: {})", heads.join(", ")),
            },
            other => Failure::from(plan::PlanError::from(other)),
        })?;
        for f in found {
            match f {
                Some(At::Rev(n)) => parents.push(n),
                _ => {
                    return Err(Failure::input(format!(
                        "{symbol} does not name a revision to build on"
                    )));
                }
            }
        }
    }
    if parents.iter().collect::<BTreeSet<_>>().len() != parents.len() {
        return Err(Failure::input("Duplicate head revisions specified"));
    }
    if !splice && let Some(&n) = parents.iter().find(|&&n| !g.is_head(n)) {
        return Err(Failure::input(format!(
            "Revision {} is not a head revision; please specify --splice to create a new branch from this revision",
            id_of(app, n)
        )));
    }
    Ok(parents.into_iter().map(|n| id_of(app, n)).collect())
}

pub fn revision(ctx: &Context, args: RevisionArgs) -> Result<(), Failure> {
    let app = ctx.app()?;
    let g = &app.graph;
    let head = args.head.clone().unwrap_or_else(|| "head".into());
    let parents = parents_of(
        &app,
        &[head],
        args.splice,
        "Multiple heads are present; please specify the head revision on which the new revision should be based (--head), or perform a merge",
    )?;
    // Like Alembic: a dependency named by one of its branch labels keeps the label.
    let depends_on = args
        .depends_on
        .iter()
        .map(|d| match g.get_revision(d) {
            Ok(Some(n)) if g.branch_labels(n).contains(d) => Ok(d.clone()),
            Ok(Some(n)) => Ok(id_of(&app, n)),
            Ok(None) => Err(Failure::input(format!("--depends-on {d}: not a revision"))),
            Err(e) => Err(Failure::from(plan::PlanError::from(e))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let id = new_id(&app, args.rev_id)?;
    let path = write_revision(
        &app,
        &NewRevision {
            id: &id,
            parents: &parents,
            labels: &args.branch_label,
            depends_on: &depends_on,
            message: &args.message,
            non_transactional: args.non_transactional,
        },
    )?;
    println!("Generating {} ... done", path.display());
    Ok(())
}

pub fn merge(ctx: &Context, args: MergeArgs) -> Result<(), Failure> {
    let app = ctx.app()?;
    let parents = parents_of(
        &app,
        &args.revisions,
        false,
        "Multiple heads are present for `head`; name them, or `heads`",
    )?;
    if parents.len() < 2 {
        return Err(Failure::input(format!(
            "a merge joins at least two heads; {} name(s) {}",
            args.revisions.join(" "),
            if parents.is_empty() {
                "none".to_string()
            } else {
                parents.join(", ")
            }
        )));
    }
    let id = new_id(&app, args.rev_id)?;
    let path = write_revision(
        &app,
        &NewRevision {
            id: &id,
            parents: &parents,
            labels: &args.branch_label,
            depends_on: &[],
            message: &args.message,
            non_transactional: false,
        },
    )?;
    println!("Generating {} ... done", path.display());
    Ok(())
}

/// Check every app (or the one named): graph, rendering of every section, lint findings, and,
/// when DATABASE_URL is set, unchanged files for applied revisions.
pub async fn check(ctx: &Context) -> Result<(), Failure> {
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
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    // Error-level lint findings: refused for safety (exit 3) unless bad input comes first.
    let mut lint_errors = Vec::new();
    for name in &names {
        let app = match App::load(&ctx.config.migrations_dir, name) {
            Ok(a) => a,
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        };
        let values = match app
            .declarations
            .resolve(&|n| std::env::var(n).ok(), &ctx.explicit)
        {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("{name}: {e}"));
                continue;
            }
        };
        problems.extend(crate::revision::validate::problems(&app, &values));
        match super::lint::check_lines(&app, &values) {
            Ok((errors, lint_warnings)) => {
                lint_errors.extend(errors);
                warnings.extend(lint_warnings);
            }
            Err(e) => problems.push(e),
        }
        let heads = app.graph.heads();
        if heads.len() > 1 {
            warnings.push(format!(
                "{name}: {} heads ({}): `upgrade head` will refuse; merge them with `fleetmig --app {name} merge -m MSG heads`",
                heads.len(),
                heads.iter().map(|&h| id_of(&app, h)).collect::<Vec<_>>().join(", ")
            ));
        }
        println!(
            "{name}: {} revision(s), {} head(s)",
            app.graph.len(),
            heads.len()
        );
        if super::database::is_configured() && ctx.config.app.as_deref() == Some(name.as_str()) {
            let db = super::database::Database::from_env(&ctx.database)?;
            let settings = db.settings(ctx.config.engine.settings());
            let client = db.connect().await?;
            let engine = crate::engine::Engine::new(&app, &values, &settings);
            let state = engine.state(&client).await?;
            match plan::rows_from_db(&app.graph, &state.rows) {
                Ok(rows) => {
                    let applied = plan::applied(&app.graph, &rows);
                    for c in engine.changed_revisions(&client, &applied).await? {
                        problems.push(format!(
                            "{} ({}) changed since it was applied to {}",
                            c.revision,
                            c.path,
                            db.what()
                        ));
                    }
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
    }
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    for p in problems.iter().chain(&lint_errors) {
        eprintln!("error: {p}");
    }
    if !problems.is_empty() {
        return Err(Failure::input(format!(
            "{} problem(s) found{}",
            problems.len() + lint_errors.len(),
            if lint_errors.is_empty() {
                String::new()
            } else {
                format!(", {} of them lint findings", lint_errors.len())
            }
        )));
    }
    if !lint_errors.is_empty() {
        return Err(Failure {
            code: 3,
            message: format!(
                "{} error-level lint finding(s) (`fleetmig lint` shows them with the statements): fix them, or ignore a rule that does not apply in the revision's header with `-- lint-ignore: RULE -- why`",
                lint_errors.len()
            ),
        });
    }
    println!("OK");
    Ok(())
}
