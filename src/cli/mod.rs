//! The command line: argument parsing, configuration loading, exit codes. Local commands
//! work on one database (`DATABASE_URL` from the environment or `.env`), like Alembic.
//!
//! Exit codes: 0 success; 1 a revision or the database failed; 2 bad input (arguments,
//! configuration, revision files, placeholders); 3 refused for safety (changed files,
//! several heads, another migration running, unknown revision in the database, an
//! error-level lint finding).

mod authoring;
mod client;
mod connect;
mod database;
mod import;
mod lint;
mod local;
mod policy;
mod rollout;
mod show;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError};
use crate::engine::EngineError;
use crate::revision::placeholder::PlaceholderError;
use crate::revision::plan::PlanError;
use crate::revision::{App, LoadError, Resolved};

#[derive(Debug, Parser)]
#[command(
    name = "fleetmig",
    version,
    about = "Alembic-style schema revisions for fleets of PostgreSQL databases"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Configuration file (default: ./fleetmig.toml if present).
    #[arg(long, global = true, env = "FLEETMIG_CONFIG")]
    pub config: Option<PathBuf>,
    /// The app (migration graph) under the migrations directory.
    #[arg(long, short = 'a', global = true)]
    pub app: Option<String>,
    /// Directory with one sub-directory per app.
    #[arg(long, global = true)]
    pub migrations_dir: Option<PathBuf>,
    /// Placeholder value, NAME=VALUE (repeatable); wins over the environment and defaults.
    #[arg(short = 'x', long = "set", global = true, value_name = "NAME=VALUE")]
    pub set: Vec<String>,
    /// Logs as JSON lines (to stderr).
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(flatten)]
    pub database: database::PoolerArgs,
}

#[derive(Debug, Subcommand)]
// Parsed once per process: the size of its largest variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Create a new revision file from the template, parented on the current head.
    Revision(authoring::RevisionArgs),
    /// Create a merge revision joining several heads.
    Merge(authoring::MergeArgs),
    /// Upgrade to a target: head (default), heads, a revision, label@head, +N, REV+N...
    Upgrade(local::MigrateArgs),
    /// Downgrade to a target: -N, a revision, label@-N, label@base, base...
    Downgrade(local::MigrateArgs),
    /// Set the version table to revision(s) without running any migration.
    Stamp(local::StampArgs),
    /// Show the revision(s) the database is at.
    Current(local::CurrentArgs),
    /// Show the revision graph (or, with --applied, what the database's history records).
    History(show::HistoryArgs),
    /// Show the current head revision(s) of the graph.
    Heads(show::HeadsArgs),
    /// Check the graph, every revision's SQL with the resolved placeholders, squawk's lint
    /// rules, and (with a database) that applied revisions' files are unchanged.
    Check,
    /// Lint revisions with squawk's rules, as fleetmig runs them (in a transaction or not),
    /// with the app's [lint] config and each revision's `-- lint-ignore:` headers. Exit 3 on
    /// an error-level finding.
    Lint(lint::LintArgs),
    /// Print the database's schema fingerprint (from pg_catalog).
    Fingerprint,
    /// Find the revision a database without version rows is at (by schema fingerprint), and
    /// stamp it with --stamp. Never stamps without an exact match.
    Adopt(local::AdoptArgs),
    /// Compare the live schema with what its recorded revision should produce (drift).
    Verify,
    /// Turn an Alembic project (version files + offline SQL) into revision files with the same
    /// ids, parents, branch labels and dependencies.
    ImportAlembic(import::ImportArgs),
    /// Run the daemon: gRPC API, tenant registry and locks in etcd, parallel migrations.
    Serve(ServeArgs),
    /// Manage the daemon's tenant registry.
    Tenants {
        #[command(subcommand)]
        command: client::TenantsCommand,
        #[command(flatten)]
        connect: client::Connect,
    },
    /// Migrate and inspect the fleet through the daemon.
    Fleet {
        #[command(subcommand)]
        command: client::FleetCommand,
        #[command(flatten)]
        connect: client::Connect,
    },
    /// Fleet-wide rollouts in waves, persisted by the daemons: start, watch, pause, resume,
    /// cancel, retry.
    Rollout {
        #[command(subcommand)]
        command: rollout::RolloutCommand,
        #[command(flatten)]
        connect: client::Connect,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// gRPC listen address (server.listen).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// etcd endpoint (repeatable; etcd.endpoints).
    #[arg(long = "etcd")]
    pub etcd: Vec<String>,
    /// Key prefix in etcd (etcd.prefix).
    #[arg(long)]
    pub etcd_prefix: Option<String>,
}

