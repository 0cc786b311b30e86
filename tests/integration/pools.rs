//! Connections to tenant databases: the per-host budget is never exceeded, and idle
//! connections of other databases give way instead of starving new ones.

use std::sync::Arc;
use std::time::Duration;

use fleetmig::registry::pools::PoolLimits;
use fleetmig::registry::{ConnectionSpec, Pools, SslMode};

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
    let admin = fleetmig::engine::connect(&pg.url("postgres"))
        .await
        .unwrap();
    let pools = Arc::new(Pools::new(PoolLimits {
        per_host: 3,
        per_database: 2,
        connect_timeout: Duration::from_secs(3),
        idle_timeout: Duration::from_secs(60),
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
    assert!(count(&admin, &dbs).await <= 3);
    // Concurrently: 8 databases, each connection held a while; never more than 3 open.
    let mut tasks = vec![];
    for db in dbs.clone() {
        let (pools, port) = (pools.clone(), pg.port);
        tasks.push(tokio::spawn(async move {
            let c = pools.get(&spec(port, &db)).await.unwrap();
            c.simple_query("SELECT pg_sleep(0.2)").await.unwrap();
        }));
    }
    let mut max_seen = 0;
    while tasks.iter().any(|t| !t.is_finished()) {
        max_seen = max_seen.max(count(&admin, &dbs).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        max_seen <= 3,
        "at most 3 connections to the host at once, saw {max_seen}"
    );
    assert!(max_seen >= 1);
}
