//! Rollouts against real etcd and Postgres: waves and the canary, failure budgets, pause,
//! resume, cancel, retry, idempotency, slow watchers, three replicas, and `kill -9`.

use std::time::{Duration, Instant};

use fleetmig::grpc::proto;
use proto::rollouts_client::RolloutsClient;
use tonic::transport::Channel;

use crate::daemon_harness::{self as dh, InProcess};
use crate::harness;

/// Two revisions; the second sleeps, so a rollout takes long enough to pause or kill.
fn roll_app(sleep: f32) -> (tempfile::TempDir, std::path::PathBuf) {
    let r1 = "-- revision: r1\n-- down_revision:\n-- +upgrade\nCREATE TABLE items (id bigint PRIMARY KEY);\n-- +downgrade\nDROP TABLE items;\n".to_string();
    let r2 = format!(
        "-- revision: r2\n-- down_revision: r1\n-- +upgrade\nALTER TABLE items ADD COLUMN name text;\nSELECT pg_sleep({sleep});\n-- +downgrade\nALTER TABLE items DROP COLUMN name;\n"
    );
    harness::scratch_app("roll", "", &[("r1.sql", &r1), ("r2.sql", &r2)])
}

struct Setup {
    prefix: String,
    /// (tenant id, database url), in id order.
    tenants: Vec<(String, String)>,
    _app: tempfile::TempDir,
    root: std::path::PathBuf,
}

/// `n` tenants `<hint>-<i>` of the scratch app; `broken` ones already have the table r1
/// creates, so r1 fails there (42P07) until the table is dropped.
async fn setup(hint: &str, n: usize, broken: &[usize], sleep: f32) -> Option<Setup> {
    let pg = harness::postgres()?;
    let etcd = harness::etcd()?;
    let (app, root) = roll_app(sleep);
    let prefix = etcd.prefix(hint);
    let registrar = dh::start(dh::config(&etcd.endpoint, &prefix, &root)).await;
    let mut t = registrar.tenants().await;
    let mut tenants = vec![];
    for i in 0..n {
        let (url, db) = pg.database(&format!("{hint}{i}")).await;
        if broken.contains(&i) {
            let c = fleetmig::pg::connect_str(&url).await.unwrap();
            c.batch_execute("CREATE TABLE items (id int)")
                .await
                .unwrap();
        }
        let id = format!("{hint}-{i}");
        let tier = if i % 2 == 0 { "free" } else { "pro" };
        t.register(proto::RegisterTenantRequest {
            tenant: Some(dh::tenant(&id, "roll", &db, &[("tier", tier)], &[])),
        })
        .await
        .unwrap();
        tenants.push((id, url));
    }
    registrar.shutdown().await.unwrap();
    Some(Setup {
        prefix,
        tenants,
        _app: app,
        root,
    })
}

impl Setup {
    async fn daemon(&self) -> InProcess {
        let etcd = harness::etcd().unwrap();
        dh::start(dh::config(&etcd.endpoint, &self.prefix, &self.root)).await
    }

    /// Upgrade rows per revision in each tenant's history.
    async fn applied_once(&self) {
        for (id, url) in &self.tenants {
            let c = fleetmig::pg::connect_str(url).await.unwrap();
            let rows = c
                .query(
                    "SELECT revision, count(*) FROM fleetmig_history WHERE direction = 'upgrade' GROUP BY revision ORDER BY revision",
                    &[],
                )
                .await
                .unwrap();
            let counts: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            assert_eq!(
                counts,
                vec![("r1".to_string(), 1), ("r2".to_string(), 1)],
                "{id}: each revision applied exactly once"
            );
        }
    }
}

async fn client(d: &InProcess) -> RolloutsClient<Channel> {
    RolloutsClient::new(d.channel().await)
}