/// Values given as flags, as a partial config layered over file and environment.
fn flag_layer(global: &Global, command: &Command) -> serde_json::Value {
    let mut layer = serde_json::Map::new();
    if let Some(app) = &global.app {
        layer.insert("app".into(), app.clone().into());
    }
    if let Some(dir) = &global.migrations_dir {
        layer.insert("migrations_dir".into(), dir.display().to_string().into());
    }
    if let Command::Serve(s) = command {
        if let Some(listen) = s.listen {
            layer.insert(
                "server".into(),
                serde_json::json!({ "listen": listen.to_string() }),
            );
        }
        let mut etcd = serde_json::Map::new();
        if !s.etcd.is_empty() {
            etcd.insert("endpoints".into(), s.etcd.clone().into());
        }
        if let Some(p) = &s.etcd_prefix {
            etcd.insert("prefix".into(), p.clone().into());
        }
        if !etcd.is_empty() {
            layer.insert("etcd".into(), etcd.into());
        }
    }
    serde_json::Value::Object(layer)
}

/// A failure with its exit code; the message is printed as is.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn input(message: impl ToString) -> Failure {
        Failure {
            code: 2,
            message: message.to_string(),
        }
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::input(e)
    }
}

impl From<LoadError> for Failure {
    fn from(e: LoadError) -> Self {
        Failure::input(e)
    }
}

impl From<PlaceholderError> for Failure {
    fn from(e: PlaceholderError) -> Self {
        Failure::input(e)
    }
}

/// The exit code of an engine error.
fn engine_code(e: &EngineError) -> u8 {
    match e {
        EngineError::Plan(p) => plan_code(p),
        EngineError::ChecksumMismatch(_)
        | EngineError::NeedsSession { .. }
        | EngineError::LockHeld
        | EngineError::StaleFence { .. } => 3,
        EngineError::Render(_) | EngineError::Setting { .. } => 2,
        EngineError::Connect(_)
        | EngineError::Database { .. }
        | EngineError::StepFailed { .. }
        | EngineError::StateChanged(_)
        | EngineError::Stopped { .. }
        | EngineError::LeaseExpired
        | EngineError::Prelude { .. } => 1,
        EngineError::Scratch { source, .. } => engine_code(source),
    }
}

/// Exit 3 when the command is refused for safety (several heads for `head`, a version table
/// with unknown or overlapping rows, rows Alembic could not maintain, an irreversible
/// revision); exit 2 when the target names nothing, or nothing from the current rows.
fn plan_code(e: &PlanError) -> u8 {
    use crate::revision::resolve::ResolveError as R;
    match e {
        PlanError::Resolve(R::MultipleHeads { .. })
        | PlanError::UnknownInDatabase(_)
        | PlanError::OverlappingRows { .. }
        | PlanError::Rows(_)
        | PlanError::Irreversible { .. } => 3,
        PlanError::Resolve(
            R::NotFound { .. }
            | R::NoSuchBranch(_)
            | R::Ambiguous { .. }
            | R::NotInBranch { .. }
            | R::Overlap { .. }
            | R::Revision(_)
            | R::NoRevision(_),
        )
        | PlanError::BadRange(_)
        | PlanError::NotAncestor { .. }
        | PlanError::NotValidTarget { .. }
        | PlanError::AmbiguousFromHeads { .. } => 2,
    }
}

impl From<PlanError> for Failure {
    fn from(e: PlanError) -> Self {
        Failure {
            code: plan_code(&e),
            message: e.to_string(),
        }
    }
}

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Self {
        Failure {
            code: engine_code(&e),
            message: e.to_string(),
        }
    }
}

/// Everything a command needs: config, app, placeholder values.
pub struct Context {
    pub config: Config,
    pub explicit: BTreeMap<String, String>,
    /// How local commands reach DATABASE_URL (pooler, session connection).
    pub database: database::PoolerArgs,
}

impl Context {
    fn new(global: &Global, command: &Command) -> Result<Context, Failure> {
        let config = Config::load(
            global.config.as_deref(),
            Config::env(),
            flag_layer(global, command),
        )?;
        let mut explicit = BTreeMap::new();
        for kv in &global.set {
            let Some((k, v)) = kv.split_once('=') else {
                return Err(Failure::input(format!("-x {kv:?}: expected NAME=VALUE")));
            };
            explicit.insert(k.trim().to_string(), v.to_string());
        }
        Ok(Context {
            config,
            explicit,
            database: global.database.clone(),
        })
    }

