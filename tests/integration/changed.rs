//! A revision file changed after it was applied is reported and refused (exit 3, or the
//! tenant failed / FAILED_PRECONDITION) unless --allow-changed, also when the database is at
//! head and there is nothing left to apply: in the CLI, and in the daemon's Upgrade and Plan.

use std::process::Command;

use fleetmig::grpc::proto::{self, migration_event::Event, tenant_event::Kind};
use tonic::Code;

use crate::daemon_harness as dh;
use crate::harness;

const R1: &str = "-- revision: c1\n-- down_revision:\n-- +upgrade\nCREATE TABLE items (id int);\n-- +downgrade\nDROP TABLE items;\n";
/// The same SQL with a comment added: another checksum.
const R1_EDITED: &str = "-- revision: c1\n-- down_revision:\n-- +upgrade\n-- an afterthought\nCREATE TABLE items (id int);\n-- +downgrade\nDROP TABLE items;\n";

#[tokio::test]
async fn upgrade_head_at_head_refuses_a_changed_applied_file_in_the_cli() {
    let Some(pg) = harness::postgres() else {
        return;
    };
    let (tmp, root) = harness::scratch_app("edited", "", &[("c1.sql", R1)]);
    let (url, _) = pg.database("changed_cli").await;
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_fleetmig"))
            .current_dir(tmp.path())
            .arg("--migrations-dir")
            .arg(&root)
            .args(args)
            .env("DATABASE_URL", &url)
            .env_remove("FLEETMIG_CONFIG")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    assert_eq!(run(&["upgrade", "head"]).0, Some(0));
    std::fs::write(root.join("edited/c1.sql"), R1_EDITED).unwrap();
    let (code, stderr) = run(&["upgrade", "head"]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("c1 (") && stderr.contains("changed since they were applied"),
        "{stderr}"
    );
    assert!(stderr.contains("--allow-changed"), "{stderr}");
    assert!(!stderr.contains("Nothing to do"), "{stderr}");
    let (code, stderr) = run(&["upgrade", "head", "--allow-changed"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("Nothing to do"), "{stderr}");
}

fn failure(events: &[proto::MigrationEvent]) -> Option<String> {
    events.iter().find_map(|e| match &e.event {
        Some(Event::Tenant(t)) => match &t.kind {
            Some(Kind::Failed(f)) => Some(f.message.clone()),
            _ => None,
        },
        _ => None,
    })
}

#[tokio::test]
async fn the_daemon_refuses_a_changed_applied_file_at_head_in_upgrade_and_plan() {
    let (Some(pg), Some(etcd)) = (harness::postgres(), harness::etcd()) else {
        return;
    };
    let (_tmp, root) = harness::scratch_app("edited", "", &[("c1.sql", R1)]);
    let (_, db) = pg.database("changed_daemon").await;
    let prefix = etcd.prefix("changed");
    let daemon = dh::start(dh::config(&etcd.endpoint, &prefix, &root)).await;
    daemon
        .tenants()
        .await
        .register(proto::RegisterTenantRequest {
            tenant: Some(dh::tenant("edited-0", "edited", &db, &[], &[])),
        })
        .await
        .unwrap();
    let upgrade = |allow_changed: bool| proto::MigrateRequest {
        app: "edited".into(),
        selector: Some(proto::Selector {
            all: true,
            ..Default::default()
        }),
        allow_changed,
        ..Default::default()
    };
    let mut m = daemon.migrations().await;
    let events = dh::collect(m.upgrade(upgrade(false)).await.unwrap().into_inner()).await;
    assert_eq!(dh::summary(&events).done, 1, "{events:?}");
    daemon.shutdown().await.unwrap();

    // The file changes; a daemon serving the new file finds the database at head.
    std::fs::write(root.join("edited/c1.sql"), R1_EDITED).unwrap();
    let daemon = dh::start(dh::config(&etcd.endpoint, &prefix, &root)).await;
    let mut m = daemon.migrations().await;
    let events = dh::collect(m.upgrade(upgrade(false)).await.unwrap().into_inner()).await;
    assert_eq!(dh::summary(&events).failed, 1, "{events:?}");
    let message = failure(&events).unwrap();
    assert!(
        message.contains("c1 (") && message.contains("--allow-changed"),
        "{message}"
    );
    let plan = |allow_changed| proto::PlanRequest {
        tenant_id: "edited-0".into(),
        allow_changed,
        ..Default::default()
    };
    let e = m.plan(plan(false)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("changed since they were applied"),
        "{e:?}"
    );
    // A dry run says the same.
    let mut dry = upgrade(false);
    dry.dry_run = true;
    let events = dh::collect(m.upgrade(dry).await.unwrap().into_inner()).await;
    assert!(
        failure(&events).is_some_and(|f| f.contains("--allow-changed")),
        "{events:?}"
    );
    // Allowed: nothing to do, and the plan is empty.
    let p = m.plan(plan(true)).await.unwrap().into_inner();
    assert!(p.revisions.is_empty(), "{p:?}");
    let events = dh::collect(m.upgrade(upgrade(true)).await.unwrap().into_inner()).await;
    assert_eq!(dh::summary(&events).up_to_date, 1, "{events:?}");
    daemon.shutdown().await.unwrap();
}
