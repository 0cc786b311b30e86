//! The benchmark's databases: one set per tool for an app and size, created from a template
//! with pgvector installed (the daemon's registered under a label), compared by fingerprint,
//! and dropped (with the daemon's tenants deregistered) once their cells are done.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use fleetmig::grpc::proto;
use tonic::transport::Channel;

use crate::daemon_harness as dh;
use crate::harness;
use crate::tools::{self, Tool};

/// One tool's database set of a cell group: its URLs and database names.
pub struct DbSet {
    pub urls: Vec<String>,
    pub names: HashSet<String>,
}

/// The tools' databases agree: the first database of every set has the same schema.
pub fn same_schema(sets: &BTreeMap<Tool, DbSet>, when: &str) {
    let prints: Vec<(Tool, String)> = sets
        .iter()
        .map(|(t, s)| (*t, tools::fingerprint(&s.urls[0])))
        .collect();
    assert!(
        prints.windows(2).all(|w| w[0].1 == w[1].1),
        "the tools' schemas differ {when}: {prints:?}"
    );
}

/// The template every tenant database is created from: pgvector installed, so every pair's
/// upgrade finds the same state (`CREATE EXTENSION IF NOT EXISTS vector` is a no-op in each).
pub async fn template(pg: &harness::Postgres, admin: &tokio_postgres::Client) -> &'static str {
    let name = "bench_template";
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let t = fleetmig::pg::connect_str(&pg.url(name)).await.unwrap();
    t.batch_execute("CREATE EXTENSION vector").await.unwrap();
    drop(t);
    // The session must be gone before the template can be copied.
    for _ in 0..100 {
        let busy = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                &[&name],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        if busy == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    name
}

/// Every tool's database set for one app and size (named `b<size><app><letter><i>`, which
/// `benches/pg_statement_cpu.py` reads), the daemon's registered under the label
/// `bench=<app>-<size>`.
pub async fn create_sets(
    pg: &harness::Postgres,
    admin: &tokio_postgres::Client,
    channel: &Channel,
    template: &str,
    tools_on: &[Tool],
    app: &str,
    size: usize,
) -> BTreeMap<Tool, DbSet> {
    let label = format!("{app}-{size}");
    let mut tenants = proto::tenants_client::TenantsClient::new(channel.clone());
    let bytes: i64 = admin
        .query_one("SELECT pg_database_size($1)", &[&template])
        .await
        .unwrap()
        .get(0);
    eprintln!(
        "creating {} x {size} databases for {app} ({:.1} GB on disk) ...",
        tools_on.len(),
        (bytes as f64) * (tools_on.len() * size) as f64 / 1e9
    );
    let started = std::time::Instant::now();
    let mut sets = BTreeMap::new();
    for &tool in tools_on {
        let mut set = DbSet {
            urls: vec![],
            names: HashSet::new(),
        };
        for i in 0..size {
            let name = format!("b{size}{app}{}{i}", tool.letter());
            admin
                .batch_execute(&format!("CREATE DATABASE \"{name}\" TEMPLATE {template}"))
                .await
                .unwrap();
            if tool == Tool::Daemon {
                let t = dh::tenant(
                    &format!("{label}-{i}"),
                    app,
                    &name,
                    &[("bench", &label)],
                    &[],
                );
                tenants
                    .register(proto::RegisterTenantRequest { tenant: Some(t) })
                    .await
                    .unwrap();
            }
            set.urls.push(format!(
                "postgresql://postgres@127.0.0.1:{}/{name}",
                pg.port
            ));
            set.names.insert(name);
        }
        sets.insert(tool, set);
    }
    eprintln!("created in {:.0} s", started.elapsed().as_secs_f64());
    sets
}

/// Give the disk back once an app's cells of one size are done; deregister the daemon's.
pub async fn drop_sets(
    admin: &tokio_postgres::Client,
    channel: &Channel,
    sets: BTreeMap<Tool, DbSet>,
    label: &str,
) {
    let mut tenants = proto::tenants_client::TenantsClient::new(channel.clone());
    let started = std::time::Instant::now();
    for (tool, set) in sets {
        if tool == Tool::Daemon {
            for i in 0..set.urls.len() {
                tenants
                    .deregister(proto::DeregisterTenantRequest {
                        id: format!("{label}-{i}"),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
            }
        }
        for name in set.names {
            admin
                .batch_execute(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
                .await
                .unwrap();
        }
    }
    eprintln!("dropped in {:.0} s", started.elapsed().as_secs_f64());
}
