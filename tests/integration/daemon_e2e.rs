//! The daemon as operators meet it: grpcurl 1.8.6 over reflection, and a real `fleetmig serve`
//! process whose logs, responses, errors and etcd data never contain a tenant's password.

use std::process::Command;

use fleetmig::grpc::proto;

use crate::daemon_harness as dh;
use crate::harness;

fn grpcurl() -> Option<std::path::PathBuf> {
    let candidates = [
        std::env::var("FLEETMIG_GRPCURL").ok().map(Into::into),
        Some("/opt/fleetmig-tools/bin/grpcurl".into()),
    ];
    let found = candidates
        .into_iter()
        .flatten()
        .find(|p: &std::path::PathBuf| p.exists());
    if found.is_none() {
        assert!(
            std::env::var("CI").is_err(),
            "grpcurl is required under CI=true (make setup installs it)"
        );
        eprintln!("SKIP: grpcurl not installed (make setup)");
    }
    found
}

fn run(grpcurl: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(grpcurl).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "grpcurl {args:?} failed: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_registers_and_streams_an_upgrade() {
    let (Some(pg), Some(etcd)) = (harness::postgres(), harness::etcd()) else {
        return;
    };
    let Some(g) = grpcurl() else { return };
    let daemon = dh::start(dh::config(
        &etcd.endpoint,
        &etcd.prefix("grpcurl"),
        &harness::repo_migrations(),
    ))
    .await;
    let addr = daemon.addr.to_string();
    let (_, db) = pg.database("grpcurl").await;
    let list = run(&g, &["-plaintext", &addr, "list"]);
    for service in [
        "fleetmig.v1.Migrations",
        "fleetmig.v1.Tenants",
        "grpc.health.v1.Health",
    ] {
        assert!(list.contains(service), "{list}");
    }
    let describe = run(
        &g,
        &["-plaintext", &addr, "describe", "fleetmig.v1.Connection"],
    );
    assert!(
        describe.contains("string dbname") && describe.contains("Database name"),
        "field docs are served: {describe}"
    );
    let register = format!(
        r#"{{"tenant": {{"id": "grpcurl-1", "app": "aletheia", "connection": {{"host": "127.0.0.1", "port": {}, "dbname": "{db}", "user": "postgres"}}, "labels": {{"tier": "free"}}, "placeholders": {{"EMBEDDING_DIM": "256"}}}}}}"#,
        pg.port
    );
    let registered = run(
        &g,
        &[
            "-plaintext",
            "-d",
            &register,
            &addr,
            "fleetmig.v1.Tenants/Register",
        ],
    );
    assert!(registered.contains(r#""id": "grpcurl-1""#), "{registered}");
    let upgrade =
        r#"{"app": "aletheia", "target": "head", "selector": {"tenantIds": ["grpcurl-1"]}}"#;
    let streamed = run(
        &g,
        &[
            "-plaintext",
            "-d",
            upgrade,
            &addr,
            "fleetmig.v1.Migrations/Upgrade",
        ],
    );
    for part in [
        r#""accepted""#,
        r#""locked""#,
        r#""revisionApplied""#,
        r#""done""#,
        r#""summary""#,
    ] {
        assert!(streamed.contains(part), "{part} in {streamed}");
    }
    let health = run(&g, &["-plaintext", &addr, "grpc.health.v1.Health/Check"]);
    assert!(health.contains("SERVING"));
    daemon.shutdown().await.unwrap();
}

/// An app that needs no superuser: plain tables.
fn plain_app() -> (tempfile::TempDir, std::path::PathBuf) {
    let r1 = "-- revision: p1\n-- down_revision:\n-- +upgrade\nCREATE TABLE items (id bigint PRIMARY KEY, name text);\n-- +downgrade\nDROP TABLE items;\n";
    let r2 = "-- revision: p2\n-- down_revision: p1\n-- lint-ignore: adding-foreign-key-constraint -- it is meant to fail: nowhere does not exist\n-- +upgrade\nALTER TABLE items ADD COLUMN broken int REFERENCES nowhere (id);\n-- +downgrade\nALTER TABLE items DROP COLUMN broken;\n";
    harness::scratch_app("plain", "", &[("p1.sql", r1), ("p2.sql", r2)])
}

#[tokio::test]
async fn a_tenant_password_appears_nowhere() {
    let (Some(pg), Some(etcd)) = (harness::postgres(), harness::etcd()) else {
        return;
    };
    const CANARY: &str = "Canary-7f3a9c-sEcReT";
    const WRONG: &str = "Wrong-2b8d1e-sEcReT";
    let admin = fleetmig::pg::connect_str(&pg.url("postgres"))
        .await
        .unwrap();
    admin.batch_execute(&format!("DO $$ BEGIN CREATE ROLE pw_app LOGIN PASSWORD '{CANARY}'; EXCEPTION WHEN duplicate_object THEN NULL; END $$")).await.unwrap();
    let (_, good_db) = pg.database("secret_good").await;
    let (_, bad_db) = pg.database("secret_bad").await;
    admin.batch_execute(&format!("ALTER DATABASE \"{good_db}\" OWNER TO pw_app; ALTER DATABASE \"{bad_db}\" OWNER TO pw_app")).await.unwrap();
    let (_tmp, root) = plain_app();
    let prefix = etcd.prefix("secret");
    let (traces, collector) = crate::telemetry::start_receiver().await;
    let mut daemon = dh::Process::start(
        &etcd.endpoint,
        &prefix,
        &root,
        &[
            ("TENANT_GOOD_PW", CANARY),
            ("TENANT_BAD_PW", WRONG),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
    );
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", daemon.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut tenants = proto::tenants_client::TenantsClient::new(channel.clone());
    let mut m = proto::migrations_client::MigrationsClient::new(channel);
    let mut seen = String::new();
    for (id, db, var) in [
        ("good", &good_db, "TENANT_GOOD_PW"),
        ("bad", &bad_db, "TENANT_BAD_PW"),
    ] {
        let mut t = dh::tenant(id, "plain", db, &[], &[]);
        let c = t.connection.as_mut().unwrap();
        c.user = "pw_app".into();
        c.password = Some(proto::PasswordRef {
            source: Some(proto::password_ref::Source::Env(var.into())),
        });
        seen += &format!(
            "{:?}",
            tenants
                .register(proto::RegisterTenantRequest { tenant: Some(t) })
                .await
                .unwrap()
        );
    }
    seen += &format!(
        "{:?}",
        tenants
            .list(proto::ListTenantsRequest::default())
            .await
            .unwrap()
    );
    // A rollout with failures: `good` fails at p2 (bad foreign key), `bad` cannot log in.
    let all = proto::MigrateRequest {
        app: "plain".into(),
        selector: Some(proto::Selector {
            all: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    let events = dh::collect(m.upgrade(all.clone()).await.unwrap().into_inner()).await;
    let s = dh::summary(&events);
    assert_eq!(s.failed, 2, "{events:?}");
    seen += &format!("{events:?}");
    assert!(
        seen.contains("password authentication failed"),
        "the bad tenant failed on its password: {seen}"
    );
    for req in [
        proto::PlanRequest {
            tenant_id: "good".into(),
            ..Default::default()
        },
        proto::PlanRequest {
            tenant_id: "bad".into(),
            ..Default::default()
        },
    ] {
        seen += &format!("{:?}", m.plan(req).await);
    }
    seen += &format!(
        "{:?}",
        m.current(proto::CurrentRequest {
            app: "plain".into(),
            selector: None
        })
        .await
    );
    seen += &format!(
        "{:?}",
        m.history(proto::HistoryRequest {
            tenant_id: "good".into(),
            limit: 0
        })
        .await
    );
    let mut etcd_client = etcd.client().await;
    // Audit records reach etcd in the background, batched: wait for the bad tenant's.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let dump = loop {
        let dump = etcd_client
            .get(
                prefix.as_str(),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await
            .unwrap();
        let audited_bad = dump.kvs().iter().any(|kv| {
            kv.key().starts_with(format!("{prefix}audit/").as_bytes())
                && String::from_utf8_lossy(kv.value()).contains("\"tenant\":\"bad\"")
        });
        if audited_bad || std::time::Instant::now() > deadline {
            break dump;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    for kv in dump.kvs() {
        seen += &String::from_utf8_lossy(kv.key());
        seen += &String::from_utf8_lossy(kv.value());
    }
    assert!(
        daemon.terminate().success(),
        "SIGTERM stops the daemon cleanly"
    );
    let logs = daemon.logs();
    assert!(
        logs.contains("tenant failed"),
        "the failures were logged: {logs}"
    );
    // Spans are flushed at shutdown: their names, attributes, events and statuses.
    let spans = format!("{:?}", traces.spans.lock().unwrap());
    assert!(
        spans.contains("password authentication failed"),
        "the traces hold the failure: {spans}"
    );
    assert!(
        seen.contains("audit/"),
        "audit records were written to etcd"
    );
    for secret in [CANARY, WRONG] {
        assert!(
            !seen.contains(secret),
            "{secret} leaked into a response, error or etcd"
        );
        assert!(!logs.contains(secret), "{secret} leaked into the logs");
        assert!(!spans.contains(secret), "{secret} leaked into the traces");
    }
}
