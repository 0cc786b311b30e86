//! Onboarding end to end, failures at each step leaving nothing behind, idempotency by request
//! id, the template fast path against a full replay, and offboarding with confirmation.

use std::time::Instant;

use fleetmig::grpc::proto;
use tonic::Code;

use crate::daemon_harness as dh;
use crate::engine::fp;
use crate::harness;

async fn onboard(
    m: &mut proto::migrations_client::MigrationsClient<tonic::transport::Channel>,
    request_id: &str,
    tenant: proto::Tenant,
    extensions: &[&str],
    use_template: bool,
) -> Vec<proto::OnboardEvent> {
    let request = proto::OnboardRequest {
        request_id: request_id.into(),
        tenant: Some(tenant),
        admin_user: "postgres".into(),
        admin_password: None,
        extensions: extensions.iter().map(|e| e.to_string()).collect(),
        use_template,
    };
    let mut stream = m.onboard(request).await.unwrap().into_inner();
    let mut out = vec![];
    while let Some(e) = stream.message().await.unwrap() {
        out.push(e);
    }
    out
}

fn status_of<'a>(events: &'a [proto::OnboardEvent], step: &str) -> Vec<&'a str> {
    events
        .iter()
        .filter(|e| e.step == step)
        .map(|e| e.status.as_str())
        .collect()
}

