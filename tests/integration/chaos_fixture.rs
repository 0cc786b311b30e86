//! The fault suite's fixture: a three-member etcd cluster, three `fleetmig serve` replicas
//! (real processes) given every member, real Postgres, and small tenants of a tiny app (a
//! table; a column and a sleep; an index built CONCURRENTLY). And the checks each scenario
//! ends with, per tenant: each revision applied once, fence tokens never decrease, no INVALID
//! index, and the rollout document agrees with the database (read directly).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fleetmig::grpc::proto;
use proto::rollouts_client::RolloutsClient;
use tonic::transport::Channel;

use crate::daemon_harness as dh;
use crate::etcd_cluster::EtcdCluster;
use crate::harness;

/// `FLEETMIG_CHAOS=1` (`make chaos`): the long versions (more tenants, a 30 s quorum loss,
/// the blackholed member). Without it, versions small enough for every CI run.
pub fn long() -> bool {
    std::env::var("FLEETMIG_CHAOS").is_ok_and(|v| v == "1")
}

/// One scenario at a time: each has a cluster and three replicas of its own, and asserts
/// time bounds.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The replicas' lease TTL.
pub const TTL: Duration = Duration::from_secs(2);
/// The head revision of the app.
pub const HEAD: &str = "c3";

fn app(sleep: f32) -> (tempfile::TempDir, PathBuf) {
    let c1 = "-- revision: c1\n-- down_revision:\n-- +upgrade\nCREATE TABLE items (id bigint PRIMARY KEY, n int);\n-- +downgrade\nDROP TABLE items;\n".to_string();
    let c2 = format!(
        "-- revision: c2\n-- down_revision: c1\n-- +upgrade\nALTER TABLE items ADD COLUMN name text;\nSELECT pg_sleep({sleep});\n-- +downgrade\nALTER TABLE items DROP COLUMN name;\n"
    );
    let c3 = "-- revision: c3\n-- down_revision: c2\n-- transaction: none\n-- +upgrade\nCREATE INDEX CONCURRENTLY IF NOT EXISTS items_n ON items (n);\n-- +downgrade\nDROP INDEX CONCURRENTLY IF EXISTS items_n;\n".to_string();
    harness::scratch_app(
        "chaos",
        "",
        &[("c1.sql", &c1), ("c2.sql", &c2), ("c3.sql", &c3)],
    )
}

pub struct Chaos {
    pub cluster: EtcdCluster,
    /// Member indices in the order every replica lists them (the leader at start first).
    pub order: Vec<usize>,
    pub prefix: String,
    /// (tenant id, database url).
    pub tenants: Vec<(String, String)>,
    /// None once killed.
    pub replicas: Vec<Option<dh::Process>>,
    _app: tempfile::TempDir,
}

impl Chaos {
    /// `n` tenants; the replicas get `env[i]` on top of the defaults (lease TTL 2 s).
    pub async fn setup(hint: &str, n: usize, sleep: f32, env: &[&[(&str, &str)]]) -> Option<Chaos> {
        let pg = harness::postgres()?;
        let cluster = EtcdCluster::start(hint).await?;
        // The leader listed first: killing the first member is the harshest case.
        let leader = cluster.leader().await;
        let order: Vec<usize> = (0..3).map(|i| (leader + i) % 3).collect();
        let all = cluster.endpoints();
        let endpoints: Vec<String> = order.iter().map(|&i| all[i].clone()).collect();
        let (app, root) = app(sleep);
        let prefix = format!("/fleetmig-chaos/{hint}-{}/", std::process::id());
        let eps: Vec<&str> = endpoints.iter().map(String::as_str).collect();
        let replicas = (0..3)
            .map(|i| {
                Some(dh::Process::start_on(
                    &eps,
                    &prefix,
                    &root,
                    env.get(i).copied().unwrap_or_default(),
                ))
            })
            .collect();
        let mut chaos = Chaos {
            cluster,
            order,
            prefix,
            tenants: vec![],
            replicas,
            _app: app,
        };
        let mut reg = proto::tenants_client::TenantsClient::new(chaos.channel(0).await);
        for i in 0..n {
            let (url, db) = pg.database(&format!("{hint}{i}")).await;
            let id = format!("{hint}-{i:02}");
            reg.register(proto::RegisterTenantRequest {
                tenant: Some(dh::tenant(&id, "chaos", &db, &[], &[])),
            })
            .await
            .unwrap();
            chaos.tenants.push((id, url));
        }
        Some(chaos)
    }

