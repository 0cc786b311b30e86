//! Fault scenarios against three `fleetmig serve` replicas, a three-member etcd cluster and
//! real Postgres ([`crate::chaos_fixture`]): an etcd member killed, the rollout's owner
//! killed, a cancel while the owner is dead, a quorum loss, a replica's wall clock jumping.
//! Each ends with the per-tenant checks. Small versions run in every `cargo test`;
//! `FLEETMIG_CHAOS=1` (`make chaos`) runs longer ones. Measured times are printed
//! (`-- --nocapture`).

use std::time::{Duration, Instant};

use fleetmig::grpc::proto;

use crate::chaos_fixture::{Chaos, SERIAL, TTL, count, long};
use crate::harness;

/// How often a replica looks for rollouts nobody drives (`rollout::driver::CLAIM_EVERY`).
const CLAIM_PERIOD: Duration = Duration::from_secs(1);

fn tenants() -> usize {
    if long() { 40 } else { 24 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_etcd_member_killed_mid_rollout_fails_no_tenant_and_leaves_no_lock() {
    let _one = SERIAL.lock().await;
    let Some(mut c) = Chaos::setup("memberkill", tenants(), 0.6, &[]).await else {
        return;
    };
    let r = c.start_rollout(0, 1).await;
    c.until(&r.id, Duration::from_secs(30), |r| count(r, "done") >= 3)
        .await;
    // The member every replica lists first (the leader at the start): kill -9.
    let first = c.order[0];
    c.cluster.kill(first);
    let killed = Instant::now();
    tokio::time::sleep_until((killed + Duration::from_secs(10)).into()).await;
    c.cluster.restart(first);
    let end = c
        .until(&r.id, Duration::from_secs(60), |r| r.state != "running")
        .await;
    eprintln!(
        "member kill: rollout over {:?} after the kill",
        killed.elapsed()
    );
    assert_eq!(end.state, "done", "{end:#?}");
    assert_eq!(count(&end, "failed"), 0, "no tenant fails: {end:#?}");
    assert_eq!(count(&end, "done") as usize, c.tenants.len());
    c.check(&end).await;
    c.no_lock_held().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_killed_while_others_help_is_replaced_within_a_ttl_and_a_claim_period() {
    let _one = SERIAL.lock().await;
    let Some(mut c) = Chaos::setup("ownerkill", tenants(), 0.6, &[]).await else {
        return;
    };
    let r = c.start_rollout(0, 1).await;
    let before = c
        .until(&r.id, Duration::from_secs(30), |r| {
            !r.owner.is_empty() && count(r, "done") >= 3
        })
        .await;
    let dead = c.replica_of(&before.owner).expect("the owner is a replica");
    let watcher = (0..3).find(|&i| i != dead).unwrap();
    let mut watch = c
        .rollouts(watcher)
        .await
        .watch(proto::GetRolloutRequest { id: r.id.clone() })
        .await
        .unwrap()
        .into_inner();
    // The others are helping (each in a pass over the wave) when the owner dies.
    c.kill_replica(dead);
    let killed = Instant::now();
    let taken = c
        .until(&r.id, Duration::from_secs(30), |x| {
            !x.owner.is_empty() && x.owner != before.owner
        })
        .await;
    let takeover = killed.elapsed();
    eprintln!("owner kill: new owner after {takeover:?} (lease TTL {TTL:?})");
    let bound = TTL + CLAIM_PERIOD + Duration::from_millis(1500);
    assert!(
        takeover <= bound,
        "takeover took {takeover:?}, more than {bound:?}"
    );
    // Watch (on a live replica) shows the new owner too.
    let shown = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(e) = watch.message().await.unwrap() {
            if e.rollout.is_some_and(|d| d.owner == taken.owner) {
                return;
            }
        }
        panic!("the watch ended without showing the new owner");
    })
    .await;
    assert!(shown.is_ok(), "the watch shows the new owner");
    let end = c
        .until(&r.id, Duration::from_secs(60), |r| r.state != "running")
        .await;
    assert_eq!(end.state, "done", "{end:#?}");
    assert_eq!(count(&end, "failed"), 0, "{end:#?}");
    c.check(&end).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_while_the_owner_is_dead_answers_the_state_the_databases_are_in() {
    let _one = SERIAL.lock().await;
    let Some(mut c) = Chaos::setup("deadcancel", tenants(), 0.6, &[]).await else {
        return;
    };
    let r = c.start_rollout(0, 1).await;
    let before = c
        .until(&r.id, Duration::from_secs(30), |r| {
            !r.owner.is_empty() && count(r, "done") >= 3
        })
        .await;
    let dead = c.replica_of(&before.owner).expect("the owner is a replica");
    c.kill_replica(dead);
    let asked = Instant::now();
    let answer = c
        .rollouts(c.live())
        .await
        .cancel(proto::RolloutControlRequest { id: r.id.clone() })
        .await
        .unwrap()
        .into_inner();
    eprintln!(
        "dead-owner cancel: answered {} after {:?}, counts {:?}",
        answer.state,
        asked.elapsed(),
        answer.counts
    );
    assert_eq!(
        answer.state, "cancelled",
        "Cancel answers what it did: {answer:#?}"
    );
    c.check(&answer).await;
    let after = c.get(&r.id).await;
    assert_eq!(after.state, "cancelled");
    c.check(&after).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_loss_stops_new_work_within_the_lease_deadline_and_work_resumes_after() {
    let _one = SERIAL.lock().await;
    let outage = if long() {
        Duration::from_secs(30)
    } else {
        Duration::from_secs(6)
    };
    let Some(mut c) = Chaos::setup("quorum", tenants(), 0.6, &[]).await else {
        return;
    };
    let pg = harness::postgres().unwrap();
    let admin = fleetmig::pg::connect_str(&pg.url("postgres"))
        .await
        .unwrap();
    let clock = || async {
        admin
            .query_one("SELECT clock_timestamp()", &[])
            .await
            .unwrap()
            .get::<_, chrono::DateTime<chrono::Utc>>(0)
    };
    let r = c.start_rollout(0, 1).await;
    c.until(&r.id, Duration::from_secs(30), |r| count(r, "done") >= 3)
        .await;
    // Two of three members down: no quorum.
    let (b, d) = (c.order[1], c.order[2]);
    c.cluster.kill(b);
    c.cluster.kill(d);
    let lost_at = clock().await;
    tokio::time::sleep(outage).await;
    let back_at = clock().await;
    c.cluster.restart(b);
    c.cluster.restart(d);
    let restored = Instant::now();
    // Work resumes: a tenant starts (its first revision is recorded) after quorum returns.
    let resume_bound = TTL + Duration::from_secs(10);
    let resumed = loop {
        let mut started = false;
        for (_, url) in &c.tenants {
            let db = fleetmig::pg::connect_str(url).await.unwrap();
            if let Ok(row) = db
                .query_one(
                    "SELECT count(*) FROM fleetmig_history WHERE revision = 'c1' AND applied_at > $1",
                    &[&back_at],
                )
                .await
            {
                started |= row.get::<_, i64>(0) > 0;
            }
        }
        if started {
            break restored.elapsed();
        }
        assert!(
            restored.elapsed() < resume_bound + Duration::from_secs(5),
            "no tenant started within {resume_bound:?} after quorum returned\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("quorum loss of {outage:?}: work resumed {resumed:?} after quorum returned");
    assert!(resumed <= resume_bound, "resumed after {resumed:?}");
    let end = c
        .until(&r.id, Duration::from_secs(90), |r| r.state != "running")
        .await;
    assert_eq!(end.state, "done", "{end:#?}");
    assert_eq!(count(&end, "failed"), 0, "{end:#?}");
    c.check(&end).await;
    // No replica started a tenant once its lease deadline had passed, until quorum returned.
    let quiet_from =
        lost_at + chrono::Duration::from_std(TTL).unwrap() + chrono::Duration::milliseconds(500);
    for (id, url) in &c.tenants {
        let db = fleetmig::pg::connect_str(url).await.unwrap();
        let started: i64 = db
            .query_one(
                "SELECT count(*) FROM fleetmig_history WHERE revision = 'c1' AND applied_at > $1 AND applied_at < $2",
                &[&quiet_from, &back_at],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(started, 0, "{id} started during the quorum loss");
    }
    c.no_lock_held().await;
}

/// libfaketime, from Debian's `libfaketime` (`make setup` installs it).
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_jump_of_30_seconds_on_a_replica_changes_nothing() {
    let _one = SERIAL.lock().await;
    if !std::path::Path::new(FAKETIME).exists() {
        harness::missing("libfaketime", format!("{FAKETIME} not found"));
        return;
    }
    // 3 s after it starts, replica 0's wall clock jumps 30 s ahead and replica 1's 30 s
    // back; their monotonic clocks (every deadline) go on as before.
    let jump = |offset: &'static str| {
        [
            ("LD_PRELOAD", FAKETIME),
            ("FAKETIME", offset),
            ("FAKETIME_START_AFTER_SECONDS", "3"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ]
    };
    let (ahead, behind) = (jump("+30s"), jump("-30s"));
    let Some(c) = Chaos::setup("clockjump", tenants(), 0.6, &[&ahead, &behind]).await else {
        return;
    };
    let r = c.start_rollout(0, 1).await;
    let end = c
        .until(&r.id, Duration::from_secs(60), |r| r.state != "running")
        .await;
    assert_eq!(end.state, "done", "{end:#?}");
    assert_eq!(count(&end, "failed"), 0, "{end:#?}");
    c.check(&end).await;
    // The jump happened (a tenant replica 0 ran carries its clock, 30 s ahead)...
    let now = chrono::Utc::now();
    let shifted = end.tenants.iter().any(|t| {
        t.finished_at
            .as_ref()
            .is_some_and(|f| f.seconds > now.timestamp() + 15)
    });
    assert!(shifted, "replica 0's wall clock jumped: {end:#?}");
    // ...and no lease was lost, no lock wait or bake misjudged.
    for (i, p) in c.replicas.iter().enumerate() {
        let logs = p.as_ref().unwrap().logs();
        assert!(
            !logs.contains("etcd lease lost"),
            "replica {i} lost its lease:\n{logs}"
        );
    }
}