async fn database_exists(admin: &tokio_postgres::Client, name: &str) -> bool {
    admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .unwrap()
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboarding_provisions_rolls_back_and_is_idempotent() {
    let (Some(pg), Some(etcd)) = (harness::postgres(), harness::etcd()) else {
        return;
    };
    let daemon = dh::start(dh::config(
        &etcd.endpoint,
        &etcd.prefix("onboard"),
        &harness::repo_migrations(),
    ))
    .await;
    let (mut m, mut t) = (daemon.migrations().await, daemon.tenants().await);
    let admin = fleetmig::pg::connect_str(&pg.url("postgres"))
        .await
        .unwrap();
    let tenant = |id: &str, db: &str, placeholders: &[(&str, &str)]| {
        dh::tenant(id, "aletheia", db, &[("tier", "free")], placeholders)
    };

    // End to end.
    let started = Instant::now();
    let events = onboard(
        &mut m,
        "req-1",
        tenant("ob-1", "onboard_one", &[("EMBEDDING_DIM", "256")]),
        &[],
        false,
    )
    .await;
    let full_ms = started.elapsed().as_millis();
    for step in ["create_database", "register", "migrate", "verify", "done"] {
        assert!(
            status_of(&events, step).contains(&"ok"),
            "{step}: {events:?}"
        );
    }
    assert!(database_exists(&admin, "onboard_one").await);
    let c = m
        .current(proto::CurrentRequest {
            app: "aletheia".into(),
            selector: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.at_head, 1);
    // The same request id again: replayed, nothing done twice.
    let again = onboard(
        &mut m,
        "req-1",
        tenant("ob-1", "onboard_one", &[("EMBEDDING_DIM", "256")]),
        &[],
        false,
    )
    .await;
    assert_eq!(status_of(&again, "done"), ["ok", "replayed"], "{again:?}");
    let listed = t
        .list(proto::ListTenantsRequest {
            app: "aletheia".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.tenants.len(), 1);

    // A failure at each step leaves nothing behind that the call created.
    admin
        .batch_execute("CREATE DATABASE onboard_taken")
        .await
        .unwrap();
    let e = onboard(
        &mut m,
        "req-exists",
        tenant("ob-2", "onboard_taken", &[]),
        &[],
        false,
    )
    .await;
    assert_eq!(
        status_of(&e, "create_database"),
        ["started", "failed"],
        "{e:?}"
    );
    assert!(
        database_exists(&admin, "onboard_taken").await,
        "a database the call did not create is never dropped"
    );
    let e = onboard(
        &mut m,
        "req-ext",
        tenant("ob-3", "onboard_ext", &[]),
        &["no_such_extension"],
        false,
    )
    .await;
    assert_eq!(status_of(&e, "extensions"), ["failed"], "{e:?}");
    let e = onboard(
        &mut m,
        "req-dup",
        tenant("ob-1", "onboard_dup", &[]),
        &[],
        false,
    )
    .await;
    assert_eq!(status_of(&e, "register"), ["failed"], "{e:?}");
    let e = onboard(
        &mut m,
        "req-migrate",
        tenant("ob-4", "onboard_migrate", &[("EMBEDDING_DIM", "0")]),
        &[],
        false,
    )
    .await;
    assert_eq!(status_of(&e, "migrate"), ["failed"], "{e:?}");
    let e = onboard(
        &mut m,
        "req-verify",
        tenant("ob-5", "onboard_verify", &[]),
        &["pg_trgm"],
        false,
    )
    .await;
    assert_eq!(status_of(&e, "verify"), ["failed"], "{e:?}");
    assert!(
        e.iter()
            .any(|x| x.step == "verify" && x.message.contains("pg_trgm")),
        "{e:?}"
    );
    for (id, db) in [
        ("ob-3", "onboard_ext"),
        ("ob-4", "onboard_migrate"),
        ("ob-5", "onboard_verify"),
        ("", "onboard_dup"),
    ] {
        assert!(!database_exists(&admin, db).await, "{db} was dropped");
        if !id.is_empty() {
            let gone = t
                .get(proto::GetTenantRequest { id: id.into() })
                .await
                .unwrap_err();
            assert_eq!(
                gone.code(),
                Code::NotFound,
                "{id} was removed from the registry"
            );
        }
    }
    assert!(
        t.get(proto::GetTenantRequest { id: "ob-1".into() })
            .await
            .is_ok(),
        "the earlier tenant is untouched"
    );

    // Template fast path: the result equals a full replay.
    let template_events = onboard(
        &mut m,
        "req-tpl-1",
        tenant("ob-t1", "onboard_tpl_one", &[("EMBEDDING_DIM", "256")]),
        &[],
        true,
    )
    .await;
    assert!(
        status_of(&template_events, "verify").contains(&"ok"),
        "{template_events:?}"
    );
    let started = Instant::now();
    let second = onboard(
        &mut m,
        "req-tpl-2",
        tenant("ob-t2", "onboard_tpl_two", &[("EMBEDDING_DIM", "256")]),
        &[],
        true,
    )
    .await;
    let template_ms = started.elapsed().as_millis();
    assert!(status_of(&second, "done").contains(&"ok"), "{second:?}");
    assert!(
        second
            .iter()
            .any(|e| e.step == "create_database" && e.message.starts_with("from template")),
        "{second:?}"
    );
    let (full, copy) = (
        fleetmig::pg::connect_str(&pg.url("onboard_one"))
            .await
            .unwrap(),
        fleetmig::pg::connect_str(&pg.url("onboard_tpl_two"))
            .await
            .unwrap(),
    );
    let (a, b) = (fp(&full).await, fp(&copy).await);
    assert_eq!(a, b, "{:?}", a.diff(&b));
    eprintln!("onboarding: full replay {full_ms} ms, template copy {template_ms} ms");

    // Offboarding never drops a database unless asked, with its name repeated.
    let wrong = t
        .deregister(proto::DeregisterTenantRequest {
            id: "ob-t2".into(),
            drop_database: true,
            confirm_dbname: "onboard_tpl_one".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::InvalidArgument);
    assert!(wrong.message().starts_with("confirm_dbname"), "{wrong:?}");
    let kept = t
        .deregister(proto::DeregisterTenantRequest {
            id: "ob-t1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!kept.database_dropped && database_exists(&admin, "onboard_tpl_one").await);
    drop((full, copy));
    let dropped = t
        .deregister(proto::DeregisterTenantRequest {
            id: "ob-t2".into(),
            drop_database: true,
            confirm_dbname: "onboard_tpl_two".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(dropped.database_dropped && !database_exists(&admin, "onboard_tpl_two").await);
    daemon.shutdown().await.unwrap();
}
