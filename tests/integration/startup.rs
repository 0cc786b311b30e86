//! `fleetmig serve` refuses a broken app before it touches etcd or any tenant: every revision
//! of every app is checked at start, as `fleetmig check` does, and bad input exits with 2.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness;

const GOOD: &str = "-- revision: s1\n-- down_revision:\n-- +upgrade\nCREATE TABLE items (id int);\n-- +downgrade\nDROP TABLE items;\n";
/// Line 5 opens a dollar quote that never closes.
const UNTERMINATED: &str = "-- revision: s2\n-- down_revision: s1\n-- +upgrade\nSELECT 1;\nDO $$ BEGIN PERFORM 1;\n-- +downgrade\nSELECT 1;\n";
/// Line 4 uses a placeholder the app does not declare.
const UNDECLARED: &str = "-- revision: u1\n-- down_revision:\n-- +upgrade\nCREATE TABLE t (x vector(${NOPE}));\n-- +downgrade\nDROP TABLE t;\n";

/// Run `fleetmig serve`; a daemon still running after 15 s is killed (code None).
fn serve(migrations: &std::path::Path, etcd: &str, prefix: &str) -> (Option<i32>, String) {
    let stderr = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleetmig"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--etcd",
            etcd,
            "--etcd-prefix",
            prefix,
        ])
        .arg("--migrations-dir")
        .arg(migrations)
        .env("FLEETMIG_SERVER__PLAINTEXT", "true")
        .env("FLEETMIG_AUTH__MODE", "none")
        .env_remove("FLEETMIG_CONFIG")
        .current_dir(migrations)
        .stdout(std::process::Stdio::null())
        .stderr(stderr.reopen().unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (code, std::fs::read_to_string(stderr.path()).unwrap())
}

#[tokio::test]
async fn a_broken_revision_stops_serve_with_file_line_and_exit_2_before_any_tenant() {
    let (Some(pg), Some(etcd)) = (harness::postgres(), harness::etcd()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    for (app, files) in [
        ("shop", vec![("s1.sql", GOOD), ("s2.sql", UNTERMINATED)]),
        ("other", vec![("u1.sql", UNDECLARED)]),
    ] {
        let dir = tmp.path().join(app);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }
    let (url, _) = pg.database("broken_at_start").await;
    let prefix = etcd.prefix("broken");
    let started = Instant::now();
    let (code, stderr) = serve(tmp.path(), &etcd.endpoint, &prefix);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10));
    for expected in [
        format!(
            "{}:5: unterminated dollar-quoted string",
            tmp.path().join("shop/s2.sql").display()
        ),
        format!(
            "{}:4: placeholder NOPE is not declared",
            tmp.path().join("other/u1.sql").display()
        ),
    ] {
        assert!(stderr.contains(&expected), "{expected} in {stderr}");
    }
    // Nothing started: no lease, no key under the prefix, the tenant database untouched.
    let mut client = etcd.client().await;
    let keys = client
        .get(
            prefix.as_str(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(keys.kvs().len(), 0);
    let db = fleetmig::pg::connect_str(&url).await.unwrap();
    let tables: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = 'public'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 0);

    // The same apps without their broken revisions start (and stop on SIGTERM).
    std::fs::remove_file(tmp.path().join("shop/s2.sql")).unwrap();
    std::fs::remove_dir_all(tmp.path().join("other")).unwrap();
    let mut daemon =
        crate::daemon_harness::Process::start(&etcd.endpoint, &prefix, tmp.path(), &[]);
    assert!(daemon.terminate().success(), "{}", daemon.logs());
}

#[tokio::test]
async fn a_bad_configuration_at_serve_exits_2() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("shop")).unwrap();
    std::fs::write(tmp.path().join("shop/s1.sql"), GOOD).unwrap();
    // TLS asked for (plaintext not set) but not configured.
    let out = Command::new(env!("CARGO_BIN_EXE_fleetmig"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--etcd",
            "http://127.0.0.1:1",
        ])
        .arg("--migrations-dir")
        .arg(tmp.path())
        .env_remove("FLEETMIG_SERVER__PLAINTEXT")
        .env_remove("FLEETMIG_CONFIG")
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("server.tls"), "{stderr}");
}

#[tokio::test]
async fn a_bad_lint_or_blockers_section_stops_serve_with_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    for (app, manifest) in [
        (
            "shop",
            "[lint]\nexclude = [\"require-concurent-index-creation\"]\n",
        ),
        (
            "other",
            "[blockers]\naction = \"cancel\"\nidle_in_transaction_after = \"30s\"\n",
        ),
    ] {
        let dir = tmp.path().join(app);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("s1.sql"), GOOD).unwrap();
        std::fs::write(dir.join("fleetmig.toml"), manifest).unwrap();
    }
    // Apps are checked before etcd is dialled: none is needed.
    let (code, stderr) = serve(tmp.path(), "http://127.0.0.1:1", "/x/");
    assert_eq!(code, Some(2), "{stderr}");
    for expected in [
        format!(
            "{}: [lint] exclude: unknown rule \"require-concurent-index-creation\"",
            tmp.path().join("shop/fleetmig.toml").display()
        ),
        format!(
            "{}: [blockers] action = \"cancel\" cannot end a session idle in transaction",
            tmp.path().join("other/fleetmig.toml").display()
        ),
    ] {
        assert!(stderr.contains(&expected), "{expected} in {stderr}");
    }
}