    /// The app named by --app / config, or the only app there is.
    pub fn app_name(&self) -> Result<String, Failure> {
        if let Some(app) = &self.config.app {
            return Ok(app.clone());
        }
        let apps = App::list(&self.config.migrations_dir);
        match apps.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(Failure::input(format!(
                "no apps under {}: create migrations/<app>/ or pass --migrations-dir",
                self.config.migrations_dir.display()
            ))),
            many => Err(Failure::input(format!(
                "several apps under {} ({}): pick one with --app",
                self.config.migrations_dir.display(),
                many.join(", ")
            ))),
        }
    }

    pub fn app(&self) -> Result<App, Failure> {
        Ok(App::load(&self.config.migrations_dir, &self.app_name()?)?)
    }

    /// Placeholder values: defaults < environment (and .env) < -x.
    pub fn values(&self, app: &App) -> Result<Resolved, Failure> {
        Ok(app
            .declarations
            .resolve(&|name| std::env::var(name).ok(), &self.explicit)?)
    }
}

/// Who applies, as recorded in history: user@host pid.
pub fn applied_by() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!(
        "{user}@{} pid {} (fleetmig {})",
        gethostname::gethostname().to_string_lossy(),
        std::process::id(),
        env!("CARGO_PKG_VERSION")
    )
}

pub async fn run(cli: Cli) -> ExitCode {
    let result = dispatch(cli).await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("FAILED: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

async fn dispatch(cli: Cli) -> Result<(), Failure> {
    // .env fills the environment (never overriding what is set) before anything reads it.
    let _ = dotenvy::dotenv();
    if !matches!(cli.command, Command::Serve(_)) {
        crate::telemetry::init_logs(cli.global.log_json, "warn");
    }
    // Client commands need no local configuration.
    match cli.command {
        Command::Tenants { command, connect } => return client::tenants(&connect, command).await,
        Command::Fleet { command, connect } => return client::fleet(&connect, command).await,
        Command::Rollout { command, connect } => return rollout::run(&connect, command).await,
        _ => {}
    }
    let ctx = Context::new(&cli.global, &cli.command)?;
    match cli.command {
        Command::Revision(args) => authoring::revision(&ctx, args),
        Command::Merge(args) => authoring::merge(&ctx, args),
        Command::History(args) => show::history(&ctx, args).await,
        Command::Heads(args) => show::heads(&ctx, args),
        Command::Check => authoring::check(&ctx).await,
        Command::Lint(args) => lint::run(&ctx, args),
        Command::Upgrade(args) => {
            local::migrate(&ctx, crate::model::Direction::Upgrade, args).await
        }
        Command::Downgrade(args) => {
            local::migrate(&ctx, crate::model::Direction::Downgrade, args).await
        }
        Command::Stamp(args) => local::stamp(&ctx, args).await,
        Command::Current(args) => local::current(&ctx, args).await,
        Command::Fingerprint => local::fingerprint(&ctx).await,
        Command::ImportAlembic(args) => import::import_alembic(&ctx, args),
        Command::Adopt(args) => local::adopt(&ctx, args).await,
        Command::Verify => local::verify(&ctx).await,
        Command::Serve(_) => serve(ctx.config, cli.global.log_json).await,
        Command::Tenants { .. } | Command::Fleet { .. } | Command::Rollout { .. } => {
            unreachable!("handled above")
        }
    }
}

/// `fleetmig serve`: telemetry first (it owns logging), then the daemon, then a bounded flush.
async fn serve(config: Config, log_json: bool) -> Result<(), Failure> {
    let telemetry = crate::telemetry::Telemetry::init(&config.telemetry, log_json)
        .map_err(|e| Failure::input(format!("telemetry: {e:#}")))?;
    let flush = config.telemetry.export_timeout + std::time::Duration::from_secs(1);
    let result = crate::app::serve(config).await;
    telemetry.shutdown(flush).await;
    result.map_err(|e| Failure {
        // Bad input (configuration, revision files) is 2, as for every other command.
        code: if e.downcast_ref::<LoadError>().is_some()
            || e.downcast_ref::<ConfigError>().is_some()
        {
            2
        } else {
            1
        },
        message: format!("{e:#}"),
    })
}
