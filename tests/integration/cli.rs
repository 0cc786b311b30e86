//! The `fleetmig` binary as a developer uses it: DATABASE_URL, exit codes, messages,
//! offline SQL applied with psql, adoption of a database built outside fleetmig.

use std::path::Path;
use std::process::{Command, Output};

use crate::engine::fp;
use crate::harness;

fn fleetmig(dir: &Path, url: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetmig"));
    cmd.current_dir(dir).args(args).env_remove("DATABASE_URL");
    for name in [
        "EMBEDDING_DIM",
        "PGVECTOR_IVFFLAT_LISTS",
        "PGVECTOR_ENABLE_IVFFLAT",
        "FLEETMIG_APP",
    ] {
        cmd.env_remove(name);
    }
    if let Some(url) = url {
        cmd.env("DATABASE_URL", url);
    }
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn offline_sql_applied_with_psql_equals_online_upgrade() {
    let Some(pg) = harness::postgres() else {
        return;
    };
    for app in ["aletheia", "truthgraph"] {
        let (online, _) = pg.database(&format!("online_{app}")).await;
        let (offline, _) = pg.database(&format!("offline_{app}")).await;
        let up = fleetmig(repo(), Some(&online), &["--app", app, "upgrade", "head"]);
        assert!(up.status.success(), "{}", text(&up));
        let sql = fleetmig(repo(), None, &["--app", app, "upgrade", "--sql"]);
        assert!(sql.status.success(), "{}", text(&sql));
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &sql.stdout).unwrap();
        let (ok, err) = pg.psql_file(&offline, file.path());
        assert!(ok, "psql -f failed: {err}");
        let (a, b) = (
            fleetmig::pg::connect_str(&online).await.unwrap(),
            fleetmig::pg::connect_str(&offline).await.unwrap(),
        );
        let (fa, fb) = (fp(&a).await, fp(&b).await);
        assert_eq!(fa, fb, "{app}: {:?}", fa.diff(&fb));
        // fleetmig sees the offline-built database at head, and the version tables agree.
        let cur = fleetmig(repo(), Some(&offline), &["--app", app, "current"]);
        assert!(
            String::from_utf8_lossy(&cur.stdout).contains("(head)"),
            "{}",
            text(&cur)
        );
        // Offline downgrade needs its starting point, and is also runnable.
        let no_start = fleetmig(repo(), None, &["--app", app, "downgrade", "--sql", "base"]);
        assert_eq!(no_start.status.code(), Some(2), "{}", text(&no_start));
        let down = fleetmig(
            repo(),
            None,
            &["--app", app, "downgrade", "--sql", "head:base"],
        );
        std::fs::write(file.path(), &down.stdout).unwrap();
        let (ok, err) = pg.psql_file(&offline, file.path());
        assert!(ok, "psql -f downgrade failed: {err}");
        let rows: i64 = b
            .query_one("SELECT count(*) FROM alembic_version", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows, 0);
    }
}

#[tokio::test]
async fn a_database_built_outside_fleetmig_points_to_stamp() {
    let Some(pg) = harness::postgres() else {
        return;
    };
    let (url, _) = pg.database("duplicatetable").await;
    // The tables exist (create_all, by hand, lost Alembic state), but no version table.
    let sql = fleetmig(
        repo(),
        None,
        &["--app", "aletheia", "upgrade", "--sql", "0001"],
    );
    let client = fleetmig::pg::connect_str(&url).await.unwrap();
    let ddl: String = String::from_utf8_lossy(&sql.stdout)
        .split("-- Running upgrade")
        .nth(1)
        .unwrap()
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("INSERT INTO \"public\".\"alembic_version\""))
        .collect::<Vec<_>>()
        .join("\n");
    client
        .batch_execute(&format!("{ddl}\nCOMMIT;"))
        .await
        .unwrap();
    let up = fleetmig(repo(), Some(&url), &["--app", "aletheia", "upgrade"]);
    assert_eq!(up.status.code(), Some(1), "{}", text(&up));
    let out = text(&up);
    assert!(
        out.contains("42P07") && out.contains("fleetmig stamp"),
        "{out}"
    );
    let stamp = fleetmig(repo(), Some(&url), &["--app", "aletheia", "stamp", "0001"]);
    assert!(stamp.status.success(), "{}", text(&stamp));
    let up = fleetmig(repo(), Some(&url), &["--app", "aletheia", "upgrade"]);
    assert!(up.status.success(), "{}", text(&up));
    let cur = fleetmig(repo(), Some(&url), &["--app", "aletheia", "current"]);
    assert_eq!(String::from_utf8_lossy(&cur.stdout).trim(), "0003 (head)");
    let hist = fleetmig(
        repo(),
        Some(&url),
        &["--app", "aletheia", "history", "--applied"],
    );
    let hist = String::from_utf8_lossy(&hist.stdout).to_string();
    assert!(
        hist.contains("stamp") && hist.contains("0002") && hist.contains("0003"),
        "{hist}"
    );
}

