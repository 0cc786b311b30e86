//! One revision graph written twice, as an Alembic project and as a fleetmig app, with the
//! same ids, parents, labels, dependencies and SQL; running the Alembic CLI and the fleetmig CLI
//! on it; reading a database's version rows and tables; and reading `heads`/`current`/`history`
//! output by meaning (revision, markers, labels). Shared by the Alembic parity, property,
//! import and daemon tests.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::harness;

/// The Alembic the suite runs against (`make setup` installs 1.16.5), or None (skipped
/// locally, a failure under CI=true).
pub fn alembic_bin() -> Option<PathBuf> {
    let candidates = [
        std::env::var("FLEETMIG_ALEMBIC").ok().map(PathBuf::from),
        Some(PathBuf::from("/opt/fleetmig-tools/bin/alembic")),
    ];
    let found = candidates.into_iter().flatten().find(|p| p.exists());
    if found.is_none() {
        harness::missing(
            "alembic",
            "no FLEETMIG_ALEMBIC and no /opt/fleetmig-tools/bin/alembic".into(),
        )?;
    }
    found
}

/// One revision of a graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rev {
    pub id: String,
    pub down: Vec<String>,
    pub labels: Vec<String>,
    pub deps: Vec<String>,
}

/// `id <- down` with `labels` and `deps`, from `"id: down1 down2 | labels | deps"`-free args.
pub fn rev(id: &str, down: &[&str], labels: &[&str], deps: &[&str]) -> Rev {
    let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect();
    Rev {
        id: id.into(),
        down: v(down),
        labels: v(labels),
        deps: v(deps),
    }
}

/// How each revision's SQL is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sql {
    /// `CREATE TABLE t_<id>` / `DROP TABLE t_<id>`: re-running one fails.
    Plain,
    /// `IF NOT EXISTS` / `IF EXISTS`: never fails, so stamps can desync rows and tables safely.
    Idempotent,
}

fn up_sql(id: &str, sql: Sql) -> String {
    match sql {
        Sql::Plain => format!("CREATE TABLE t_{id} (id int)"),
        Sql::Idempotent => format!("CREATE TABLE IF NOT EXISTS t_{id} (id int)"),
    }
}

fn down_sql(id: &str, sql: Sql) -> String {
    match sql {
        Sql::Plain => format!("DROP TABLE t_{id}"),
        Sql::Idempotent => format!("DROP TABLE IF EXISTS t_{id}"),
    }
}

const ENV_PY: &str = r#"import os
from alembic import context
from sqlalchemy import create_engine, pool

url = os.environ.get("ALEMBIC_URL") or context.config.get_main_option("sqlalchemy.url")
if context.is_offline_mode():
    context.configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
"#;

const SCRIPT_MAKO: &str = r#""""${message}"""
from alembic import op

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on = ${repr(depends_on)}


def upgrade():
    pass


def downgrade():
    pass
"#;

