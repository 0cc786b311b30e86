//! Local commands on one database: upgrade, downgrade, stamp, current, fingerprint, and the
//! applied history. The database comes from `DATABASE_URL` (environment or `.env`).

use std::time::Instant;

use clap::Args;
use tokio_postgres::Client;

use super::database::Database;
use super::{Context, Failure, applied_by};
use crate::engine::{self, Engine, EngineError, Event, RunOptions};
use crate::model::Direction;
use crate::revision::App;
use crate::revision::plan::{self, Target};

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Target, as in Alembic (upgrade: head, heads, REV, label, label@head, +N, REV+N,
    /// label@+N; downgrade: -N, REV-N, label@-N, REV, label@base, base). With --sql, `FROM:TO`
    /// gives the starting point (default base for upgrades).
    #[arg(allow_negative_numbers = true, allow_hyphen_values = true)]
    pub target: Option<String>,
    /// Print the SQL instead of running it (offline mode; no database is touched).
    #[arg(long)]
    pub sql: bool,
    /// Proceed even if applied revision files changed since they were applied.
    #[arg(long)]
    pub allow_changed: bool,
    /// Proceed even if a revision the target can bring has an error-level lint finding that
    /// its header does not ignore (the findings are printed).
    #[arg(long)]
    pub allow_lint: bool,
    #[command(flatten)]
    pub blockers: super::policy::BlockerArgs,
}

/// The CLI's second connection, for asking who blocks a revision: a fresh one, as the
/// migration's own is the one waiting.
struct Probe<'a>(&'a crate::pg::Target);

impl crate::engine::blockers::Probe for Probe<'_> {
    fn connect(
        &self,
    ) -> futures::future::BoxFuture<'_, Result<Box<dyn crate::engine::blockers::ProbeClient>, String>>
    {
        Box::pin(async move {
            super::database::connect(self.0)
                .await
                .map(|c| Box::new(c) as Box<dyn crate::engine::blockers::ProbeClient>)
                .map_err(|f| f.message)
        })
    }
}

#[derive(Debug, Args)]
pub struct StampArgs {
    /// The revision(s) to stamp: REV, head, heads, label@head, base... (several: one per
    /// branch, as Alembic's `stamp`).
    #[arg(required = true, allow_hyphen_values = true)]
    pub revisions: Vec<String>,
    /// Empty the version table first, even if it names revisions this app does not know.
    #[arg(long)]
    pub purge: bool,
}

#[derive(Debug, Args)]
pub struct CurrentArgs {
    #[arg(long, short)]
    pub verbose: bool,
}

/// The database of local commands, connected.
async fn connect(ctx: &Context) -> Result<(Client, Database), Failure> {
    let db = Database::from_env(&ctx.database)?;
    let client = db.connect().await?;
    Ok((client, db))
}

