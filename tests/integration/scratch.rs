//! `verify` and `adopt` replay an app on a scratch database: a failure there names the
//! scratch database (not the user's), and an app declares what its scratch databases need
//! first, a template database or a prelude file, since real histories assume objects made
//! outside their migrations.

use std::path::Path;
use std::process::{Command, Output};

use crate::harness;

const R1: &str = "-- revision: l1\n-- down_revision:\n-- +upgrade\nCREATE TABLE notes (id int PRIMARY KEY);\n-- +downgrade\nDROP TABLE notes;\n";
/// Line 4 needs a table no revision creates.
const R2: &str = "-- revision: l2\n-- down_revision: l1\n-- +upgrade\nCREATE TABLE orders (id int PRIMARY KEY, user_id int REFERENCES legacy_users (id));\n-- +downgrade\nDROP TABLE orders;\n";
const LEGACY: &str = "CREATE TABLE legacy_users (id int PRIMARY KEY);";

fn fleetmig(root: &Path, url: &str, args: &[&str]) -> (Option<i32>, String) {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_fleetmig"))
        .current_dir(root)
        .arg("--migrations-dir")
        .arg(root)
        .args(args)
        .env("DATABASE_URL", url)
        .env_remove("FLEETMIG_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn verify_names_the_scratch_database_and_uses_the_apps_prelude_or_template() {
    let Some(pg) = harness::postgres() else {
        return;
    };
    let (_tmp, root) = harness::scratch_app("legacy", "", &[("l1.sql", R1), ("l2.sql", R2)]);
    let manifest = root.join("legacy/fleetmig.toml");
    let (url, _) = pg.database("legacy_user_db").await;
    let user_db = fleetmig::pg::connect_str(&url).await.unwrap();
    user_db.batch_execute(LEGACY).await.unwrap();
    let (code, out) = fleetmig(&root, &url, &["upgrade", "head"]);
    assert_eq!(code, Some(0), "{out}");

    // Nothing declared: the replay fails on the scratch database, and says so.
    let (code, out) = fleetmig(&root, &url, &["verify"]);
    assert_eq!(code, Some(1), "{out}");
    for part in [
        "on the scratch database fleetmig_scratch_",
        "created from template1",
        "your database was not changed",
        "l2.sql:4",
        "legacy_users",
        "rolled back with it (the same transaction): l1",
        "[scratch] template = ",
        "prelude = ",
    ] {
        assert!(out.contains(part), "{part:?} in {out}");
    }
    assert!(!out.contains("the database is left at"), "{out}");
    let (code, out) = fleetmig(&root, &url, &["adopt"]);
    assert_eq!(code, Some(0), "already under version control: {out}");

    // A prelude makes what the history assumes.
    std::fs::write(root.join("legacy/prelude.sql"), format!("{LEGACY}\n")).unwrap();
    std::fs::write(&manifest, "[scratch]\nprelude = \"prelude.sql\"\n").unwrap();
    let (code, out) = fleetmig(&root, &url, &["verify"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("schema as expected"), "{out}");

    // A broken prelude is reported with its own file:line, on the scratch database.
    std::fs::write(
        root.join("legacy/prelude.sql"),
        format!("{LEGACY}\nCREATE TABEL oops (x int);\n"),
    )
    .unwrap();
    let (code, out) = fleetmig(&root, &url, &["verify"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("prelude.sql:2: ERROR 42601"), "{out}");
    assert!(
        out.contains("on the scratch database fleetmig_scratch_"),
        "{out}"
    );

    // Or a template database that has it; adopt uses it too. (An undeclared .sql file in the
    // app directory would be a revision.)
    std::fs::remove_file(root.join("legacy/prelude.sql")).unwrap();
    let (_, template) = pg.database("legacy_template").await;
    let tpl = fleetmig::pg::connect_str(&pg.url(&template)).await.unwrap();
    tpl.batch_execute(LEGACY).await.unwrap();
    drop(tpl);
    // A template must have no other session when it is copied.
    for _ in 0..100 {
        let n: i64 = user_db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                &[&template],
            )
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    std::fs::write(&manifest, format!("[scratch]\ntemplate = \"{template}\"\n")).unwrap();
    let (code, out) = fleetmig(&root, &url, &["verify"]);
    assert_eq!(code, Some(0), "{out}");
    let (hand_built, _) = pg.database("legacy_by_hand").await;
    let db = fleetmig::pg::connect_str(&hand_built).await.unwrap();
    db.batch_execute(&format!(
        "{LEGACY} CREATE TABLE notes (id int PRIMARY KEY); CREATE TABLE orders (id int PRIMARY KEY, user_id int REFERENCES legacy_users (id));"
    ))
    .await
    .unwrap();
    let (code, out) = fleetmig(&root, &hand_built, &["adopt"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("matches revision l2 exactly"), "{out}");

    // A template that does not exist is named, on the scratch database's account.
    std::fs::write(&manifest, "[scratch]\ntemplate = \"no_such_template\"\n").unwrap();
    let (code, out) = fleetmig(&root, &url, &["verify"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("created from no_such_template") && out.contains("does not exist"),
        "{out}"
    );
    // A prelude outside the app directory is refused at load.
    std::fs::write(&manifest, "[scratch]\nprelude = \"../prelude.sql\"\n").unwrap();
    let (code, out) = fleetmig(&root, &url, &["verify"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("scratch.prelude"), "{out}");
}
