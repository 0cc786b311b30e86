//! The etcd lock session against a real etcd: a release rides on the session's next acquire
//! (one etcd write per tenant in a job, not two), or goes alone shortly after; audit records
//! waiting ride on either.

use std::time::Duration;

use fleetmig::lock::DistributedLock;
use fleetmig::lock::etcd::EtcdSession;
use fleetmig::registry::DatabaseKey;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::harness;

async fn exists(client: &mut etcd_client::Client, key: &str) -> bool {
    client.get(key, None).await.unwrap().count() > 0
}

/// The keys starting with `start` as they stood at etcd `revision`, with their last change.
async fn keys_at(client: &etcd_client::Client, start: &str, revision: i64) -> Vec<(Vec<u8>, i64)> {
    let options = etcd_client::GetOptions::new()
        .with_prefix()
        .with_revision(revision);
    let r = client.clone().get(start, Some(options)).await.unwrap();
    r.kvs()
        .iter()
        .map(|kv| (kv.key().to_vec(), kv.mod_revision()))
        .collect()
}

/// An audit record of a tenant's run.
fn applied(tenant: &str) -> fleetmig::audit::AuditRecord {
    let caller = fleetmig::auth::Caller {
        subject: "tester".into(),
        via: fleetmig::auth::Via::Anonymous,
        scopes: vec![],
        request_id: "r1".into(),
        certificate: None,
    };
    fleetmig::audit::AuditRecord::new(&caller, "upgrade tenant", "done").tenant(tenant)
}

