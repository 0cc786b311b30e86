//! The lint gate end to end: `fleetmig lint` and its outputs over the seeded corpus and the
//! example apps; the CLI refusing an upgrade (exit 3) unless `--allow-lint` or an explicit
//! ignore; the daemon refusing an Upgrade and a rollout with FAILED_PRECONDITION naming
//! revision, rule and line, and recording each revision's verdict when it runs one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fleetmig::grpc::proto;
use tonic::Code;

use crate::daemon_harness as dh;
use crate::harness;

fn fleetmig(migrations: &Path, url: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetmig"));
    cmd.arg("--migrations-dir")
        .arg(migrations)
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("FLEETMIG_CONFIG")
        .env_remove("FLEETMIG_APP");
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

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lint_corpus")
}

#[test]
fn lint_reports_the_corpus_for_people_and_for_ci_and_passes_the_example_apps() {
    let repo = harness::repo_migrations();
    let ok = fleetmig(&repo, None, &["lint"]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    assert!(
        text(&ok).contains("0 error(s), 0 warning(s)"),
        "{}",
        text(&ok)
    );
    let ok = fleetmig(&repo, None, &["check"]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));

    // JSON: every case revision carries the rule its message expects, as an error.
    let json = fleetmig(&corpus(), None, &["lint", "--output", "json"]);
    assert_eq!(json.status.code(), Some(3), "{}", text(&json));
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let findings = doc["findings"].as_array().unwrap();
    let cases: Vec<(String, String)> = std::fs::read_dir(corpus().join("corpus"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            let (id, rest) = name.strip_suffix(".sql")?.split_once('_')?;
            id.starts_with('c')
                .then(|| (id.to_string(), rest.to_string()))
        })
        .collect();
    assert!(cases.len() >= 15);
    for (id, rule) in &cases {
        assert!(
            findings.iter().any(|f| f["revision"] == *id
                && f["rule"] == *rule
                && f["severity"] == "error"
                && f["line"].as_u64().is_some_and(|l| l >= 5)
                && f["file"]
                    .as_str()
                    .unwrap()
                    .ends_with(&format!("{id}_{rule}.sql"))),
            "{id}: {rule} not reported"
        );
    }
    // SARIF: one result per finding, each with a region.
    let sarif = fleetmig(&corpus(), None, &["lint", "--output", "sarif"]);
    assert_eq!(sarif.status.code(), Some(3));
    let doc: serde_json::Value = serde_json::from_slice(&sarif.stdout).unwrap();
    assert_eq!(doc["version"], "2.1.0");
    let results = doc["runs"][0]["results"].as_array().unwrap();
    assert_eq!(results.len(), findings.len());
    assert!(
        results
            .iter()
            .all(|r| r["locations"][0]["physicalLocation"]["region"]["startLine"].is_u64())
    );
    // GitHub Actions: one error annotation per error finding.
    let gh = fleetmig(&corpus(), None, &["lint", "--output", "github", "c08"]);
    let out = String::from_utf8_lossy(&gh.stdout);
    assert!(
        out.lines().any(|l| l.starts_with("::error file=")
            && l.contains("title=fleetmig lint%3A renaming-column::")),
        "{out}"
    );
    // check says the same; c02 cannot even run (CONCURRENTLY in a transaction): bad input.
    let check = fleetmig(&corpus(), None, &["check"]);
    assert_eq!(check.status.code(), Some(2), "{}", text(&check));
    assert!(
        text(&check).contains("lint renaming-table"),
        "{}",
        text(&check)
    );
    assert!(
        text(&check).contains("cannot run inside a transaction"),
        "{}",
        text(&check)
    );
    // Lint errors alone are refused for safety (exit 3), not bad input.
    let check = fleetmig(&corpus(), None, &["--app", "corpus", "lint", "c08"]);
    assert_eq!(check.status.code(), Some(3), "{}", text(&check));
}

const BASE: &str = "-- revision: l1\n-- down_revision:\n-- +upgrade\nCREATE TABLE items (id bigint PRIMARY KEY, name text);\n-- +downgrade\nDROP TABLE items;\n";

fn rename(ignore: &str) -> String {
    format!(
        "-- revision: l2\n-- down_revision: l1\n{ignore}-- +upgrade\nALTER TABLE items RENAME COLUMN name TO title;\n-- +downgrade\nALTER TABLE items RENAME COLUMN title TO name;\n"
    )
}

const IGNORED: &str = "-- lint-ignore: renaming-column -- no deployed code reads items.name yet\n";

