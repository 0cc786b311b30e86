//! Commands on the revision files themselves: new revision, merge, history, heads, check.

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::Args;

use super::{Context, Failure};
use crate::model::RevisionId;
use crate::revision::{App, Node, plan};

#[derive(Debug, Args)]
pub struct RevisionArgs {
    /// Message describing the revision.
    #[arg(short, long)]
    pub message: String,
    /// Parent revision (default: the current single head; `base` for a new root).
    #[arg(long)]
    pub head: Option<String>,
    /// Branch label(s) for the new revision.
    #[arg(long)]
    pub branch_label: Vec<String>,
    /// Revision(s) this one depends on without being their child.
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
    /// Revisions to join (or `heads`).
    #[arg(required = true)]
    pub revisions: Vec<String>,
    #[arg(long)]
    pub rev_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[arg(long, short)]
    pub verbose: bool,
    /// Range `START:END` (revisions, `base`, `head`, `heads`; either side may be empty).
    #[arg(short = 'r', long)]
    pub rev_range: Option<String>,
    /// Show what the database's history table records instead (needs DATABASE_URL).
    #[arg(long)]
    pub applied: bool,
}

#[derive(Debug, Args)]
pub struct HeadsArgs {
    #[arg(long, short)]
    pub verbose: bool,
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

fn write_revision(
    app: &App,
    id: &RevisionId,
    parents: &[String],
    labels: &[String],
    depends_on: &[String],
    message: &str,
    non_transactional: bool,
) -> Result<PathBuf, Failure> {
    if message.contains('\n') {
        return Err(Failure::input("the message must be one line"));
    }
    let mut text = format!(
        "-- revision: {id}\n-- down_revision: {}\n",
        parents.join(", ")
    );
    if !labels.is_empty() {
        text.push_str(&format!("-- branch_labels: {}\n", labels.join(", ")));
    }
    if !depends_on.is_empty() {
        text.push_str(&format!("-- depends_on: {}\n", depends_on.join(", ")));
    }
    text.push_str(&format!("-- message: {message}\n"));
    if non_transactional {
        text.push_str("-- transaction: none\n");
    }
    text.push_str("\n-- +upgrade\n\n\n-- +downgrade\n\n");
    // Validate what we are about to write with the real parser.
    let path = app.dir.join(format!("{id}_{}.sql", slug(message)));
    crate::revision::Revision::parse(&path, &text).map_err(Failure::input)?;
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
    app.graph.revision(n).id.to_string()
}

pub fn revision(ctx: &Context, args: RevisionArgs) -> Result<(), Failure> {
    let app = ctx.app()?;
    let g = &app.graph;
    let parents: Vec<String> = match args.head.as_deref() {
        Some("base") => vec![],
        Some(h) => vec![id_of(
            &app,
            if let Some(l) = h.strip_suffix("@head") {
                g.branch_head(l)
            } else {
                g.resolve(h)
            }
            .map_err(|e| Failure::input(plan::PlanError::from(e)))?,
        )],
        None => g
            .single_head()
            .map_err(|e| Failure {
                code: 3,
                message: e.to_string(),
            })?
            .map(|h| id_of(&app, h))
            .into_iter()
            .collect(),
    };
    let depends_on = args
        .depends_on
        .iter()
        .map(|d| {
            g.resolve(d)
                .map(|n| id_of(&app, n))
                .map_err(|e| Failure::input(plan::PlanError::from(e)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let id = new_id(&app, args.rev_id)?;
    let path = write_revision(
        &app,
        &id,
        &parents,
        &args.branch_label,
        &depends_on,
        &args.message,
        args.non_transactional,
    )?;
    println!("Generating {} ... done", path.display());
    Ok(())
}

pub fn merge(ctx: &Context, args: MergeArgs) -> Result<(), Failure> {
    let app = ctx.app()?;
    let g = &app.graph;
    let mut parents = BTreeSet::new();
    for r in &args.revisions {
        if r == "heads" {
            parents.extend(g.heads());
        } else {
            parents.insert(
                g.resolve(r)
                    .map_err(|e| Failure::input(plan::PlanError::from(e)))?,
            );
        }
    }
    if parents.len() < 2 {
        return Err(Failure::input("a merge joins at least two revisions"));
    }
    let parents: Vec<String> = parents.into_iter().map(|n| id_of(&app, n)).collect();
    let id = new_id(&app, args.rev_id)?;
    let path = write_revision(&app, &id, &parents, &[], &[], &args.message, false)?;
    println!("Generating {} ... done", path.display());
    Ok(())
}

fn describe(app: &App, n: Node, verbose: bool) -> String {
    let g = &app.graph;
    let rev = g.revision(n);
    let parents = if g.parents(n).is_empty() {
        "<base>".to_string()
    } else {
        g.parents(n)
            .iter()
            .map(|&p| id_of(app, p))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut tags = String::new();
    if g.children(n).is_empty() {
        tags.push_str(" (head)");
    }
    if g.children(n).len() > 1 {
        tags.push_str(" (branchpoint)");
    }
    if g.parents(n).len() > 1 {
        tags.push_str(" (mergepoint)");
    }
    let mut s = format!("{parents} -> {}{tags}, {}", rev.id, rev.message);
    if verbose {
        s.push_str(&format!(
            "\n    file: {}\n    checksum: {}",
            rev.path.display(),
            &rev.checksum[..12]
        ));
        if !rev.branch_labels.is_empty() {
            s.push_str(&format!(
                "\n    branch labels: {}",
                rev.branch_labels.join(", ")
            ));
        }
        if !rev.depends_on.is_empty() {
            s.push_str(&format!(
                "\n    depends on: {}",
                rev.depends_on
                    .iter()
                    .map(|d| d.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if rev.transaction == crate::model::TransactionMode::None {
            s.push_str("\n    transaction: none");
        }
        if let Some(c) = &rev.condition {
            s.push_str(&format!("\n    condition: {c}"));
        }
    }
    s
}

fn range_end(app: &App, spec: &str) -> Result<BTreeSet<Node>, Failure> {
    let g = &app.graph;
    Ok(match spec {
        "" | "heads" | "head" => g.ancestors(g.heads()),
        "base" => BTreeSet::new(),
        r => g.ancestors([g
            .resolve(r)
            .map_err(|e| Failure::input(plan::PlanError::from(e)))?]),
    })
}

pub async fn history(ctx: &Context, args: HistoryArgs) -> Result<(), Failure> {
    if args.applied {
        return super::local::applied_history(ctx).await;
    }
    let app = ctx.app()?;
    let g = &app.graph;
    let mut shown: BTreeSet<Node> = (0..g.len()).collect();
    if let Some(range) = &args.rev_range {
        let (start, end) = range
            .split_once(':')
            .ok_or_else(|| Failure::input(format!("-r {range:?}: expected START:END")))?;
        let upper = range_end(&app, end)?;
        let lower = match start {
            "" | "base" => BTreeSet::new(),
            s => {
                let n = g
                    .resolve(s)
                    .map_err(|e| Failure::input(plan::PlanError::from(e)))?;
                // Alembic ranges include their start.
                let mut below = g.ancestors([n]);
                below.remove(&n);
                below
            }
        };
        shown = upper.difference(&lower).copied().collect();
    }
    let mut order = g.topo_order(&shown);
    order.reverse();
    for n in order {
        println!("{}", describe(&app, n, args.verbose));
    }
    Ok(())
}

pub fn heads(ctx: &Context, args: HeadsArgs) -> Result<(), Failure> {
    let app = ctx.app()?;
    for h in app.graph.heads() {
        if args.verbose {
            println!("{}", describe(&app, h, true));
        } else {
            println!("{} (head)", id_of(&app, h));
        }
    }
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
            match plan::applied_from_rows(&app.graph, &state.rows) {
                Ok(applied) => {
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

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Output of `alembic upgrade base:head --sql`.
    #[arg(long)]
    pub upgrade_sql: PathBuf,
    /// Output of `alembic downgrade head:base --sql` (without it, revisions are irreversible).
    #[arg(long)]
    pub downgrade_sql: Option<PathBuf>,
    /// The app to create under the migrations directory (must not exist yet).
    #[arg(long = "into")]
    pub into: String,
}

/// `import-alembic`: an Alembic project's offline SQL into revision files (same ids and parents).
pub fn import_alembic(ctx: &Context, args: ImportArgs) -> Result<(), Failure> {
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).map_err(|e| Failure::input(format!("{}: {e}", p.display())))
    };
    let up = read(&args.upgrade_sql)?;
    let down = args.downgrade_sql.as_ref().map(read).transpose()?;
    if !crate::revision::is_valid_app_name(&args.into) {
        return Err(Failure::input(format!(
            "--into {:?}: use a-z A-Z 0-9 _ -",
            args.into
        )));
    }
    let dir = ctx.config.migrations_dir.join(&args.into);
    if dir.exists() {
        return Err(Failure::input(format!(
            "{} already exists: import into a new app",
            dir.display()
        )));
    }
    let version_table = ctx.config.engine.version_table.name.clone();
    let revisions = crate::revision::import::import(&up, down.as_deref(), &version_table)
        .map_err(|e| Failure::input(format!("{}: {e}", args.upgrade_sql.display())))?;
    std::fs::create_dir_all(&dir).map_err(|e| Failure {
        code: 1,
        message: format!("{}: {e}", dir.display()),
    })?;
    for r in &revisions {
        let path = dir.join(format!("{}.sql", r.id));
        std::fs::write(&path, crate::revision::import::render_file(r)).map_err(|e| Failure {
            code: 1,
            message: format!("{}: {e}", path.display()),
        })?;
    }
    // Prove the result loads as one graph before saying it worked.
    let app = App::load(&ctx.config.migrations_dir, &args.into)?;
    let heads: Vec<String> = app
        .graph
        .heads()
        .into_iter()
        .map(|h| id_of(&app, h))
        .collect();
    println!(
        "Imported {} revision(s) into {} (heads: {})",
        revisions.len(),
        dir.display(),
        heads.join(", ")
    );
    Ok(())
}