#[tokio::test]
async fn authoring_commands_manage_heads() {
    let Some(pg) = harness::postgres() else {
        return;
    };
    let (url, _) = pg.database("authoring").await;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("migrations/app")).unwrap();
    let run = |args: &[&str]| fleetmig(tmp.path(), Some(&url), args);
    let first = run(&["revision", "-m", "create things", "--rev-id", "a1"]);
    assert!(first.status.success(), "{}", text(&first));
    assert!(
        tmp.path()
            .join("migrations/app/a1_create_things.sql")
            .exists()
    );
    assert!(
        run(&["revision", "-m", "left", "--rev-id", "b1"])
            .status
            .success()
    );
    // a1 is no head any more: branching from it needs --splice, as in Alembic.
    let refused = run(&["revision", "-m", "right", "--rev-id", "c1", "--head", "a1"]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(text(&refused).contains("--splice"), "{}", text(&refused));
    let right = run(&[
        "revision", "-m", "right", "--rev-id", "c1", "--head", "a1", "--splice",
    ]);
    assert!(right.status.success(), "{}", text(&right));
    // Two heads now: a new revision or `upgrade head` refuses, naming merge.
    let refused = run(&["upgrade", "head"]);
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused));
    assert!(text(&refused).contains("Multiple head revisions") && text(&refused).contains("merge"));
    let heads = run(&["heads"]);
    assert_eq!(
        String::from_utf8_lossy(&heads.stdout),
        "b1 (head)\nc1 (head)\n"
    );
    let both = run(&["upgrade", "heads"]);
    assert!(both.status.success(), "{}", text(&both));
    let merged = run(&["merge", "-m", "join", "heads", "--rev-id", "m1"]);
    assert!(merged.status.success(), "{}", text(&merged));
    let up = run(&["upgrade"]);
    assert!(up.status.success(), "{}", text(&up));
    assert_eq!(
        String::from_utf8_lossy(&run(&["current"]).stdout).trim(),
        "m1 (head) (mergepoint)",
        "as Alembic prints it"
    );
    let history = String::from_utf8_lossy(&run(&["history"]).stdout).to_string();
    assert!(
        history.starts_with("b1, c1 -> m1 (head) (mergepoint), join"),
        "{history}"
    );
    assert!(
        history.contains("a1 -> b1, left") && history.contains("(branchpoint)"),
        "{history}"
    );
    let check = run(&["check"]);
    assert!(check.status.success(), "{}", text(&check));
    // Prefixes only match ids of four characters or more (Alembic's rule): "a" is no a1.
    let short = run(&["downgrade", "a"]);
    assert_eq!(short.status.code(), Some(2), "{}", text(&short));
    assert!(
        text(&short).contains("at least four characters"),
        "{}",
        text(&short)
    );
    let down = run(&["downgrade", "a1"]);
    assert!(down.status.success(), "{}", text(&down));
    let unknown = run(&["downgrade", "zz"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(text(&unknown).contains("Can't locate revision identified by 'zz'"));
}

#[test]
fn bad_input_gets_a_clear_message_and_exit_code() {
    let tmp = tempfile::tempdir().unwrap();
    let app = tmp.path().join("migrations/app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("fleetmig.toml"),
        "[placeholders.DIM]\ntype = \"int\"\ndefault = 3\n",
    )
    .unwrap();
    std::fs::write(
        app.join("0001_a.sql"),
        "-- revision: 0001\n-- down_revision:\n-- +upgrade\nCREATE TABLE a (\n  e vector(${DIM}),\n  f text DEFAULT ${NOPE}\n);\n-- +downgrade\nDROP TABLE a;\n",
    )
    .unwrap();
    let check = fleetmig(tmp.path(), None, &["check"]);
    assert_eq!(check.status.code(), Some(2));
    assert!(
        text(&check).contains("0001_a.sql:6: placeholder NOPE is not declared"),
        "{}",
        text(&check)
    );
    let bad = fleetmig(tmp.path(), None, &["-x", "DIM=abc", "upgrade", "--sql"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        text(&bad).contains("placeholder DIM: expected int, got \"abc\""),
        "{}",
        text(&bad)
    );
    let no_url = fleetmig(tmp.path(), None, &["current"]);
    assert_eq!(no_url.status.code(), Some(2));
    assert!(
        text(&no_url).contains("DATABASE_URL is not set"),
        "{}",
        text(&no_url)
    );
    std::fs::write(
        app.join("0002_b.sql"),
        "-- revision: 0002\n-- down_revision: 0009\n-- +upgrade\n-- +downgrade\n",
    )
    .unwrap();
    let unknown = fleetmig(tmp.path(), None, &["heads"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        text(&unknown).contains("0002_b.sql: Can't locate revision identified by '0009'"),
        "{}",
        text(&unknown)
    );
    // .env supplies DATABASE_URL like the environment would (a closed port: connection error, exit 1).
    std::fs::remove_file(app.join("0002_b.sql")).unwrap();
    std::fs::write(
        tmp.path().join(".env"),
        format!(
            "DATABASE_URL=postgres://postgres@127.0.0.1:{}/x\n",
            harness::free_port()
        ),
    )
    .unwrap();
    let from_env_file = fleetmig(tmp.path(), None, &["current"]);
    assert_eq!(
        from_env_file.status.code(),
        Some(1),
        "{}",
        text(&from_env_file)
    );
    assert!(
        text(&from_env_file).contains("could not connect"),
        "{}",
        text(&from_env_file)
    );
}
