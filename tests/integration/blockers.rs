//! Who blocks a migration, against real PostgreSQL: a second session holds a lock the
//! revision needs. The stream's lock-retry events name it (pid, application_name, its query
//! without literals), the tenant's failure says whom it waited behind, the rollout document
//! keeps it; with a cancel policy the blocker is cancelled (and audited) and the revision
//! succeeds; the CLI prints the same and terminates an idle-in-transaction blocker when told.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use fleetmig::grpc::proto::{self, migration_event::Event, tenant_event::Kind};
use tokio_postgres::Client;

use crate::daemon_harness as dh;
use crate::harness;

const B1: &str = "-- revision: b1\n-- down_revision:\n-- +upgrade\nCREATE TABLE busy (id bigint PRIMARY KEY, x bigint);\n-- +downgrade\nDROP TABLE busy;\n";
const B2: &str = "-- revision: b2\n-- down_revision: b1\n-- +upgrade\nALTER TABLE busy ADD COLUMN note text;\n-- +downgrade\nALTER TABLE busy DROP COLUMN note;\n";

/// A session of the application: `application_name` set, its pid.
async fn session(url: &str, app: &str) -> (Client, i32) {
    let sep = if url.contains('?') { '&' } else { '?' };
    let c = fleetmig::pg::connect_str(&format!("{url}{sep}application_name={app}"))
        .await
        .unwrap();
    let pid: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    (c, pid)
}