#[tokio::test]
async fn the_cli_refuses_an_upgrade_with_a_lint_error_unless_allowed_or_ignored() {
    let Some(pg) = harness::postgres() else {
        return;
    };
    let (_tmp, root) =
        harness::scratch_app("gate", "", &[("l1.sql", BASE), ("l2.sql", &rename(""))]);
    let (url, _) = pg.database("lint_cli").await;
    let refused = fleetmig(&root, Some(&url), &["upgrade"]);
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused));
    let message = text(&refused);
    assert!(message.contains("revision l2 (upgrade)"), "{message}");
    assert!(message.contains("l2.sql:4:"), "{message}");
    assert!(message.contains("renaming-column"), "{message}");
    // `check` refuses the same for safety (exit 3), not as bad input.
    let check = fleetmig(&root, None, &["check"]);
    assert_eq!(check.status.code(), Some(3), "{}", text(&check));
    assert!(
        text(&check).contains("l2.sql:4:19: lint renaming-column"),
        "{}",
        text(&check)
    );
    // Nothing was touched: not even the version table exists.
    let client = fleetmig::pg::connect_str(&url).await.unwrap();
    let exists: bool = client
        .query_one("SELECT to_regclass('alembic_version') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!exists);
    // Up to the clean revision is fine.
    let up = fleetmig(&root, Some(&url), &["upgrade", "l1"]);
    assert_eq!(up.status.code(), Some(0), "{}", text(&up));
    // --allow-lint goes ahead, saying what it lets through.
    let allowed = fleetmig(&root, Some(&url), &["upgrade", "--allow-lint"]);
    assert_eq!(allowed.status.code(), Some(0), "{}", text(&allowed));
    assert!(
        text(&allowed).contains("--allow-lint: going ahead despite 1"),
        "{}",
        text(&allowed)
    );
    // An ignore with a reason: no flag needed; the downgrade's own rename is covered too.
    std::fs::write(root.join("gate/l2.sql"), rename(IGNORED)).unwrap();
    let down = fleetmig(&root, Some(&url), &["downgrade", "-1"]);
    assert_eq!(down.status.code(), Some(0), "{}", text(&down));
    let up = fleetmig(&root, Some(&url), &["upgrade"]);
    assert_eq!(up.status.code(), Some(0), "{}", text(&up));
    // Adding the justification did not make the applied file a "changed" one.
    let cur = fleetmig(&root, Some(&url), &["current", "--verbose"]);
    assert!(!text(&cur).contains("changed since"), "{}", text(&cur));
    // Without a reason the ignore ignores nothing, and says so.
    std::fs::write(
        root.join("gate/l2.sql"),
        rename("-- lint-ignore: renaming-column\n"),
    )
    .unwrap();
    let refused = fleetmig(&root, Some(&url), &["downgrade", "-1"]);
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused));
    assert!(
        text(&refused).contains("lint-ignore-without-reason"),
        "{}",
        text(&refused)
    );
}

fn selector_all() -> Option<proto::Selector> {
    Some(proto::Selector {
        all: true,
        ..Default::default()
    })
}

#[tokio::test]
async fn the_daemon_refuses_a_lint_failing_rollout_and_runs_it_once_ignored() {
    let (Some(pg), Some(etcd)) = (harness::postgres(), harness::etcd()) else {
        return;
    };
    let (_tmp, root) =
        harness::scratch_app("gate", "", &[("l1.sql", BASE), ("l2.sql", &rename(""))]);
    let (_, db) = pg.database("lint_daemon").await;
    let prefix = etcd.prefix("lint");
    let daemon = dh::start(dh::config(&etcd.endpoint, &prefix, &root)).await;
    daemon
        .tenants()
        .await
        .register(proto::RegisterTenantRequest {
            tenant: Some(dh::tenant("gate-0", "gate", &db, &[], &[])),
        })
        .await
        .unwrap();
    let mut m = daemon.migrations().await;
    let upgrade = proto::MigrateRequest {
        app: "gate".into(),
        selector: selector_all(),
        ..Default::default()
    };
    let e = m.upgrade(upgrade.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    for part in [
        "revision l2",
        "l2.sql:4:",
        "renaming-column",
        "-- lint-ignore:",
    ] {
        assert!(e.message().contains(part), "{part}: {}", e.message());
    }
    let mut r = proto::rollouts_client::RolloutsClient::new(daemon.channel().await);
    let e = r
        .start(proto::StartRolloutRequest {
            app: "gate".into(),
            selector: selector_all(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("renaming-column"), "{e:?}");
    // Up to the clean revision runs, and records its verdict.
    let mut to_l1 = upgrade.clone();
    to_l1.target = "l1".into();
    let events = dh::collect(m.upgrade(to_l1).await.unwrap().into_inner()).await;
    assert_eq!(dh::summary(&events).done, 1, "{events:?}");
    // Nothing was applied by the refused calls: the tenant is at l1, not beyond.
    let list = r
        .list(proto::ListRolloutsRequest {
            app: "gate".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.rollouts.len(), 1, "the refused ones were never stored");
    daemon.shutdown().await.unwrap();

    // The revision's header ignores the rule with a reason: the daemon serving it runs it.
    std::fs::write(root.join("gate/l2.sql"), rename(IGNORED)).unwrap();
    let daemon = dh::start(dh::config(&etcd.endpoint, &prefix, &root)).await;
    let mut m = daemon.migrations().await;
    let events = dh::collect(m.upgrade(upgrade).await.unwrap().into_inner()).await;
    assert_eq!(dh::summary(&events).done, 1, "{events:?}");
    let id = events
        .iter()
        .find_map(|e| match &e.event {
            Some(proto::migration_event::Event::Accepted(a)) => Some(a.job_id.clone()),
            _ => None,
        })
        .unwrap();
    let mut r = proto::rollouts_client::RolloutsClient::new(daemon.channel().await);
    let doc = r
        .get(proto::GetRolloutRequest { id })
        .await
        .unwrap()
        .into_inner();
    let verdicts: Vec<(&str, &str)> = doc
        .lint
        .iter()
        .map(|v| (v.revision.as_str(), v.verdict.as_str()))
        .collect();
    assert_eq!(verdicts, vec![("l1", "clean"), ("l2", "ignored")]);
    assert_eq!(
        doc.lint[1].ignored,
        vec!["renaming-column: no deployed code reads items.name yet"]
    );
    daemon.shutdown().await.unwrap();
}
