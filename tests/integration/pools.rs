//! Connections to tenant databases: the per-host budget is never exceeded, idle connections
//! of other databases give way instead of starving new ones, and a pooled connection carries
//! nothing from one job to the next.

use std::sync::Arc;
use std::time::Duration;

use fleetmig::grpc::proto;
use fleetmig::registry::pools::{PoolError, PoolLimits, PrivilegedRoles};
use fleetmig::registry::{ConnectionSpec, Pools, SslMode};

use crate::daemon_harness as dh;
use crate::harness;

fn spec(port: u16, db: &str) -> ConnectionSpec {
    ConnectionSpec {
        host: "127.0.0.1".into(),
        port,
        dbname: db.into(),
        user: "postgres".into(),
        sslmode: SslMode::Disable,
        schema: None,
        password: None,
        options: Default::default(),
    }
}

/// fleetmig's connections to these databases, in one snapshot of pg_stat_activity.
async fn count(admin: &tokio_postgres::Client, dbs: &[String]) -> i64 {
    admin
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'fleetmig' AND datname = ANY($1)", &[&dbs])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_budget_holds_and_idle_connections_give_way() {
    let Some(pg) = harness::postgres() else {
        return;
    };
    let mut dbs = vec![];
    for i in 0..8 {
        dbs.push(pg.database(&format!("budget{i}")).await.1);
    }
    let admin = fleetmig::pg::connect_str(&pg.url("postgres"))
        .await
        .unwrap();
    let pools = Arc::new(Pools::new(PoolLimits {
        per_host: 3,
        per_database: 2,
        connect_timeout: Duration::from_secs(3),
        dead_server_after: fleetmig::registry::pools::DEAD_SERVER_AFTER,
        idle_timeout: Duration::from_secs(60),
        privileged_roles: PrivilegedRoles::Warn,
        insecure_connections: Default::default(),
    }));
    // One after another: each leaves an idle connection behind; the 4th onwards must not wait for them.
    let started = std::time::Instant::now();
    for db in &dbs {
        let c = pools
            .get(&spec(pg.port, db))
            .await
            .expect("idle connections of other databases give way");
        c.simple_query("SELECT 1").await.unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "no connect waited for the timeout: {:?}",
        started.elapsed()
    );
    let host = spec(pg.port, &dbs[0]).host_key();
    assert!(pools.open_connections(&host) <= 3);
    assert!(
        count(&admin, &dbs).await <= 4,
        "3 open, and one backend may still be exiting"
    );
    // Concurrently: 8 databases, each connection held a while; never more than 3 open.
    let mut tasks = vec![];
    for db in dbs.clone() {
        let (pools, port) = (pools.clone(), pg.port);
        tasks.push(tokio::spawn(async move {
            let c = pools.get(&spec(port, &db)).await.unwrap();
            c.simple_query("SELECT pg_sleep(0.2)").await.unwrap();
        }));
    }
    let (mut max_open, mut max_backends) = (0, 0);
    while tasks.iter().any(|t| !t.is_finished()) {
        max_open = max_open.max(pools.open_connections(&host));
        max_backends = max_backends.max(count(&admin, &dbs).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        (1..=3).contains(&max_open),
        "at most 3 connections to the host at once, saw {max_open}"
    );
    // The server's view lags: a closed connection's backend may still be exiting (listed in
    // pg_stat_activity) when its replacement logs in.
    assert!(
        max_backends <= 4,
        "at most 3 backends (+1 exiting), saw {max_backends}"
    );
}

/// Pools that refuse privileged roles.
fn refusing_pools() -> Pools {
    Pools::new(PoolLimits {
        per_host: 4,
        per_database: 1,
        connect_timeout: Duration::from_secs(3),
        dead_server_after: fleetmig::registry::pools::DEAD_SERVER_AFTER,
        idle_timeout: Duration::from_secs(60),
        privileged_roles: PrivilegedRoles::Refuse,
        insecure_connections: Default::default(),
    })
}

fn as_lp_app(port: u16, db: &str) -> ConnectionSpec {
    ConnectionSpec {
        user: "lp_app".into(),
        ..spec(port, db)
    }
}

/// Least privilege, checked at connect: with `refuse`, a superuser role is turned away with a
/// message saying what to use instead; an ordinary role that owns the database connects.
#[tokio::test]
async fn privileged_roles_are_refused_when_configured() {
    let Some(pg) = harness::postgres() else {
        return;
    };
    let (_, db) = pg.database("leastpriv").await;
    let admin = fleetmig::pg::connect_str(&pg.url("postgres"))
        .await
        .unwrap();
    admin
        .batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE lp_app LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             ALTER DATABASE \"{db}\" OWNER TO lp_app"
        ))
        .await
        .unwrap();
    let pools = refusing_pools();
    let e = pools
        .get(&spec(pg.port, &db))
        .await
        .err()
        .expect("a superuser is refused");
    assert!(matches!(e, PoolError::Privileged { .. }), "{e}");
    assert!(
        e.to_string().contains("role postgres is a superuser"),
        "{e}"
    );
    let app = as_lp_app(pg.port, &db);
    // Same database, another role: its own pool, not the refused one.
    let c = pools.get(&app).await.expect("an ordinary owner connects");
    let who: String = c
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "lp_app");
    drop(c);
    // The verdict on a role is kept per host for a few minutes (one catalog query per role,
    // not per tenant): lp_app made superuser now is still taken on another database.
    let (_, db2) = pg.database("leastpriv2").await;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{db2}\" OWNER TO lp_app; ALTER ROLE lp_app SUPERUSER"
        ))
        .await
        .unwrap();
    let cached = pools.get(&as_lp_app(pg.port, &db2)).await;
    admin
        .batch_execute("ALTER ROLE lp_app NOSUPERUSER")
        .await
        .unwrap();
    assert!(cached.is_ok(), "checked once per role and host");
    // A fresh daemon (its own pools) asks again, and refuses.
    let fresh = refusing_pools();
    admin
        .batch_execute("ALTER ROLE lp_app SUPERUSER")
        .await
        .unwrap();
    let refused = fresh.get(&as_lp_app(pg.port, &db2)).await.err();
    admin
        .batch_execute("ALTER ROLE lp_app NOSUPERUSER")
        .await
        .unwrap();
    assert!(
        matches!(refused, Some(PoolError::Privileged { .. })),
        "a new role check refuses the promoted role"
    );
}

