//! Taking over a fleet under Alembic: a real Alembic project (with a branch and a merge) is
//! migrated online by Alembic, its offline SQL imported into fleetmig revision files, and
//! fleetmig builds the same schema, and recognises the Alembic-managed database as is.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::engine::fp;
use crate::harness;

fn alembic_bin() -> Option<PathBuf> {
    let candidates = [
        std::env::var("FLEETMIG_ALEMBIC").ok().map(PathBuf::from),
        Some(PathBuf::from("/opt/fleetmig-tools/bin/alembic")),
    ];
    let found = candidates.into_iter().flatten().find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var("CI").is_err(),
            "alembic is required under CI=true (make setup installs it)"
        );
        eprintln!("SKIP: alembic not installed (make setup)");
    }
    found
}

const ENV_PY: &str = r#"import os
from alembic import context
from sqlalchemy import create_engine, pool

url = os.environ["ALEMBIC_URL"]
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

fn version(id: &str, down: &str, upgrade: &str, downgrade: &str) -> String {
    format!(
        "from alembic import op\nimport sqlalchemy as sa\n\nrevision = {id:?}\ndown_revision = {down}\nbranch_labels = None\ndepends_on = None\n\n\ndef upgrade():\n    {upgrade}\n\n\ndef downgrade():\n    {downgrade}\n"
    )
}

fn project(dir: &Path) {
    std::fs::create_dir_all(dir.join("mig/versions")).unwrap();
    std::fs::write(
        dir.join("alembic.ini"),
        "[alembic]\nscript_location = %(here)s/mig\n",
    )
    .unwrap();
    std::fs::write(dir.join("mig/env.py"), ENV_PY).unwrap();
    let files = [
        (
            "a1",
            "None",
            "op.create_table('account', sa.Column('id', sa.Integer, primary_key=True), sa.Column('name', sa.String(50), nullable=False))",
            "op.drop_table('account')",
        ),
        (
            "b1",
            "'a1'",
            "op.add_column('account', sa.Column('note', sa.Text, server_default='x;y'))",
            "op.drop_column('account', 'note')",
        ),
        (
            "c1",
            "'a1'",
            "op.create_index('ix_account_name', 'account', ['name'])",
            "op.drop_index('ix_account_name', table_name='account')",
        ),
        ("m1", "('b1', 'c1')", "pass", "pass"),
    ];
    for (id, down, up, dn) in files {
        std::fs::write(
            dir.join(format!("mig/versions/{id}.py")),
            version(id, down, up, dn),
        )
        .unwrap();
    }
}

fn alembic(bin: &Path, dir: &Path, url: &str, args: &[&str]) -> String {
    let out = Command::new(bin)
        .current_dir(dir)
        .args(args)
        .env("ALEMBIC_URL", url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "alembic {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn fleetmig(dir: &Path, url: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetmig"));
    cmd.current_dir(dir).args(args).env_remove("DATABASE_URL");
    if let Some(u) = url {
        cmd.env("DATABASE_URL", u);
    }
    cmd.output().unwrap()
}

#[tokio::test]
async fn an_alembic_project_is_imported_and_builds_the_same_schema() {
    let Some(pg) = harness::postgres() else {
        return;
    };
    let Some(bin) = alembic_bin() else { return };
    let tmp = tempfile::tempdir().unwrap();
    project(tmp.path());
    let (by_alembic, db_a) = pg.database("alembic_online").await;
    let (by_fleetmig, _) = pg.database("alembic_imported").await;
    let sa_url = format!(
        "postgresql+psycopg2://postgres@127.0.0.1:{}/{db_a}",
        pg.port
    );
    alembic(&bin, tmp.path(), &sa_url, &["upgrade", "heads"]);
    let up = alembic(
        &bin,
        tmp.path(),
        &sa_url,
        &["upgrade", "base:heads", "--sql"],
    );
    let down = alembic(
        &bin,
        tmp.path(),
        &sa_url,
        &["downgrade", "heads:base", "--sql"],
    );
    assert!(
        up.contains("-- Running upgrade a1 -> b1") || up.contains("-- Running upgrade a1 -> c1"),
        "{up}"
    );
    std::fs::write(tmp.path().join("up.sql"), &up).unwrap();
    std::fs::write(tmp.path().join("down.sql"), &down).unwrap();
    std::fs::create_dir_all(tmp.path().join("migrations")).unwrap();

    let import = fleetmig(
        tmp.path(),
        None,
        &[
            "import-alembic",
            "--upgrade-sql",
            "up.sql",
            "--downgrade-sql",
            "down.sql",
            "--into",
            "imported",
        ],
    );
    assert!(
        import.status.success(),
        "{}",
        String::from_utf8_lossy(&import.stderr)
    );
    assert!(
        String::from_utf8_lossy(&import.stdout).contains("heads: m1"),
        "{}",
        String::from_utf8_lossy(&import.stdout)
    );
    let up = fleetmig(
        tmp.path(),
        Some(&by_fleetmig),
        // The imported project builds an index on an existing table (the lint gate would
        // refuse it): this test is about the schema it builds.
        &["--app", "imported", "upgrade", "head", "--allow-lint"],
    );
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );

    let (a, b) = (
        fleetmig::pg::connect_str(&by_alembic).await.unwrap(),
        fleetmig::pg::connect_str(&by_fleetmig).await.unwrap(),
    );
    let (fa, fb) = (fp(&a).await, fp(&b).await);
    assert!(
        fa.lines.iter().any(|l| l.contains("ix_account_name")),
        "{:?}",
        fa.lines
    );
    assert_eq!(fa, fb, "{:?}", fa.diff(&fb));
    // The Alembic-managed database is taken over as it is: fleetmig reads Alembic's table.
    let current = fleetmig(
        tmp.path(),
        Some(&by_alembic),
        &["--app", "imported", "current"],
    );
    assert_eq!(String::from_utf8_lossy(&current.stdout).trim(), "m1 (head)");
    // And the imported downgrades work.
    let down = fleetmig(
        tmp.path(),
        Some(&by_fleetmig),
        &["--app", "imported", "downgrade", "base", "--allow-lint"],
    );
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    let left: i64 = b
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename = 'account'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}