fn lock_retries(events: &[proto::MigrationEvent]) -> Vec<proto::LockRetry> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Some(Event::Tenant(t)) => match &t.kind {
                Some(Kind::LockRetry(r)) => Some(r.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn failed(events: &[proto::MigrationEvent]) -> Option<String> {
    events.iter().find_map(|e| match &e.event {
        Some(Event::Tenant(t)) => match &t.kind {
            Some(Kind::Failed(f)) => Some(f.message.clone()),
            _ => None,
        },
        _ => None,
    })
}

fn job_id(events: &[proto::MigrationEvent]) -> String {
    events
        .iter()
        .find_map(|e| match &e.event {
            Some(Event::Accepted(a)) => Some(a.job_id.clone()),
            _ => None,
        })
        .unwrap()
}

#[tokio::test]
async fn the_daemon_names_the_blocker_fails_behind_it_or_cancels_it_by_policy() {
    let (Some(pg), Some(etcd)) = (harness::postgres(), harness::etcd()) else {
        return;
    };
    let (_tmp, root) = harness::scratch_app("blocked", "", &[("b1.sql", B1), ("b2.sql", B2)]);
    let (url, db) = pg.database("blockers_daemon").await;
    let prefix = etcd.prefix("blockers");
    let mut config = dh::config(&etcd.endpoint, &prefix, &root);
    config.engine.lock_timeout = Duration::from_millis(300);
    config.engine.lock_retries = 2;
    config.engine.retry_min_delay = Duration::from_millis(50);
    config.engine.retry_max_delay = Duration::from_millis(100);
    let daemon = dh::start(config).await;
    daemon
        .tenants()
        .await
        .register(proto::RegisterTenantRequest {
            tenant: Some(dh::tenant("blocked-0", "blocked", &db, &[], &[])),
        })
        .await
        .unwrap();
    let mut m = daemon.migrations().await;
    let request = |target: &str, blockers: Option<proto::BlockerPolicy>| proto::MigrateRequest {
        app: "blocked".into(),
        target: target.into(),
        selector: Some(proto::Selector {
            all: true,
            ..Default::default()
        }),
        blockers,
        ..Default::default()
    };
    let events = dh::collect(m.upgrade(request("b1", None)).await.unwrap().into_inner()).await;
    assert_eq!(dh::summary(&events).done, 1, "{events:?}");

    // The application reads in a transaction it leaves open: its lock stays.
    let (app, pid) = session(&url, "api-server").await;
    app.batch_execute("BEGIN; SELECT count(*) FROM busy WHERE x = 4711")
        .await
        .unwrap();
    let events = dh::collect(m.upgrade(request("head", None)).await.unwrap().into_inner()).await;
    assert_eq!(dh::summary(&events).failed, 1, "{events:?}");
    let retries = lock_retries(&events);
    assert_eq!(retries.len(), 2, "{events:?}");
    for r in &retries {
        let b = r
            .blockers
            .iter()
            .find(|b| b.pid == pid)
            .unwrap_or_else(|| panic!("pid {pid} not named: {r:?}"));
        assert_eq!(b.application_name, "api-server");
        assert_eq!(b.user, "postgres");
        assert_eq!(b.state, "idle in transaction");
        // The whole query string the application sent, literals out.
        assert_eq!(b.query, "BEGIN; SELECT count(*) FROM busy WHERE x = $1");
        assert!(b.wants.starts_with("AccessExclusiveLock on "), "{b:?}");
        assert_eq!(b.holds, "AccessShareLock");
        assert!(b.action.is_empty(), "report only by default: {b:?}");
        assert!(r.message.contains("lock timeout"), "{r:?}");
    }
    let message = failed(&events).unwrap();
    assert!(
        message.contains(&format!(
            "waited 3 x 300 ms behind pid {pid} (app api-server, user postgres, from 127.0.0.1, idle in transaction for "
        )),
        "{message}"
    );
    assert!(!message.contains("4711"), "no literal leaves: {message}");
    // The rollout document's record of the tenant keeps who blocked it.
    let mut r = proto::rollouts_client::RolloutsClient::new(daemon.channel().await);
    let doc = r
        .get(proto::GetRolloutRequest {
            id: job_id(&events),
        })
        .await
        .unwrap()
        .into_inner();
    let t = &doc.tenants[0];
    assert_eq!(t.lock_retries, 2, "{t:?}");
    assert!(
        t.blocked_by
            .iter()
            .any(|b| b.starts_with(&format!("pid {pid} (app api-server"))),
        "{t:?}"
    );
    app.batch_execute("COMMIT").await.unwrap();

    // A long query holds the lock; the rollout's policy cancels blockers older than 1 s.
    let (app, pid) = session(&url, "report-job").await;
    let running = tokio::spawn(async move {
        app.batch_execute("BEGIN; LOCK TABLE busy IN ACCESS SHARE MODE; SELECT pg_sleep(30)")
            .await
    });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let started = Instant::now();
    let policy = proto::BlockerPolicy {
        action: "cancel".into(),
        older_than_seconds: 1,
        ..Default::default()
    };
    let events = dh::collect(
        m.upgrade(request("head", Some(policy)))
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    assert_eq!(dh::summary(&events).done, 1, "{events:?}");
    let cancelled = lock_retries(&events)
        .into_iter()
        .flat_map(|r| r.blockers)
        .find(|b| b.pid == pid)
        .unwrap_or_else(|| panic!("{events:?}"));
    assert!(
        cancelled
            .action
            .starts_with("cancelled by fleetmig: transaction open "),
        "{cancelled:?}"
    );
    let e = tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("57014"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // The audit trail has it (written in the background): who asked, which tenant and
    // revision, what was done.
    let mut etcd_client = etcd.client().await;
    let is_end = |r: &fleetmig::audit::AuditRecord| r.action == "end blocking session";
    let records = harness::audit_until(&mut etcd_client, &prefix, |r| r.iter().any(is_end)).await;
    let ended = records
        .iter()
        .find(|r| is_end(r))
        .cloned()
        .unwrap_or_else(|| panic!("{records:?}"));
    assert_eq!(ended.tenant.as_deref(), Some("blocked-0"));
    assert_eq!(ended.revision.as_deref(), Some("b2"));
    assert!(
        ended
            .outcome
            .contains(&format!("pid {pid} (app report-job")),
        "{ended:?}"
    );
    daemon.shutdown().await.unwrap();
}

fn fleetmig(root: &Path, url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleetmig"))
        .arg("--migrations-dir")
        .arg(root)
        .args(args)
        .env("DATABASE_URL", url)
        .env("FLEETMIG_ENGINE__LOCK_TIMEOUT", "300ms")
        .env("FLEETMIG_ENGINE__LOCK_RETRIES", "2")
        .env("FLEETMIG_ENGINE__RETRY_MIN_DELAY", "50ms")
        .env("FLEETMIG_ENGINE__RETRY_MAX_DELAY", "100ms")
        .env_remove("FLEETMIG_CONFIG")
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

#[tokio::test]
async fn the_cli_prints_the_blocker_and_terminates_it_when_told() {
    let Some(pg) = harness::postgres() else {
        return;
    };
    let (_tmp, root) = harness::scratch_app("blocked", "", &[("b1.sql", B1), ("b2.sql", B2)]);
    let (url, _) = pg.database("blockers_cli").await;
    let out = fleetmig(&root, &url, &["upgrade", "b1"]);
    assert!(out.status.success(), "{}", text(&out));
    let (app, pid) = session(&url, "api-server").await;
    app.batch_execute("BEGIN; UPDATE busy SET x = 42 WHERE id = 7")
        .await
        .unwrap();
    let out = fleetmig(&root, &url, &["upgrade"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let printed = text(&out);
    assert!(
        printed.contains(&format!("blocked by pid {pid} (app api-server")),
        "{printed}"
    );
    assert!(
        printed.contains("UPDATE busy SET x = $1 WHERE id = $2"),
        "{printed}"
    );
    assert!(
        printed.contains(&format!("blocked: waited 3 x 300 ms behind pid {pid}")),
        "{printed}"
    );
    // A bad policy is bad input, named.
    let out = fleetmig(
        &root,
        &url,
        &[
            "upgrade",
            "--blockers",
            "cancel",
            "--blockers-idle-in-transaction",
            "1s",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out)
            .contains("--blockers: action = \"cancel\" cannot end a session idle in transaction"),
        "{}",
        text(&out)
    );
    // Terminate sessions idle in transaction for over a second: the upgrade goes through.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let out = fleetmig(
        &root,
        &url,
        &[
            "upgrade",
            "--blockers",
            "terminate",
            "--blockers-idle-in-transaction",
            "1s",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("[terminated by fleetmig: idle in transaction for "),
        "{}",
        text(&out)
    );
    assert!(app.is_closed() || app.batch_execute("SELECT 1").await.is_err());
}
