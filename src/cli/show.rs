//! Printing the graph as Alembic prints it: `history` (ranges included), `heads`, and the
//! lines `current` prints. Lines carry Alembic's markers: `(head)` for a revision nothing
//! continues or depends on, `(effective head)` for one only depended on, `(branchpoint)`,
//! `(mergepoint)`, `(current)`, branch labels in parentheses.

use clap::Args;

use super::{Context, Failure};
use crate::revision::{App, Node, plan};

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[arg(long, short)]
    pub verbose: bool,
    /// Range `START:END`: revisions, labels, `base`, `head`, `heads`, `label@head`, `REV+N`,
    /// `current` (needs DATABASE_URL); either side may be empty.
    #[arg(short = 'r', long, allow_hyphen_values = true)]
    pub rev_range: Option<String>,
    /// Mark the revisions the database is at with `(current)` (needs DATABASE_URL).
    #[arg(short = 'i', long)]
    pub indicate_current: bool,
    /// Show what the database's history table records instead (needs DATABASE_URL).
    #[arg(long)]
    pub applied: bool,
}

#[derive(Debug, Args)]
pub struct HeadsArgs {
    #[arg(long, short)]
    pub verbose: bool,
    /// Only the heads nothing depends on (what the target `heads` upgrades to).
    #[arg(long)]
    pub resolve_dependencies: bool,
}

fn joined(items: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    items
        .into_iter()
        .map(|s| s.as_ref().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Alembic's `_head_only`: the id with its markers.
fn head_only(app: &App, n: Node, opts: LineOpts) -> String {
    let g = &app.graph;
    let rev = g.revision(n);
    let mut text = rev.id.to_string();
    if opts.parents {
        let down = if g.parents(n).is_empty() {
            "<base>".to_string()
        } else {
            joined(g.parents(n).iter().map(|&p| g.id(p)))
        };
        text = if rev.depends_on.is_empty() {
            format!("{down} -> {text}")
        } else {
            format!(
                "{down} ({}) -> {text}",
                joined(rev.depends_on.iter().map(|d| d.as_str()))
            )
        };
    }
    if opts.branches && !g.branch_labels(n).is_empty() {
        text.push_str(&format!(" ({})", joined(g.branch_labels(n))));
    }
    if g.is_real_head(n) {
        text.push_str(" (head)");
    } else if g.is_head(n) {
        text.push_str(" (effective head)");
    }
    if opts.current {
        text.push_str(" (current)");
    }
    if opts.tree {
        if g.is_branch_point(n) {
            text.push_str(" (branchpoint)");
        }
        if g.is_merge_point(n) {
            text.push_str(" (mergepoint)");
        }
    }
    if opts.doc {
        text.push_str(&format!(", {}", rev.message));
    }
    text
}

#[derive(Clone, Copy, Default)]
struct LineOpts {
    parents: bool,
    branches: bool,
    current: bool,
    tree: bool,
    doc: bool,
}

/// A line of `current`: the id, its head and tree markers.
pub fn describe_short(app: &App, n: Node) -> String {
    head_only(
        app,
        n,
        LineOpts {
            tree: true,
            ..LineOpts::default()
        },
    )
}

/// fleetmig's verbose details of a revision, below its line.
fn details(app: &App, n: Node) -> String {
    let rev = app.graph.revision(n);
    let mut s = format!(
        "\n    file: {}\n    checksum: {}",
        rev.path.display(),
        &rev.checksum[..12]
    );
    if !rev.branch_labels.is_empty() {
        s.push_str(&format!(
            "\n    branch labels: {}",
            rev.branch_labels.join(", ")
        ));
    }
    if !rev.depends_on.is_empty() {
        s.push_str(&format!(
            "\n    depends on: {}",
            joined(rev.depends_on.iter().map(|d| d.as_str()))
        ));
    }
    if rev.transaction == crate::model::TransactionMode::None {
        s.push_str("\n    transaction: none");
    }
    if let Some(c) = &rev.condition {
        s.push_str(&format!("\n    condition: {c}"));
    }
    s
}

pub async fn history(ctx: &Context, args: HistoryArgs) -> Result<(), Failure> {
    if args.applied {
        return super::local::applied_history(ctx).await;
    }
    let app = ctx.app()?;
    let g = &app.graph;
    let range = args.rev_range.as_deref();
    if let Some(r) = range
        && !r.contains(':')
    {
        return Err(Failure::input(
            "History range requires [start]:[end], [start]:, or :[end]",
        ));
    }
    let wants_rows = args.indicate_current
        || range.is_some_and(|r| r.split(':').any(|side| side.trim() == "current"));
    let rows = if wants_rows {
        Some(super::local::read_rows(ctx, &app).await?)
    } else {
        None
    };
    for n in plan::history(g, range, rows.as_deref()).map_err(Failure::from)? {
        let opts = LineOpts {
            parents: true,
            branches: true,
            current: args.indicate_current && rows.as_ref().is_some_and(|r| r.contains(&n)),
            tree: true,
            doc: true,
        };
        let mut line = head_only(&app, n, opts);
        if args.verbose {
            line.push_str(&details(&app, n));
        }
        println!("{line}");
    }
    Ok(())
}

pub fn heads(ctx: &Context, args: HeadsArgs) -> Result<(), Failure> {
    let app = ctx.app()?;
    let heads = if args.resolve_dependencies {
        app.graph.real_heads()
    } else {
        app.graph.heads()
    };
    for h in heads {
        let opts = LineOpts {
            branches: true,
            ..LineOpts::default()
        };
        let mut line = head_only(&app, h, opts);
        if args.verbose {
            line.push_str(&format!(", {}", app.graph.revision(h).message));
            line.push_str(&details(&app, h));
        }
        println!("{line}");
    }
    Ok(())
}