/// Python for a list field: None, 'x' or ('x', 'y').
fn py(v: &[String]) -> String {
    match v {
        [] => "None".into(),
        [one] => format!("{one:?}"),
        many => format!(
            "({})",
            many.iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// An Alembic project in `dir` (alembic.ini, env.py, script.py.mako, versions/<id>.py).
pub fn write_alembic(dir: &Path, revs: &[Rev], sql: Sql) -> PathBuf {
    let versions = dir.join("mig/versions");
    std::fs::create_dir_all(&versions).unwrap();
    let ini = dir.join("alembic.ini");
    std::fs::write(&ini, "[alembic]\nscript_location = %(here)s/mig\n").unwrap();
    std::fs::write(dir.join("mig/env.py"), ENV_PY).unwrap();
    std::fs::write(dir.join("mig/script.py.mako"), SCRIPT_MAKO).unwrap();
    for r in revs {
        std::fs::write(
            versions.join(format!("{}.py", r.id)),
            format!(
                "\"\"\"rev {id}\"\"\"\nfrom alembic import op\n\nrevision = {id:?}\ndown_revision = {}\nbranch_labels = {}\ndepends_on = {}\n\n\ndef upgrade():\n    op.execute({:?})\n\n\ndef downgrade():\n    op.execute({:?})\n",
                py(&r.down),
                py(&r.labels),
                py(&r.deps),
                up_sql(&r.id, sql),
                down_sql(&r.id, sql),
                id = r.id,
            ),
        )
        .unwrap();
    }
    ini
}

/// The same graph as fleetmig app `app` under `dir` (the migrations directory).
pub fn write_fleetmig(dir: &Path, revs: &[Rev], sql: Sql) {
    let app = dir.join("app");
    std::fs::create_dir_all(&app).unwrap();
    for r in revs {
        let mut text = format!(
            "-- revision: {}\n-- down_revision: {}\n",
            r.id,
            r.down.join(", ")
        );
        if !r.labels.is_empty() {
            text.push_str(&format!("-- branch_labels: {}\n", r.labels.join(", ")));
        }
        if !r.deps.is_empty() {
            text.push_str(&format!("-- depends_on: {}\n", r.deps.join(", ")));
        }
        text.push_str(&format!(
            "-- message: rev {}\n\n-- +upgrade\n{};\n\n-- +downgrade\n{};\n",
            r.id,
            up_sql(&r.id, sql),
            down_sql(&r.id, sql)
        ));
        std::fs::write(app.join(format!("{}.sql", r.id)), text).unwrap();
    }
}

/// The SQLAlchemy URL of a harness database.
pub fn sa_url(db: &str) -> String {
    let pg = harness::postgres().expect("postgres");
    format!("postgresql+psycopg2://postgres@127.0.0.1:{}/{db}", pg.port)
}

/// `alembic -c <project>/alembic.ini ARGS` against `url` (a SQLAlchemy URL).
pub fn alembic(bin: &Path, project: &Path, url: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .arg("-c")
        .arg(project.join("alembic.ini"))
        .args(args)
        .env("ALEMBIC_URL", url)
        .env("PYTHONHASHSEED", "0")
        .output()
        .unwrap()
}

/// `fleetmig --migrations-dir <dir> --app app ARGS` with DATABASE_URL `url`.
pub fn fleetmig(migrations: &Path, url: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetmig"));
    cmd.arg("--migrations-dir")
        .arg(migrations)
        .args(["--app", "app"])
        .args(args)
        .current_dir(migrations)
        .env_remove("DATABASE_URL")
        .env_remove("FLEETMIG_CONFIG");
    if let Some(u) = url {
        cmd.env("DATABASE_URL", u);
    }
    cmd.output().unwrap()
}

pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A database's `alembic_version` rows and its `t_*` tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub rows: BTreeSet<String>,
    pub tables: BTreeSet<String>,
}

pub async fn state(client: &tokio_postgres::Client) -> State {
    let has_version: bool = client
        .query_one(
            "SELECT to_regclass('public.alembic_version') IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let rows = if has_version {
        client
            .query("SELECT version_num::text FROM public.alembic_version", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    } else {
        BTreeSet::new()
    };
    let tables = client
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 't\\_%'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    State { rows, tables }
}

pub async fn state_of(url: &str) -> State {
    state(&fleetmig::pg::connect_str(url).await.unwrap()).await
}

/// One line of `heads`, `current` or `history`, by meaning.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Line {
    pub id: String,
    pub parents: Vec<String>,
    pub markers: BTreeSet<String>,
    pub labels: BTreeSet<String>,
}

const MARKERS: [&str; 5] = [
    "head",
    "effective head",
    "current",
    "branchpoint",
    "mergepoint",
];

/// Alembic's `_head_only` lines: `[DOWN [(DEPS)] -> ]ID[ (labels)][ (marker)...][, doc]`.
/// Log lines (`INFO  [...]`) and fleetmig's indented verbose details are skipped.
pub fn lines(out: &str) -> Vec<Line> {
    out.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("INFO") && !l.starts_with(' '))
        .map(|l| {
            let (parents, rest) = match l.split_once(" -> ") {
                Some((down, rest)) => {
                    let down = down.split(" (").next().unwrap_or_default();
                    let parents = if down == "<base>" {
                        vec![]
                    } else {
                        down.split(", ").map(str::to_string).collect()
                    };
                    (parents, rest)
                }
                None => (vec![], l),
            };
            let id_end = rest.find([' ', ',']).unwrap_or(rest.len());
            let mut line = Line {
                id: rest[..id_end].to_string(),
                parents,
                markers: BTreeSet::new(),
                labels: BTreeSet::new(),
            };
            let mut tail = &rest[id_end..];
            while let Some(open) = tail.strip_prefix(" (") {
                let close = open.find(')').unwrap_or(open.len());
                let inside = &open[..close];
                if MARKERS.contains(&inside) {
                    line.markers.insert(inside.to_string());
                } else {
                    line.labels.extend(inside.split(", ").map(str::to_string));
                }
                tail = &open[(close + 1).min(open.len())..];
            }
            line
        })
        .collect()
}