fn print_event(app: &App, event: Event) {
    match event {
        Event::RevisionStarted {
            revision,
            direction,
        } => {
            let g = &app.graph;
            let node = g.node(revision.as_str()).expect("planned revisions exist");
            let parents = g
                .parents(node)
                .iter()
                .map(|&p| g.revision(p).id.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            let (a, b) = match direction {
                Direction::Upgrade => (parents, revision.to_string()),
                Direction::Downgrade => (revision.to_string(), parents),
            };
            eprintln!(
                "Running {direction} {a} -> {b}, {}",
                g.revision(node).message
            );
        }
        Event::Planned { .. } => {}
        Event::LockRetry {
            revision,
            attempt,
            delay,
            message,
            blockers,
        } => {
            eprintln!(
                "  {revision}: lock timeout ({message}); attempt {attempt} failed, retrying in {delay:.1?}"
            );
            for b in blockers {
                eprintln!("    blocked by {}", b.describe());
            }
        }
        Event::InvalidIndexDropped { revision, index } => {
            eprintln!(
                "  {revision}: dropped INVALID index {index} left by an earlier failed build; rebuilding"
            );
        }
        Event::RevisionDone(a) => match a.skipped_by {
            Some(cond) => eprintln!("  skipped: condition {cond} is false (recorded as applied)"),
            None => eprintln!("  done in {} ms", a.duration.as_millis()),
        },
    }
}

pub async fn migrate(
    ctx: &Context,
    direction: Direction,
    args: MigrateArgs,
) -> Result<(), Failure> {
    let app = ctx.app()?;
    let values = ctx.values(&app)?;
    let settings = ctx.config.engine.settings();
    let raw = match (&args.target, direction) {
        (Some(t), _) => t.clone(),
        (None, Direction::Upgrade) => "head".to_string(),
        (None, Direction::Downgrade) => {
            return Err(Failure::input(
                "downgrade needs a target: -1, a revision, or base",
            ));
        }
    };
    if args.sql {
        let (from, to) = match raw.split_once(':') {
            Some((f, t)) => (f.to_string(), t.to_string()),
            None if direction == Direction::Upgrade => ("base".to_string(), raw.clone()),
            None => {
                return Err(Failure::input(format!(
                    "offline downgrade needs a starting point: fleetmig downgrade --sql head:{raw}"
                )));
            }
        };
        let target: Target = to.parse().expect("infallible");
        let sql = engine::offline::render(&app, &values, &settings, direction, &from, &target)?;
        print!("{sql}");
        return Ok(());
    }
    let target: Target = raw.parse().expect("infallible");
    let policy = args
        .blockers
        .policy()?
        .unwrap_or_else(|| app.blockers.clone());
    // The gate, before anything connects: the revision files decide.
    super::lint::gate(&app, &values, direction, &target, args.allow_lint)?;
    let (mut client, db) = connect(ctx).await?;
    let what = db.what();
    let settings = db.settings(settings);
    let who = applied_by();
    let events = |e: Event| print_event(&app, e);
    let probe = Probe(&db.target);
    let opts = RunOptions {
        fence: None,
        allow_changed: args.allow_changed,
        applied_by: &who,
        events: &events,
        stop: &|| false,
        live: &|| true,
        blockers: Some(crate::engine::blockers::Diagnose {
            probe: &probe,
            policy,
        }),
    };
    eprintln!("Database {what}, app {}", app.name);
    let started = Instant::now();
    let engine = Engine::new(&app, &values, &settings);
    let run = match engine.migrate(&mut client, direction, &target, &opts).await {
        // Behind a transaction-mode pooler, a non-transactional revision needs a real session.
        Err(EngineError::NeedsSession { revision }) if db.session.is_some() => {
            eprintln!(
                "Revision {revision} is non-transactional: running through the session connection {}",
                db.session_target().describe()
            );
            let mut session = super::database::connect(db.session_target()).await?;
            let direct = settings.for_pooler(crate::pg::Pooler::None);
            Engine::new(&app, &values, &direct)
                .migrate(&mut session, direction, &target, &opts)
                .await?
        }
        other => other?,
    };
    let done = run.applied;
    let now = crate::model::version_label(&run.after, ", ");
    if done.is_empty() {
        eprintln!("Nothing to do: the database is at {now}");
    } else {
        eprintln!(
            "{} {} revision(s) in {} ms; the database is at {now}",
            if direction == Direction::Upgrade {
                "Upgraded"
            } else {
                "Downgraded"
            },
            done.len(),
            started.elapsed().as_millis()
        );
    }
    Ok(())
}

pub async fn stamp(ctx: &Context, args: StampArgs) -> Result<(), Failure> {
    let app = ctx.app()?;
    let values = ctx.values(&app)?;
    let (mut client, db) = connect(ctx).await?;
    let (what, settings) = (db.what(), db.settings(ctx.config.engine.settings()));
    let who = applied_by();
    let events = |_: Event| {};
    let opts = RunOptions {
        fence: None,
        allow_changed: false,
        applied_by: &who,
        events: &events,
        stop: &|| false,
        live: &|| true,
        blockers: None,
    };
    let rows = Engine::new(&app, &values, &settings)
        .stamp(&mut client, &args.revisions, args.purge, &opts)
        .await?;
    let now = crate::model::version_label(&rows, ", ");
    eprintln!("Stamped {what} at {now} (no migration ran)");
    Ok(())
}

/// `current`: like Alembic, each line of descent the rows stand for (a row's dependency that
/// no applied revision continues is listed too, as an "effective head"). A row this app does
/// not know is printed as such and the command exits 3 (Alembic refuses with an error).
pub async fn current(ctx: &Context, args: CurrentArgs) -> Result<(), Failure> {
    let app = ctx.app()?;
    let values = ctx.values(&app)?;
    let (client, db) = connect(ctx).await?;
    let (what, settings) = (db.what(), db.settings(ctx.config.engine.settings()));
    let engine = Engine::new(&app, &values, &settings);
    let state = engine.state(&client).await?;
    if args.verbose {
        eprintln!(
            "Database {what}, app {}, version table {}",
            app.name,
            settings.tables.version.sql()
        );
    }
    if state.rows.is_empty() {
        eprintln!("(no revision applied: the database is at base)");
    }
    let g = &app.graph;
    let rows = match plan::rows_from_db(g, &state.rows) {
        Ok(rows) => rows,
        Err(e) => {
            for row in &state.rows {
                match g.node(row.as_str()) {
                    Some(n) => println!("{}", super::show::describe_short(&app, n)),
                    None => println!("{row} (unknown to app {})", app.name),
                }
            }
            return Err(Failure::from(e));
        }
    };
    for n in plan::current(g, &rows) {
        println!("{}", super::show::describe_short(&app, n));
        if args.verbose {
            let rev = g.revision(n);
            println!("    {}\n    {}", rev.message, rev.path.display());
        }
    }
    if args.verbose {
        let applied = plan::applied(g, &rows);
        for c in engine.changed_revisions(&client, &applied).await? {
            println!(
                "WARNING: {} changed since it was applied ({})",
                c.revision, c.path
            );
        }
    }
    Ok(())
}

/// The database's version rows as revisions of `app` (for `history` with `current`).
pub async fn read_rows(ctx: &Context, app: &App) -> Result<Vec<crate::revision::Node>, Failure> {
    let values = ctx.values(app)?;
    let (client, db) = connect(ctx).await?;
    let settings = db.settings(ctx.config.engine.settings());
    let state = Engine::new(app, &values, &settings).state(&client).await?;
    Ok(plan::rows_from_db(&app.graph, &state.rows)?)
}

pub async fn fingerprint(ctx: &Context) -> Result<(), Failure> {
    let settings = ctx.config.engine.settings();
    let (client, _) = connect(ctx).await?;
    let fp = engine::fingerprint::fingerprint(&client, &settings.tables).await?;
    for line in &fp.lines {
        println!("{line}");
    }
    eprintln!("fingerprint {}", fp.hash());
    Ok(())
}

/// The database's own history table, newest last.
pub async fn applied_history(ctx: &Context) -> Result<(), Failure> {
    let settings = ctx.config.engine.settings();
    let (mut client, _) = connect(ctx).await?;
    let sql = format!(
        "SELECT id, pg_catalog.to_char(applied_at, 'YYYY-MM-DD HH24:MI:SS TZ'), direction, revision::pg_catalog.text, duration_ms, skipped, applied_by, fence_token, pg_catalog.left(COALESCE(checksum, ''), 12) FROM {} ORDER BY id",
        settings.tables.history.sql()
    );
    let failed = |e: tokio_postgres::Error| Failure {
        code: 1,
        message: format!(
            "reading the history table: {}",
            crate::engine::error::describe_pg(&e)
        ),
    };
    // Its own transaction, search_path pinned: nothing a tenant planted runs here.
    let tx = client.transaction().await.map_err(failed)?;
    tx.batch_execute("SET LOCAL search_path = pg_catalog, pg_temp")
        .await
        .map_err(failed)?;
    let rows = tx.query(&sql, &[]).await.map_err(failed)?;
    tx.commit().await.map_err(failed)?;
    for r in rows {
        let fence: Option<i64> = r.get(7);
        println!(
            "#{} {} {:9} {:32} {:>6} ms{} by {}{} checksum {}",
            r.get::<_, i64>(0),
            r.get::<_, String>(1),
            r.get::<_, String>(2),
            r.get::<_, String>(3),
            r.get::<_, i64>(4),
            if r.get::<_, bool>(5) {
                " (skipped)"
            } else {
                ""
            },
            r.get::<_, String>(6),
            fence.map(|t| format!(" fence {t}")).unwrap_or_default(),
            r.get::<_, String>(8),
        );
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct AdoptArgs {
    /// Stamp the matching revision (never stamps without an exact match).
    #[arg(long)]
    pub stamp: bool,
}

fn label(rows: &[crate::model::RevisionId]) -> String {
    crate::model::version_label(rows, ", ")
}

/// `adopt`: which revision is a database without version rows at? Compares its schema
/// fingerprint with each revision's (built on a scratch database); stamps only an exact match.
pub async fn adopt(ctx: &Context, args: AdoptArgs) -> Result<(), Failure> {
    let app = ctx.app()?;
    let values = ctx.values(&app)?;
    let (mut client, db) = connect(ctx).await?;
    let (what, settings) = (db.what(), db.settings(ctx.config.engine.settings()));
    let engine = Engine::new(&app, &values, &settings);
    let state = engine.state(&client).await?;
    if !state.rows.is_empty() {
        println!(
            "{what} is already under version control at {}: nothing to adopt",
            label(&state.rows)
        );
        return Ok(());
    }
    let live = engine::fingerprint::fingerprint(&client, &settings.tables).await?;
    // Scratch databases are made through the session connection, with a session's settings.
    let scratch = settings.for_pooler(crate::pg::Pooler::None);
    let candidates =
        engine::adopt::revision_fingerprints(&app, &values, &scratch, db.session_target()).await?;
    if let Some((rows, _)) = candidates.iter().find(|(_, fp)| *fp == live) {
        if rows.is_empty() {
            println!(
                "{what} has none of this app's schema (it matches base): run `fleetmig upgrade` instead"
            );
            return Ok(());
        }
        println!(
            "{what} matches revision {} exactly (schema fingerprint {})",
            label(rows),
            &live.hash()[..12]
        );
        if args.stamp {
            let who = applied_by();
            let events = |_: Event| {};
            let opts = RunOptions {
                fence: None,
                allow_changed: false,
                applied_by: &who,
                events: &events,
                stop: &|| false,
                live: &|| true,
                blockers: None,
            };
            let targets: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
            engine.stamp(&mut client, &targets, false, &opts).await?;
            println!("Stamped {what} at {} (no migration ran)", label(rows));
        } else {
            println!(
                "Run `fleetmig adopt --stamp` (or `fleetmig stamp {}`) to record it",
                label(rows)
            );
        }
        return Ok(());
    }
    let (rows, closest) = candidates
        .iter()
        .min_by_key(|(_, fp)| live.diff(fp).len())
        .expect("base is always a candidate");
    let diff = closest.diff(&live);
    let mut message = format!(
        "{what} matches no revision of app {}; the closest is {} ({} difference(s); - expected by the revision, + found in the database):",
        app.name,
        label(rows),
        diff.len()
    );
    for line in diff {
        message.push_str("\n  ");
        message.push_str(&line);
    }
    message.push_str("\nNothing was stamped. Bring the schema in line with a revision (or check the placeholder values), then adopt again.");
    Err(Failure { code: 3, message })
}

/// `verify`: does the live schema equal what its recorded revision(s) should produce?
pub async fn verify(ctx: &Context) -> Result<(), Failure> {
    let app = ctx.app()?;
    let values = ctx.values(&app)?;
    let (client, db) = connect(ctx).await?;
    let (what, settings) = (db.what(), db.settings(ctx.config.engine.settings()));
    let engine = Engine::new(&app, &values, &settings);
    let state = engine.state(&client).await?;
    plan::rows_from_db(&app.graph, &state.rows).map_err(EngineError::from)?;
    let live = engine::fingerprint::fingerprint(&client, &settings.tables).await?;
    let expected = engine::adopt::expected(
        &app,
        &values,
        &settings.for_pooler(crate::pg::Pooler::None),
        db.session_target(),
        &state.rows,
    )
    .await?;
    let invalid: Vec<&String> = live
        .lines
        .iter()
        .filter(|l| l.ends_with(" INVALID"))
        .collect();
    let diff = expected.diff(&live);
    if diff.is_empty() && invalid.is_empty() {
        println!(
            "{what} at {}: schema as expected (fingerprint {})",
            label(&state.rows),
            &live.hash()[..12]
        );
        return Ok(());
    }
    let mut message = format!(
        "{what} at {} has drifted ({} difference(s); - expected, + found):",
        label(&state.rows),
        diff.len()
    );
    for line in diff {
        message.push_str("\n  ");
        message.push_str(&line);
    }
    for line in invalid {
        message.push_str(&format!("\n  INVALID index: {line}"));
    }
    Err(Failure { code: 3, message })
}