fn start_request(
    waves: proto::WavePlan,
    budget: proto::FailureBudget,
    concurrency: u32,
) -> proto::StartRolloutRequest {
    proto::StartRolloutRequest {
        app: "roll".into(),
        selector: Some(proto::Selector {
            all: true,
            ..Default::default()
        }),
        waves: Some(waves),
        budget: Some(budget),
        concurrency,
        ..Default::default()
    }
}

async fn get(c: &mut RolloutsClient<Channel>, id: &str) -> proto::Rollout {
    c.get(proto::GetRolloutRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner()
}

/// Poll until `done(rollout)` (or fail after `within`).
async fn until(
    c: &mut RolloutsClient<Channel>,
    id: &str,
    within: Duration,
    done: impl Fn(&proto::Rollout) -> bool,
) -> proto::Rollout {
    let deadline = Instant::now() + within;
    loop {
        let r = get(c, id).await;
        if done(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "timed out; rollout is {r:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn count(r: &proto::Rollout, state: &str) -> u32 {
    r.counts.get(state).copied().unwrap_or(0)
}

#[tokio::test]
async fn a_canary_failure_halts_before_wave_two_and_retry_finishes_after_the_fix() {
    let Some(s) = setup("canary", 5, &[0], 0.0).await else {
        return;
    };
    let d = s.daemon().await;
    let mut c = client(&d).await;
    let waves = proto::WavePlan {
        canary_count: 1,
        batch_count: 2,
        ..Default::default()
    };
    let r = c
        .start(start_request(waves, proto::FailureBudget::default(), 2))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = r.waves.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["canary", "wave 2", "wave 3"]);
    assert_eq!(r.waves[0].tenant_ids, vec!["canary-0".to_string()]);
    let halted = until(&mut c, &r.id, Duration::from_secs(30), |r| {
        r.state == "halted"
    })
    .await;
    assert!(halted.reason.contains("canary"), "{}", halted.reason);
    assert_eq!(
        (count(&halted, "failed"), count(&halted, "pending")),
        (1, 4)
    );
    assert_eq!(halted.waves[1].state, "pending", "wave 2 never started");
    let failed = halted.tenants.iter().find(|t| t.state == "failed").unwrap();
    assert!(failed.error.contains("42P07"), "{}", failed.error);

    // A halted rollout cannot be paused; fix the cause, then retry the failed tenant.
    let e = c
        .pause(proto::RolloutControlRequest { id: r.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    let db = fleetmig::pg::connect_str(&s.tenants[0].1).await.unwrap();
    db.batch_execute("DROP TABLE items").await.unwrap();
    c.retry_failed(proto::RolloutControlRequest { id: r.id.clone() })
        .await
        .unwrap();
    let done = until(&mut c, &r.id, Duration::from_secs(30), |r| {
        r.state == "done"
    })
    .await;
    assert_eq!(count(&done, "done"), 5, "{done:#?}");
    s.applied_once().await;
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_percent_budget_halts_at_the_right_count() {
    // Tenants run one at a time in id order; pct-3 and pct-6 are broken. With 20%, the first
    // failure (1 of 4 attempted = 25%) halts it.
    let Some(s) = setup("pct", 10, &[3, 6], 0.0).await else {
        return;
    };
    let d = s.daemon().await;
    let mut c = client(&d).await;
    let budget = proto::FailureBudget {
        max_failure_percent: 20,
        ..Default::default()
    };
    let r = c
        .start(start_request(proto::WavePlan::default(), budget, 1))
        .await
        .unwrap()
        .into_inner();
    let halted = until(&mut c, &r.id, Duration::from_secs(30), |r| {
        r.state == "halted"
    })
    .await;
    assert_eq!(count(&halted, "failed"), 1, "{halted:#?}");
    // The tenant in flight when the budget ran out may finish.
    let done = count(&halted, "done");
    assert!((3..=4).contains(&done), "{halted:#?}");
    assert_eq!(count(&halted, "pending"), 10 - 1 - done);
    assert!(
        halted.reason.contains("1 of 4") || halted.reason.contains("1 of 5"),
        "{}",
        halted.reason
    );
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn pause_mid_wave_resume_and_cancel() {
    let Some(s) = setup("pause", 6, &[], 0.8).await else {
        return;
    };
    let d = s.daemon().await;
    let mut c = client(&d).await;
    let r = c
        .start(start_request(
            proto::WavePlan::default(),
            proto::FailureBudget::default(),
            1,
        ))
        .await
        .unwrap()
        .into_inner();
    until(&mut c, &r.id, Duration::from_secs(30), |r| {
        count(r, "done") >= 1
    })
    .await;
    // Each control call answers what it did, once the driving replica has done it.
    let answer = c
        .pause(proto::RolloutControlRequest { id: r.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.state, "paused");
    let paused = until(&mut c, &r.id, Duration::from_secs(10), |r| {
        r.state == "paused"
    })
    .await;
    let done_at_pause = count(&paused, "done");
    assert!(done_at_pause < 6, "{paused:#?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let still = get(&mut c, &r.id).await;
    assert_eq!(
        (still.state.as_str(), count(&still, "done")),
        ("paused", done_at_pause)
    );
    assert_eq!(count(&still, "running"), 0);

    let answer = c
        .resume(proto::RolloutControlRequest { id: r.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.state, "running");
    until(&mut c, &r.id, Duration::from_secs(10), |r| {
        count(r, "done") > done_at_pause
    })
    .await;
    let answer = c
        .cancel(proto::RolloutControlRequest { id: r.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.state, "cancelled");
    let cancelled = until(&mut c, &r.id, Duration::from_secs(10), |r| {
        r.state == "cancelled"
    })
    .await;
    assert!(count(&cancelled, "pending") > 0, "{cancelled:#?}");
    let e = c
        .resume(proto::RolloutControlRequest { id: r.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_same_idempotency_key_starts_one_rollout() {
    let Some(s) = setup("idem", 2, &[], 0.0).await else {
        return;
    };
    let d = s.daemon().await;
    let mut c = client(&d).await;
    let mut req = start_request(
        proto::WavePlan::default(),
        proto::FailureBudget::default(),
        2,
    );
    req.idempotency_key = "deploy-4711".into();
    let a = c.start(req.clone()).await.unwrap().into_inner();
    let b = c.start(req).await.unwrap().into_inner();
    assert_eq!(a.id, b.id);
    let listed = c
        .list(proto::ListRolloutsRequest {
            app: "roll".into(),
            state: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.rollouts.len(), 1);
    until(&mut c, &a.id, Duration::from_secs(30), |r| {
        r.state == "done"
    })
    .await;
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_watcher_that_reads_nothing_slows_nothing_and_then_gets_a_snapshot() {
    let Some(s) = setup("slowwatch", 12, &[], 0.0).await else {
        return;
    };
    let d = s.daemon().await;
    let mut c = client(&d).await;
    let r = c
        .start(start_request(
            proto::WavePlan {
                batch_count: 1,
                ..Default::default()
            },
            proto::FailureBudget::default(),
            1,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut watch = c
        .watch(proto::GetRolloutRequest { id: r.id.clone() })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.kind, "snapshot");
    // The same watch without the gRPC stream in between (whose HTTP/2 window would absorb a
    // few dozen small events): its buffer of 16 is all a stalled watcher holds.
    let mut etcd = harness::etcd().unwrap().client().await;
    let store = fleetmig::rollout::store::RolloutStore::new(etcd.clone(), &s.prefix);
    let mut stalled = fleetmig::rollout::watch::watch(store, &r.id).await.unwrap();
    // Read nothing while the rollout (12 waves, many updates) runs to its end.
    let started = Instant::now();
    until(&mut c, &r.id, Duration::from_secs(60), |r| {
        r.state == "done"
    })
    .await;
    let took = started.elapsed();
    let mut last = None;
    while let Some(e) = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("the stream ends after the final state")
        .unwrap()
    {
        last = Some(e);
    }
    let last = last.expect("at least the final event");
    let (mut last_stalled, mut received) = (None, 0);
    while let Some(e) = tokio::time::timeout(Duration::from_secs(10), stalled.recv())
        .await
        .expect("the watch ends after the final state")
    {
        received += 1;
        last_stalled = Some(e.unwrap());
    }
    // The document changed far more often than the stalled watcher was sent: it skipped
    // updates instead of holding the rollout back, and its last event is a snapshot.
    assert!(matches!(
        last_stalled,
        Some(fleetmig::rollout::watch::WatchEvent::Snapshot(ref d)) if d.state.as_str() == "done"
    ));
    let versions = etcd
        .get(format!("{}rollouts/{}", s.prefix, r.id), None)
        .await
        .unwrap()
        .kvs()[0]
        .version();
    assert!(
        (received as i64) < versions,
        "{received} events for {versions} versions"
    );
    assert_eq!(last.kind, "snapshot");
    let final_state = last.rollout.unwrap();
    assert_eq!(final_state.state, "done");
    assert_eq!(count(&final_state, "done"), 12);
    eprintln!("rollout of 12 waves with a stalled watcher: {took:?}");
    d.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_a_rollout_and_a_watch_on_another_sees_it_end() {
    let Some(s) = setup("three", 12, &[], 0.5).await else {
        return;
    };
    let replicas = [s.daemon().await, s.daemon().await, s.daemon().await];
    let mut on_a = client(&replicas[0]).await;
    let mut on_b = client(&replicas[1]).await;
    // A canary, then 11 tenants in one wave: alone, its owner would take ~3 s for it at
    // concurrency 2; the other replicas join in within a second.
    let r = on_a
        .start(start_request(
            proto::WavePlan {
                canary_count: 1,
                ..Default::default()
            },
            proto::FailureBudget::default(),
            2,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut watch = on_b
        .watch(proto::GetRolloutRequest { id: r.id.clone() })
        .await
        .unwrap()
        .into_inner();
    let mut kinds = vec![];
    let mut last = None;
    while let Some(e) = tokio::time::timeout(Duration::from_secs(60), watch.message())
        .await
        .unwrap()
        .unwrap()
    {
        kinds.push(e.kind.clone());
        last = Some(e);
    }
    let last = last.unwrap().rollout.unwrap();
    assert_eq!(last.state, "done", "{last:#?}");
    assert_eq!(count(&last, "done"), 12);
    // The tenants were shared: more than one replica ran some.
    let ran_by: std::collections::BTreeSet<&str> =
        last.tenants.iter().map(|t| t.replica.as_str()).collect();
    assert!(
        ran_by.len() >= 2,
        "one replica ran every tenant: {ran_by:?}"
    );
    assert!(ran_by.iter().all(|r| !r.is_empty()), "{ran_by:?}");
    assert!(
        kinds.len() >= 2,
        "a snapshot, updates, the final state: {kinds:?}"
    );
    // Every replica answers with the same final state.
    let mut on_c = client(&replicas[2]).await;
    assert_eq!(get(&mut on_c, &r.id).await.state, "done");
    s.applied_once().await;
    for d in replicas {
        d.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_rollout_and_restart_completes_it_applying_nothing_twice() {
    let Some(s) = setup("kill9", 8, &[], 0.4).await else {
        return;
    };
    let etcd = harness::etcd().unwrap();
    let mut a = dh::Process::start(&etcd.endpoint, &s.prefix, &s.root, &[]);
    let channel = Channel::from_shared(format!("http://{}", a.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = RolloutsClient::new(channel);
    let r = c
        .start(start_request(
            proto::WavePlan::default(),
            proto::FailureBudget::default(),
            2,
        ))
        .await
        .unwrap()
        .into_inner();
    until(&mut c, &r.id, Duration::from_secs(30), |r| {
        count(r, "done") >= 2
    })
    .await;
    a.child.kill().unwrap(); // SIGKILL
    a.child.wait().unwrap();
    let before = fleetmig::rollout::store::RolloutStore::new(etcd.client().await, &s.prefix)
        .get(&r.id)
        .await
        .unwrap()
        .0;
    assert_eq!(before.state.as_str(), "running");
    assert!(before.counts().get("done").copied().unwrap_or(0) < 8);

    // The same daemon, restarted: it claims the rollout once the dead lease expires.
    let b = dh::Process::start(&etcd.endpoint, &s.prefix, &s.root, &[]);
    let channel = Channel::from_shared(format!("http://{}", b.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = RolloutsClient::new(channel);
    let done = until(&mut c, &r.id, Duration::from_secs(60), |r| {
        r.state == "done"
    })
    .await;
    assert_eq!(count(&done, "done"), 8, "{done:#?}");
    s.applied_once().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_owner_and_a_running_replica_takes_the_rollout_over() {
    let Some(s) = setup("takeover", 8, &[], 0.4).await else {
        return;
    };
    let etcd = harness::etcd().unwrap();
    let connect = |addr: String| async move {
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap()
    };
    let mut a = dh::Process::start(&etcd.endpoint, &s.prefix, &s.root, &[]);
    let b = dh::Process::start(&etcd.endpoint, &s.prefix, &s.root, &[]);
    // The grpcurl-style Upgrade on A: a rollout A drives from the start.
    let mut upgrade =
        proto::migrations_client::MigrationsClient::new(connect(a.addr.clone()).await)
            .upgrade(proto::MigrateRequest {
                app: "roll".into(),
                target: "head".into(),
                selector: Some(proto::Selector {
                    all: true,
                    ..Default::default()
                }),
                concurrency: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
    let id = match upgrade.message().await.unwrap().unwrap().event {
        Some(proto::migration_event::Event::Accepted(a)) => a.job_id,
        other => panic!("first event: {other:?}"),
    };
    let mut on_b = RolloutsClient::new(connect(b.addr.clone()).await);
    let first = until(&mut on_b, &id, Duration::from_secs(30), |r| {
        count(r, "done") >= 2
    })
    .await;
    let owner_a = first.owner.clone();
    assert!(!owner_a.is_empty(), "{first:#?}");
    a.child.kill().unwrap(); // SIGKILL
    a.child.wait().unwrap();
    // A's stream breaks; B, which never stopped, takes over once A's lease expires.
    while let Ok(Some(_)) = upgrade.message().await {}
    let done = until(&mut on_b, &id, Duration::from_secs(60), |r| {
        r.state == "done"
    })
    .await;
    assert_eq!(count(&done, "done"), 8, "{done:#?}");
    assert!(
        done.tenants.iter().any(|t| t.replica != owner_a),
        "B ran tenants: {done:#?}"
    );
    s.applied_once().await;
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_is_a_rollout_cancelled_from_another_replica() {
    let Some(s) = setup("upcancel", 8, &[], 0.5).await else {
        return;
    };
    let (a, b) = (s.daemon().await, s.daemon().await);
    let mut stream = a
        .migrations()
        .await
        .upgrade(proto::MigrateRequest {
            app: "roll".into(),
            selector: Some(proto::Selector {
                all: true,
                ..Default::default()
            }),
            concurrency: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut events = vec![];
    let id = loop {
        let e = stream.message().await.unwrap().unwrap();
        if let Some(proto::migration_event::Event::Accepted(acc)) = &e.event {
            break acc.job_id.clone();
        }
    };
    // The Upgrade is visible as a rollout on every replica.
    let mut on_b = client(&b).await;
    assert_eq!(get(&mut on_b, &id).await.state, "running");
    // Cancel reaches it from the replica that does not drive it.
    let cancelled = b
        .migrations()
        .await
        .cancel(proto::CancelRequest { job_id: id.clone() })
        .await
        .unwrap()
        .into_inner()
        .cancelled;
    assert!(cancelled);
    while let Some(e) = stream.message().await.unwrap() {
        events.push(e);
    }
    let summary = dh::summary(&events);
    assert!(summary.cancelled, "{summary:?}");
    assert!(
        summary.skipped >= 1,
        "tenants not started are skipped: {summary:?}"
    );
    assert_eq!(summary.job_id, id);
    let r = until(&mut on_b, &id, Duration::from_secs(10), |r| {
        r.state == "cancelled"
    })
    .await;
    assert_eq!(
        count(&r, "done"),
        summary.done + summary.up_to_date,
        "the stream and the rollout agree: {summary:?} {r:#?}"
    );
    // Cancelling again: already over.
    assert!(
        !b.migrations()
            .await
            .cancel(proto::CancelRequest { job_id: id })
            .await
            .unwrap()
            .into_inner()
            .cancelled
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_deregistered_mid_rollout_fails_alone() {
    let Some(s) = setup("gone", 3, &[], 0.0).await else {
        return;
    };
    let d = s.daemon().await;
    let mut c = client(&d).await;
    // The canary, then 2 s of bake time in which a wave-2 tenant is deregistered.
    let r = c
        .start(start_request(
            proto::WavePlan {
                canary_count: 1,
                bake_seconds: 2,
                ..Default::default()
            },
            proto::FailureBudget::default(),
            2,
        ))
        .await
        .unwrap()
        .into_inner();
    until(&mut c, &r.id, Duration::from_secs(30), |r| {
        r.waves.first().is_some_and(|w| w.state == "baking")
    })
    .await;
    let gone = s.tenants[2].0.clone();
    d.tenants()
        .await
        .deregister(proto::DeregisterTenantRequest {
            id: gone.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let end = until(&mut c, &r.id, Duration::from_secs(30), |r| {
        r.state == "done"
    })
    .await;
    let failed: Vec<_> = end.tenants.iter().filter(|t| t.state == "failed").collect();
    assert_eq!(failed.len(), 1, "{end:#?}");
    assert_eq!(failed[0].tenant_id, gone);
    assert!(failed[0].error.contains("no longer registered"), "{end:#?}");
    assert_eq!(count(&end, "done"), 2);
    d.shutdown().await.unwrap();
}

// The CLI runs as a blocking child process: the in-process daemon needs its own threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_starts_watches_and_lists_rollouts() {
    let Some(s) = setup("rollcli", 4, &[2], 0.0).await else {
        return;
    };
    let d = s.daemon().await;
    let server = format!("http://{}", d.addr);
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetmig"))
            .args(args)
            .args(["--server", &server])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // rollcli-2 is broken: the rollout ends done with a failure (no budget), exit 1.
    let (code, stdout, stderr) = run(&[
        "rollout",
        "start",
        "--app",
        "roll",
        "--canary",
        "1",
        "--batch",
        "2",
        "--order",
        "tier=pro,free",
        "-o",
        "json",
    ]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events[0]["kind"], "snapshot");
    let last = &events.last().unwrap()["rollout"];
    assert_eq!(last["state"], "done");
    // Ordered by tier: pro tenants (odd ids) first, so the canary is rollcli-1.
    assert_eq!(last["waves"][0]["tenant_ids"][0], "rollcli-1");
    assert!(stderr.contains("1 tenant(s) failed"), "{stderr}");
    let id = last["id"].as_str().unwrap().to_string();
    let (code, stdout, _) = run(&["rollout", "ls", "--app", "roll"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains(&id) && stdout.contains("done"), "{stdout}");
    let (code, stdout, _) = run(&["rollout", "status", &id]);
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains("FAILED rollcli-2") && stdout.contains("42P07"),
        "{stdout}"
    );
    d.shutdown().await.unwrap();
}