    pub async fn channel(&self, i: usize) -> Channel {
        let addr = &self.replicas[i].as_ref().expect("a live replica").addr;
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn rollouts(&self, i: usize) -> RolloutsClient<Channel> {
        RolloutsClient::new(self.channel(i).await)
    }

    /// A replica still running.
    pub fn live(&self) -> usize {
        self.replicas
            .iter()
            .position(Option::is_some)
            .expect("a live replica")
    }

    /// The replica an owner name (as Get shows it) belongs to.
    pub fn replica_of(&self, owner: &str) -> Option<usize> {
        self.replicas.iter().position(|r| {
            r.as_ref()
                .is_some_and(|p| owner.contains(&format!(" pid {} ", p.child.id())))
        })
    }

    /// SIGKILL a replica.
    pub fn kill_replica(&mut self, i: usize) {
        let mut p = self.replicas[i].take().expect("running");
        p.child.kill().unwrap();
        p.child.wait().unwrap();
    }

    /// One wave over every tenant, `concurrency` per replica, through replica `via`.
    pub async fn start_rollout(&self, via: usize, concurrency: u32) -> proto::Rollout {
        self.rollouts(via)
            .await
            .start(proto::StartRolloutRequest {
                app: "chaos".into(),
                selector: Some(proto::Selector {
                    all: true,
                    ..Default::default()
                }),
                concurrency,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn get(&self, id: &str) -> proto::Rollout {
        self.rollouts(self.live())
            .await
            .get(proto::GetRolloutRequest { id: id.into() })
            .await
            .unwrap()
            .into_inner()
    }

    /// Poll (every 50 ms) until `done(rollout)`, or panic with the replicas' logs.
    pub async fn until(
        &self,
        id: &str,
        within: Duration,
        done: impl Fn(&proto::Rollout) -> bool,
    ) -> proto::Rollout {
        let deadline = Instant::now() + within;
        let mut c = self.rollouts(self.live()).await;
        loop {
            let r = c
                .get(proto::GetRolloutRequest { id: id.into() })
                .await
                .unwrap()
                .into_inner();
            if done(&r) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {within:?}; rollout: {r:#?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of every live replica's log.
    pub fn logs(&self) -> String {
        self.replicas
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().map(|p| (i, p.logs())))
            .map(|(i, l)| {
                let tail: Vec<&str> = l.lines().rev().take(40).collect();
                format!(
                    "--- replica {i}:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Per tenant: each revision applied once, fence tokens never decreasing, no INVALID
    /// index, and the document's state and versions equal to what the database says.
    pub async fn check(&self, r: &proto::Rollout) {
        for (id, url) in &self.tenants {
            let c = fleetmig::pg::connect_str(url).await.unwrap();
            let history = c
                .query(
                    "SELECT revision, direction, fence_token FROM fleetmig_history ORDER BY id",
                    &[],
                )
                .await
                .map(|rows| {
                    rows.iter()
                        .map(|r| {
                            (
                                r.get::<_, String>(0),
                                r.get::<_, String>(1),
                                r.get::<_, Option<i64>>(2),
                            )
                        })
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            let upgrades: Vec<&str> = history
                .iter()
                .filter(|(_, d, _)| d == "upgrade")
                .map(|(r, _, _)| r.as_str())
                .collect();
            let mut unique = upgrades.clone();
            unique.dedup();
            assert_eq!(
                upgrades, unique,
                "{id}: a revision applied twice: {history:?}"
            );
            let tokens: Vec<i64> = history.iter().filter_map(|(_, _, t)| *t).collect();
            assert!(
                tokens.windows(2).all(|w| w[0] <= w[1]),
                "{id}: fence tokens decreased: {history:?}"
            );
            let invalid: i64 = c
                .query_one("SELECT count(*) FROM pg_index WHERE NOT indisvalid", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(invalid, 0, "{id}: an INVALID index remains");
            let rows: Vec<String> = c
                .query("SELECT version_num::text FROM alembic_version", &[])
                .await
                .map(|rows| rows.iter().map(|r| r.get(0)).collect())
                .unwrap_or_default();
            let t = r
                .tenants
                .iter()
                .find(|t| &t.tenant_id == id)
                .unwrap_or_else(|| panic!("{id} is not in the rollout"));
            let at_head = rows == [HEAD];
            assert_eq!(
                t.state == "done",
                at_head,
                "{id}: the document says {} but the database is at {rows:?}: {t:#?}",
                t.state
            );
            if !rows.is_empty() || t.state == "done" {
                assert_eq!(
                    t.revisions, rows,
                    "{id}: the document's versions differ from the database's"
                );
            }
        }
    }

    /// Every lock key is gone soon after the rollout, and a new rollout over every tenant
    /// is blocked by none (each tenant is up to date at once).
    pub async fn no_lock_held(&self) {
        let mut etcd = self.cluster.client().await;
        let locks = format!("{}locks/", self.prefix);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = etcd
                .get(
                    locks.as_str(),
                    Some(etcd_client::GetOptions::new().with_prefix()),
                )
                .await
                .unwrap();
            if left.count() == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "lock keys still held: {:?}",
                left.kvs()
                    .iter()
                    .map(|kv| kv.key_str().unwrap_or_default().to_string())
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let again = self.start_rollout(self.live(), 4).await;
        let end = self
            .until(&again.id, Duration::from_secs(30), |r| r.state != "running")
            .await;
        assert_eq!(end.state, "done", "{end:#?}");
        assert_eq!(
            end.counts.get("done").copied().unwrap_or(0) as usize,
            self.tenants.len(),
            "{end:#?}"
        );
    }
}

/// Tenants by state in a rollout.
pub fn count(r: &proto::Rollout, state: &str) -> u32 {
    r.counts.get(state).copied().unwrap_or(0)
}
