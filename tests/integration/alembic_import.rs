//! Taking over a fleet under Alembic: a real Alembic project is migrated online by Alembic,
//! imported (graph from its version files, SQL from its offline output) into fleetmig revision
//! files, and fleetmig builds the same schema and carries on from the Alembic-managed
//! database as it is. Issue 27's defect 6: labels and depends_on survive the import, and the
//! README's recipe works on a project with several heads.

use std::path::Path;
use std::process::Command;

use crate::alembic_project::{self as ap, Sql, alembic_bin, rev, sa_url, state_of};
use crate::engine::fp;
use crate::harness;

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
    let sa_url = sa_url(&db_a);
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
            "--versions",
            "mig/versions",
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
    let alembic_current = alembic(&bin, tmp.path(), &sa_url, &["current"]);
    assert_eq!(
        ap::lines(&String::from_utf8_lossy(&current.stdout)),
        ap::lines(&alembic_current)
    );
    assert_eq!(
        String::from_utf8_lossy(&current.stdout).trim(),
        "m1 (head) (mergepoint)"
    );
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

/// The issue's graph with several heads, labels and a dependency across branches, imported
/// with the README's recipe (one downgrade file per head).
#[tokio::test]
async fn labels_and_dependencies_survive_the_import_of_a_project_with_several_heads() {
    let Some(pg) = harness::postgres() else {
        return;
    };
    let Some(bin) = alembic_bin() else { return };
    let graph = vec![
        rev("trk1", &[], &["trunk"], &[]),
        rev("trk2", &["trk1"], &[], &[]),
        rev("fea1", &["trk2"], &["feat"], &[]),
        rev("oth1", &[], &["other"], &["trk2"]),
        rev("oth2", &["oth1"], &[], &[]),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join("alembic");
    ap::write_alembic(&project, &graph, Sql::Plain);
    let migrations = tmp.path().join("migrations");
    std::fs::create_dir_all(&migrations).unwrap();
    let (db1_url, db1) = pg.database("imp_alembic_first").await;
    let (ref_url, ref_db) = pg.database("imp_reference").await;
    let run = |db: &str, args: &[&str]| {
        let out = ap::alembic(&bin, &project, &sa_url(db), args);
        assert!(out.status.success(), "alembic {args:?}: {}", ap::text(&out));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    // Alembic refuses the old recipe's `heads:base` here...
    let refused = ap::alembic(
        &bin,
        &project,
        &sa_url(&db1),
        &["downgrade", "heads:base", "--sql"],
    );
    assert!(!refused.status.success(), "{}", ap::text(&refused));
    // ...so: the upgrade SQL once, a downgrade file per head `alembic heads` lists.
    std::fs::write(
        tmp.path().join("up.sql"),
        run(&db1, &["upgrade", "base:heads", "--sql"]),
    )
    .unwrap();
    let heads = run(&db1, &["heads"]);
    let mut import: Vec<String> = [
        "import-alembic",
        "--versions",
        "alembic/mig/versions",
        "--upgrade-sql",
        "up.sql",
        "--into",
        "app",
    ]
    .map(String::from)
    .to_vec();
    for head in heads.lines().filter_map(|l| l.split_whitespace().next()) {
        let file = format!("down_{head}.sql");
        std::fs::write(
            tmp.path().join(&file),
            run(&db1, &["downgrade", &format!("{head}:base"), "--sql"]),
        )
        .unwrap();
        import.extend(["--downgrade-sql".to_string(), file]);
    }
    let args: Vec<&str> = import.iter().map(String::as_str).collect();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetmig"));
    let out = cmd
        .current_dir(tmp.path())
        .arg("--migrations-dir")
        .arg(&migrations)
        .args(&args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", ap::text(&out));
    // The imported graph is the project's graph.
    let app = fleetmig::revision::App::load(&migrations, "app").unwrap();
    for r in &graph {
        let n = app.graph.node(&r.id).unwrap();
        let rev = app.graph.revision(n);
        let ids =
            |v: &[fleetmig::model::RevisionId]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(ids(&rev.parents), r.down, "{}", r.id);
        assert_eq!(ids(&rev.depends_on), r.deps, "{}", r.id);
        assert_eq!(rev.branch_labels, r.labels, "{}", r.id);
        assert!(!rev.irreversible, "{} has its downgrade", r.id);
    }
    // Alembic took a database to oth1 (pulling the trunk in through depends_on): fleetmig
    // carries on to heads without re-running anything, and ends where Alembic would.
    run(&db1, &["upgrade", "oth1"]);
    run(&ref_db, &["upgrade", "heads"]);
    let up = ap::fleetmig(&migrations, Some(&db1_url), &["upgrade", "heads"]);
    assert!(up.status.success(), "{}", ap::text(&up));
    assert_eq!(state_of(&db1_url).await, state_of(&ref_url).await);
    // Labels resolve: `other@head` from scratch, as Alembic does it.
    let (db2_url, _) = pg.database("imp_label").await;
    let (ref2_url, ref2_db) = pg.database("imp_label_ref").await;
    run(&ref2_db, &["upgrade", "other@head"]);
    let up = ap::fleetmig(&migrations, Some(&db2_url), &["upgrade", "other@head"]);
    assert!(up.status.success(), "{}", ap::text(&up));
    assert_eq!(state_of(&db2_url).await, state_of(&ref2_url).await);
    // Offline, fleetmig goes down from several heads (Alembic refused `heads:base` above).
    let offline = ap::fleetmig(&migrations, None, &["downgrade", "--sql", "heads:base"]);
    assert!(offline.status.success(), "{}", ap::text(&offline));
    let sql = String::from_utf8_lossy(&offline.stdout);
    assert!(
        sql.contains("DROP TABLE t_oth2") && sql.contains("DROP TABLE t_fea1"),
        "{sql}"
    );
    // The imported downgrades undo everything.
    let down = ap::fleetmig(&migrations, Some(&db1_url), &["downgrade", "base"]);
    assert!(down.status.success(), "{}", ap::text(&down));
    let left = state_of(&db1_url).await;
    assert!(left.rows.is_empty() && left.tables.is_empty(), "{left:?}");
}

#[test]
fn a_project_without_version_files_is_refused_with_the_field_named() {
    let tmp = tempfile::tempdir().unwrap();
    let versions = tmp.path().join("versions");
    std::fs::create_dir_all(&versions).unwrap();
    std::fs::create_dir_all(tmp.path().join("migrations")).unwrap();
    std::fs::write(
        versions.join("a1.py"),
        "revision = 'a1'\ndown_revision = compute()\n",
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("up.sql"),
        "-- Running upgrade  -> a1\nSELECT 1;\n",
    )
    .unwrap();
    let out = fleetmig(
        tmp.path(),
        None,
        &[
            "import-alembic",
            "--versions",
            "versions",
            "--upgrade-sql",
            "up.sql",
            "--into",
            "x",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("a1.py:2: down_revision must be a string"),
        "{err}"
    );
    assert!(!tmp.path().join("migrations/x").exists());
}
