//! The rollout store's requests that replace two with one: the claim loop's read of the active
//! rollouts and their owners, and the owner's poll carrying a save of its document. What they
//! answer must equal what the separate requests answered; a save still needs the ownership.

use chrono::Utc;
use fleetmig::model::Direction;
use fleetmig::rollout::store::{Claimable, Desired, RolloutStore};
use fleetmig::rollout::{
    FailureBudget, RolloutDoc, RolloutSpec, RolloutState, SelectorDoc, TenantDoc, TenantState,
    WavePlan,
};

use crate::harness;

fn doc(id: &str) -> RolloutDoc {
    let now = Utc::now();
    RolloutDoc {
        id: id.into(),
        spec: RolloutSpec {
            app: "aletheia".into(),
            direction: Direction::Upgrade,
            target: "head".into(),
            selector: SelectorDoc::All,
            waves: WavePlan::default(),
            budget: FailureBudget::default(),
            concurrency: 2,
            idempotency_key: String::new(),
            allow_changed: false,
            blockers: None,
        },
        state: RolloutState::Running,
        reason: String::new(),
        waves: vec![],
        tenants: vec![tenant("t1", TenantState::Pending)],
        created_at: now,
        updated_at: now,
        created_by: "test".into(),
        request_id: "r".into(),
        owner: String::new(),
        consecutive_failures: 0,
        lint: vec![],
    }
}

fn tenant(id: &str, state: TenantState) -> TenantDoc {
    TenantDoc {
        id: id.into(),
        wave: 0,
        state,
        error: String::new(),
        revisions: vec![],
        started_at: None,
        finished_at: None,
        attempts: 0,
        replica: "helper".into(),
        applied: 0,
        lock_retries: 0,
        blocked_by: vec![],
    }
}

#[tokio::test]
async fn one_read_finds_the_active_rollouts_and_their_owners() {
    let Some(etcd) = harness::etcd() else {
        return;
    };
    let mut client = etcd.client().await;
    let store = RolloutStore::new(client.clone(), &etcd.prefix("store-claim"));
    let lease = client.lease_grant(30, None).await.unwrap().id();
    store
        .create(&doc("owned"), Some(("me", lease)))
        .await
        .unwrap();
    store.create(&doc("orphan"), None).await.unwrap();
    let Claimable { mut active, owners } = store.active_and_owners().await.unwrap();
    active.sort();
    assert_eq!(active, vec!["orphan".to_string(), "owned".to_string()]);
    assert_eq!(owners.len(), 1);
    assert_eq!(owners.get("owned").map(String::as_str), Some("me"));
    // A final save retires the rollout: no longer active, no owner.
    let mut done = doc("owned");
    done.state = RolloutState::Done;
    assert!(store.save_owned(&done, "me").await.unwrap());
    let Claimable { active, owners } = store.active_and_owners().await.unwrap();
    assert_eq!(active, vec!["orphan".to_string()]);
    assert!(owners.is_empty());
}

#[tokio::test]
async fn the_owners_poll_carries_its_save_and_answers_as_a_poll_does() {
    let Some(etcd) = harness::etcd() else {
        return;
    };
    let mut client = etcd.client().await;
    let store = RolloutStore::new(client.clone(), &etcd.prefix("store-poll"));
    let lease = client.lease_grant(30, None).await.unwrap().id();
    let mut d = doc("r1");
    store.create(&d, Some(("me", lease))).await.unwrap();
    // A helper's result and a pause, as the owner's poll must see them.
    store
        .put_result("r1", &tenant("t1", TenantState::Done), None)
        .await
        .unwrap();
    store.set_desired("r1", Desired::Paused).await.unwrap();
    let polled = store.poll("r1", 0).await.unwrap();
    d.reason = "saved with the poll".into();
    let (saved, saved_poll) = store.save_and_poll(&d, "me", 0).await.unwrap();
    assert!(saved);
    assert_eq!(saved_poll.desired, Desired::Paused);
    assert_eq!(saved_poll.desired, polled.desired);
    assert_eq!(saved_poll.results, polled.results);
    assert_eq!(saved_poll.results.len(), 1);
    // The claim loop's view rides along: what a read of its own answers.
    assert_eq!(saved_poll.claimable, polled.claimable);
    assert_eq!(
        polled.claimable,
        store.active_and_owners().await.unwrap(),
        "the poll carries the claim loop's read"
    );
    assert_eq!(polled.claimable.active, vec!["r1".to_string()]);
    assert_eq!(
        polled.claimable.owners.get("r1").map(String::as_str),
        Some("me")
    );
    assert_eq!(
        store.get("r1").await.unwrap().0.reason,
        "saved with the poll"
    );
    // Results since the revision it read at: none new; a later one is seen.
    let at = saved_poll.at;
    let (_, later) = store.save_and_poll(&d, "me", at).await.unwrap();
    assert!(later.results.is_empty(), "{:?}", later.results);
    store
        .put_result("r1", &tenant("t2", TenantState::Failed), None)
        .await
        .unwrap();
    let (_, later) = store.save_and_poll(&d, "me", at).await.unwrap();
    assert_eq!(
        later
            .results
            .iter()
            .map(|t| t.id.as_str())
            .collect::<Vec<_>>(),
        vec!["t2"]
    );
    // Not the owner: nothing saved, still polled.
    d.reason = "not mine to save".into();
    let (saved, polled) = store.save_and_poll(&d, "other", 0).await.unwrap();
    assert!(!saved);
    assert_eq!(polled.desired, Desired::Paused);
    assert_eq!(polled.results.len(), 2);
    assert_eq!(polled.claimable.active, vec!["r1".to_string()]);
    assert_eq!(
        store.get("r1").await.unwrap().0.reason,
        "saved with the poll"
    );
}
