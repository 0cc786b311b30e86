//! Adoption and drift: a database built outside fleetmig is recognised by its schema
//! fingerprint and stamped only on an exact match; drift is reported with its differences.

use std::path::Path;
use std::process::{Command, Output};

use fleetmig::model::Direction;
use fleetmig::revision::App;

use crate::engine::values;
use crate::harness;

fn fleetmig(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleetmig"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["--app", "aletheia"])
        .args(args)
        .env("DATABASE_URL", url)
        .env_remove("EMBEDDING_DIM")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Apply revisions' SQL by hand, as `create_all` or a person would: no version table.
async fn by_hand(url: &str, ids: &[&str], extra: &str) {
    let app = App::load(Path::new(&harness::repo_migrations()), "aletheia").unwrap();
    let vals = values(&app, &[]);
    let client = fleetmig::pg::connect_str(url).await.unwrap();
    for id in ids {
        let rev = app.graph.revision(app.graph.node(id).unwrap());
        for s in fleetmig::revision::render::render(rev, Direction::Upgrade, &vals, None)
            .unwrap()
            .statements
        {
            client.batch_execute(&s.sql).await.unwrap();
        }
    }
    if !extra.is_empty() {
        client.batch_execute(extra).await.unwrap();
    }
}

#[tokio::test]
async fn a_hand_built_database_is_recognised_and_stamped() {
    let Some(pg) = harness::postgres() else {
        return;
    };
    let (url, _) = pg.database("adopt_exact").await;
    by_hand(&url, &["0001", "0002"], "").await;
    let found = fleetmig(&url, &["adopt"]);
    assert!(found.status.success(), "{}", text(&found));
    assert!(
        text(&found).contains("matches revision 0002 exactly"),
        "{}",
        text(&found)
    );
    let current = fleetmig(&url, &["current"]);
    assert!(
        String::from_utf8_lossy(&current.stdout).trim().is_empty(),
        "adopt without --stamp stamps nothing"
    );
    let stamped = fleetmig(&url, &["adopt", "--stamp"]);
    assert!(stamped.status.success(), "{}", text(&stamped));
    assert_eq!(
        String::from_utf8_lossy(&fleetmig(&url, &["current"]).stdout).trim(),
        "0002"
    );
    let up = fleetmig(&url, &["upgrade"]);
    assert!(up.status.success(), "{}", text(&up));
    let verify = fleetmig(&url, &["verify"]);
    assert!(verify.status.success(), "{}", text(&verify));
}

#[tokio::test]
async fn a_modified_database_is_reported_with_its_differences() {
    let Some(pg) = harness::postgres() else {
        return;
    };
    let (url, _) = pg.database("adopt_modified").await;
    by_hand(
        &url,
        &["0001", "0002"],
        "ALTER TABLE memory_shards ADD COLUMN legacy_flag boolean",
    )
    .await;
    let refused = fleetmig(&url, &["adopt", "--stamp"]);
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused));
    let out = text(&refused);
    assert!(
        out.contains("matches no revision") && out.contains("closest is 0002"),
        "{out}"
    );
    assert!(
        out.contains("+ column public.memory_shards") && out.contains("legacy_flag boolean"),
        "{out}"
    );
    assert!(out.contains("Nothing was stamped"), "{out}");
    assert!(
        String::from_utf8_lossy(&fleetmig(&url, &["current"]).stdout)
            .trim()
            .is_empty()
    );
}

#[tokio::test]
async fn verify_reports_drift() {
    let Some(pg) = harness::postgres() else {
        return;
    };
    let (url, _) = pg.database("verify_drift").await;
    assert!(fleetmig(&url, &["upgrade"]).status.success());
    fleetmig::pg::connect_str(&url)
        .await
        .unwrap()
        .batch_execute("ALTER TABLE memory_links ADD COLUMN added_by_hand text")
        .await
        .unwrap();
    let drift = fleetmig(&url, &["verify"]);
    assert_eq!(drift.status.code(), Some(3), "{}", text(&drift));
    assert!(
        text(&drift).contains("has drifted") && text(&drift).contains("added_by_hand"),
        "{}",
        text(&drift)
    );
}