/// A revision's session settings (SET ROLE, SET TimeZone, search_path) stay with its run: the
/// next job on the same pooled connection starts from a clean session.
#[tokio::test]
async fn the_next_job_sees_none_of_the_last_ones_settings_and_no_connection_is_kept_idle() {
    let (Some(pg), Some(etcd)) = (harness::postgres(), harness::etcd()) else {
        return;
    };
    let admin = fleetmig::pg::connect_str(&pg.url("postgres"))
        .await
        .unwrap();
    admin
        .batch_execute("DO $$ BEGIN CREATE ROLE leak_role NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$; GRANT CREATE ON SCHEMA public TO leak_role")
        .await
        .unwrap();
    let (tmp, root) = harness::scratch_app(
        "sticky",
        "",
        &[
            (
                "s1.sql",
                "-- revision: s1\n-- down_revision:\n-- +upgrade\nCREATE TABLE first (id int);\nSET ROLE leak_role;\nSET TimeZone = 'Pacific/Chatham';\nSET search_path = pg_catalog;\nPREPARE leaked AS SELECT 1;\n-- +downgrade\nDROP TABLE first;\n",
            ),
            (
                "s2.sql",
                "-- revision: s2\n-- down_revision: s1\n-- +upgrade\nPREPARE leaked AS SELECT 2;\nCREATE TABLE seen AS SELECT current_user::text AS who, current_setting('TimeZone') AS tz, current_setting('search_path') AS path;\n-- +downgrade\nDROP TABLE seen;\n",
            ),
        ],
    );
    let _keep = tmp;
    let (url, db) = pg.database("sticky").await;
    let prefix = etcd.prefix("sticky");
    let mut config = dh::config(&etcd.endpoint, &prefix, &root);
    // One connection per database: were the first job's connection kept, the second would get it.
    config.pools.per_database_connections = 1;
    let daemon = dh::start(config).await;
    let mut tenants = daemon.tenants().await;
    dh::register(&mut tenants, dh::tenant("sticky", "sticky", &db, &[], &[])).await;
    let mut m = daemon.migrations().await;
    for target in ["s1", "s2"] {
        let events = dh::collect(
            m.upgrade(proto::MigrateRequest {
                app: "sticky".into(),
                target: target.into(),
                selector: Some(proto::Selector {
                    tenant_ids: vec!["sticky".into()],
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner(),
        )
        .await;
        assert_eq!(dh::summary(&events).done, 1, "{events:?}");
    }
    let tenant_db = fleetmig::pg::connect_str(&url).await.unwrap();
    let default_tz: String = tenant_db
        .query_one("SELECT current_setting('TimeZone')", &[])
        .await
        .unwrap()
        .get(0);
    let row = tenant_db
        .query_one("SELECT who, tz, path FROM seen", &[])
        .await
        .unwrap();
    let (who, tz, path): (String, String, String) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(who, "postgres", "the role of the last job's revision");
    assert_eq!(tz, default_tz, "the time zone of the last job's revision");
    assert_eq!(path, "public, pg_temp", "the search_path fleetmig pins");
    // A migration's connection is closed when its run ends, not kept idle on the server.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let open: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name LIKE 'fleetmig%'",
                &[&db],
            )
            .await
            .unwrap()
            .get(0);
        if open == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{open} fleetmig connections still open on the tenant's database after its jobs"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.shutdown().await.unwrap();
}
