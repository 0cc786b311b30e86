//! The database of local commands: `DATABASE_URL` (a libpq URL or `key=value` string, from
//! the environment or `.env`) with the libpq environment variables (`PGHOST`, `PGSSLMODE`,
//! `PGPASSWORD`, ...) for what it leaves out, as psql would read them; and, behind a
//! transaction-mode pooler, the session connection for what needs a real session.

use clap::Args;
use tokio_postgres::Client;

use super::Failure;
use crate::engine::Settings;
use crate::pg::conninfo::{ConnInfo, KEYWORDS};
use crate::pg::{Defaults, Pooler, Target};

#[derive(Debug, Clone, Args)]
pub struct PoolerArgs {
    /// How DATABASE_URL reaches the server: none (directly), session or transaction (a
    /// transaction-mode pooler such as PgBouncer: no session state is kept between transactions).
    #[arg(long, global = true, env = "FLEETMIG_POOLER", default_value = "none", value_parser = ["none", "session", "transaction"])]
    pub pooler: String,
    /// With --pooler transaction: a connection string to the same database directly (or
    /// through a session-mode pool), for non-transactional revisions and scratch databases.
    #[arg(long, global = true, env = "FLEETMIG_SESSION_URL")]
    pub session_url: Option<String>,
}

/// Where local commands connect.
pub struct Database {
    pub target: Target,
    pub pooler: Pooler,
    /// The session connection (behind a transaction-mode pooler), if one was named.
    pub session: Option<Target>,
}

fn env(var: &str) -> Option<String> {
    std::env::var(var).ok()
}

/// Is a database named at all (DATABASE_URL, or PGHOST/PGHOSTADDR/PGDATABASE)?
pub fn is_configured() -> bool {
    ["DATABASE_URL", "PGHOST", "PGHOSTADDR", "PGDATABASE"]
        .iter()
        .any(|v| env(v).is_some_and(|s| !s.is_empty()))
}

/// A libpq connection string plus the environment, as a target (`what` names it in errors).
fn target(what: &str, s: Option<&str>) -> Result<Target, Failure> {
    let info = match s {
        Some(s) => ConnInfo::parse(s).map_err(|e| Failure::input(format!("{what}: {e}")))?,
        None => ConnInfo::default(),
    };
    let mut info = info.with_env(&env);
    if info.get("application_name").is_none() {
        info.set(
            "fallback_application_name",
            "fleetmig",
            crate::pg::conninfo::Source::Default,
        );
    }
    Target::new(&info, &Defaults::from_environment())
        .map_err(|e| Failure::input(format!("{what}: {e}")))
}

impl Database {
    /// From the environment: DATABASE_URL and the `PG*` variables, with `args`.
    pub fn from_env(args: &PoolerArgs) -> Result<Database, Failure> {
        if !is_configured() {
            return Err(Failure::input(format!(
                "DATABASE_URL is not set: export it or put DATABASE_URL=postgres://user@host:5432/db in .env (libpq's {} variables fill in what it leaves out)",
                KEYWORDS
                    .iter()
                    .filter_map(|(_, v)| *v)
                    .take(6)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let url = env("DATABASE_URL").filter(|u| !u.is_empty());
        let pooler = Pooler::parse(&args.pooler).expect("clap checked the value");
        let session = match (&args.session_url, pooler) {
            (Some(s), Pooler::Transaction) => Some(target("--session-url", Some(s))?),
            (Some(_), _) => {
                return Err(Failure::input(
                    "--session-url is only used with --pooler transaction",
                ));
            }
            (None, _) => None,
        };
        Ok(Database {
            target: target("DATABASE_URL", url.as_deref())?,
            pooler,
            session,
        })
    }

    /// `host:port/db`: never a password.
    pub fn what(&self) -> String {
        self.target.describe()
    }

    /// The engine's settings for this connection.
    pub fn settings(&self, base: Settings) -> Settings {
        base.for_pooler(self.pooler)
    }

    pub async fn connect(&self) -> Result<Client, Failure> {
        connect(&self.target).await
    }

    /// A connection with a real session (scratch databases, non-transactional revisions):
    /// the session connection behind a transaction-mode pooler, else the main one.
    pub fn session_target(&self) -> &Target {
        self.session.as_ref().unwrap_or(&self.target)
    }
}

pub async fn connect(target: &Target) -> Result<Client, Failure> {
    Ok(target
        .connect()
        .await
        .map_err(|e| Failure {
            code: 1,
            message: e.to_string(),
        })?
        .into_client())
}
