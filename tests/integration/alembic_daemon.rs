//! The daemon plans with the same graph code as the CLI (issue 27): a fleet downgrade on a
//! graph with depends_on keeps the other branch's tables, exactly as Alembic's downgrade does,
//! and a tenant database left by the daemon is carried on by `alembic upgrade heads` without
//! complaint.

use fleetmig::grpc::proto;

use crate::alembic_project::{self as ap, Sql, alembic_bin, rev, sa_url, state_of};
use crate::daemon_harness as dh;
use crate::harness;

fn request(target: &str) -> proto::MigrateRequest {
    proto::MigrateRequest {
        app: "app".into(),
        target: target.into(),
        selector: Some(proto::Selector {
            all: true,
            ..Default::default()
        }),
        concurrency: 2,
        ..Default::default()
    }
}

// Multi-threaded: the Alembic CLI blocks while it runs, and the in-process daemon's lease
// keep-alive must go on meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_downgrade_keeps_what_only_depends_on_its_target() {
    let Some(pg) = harness::postgres() else {
        return;
    };
    let Some(etcd) = harness::etcd() else { return };
    let Some(bin) = alembic_bin() else { return };
    // `a -> b`, and `x` (a base of its own) that depends on `a`.
    let graph = vec![
        rev("a", &[], &[], &[]),
        rev("b", &["a"], &[], &[]),
        rev("x", &[], &["other"], &["a"]),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let migrations = tmp.path().join("migrations");
    let project = tmp.path().join("alembic");
    ap::write_fleetmig(&migrations, &graph, Sql::Plain);
    ap::write_alembic(&project, &graph, Sql::Plain);
    let prefix = etcd.prefix("alembic-daemon");
    let daemon = dh::start(dh::config(&etcd.endpoint, &prefix, &migrations)).await;
    let mut tenants = daemon.tenants().await;
    let mut dbs = vec![];
    for i in 0..2 {
        let (url, db) = pg.database(&format!("dmn_dep{i}")).await;
        dh::register(
            &mut tenants,
            dh::tenant(&format!("dep-{i}"), "app", &db, &[], &[]),
        )
        .await;
        dbs.push((url, db));
    }
    // What Alembic does on its own database.
    let (ref_url, ref_db) = pg.database("dmn_dep_ref").await;
    let alembic = |db: &str, args: &[&str]| {
        let out = tokio::task::block_in_place(|| ap::alembic(&bin, &project, &sa_url(db), args));
        assert!(out.status.success(), "alembic {args:?}: {}", ap::text(&out));
    };
    alembic(&ref_db, &["upgrade", "heads"]);
    alembic(&ref_db, &["downgrade", "a"]);
    let expected = state_of(&ref_url).await;
    assert_eq!(
        expected.tables,
        ["t_a", "t_x"].map(String::from).into(),
        "Alembic keeps x"
    );

    let mut m = daemon.migrations().await;
    let up = dh::collect(m.upgrade(request("heads")).await.unwrap().into_inner()).await;
    let s = dh::summary(&up);
    assert_eq!((s.done, s.failed), (2, 0), "{s:?}");
    // The preview plans with the same code: only b goes.
    let plan = m
        .plan(proto::PlanRequest {
            tenant_id: "dep-0".into(),
            direction: "downgrade".into(),
            target: "a".into(),
            allow_changed: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plan.revisions, ["b"], "{plan:?}");
    let down = dh::collect(m.downgrade(request("a")).await.unwrap().into_inner()).await;
    let s = dh::summary(&down);
    assert_eq!((s.done, s.failed), (2, 0), "{s:?}");
    for (url, _) in &dbs {
        assert_eq!(state_of(url).await, expected, "{url}");
    }
    // Alembic carries on from what the daemon left, to where it would have gone itself.
    alembic(&ref_db, &["upgrade", "heads"]);
    let (url, db) = &dbs[0];
    alembic(db, &["upgrade", "heads"]);
    assert_eq!(state_of(url).await, state_of(&ref_url).await);
    // A stamp through the daemon moves the rows as Alembic's does from the same state (dep-1
    // is still where the downgrade left it): x's branch only.
    let (ref2_url, ref2_db) = pg.database("dmn_dep_ref2").await;
    alembic(&ref2_db, &["upgrade", "heads"]);
    alembic(&ref2_db, &["downgrade", "a"]);
    alembic(&ref2_db, &["upgrade", "b"]);
    let up_b = dh::collect(
        m.upgrade(proto::MigrateRequest {
            selector: Some(proto::Selector {
                tenant_ids: vec!["dep-1".into()],
                ..Default::default()
            }),
            ..request("b")
        })
        .await
        .unwrap()
        .into_inner(),
    )
    .await;
    assert_eq!(dh::summary(&up_b).failed, 0);
    assert_eq!(state_of(&dbs[1].0).await, state_of(&ref2_url).await);
    let stamped = m
        .stamp(proto::StampRequest {
            tenant_id: "dep-1".into(),
            revision: "other@base".into(),
            purge: false,
        })
        .await
        .unwrap()
        .into_inner();
    alembic(&ref2_db, &["stamp", "other@base"]);
    let rows = state_of(&ref2_url).await.rows;
    assert_eq!(rows, ["b"].map(String::from).into());
    assert_eq!(state_of(&dbs[1].0).await.rows, rows, "{stamped:?}");
    daemon.shutdown().await.unwrap();
}