/// A lock session "a" whose acquires and releases carry the records of an etcd audit log.
async fn audited_session(
    client: &etcd_client::Client,
    prefix: &str,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> (std::sync::Arc<EtcdSession>, fleetmig::audit::AuditLog) {
    let session = session(client, prefix, "a", tracker, stop).await;
    let audit =
        fleetmig::audit::AuditLog::to_etcd(client.clone(), prefix, 1000, tracker, stop.clone());
    session.carry_audit(audit.shelf().expect("an etcd audit log"));
    (session, audit)
}

/// A lock session named `owner` with a 5 s lease, its tasks on `tracker` until `stop`.
async fn session(
    client: &etcd_client::Client,
    prefix: &str,
    owner: &str,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> std::sync::Arc<EtcdSession> {
    EtcdSession::start(
        client.clone(),
        prefix,
        Duration::from_secs(5),
        owner,
        tracker,
        stop.clone(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn releases_ride_on_the_next_acquire_or_go_alone() {
    let Some(etcd) = harness::etcd() else { return };
    let prefix = etcd.prefix("locks");
    let mut client = etcd.client().await;
    let (tracker, stop) = (TaskTracker::new(), CancellationToken::new());
    let (a, b) = (
        session(&client, &prefix, "a", &tracker, &stop).await,
        session(&client, &prefix, "b", &tracker, &stop).await,
    );
    let (db1, db2) = (
        DatabaseKey("h:5432/one".into()),
        DatabaseKey("h:5432/two".into()),
    );
    let (key1, key2) = (
        format!("{prefix}locks/{db1}"),
        format!("{prefix}locks/{db2}"),
    );

    let one = a.try_lock(&db1).await.unwrap();
    let first_token = one.token();
    one.release().await;
    // Queued, not yet sent: the next acquire carries it.
    let two = a.try_lock(&db2).await.unwrap();
    assert!(!exists(&mut client, &key1).await);
    // In the same etcd transaction: just before two's lock was written, one's still stood.
    let created = client.get(key2.as_str(), None).await.unwrap().kvs()[0].create_revision();
    let before = client
        .get(
            key1.as_str(),
            Some(etcd_client::GetOptions::new().with_revision(created - 1)),
        )
        .await
        .unwrap();
    assert_eq!(before.count(), 1, "the release rode on the next acquire");
    // Nothing to ride on: the release goes alone within a moment.
    two.release().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while exists(&mut client, &key2).await {
        assert!(tokio::time::Instant::now() < deadline, "sent alone");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The same database again while its release is queued: released first, then taken anew.
    let again = a.try_lock(&db1).await.unwrap();
    again.release().await;
    let third = a.try_lock(&db1).await.unwrap();
    assert!(third.token() > first_token, "a new holder, a larger token");

    // Another daemon waiting for the lock gets it once the release goes out.
    let waiter = tokio::spawn({
        let b = b.clone();
        let db1 = db1.clone();
        async move { b.lock(&db1, Duration::from_secs(5)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished(), "held by a");
    let held = third.token();
    third.release().await;
    let b_holds = tokio::time::timeout(Duration::from_secs(3), waiter)
        .await
        .expect("the waiter is served")
        .unwrap()
        .unwrap();
    assert!(b_holds.token() > held);

    // An acquire given up at any point (a job cancelled, an RPC dropped) loses no release it
    // had taken along: b still holds db1, so a's acquires carry riders and fail.
    let db3 = DatabaseKey("h:5432/three".into());
    let key3 = format!("{prefix}locks/{db3}");
    for give_up_after_ms in [0, 1, 2, 5, 10, 20] {
        a.try_lock(&db3).await.unwrap().release().await;
        let _ = tokio::time::timeout(
            Duration::from_millis(give_up_after_ms),
            a.lock(&db1, Duration::from_secs(5)),
        )
        .await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while exists(&mut client, &key3).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "release lost by an acquire given up after {give_up_after_ms} ms"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    b_holds.release().await;
    stop.cancel();
    tracker.close();
    tracker.wait().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_release_sent_alone_carries_the_audit_records_waiting() {
    let Some(etcd) = harness::etcd() else { return };
    let prefix = etcd.prefix("locks-audit");
    let mut client = etcd.client().await;
    let (tracker, stop) = (TaskTracker::new(), CancellationToken::new());
    let (session, audit) = audited_session(&client, &prefix, &tracker, &stop).await;
    let db = DatabaseKey("h:5432/audited".into());
    let key = format!("{prefix}locks/{db}");
    let guard = session.try_lock(&db).await.unwrap();
    // The last tenant of a job: its record is queued, and no acquire follows.
    audit.record(applied("t1"));
    guard.release().await;
    // The release goes alone within a moment (the audit writer would wait a second).
    let deadline = tokio::time::Instant::now() + Duration::from_millis(900);
    while exists(&mut client, &key).await {
        assert!(tokio::time::Instant::now() < deadline, "sent alone");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let records = harness::audit_kvs(&mut client, &prefix).await;
    assert_eq!(records.len(), 1, "the record was written with the release");
    // In the same etcd transaction: the lock key stood just before the record was written.
    let written = records[0].mod_revision();
    let at = |revision| keys_at(&client, &key, revision);
    assert_eq!(
        (at(written - 1).await.len(), at(written).await.len()),
        (1, 0)
    );
    stop.cancel();
    tracker.close();
    tracker.wait().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn while_acquires_keep_coming_no_audit_record_is_written_alone() {
    let Some(etcd) = harness::etcd() else { return };
    let prefix = etcd.prefix("locks-audit-steady");
    let client = etcd.client().await;
    let (tracker, stop) = (TaskTracker::new(), CancellationToken::new());
    let (session, audit) = audited_session(&client, &prefix, &tracker, &stop).await;
    // A record every 150 ms, each taken by the next acquire (the locks are held, so no
    // release goes alone to carry one): no record waits a second (850 ms to spare for a slow
    // acquire), though the writer first heard of one 1.35 s before the last was queued.
    let mut held = vec![];
    for i in 0..10 {
        audit.record(applied(&format!("t{i}")));
        tokio::time::sleep(Duration::from_millis(150)).await;
        let guard = session
            .try_lock(&DatabaseKey(format!("h:5432/steady{i}")))
            .await
            .unwrap();
        held.push(guard);
    }
    for guard in held {
        guard.release().await;
    }
    // Long enough for a writer to write alone what it wrongly thought had waited.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let records = harness::audit_kvs(&mut client.clone(), &prefix).await;
    assert_eq!(records.len(), 10, "every record written");
    // Each was written by a transaction that also changed a lock key.
    let dir = format!("{prefix}locks/");
    let locks_at = |revision| keys_at(&client, &dir, revision);
    for kv in &records {
        let written = kv.mod_revision();
        assert_ne!(
            locks_at(written - 1).await,
            locks_at(written).await,
            "the record {} was written alone",
            kv.key_str().unwrap()
        );
    }
    stop.cancel();
    tracker.close();
    tracker.wait().await;
}
