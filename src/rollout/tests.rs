use std::collections::BTreeMap;

use super::*;
use crate::registry::tenant::{ConnectionSpec, SslMode, TenantId};

fn tenant(id: &str, tier: &str) -> Tenant {
    Tenant {
        id: TenantId::parse("id", id).unwrap(),
        app: "a".into(),
        connection: ConnectionSpec {
            host: "h".into(),
            port: 5432,
            dbname: id.into(),
            user: "u".into(),
            sslmode: SslMode::default(),
            schema: None,
            password: None,
            options: Default::default(),
        },
        labels: BTreeMap::from([("tier".to_string(), tier.to_string())]),
        placeholders: BTreeMap::new(),
        created_at: Utc::now(),
        updated_at: Utc::now(),
    }
}

fn fleet() -> Vec<Tenant> {
    vec![
        tenant("e1", "enterprise"),
        tenant("f2", "free"),
        tenant("p1", "pro"),
        tenant("f1", "free"),
        tenant("x1", "other"),
        tenant("f3", "free"),
    ]
}

fn ids(waves: &[WaveDoc]) -> Vec<Vec<&str>> {
    waves
        .iter()
        .map(|w| w.tenant_ids.iter().map(String::as_str).collect())
        .collect()
}

#[test]
fn waves_follow_label_order_then_id_with_a_canary_and_batches() {
    let plan = WavePlan {
        canary_count: 1,
        batch_count: 2,
        order_label: "tier".into(),
        order_values: vec!["free".into(), "pro".into(), "enterprise".into()],
        ..WavePlan::default()
    };
    let waves = plan_waves(&fleet(), &plan);
    assert_eq!(
        ids(&waves),
        vec![vec!["f1"], vec!["f2", "f3"], vec!["p1", "e1"], vec!["x1"]]
    );
    let names: Vec<&str> = waves.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["canary", "wave 2", "wave 3", "wave 4"]);
}

#[test]
fn canary_by_labels_and_batches_by_percent() {
    let plan = WavePlan {
        canary_labels: BTreeMap::from([("tier".into(), "pro".into())]),
        batch_percent: 50, // of 6 tenants: 3 a wave
        ..WavePlan::default()
    };
    assert_eq!(
        ids(&plan_waves(&fleet(), &plan)),
        vec![vec!["p1"], vec!["e1", "f1", "f2"], vec!["f3", "x1"]]
    );
    // No canary, no batches: one wave, named "wave 1".
    let waves = plan_waves(&fleet(), &WavePlan::default());
    assert_eq!(waves.len(), 1);
    assert_eq!(waves[0].name, "wave 1");
    assert!(plan_waves(&[], &WavePlan::default()).is_empty());
}

#[test]
fn the_budget_halts_on_counts_percentages_streaks_and_any_canary_failure() {
    let t = |attempted, failed| Tally { attempted, failed };
    let none = FailureBudget::default();
    assert_eq!(over_budget(&none, false, t(10, 9), t(10, 9), 9), None);
    assert!(
        over_budget(&none, true, t(1, 1), t(1, 1), 1)
            .unwrap()
            .contains("canary")
    );
    let count = FailureBudget {
        max_failures: 2,
        ..none
    };
    assert_eq!(over_budget(&count, false, t(5, 2), t(5, 2), 0), None);
    assert!(
        over_budget(&count, false, t(5, 1), t(9, 3), 0)
            .unwrap()
            .contains("overall")
    );
    let pct = FailureBudget {
        max_failure_percent: 30,
        ..none
    };
    assert_eq!(over_budget(&pct, false, t(10, 3), t(10, 3), 0), None);
    let r = over_budget(&pct, false, t(10, 4), t(10, 4), 0).unwrap();
    assert!(r.contains("4 of 10") && r.contains("30%"), "{r}");
    let streak = FailureBudget {
        max_consecutive_failures: 3,
        ..none
    };
    assert_eq!(over_budget(&streak, false, t(9, 2), t(9, 2), 2), None);
    assert!(over_budget(&streak, false, t(9, 3), t(9, 3), 3).is_some());
}

#[test]
fn a_ten_thousand_tenant_document_fits_in_one_etcd_request_and_round_trips() {
    let now = Utc::now();
    let tenants = (0..10_000)
        .map(|i| TenantDoc {
            id: format!("tenant-{i:05}"),
            wave: 0,
            state: TenantState::Done,
            error: if i % 100 == 0 {
                format!(
                    "revision 0002: SQLSTATE 42P07: 0002.sql:3: relation \"t{i}\" already exists"
                )
            } else {
                String::new()
            },
            revisions: vec!["0003".into()],
            started_at: Some(now),
            finished_at: Some(now + chrono::Duration::milliseconds(i)),
            attempts: 1,
            replica: format!(
                "fleetmig-{} pid {} lease 694d9a{:x}",
                i % 3,
                4000 + i % 3,
                i % 3
            ),
            applied: 3,
            lock_retries: 0,
            blocked_by: vec![],
        })
        .collect();
    let doc = RolloutDoc {
        id: "0123456789abcdef".into(),
        spec: RolloutSpec {
            app: "aletheia".into(),
            direction: crate::model::Direction::Upgrade,
            target: "head".into(),
            selector: SelectorDoc::All,
            waves: WavePlan::default(),
            budget: FailureBudget::default(),
            concurrency: 8,
            idempotency_key: String::new(),
            allow_changed: false,
            blockers: None,
        },
        state: RolloutState::Done,
        reason: String::new(),
        waves: vec![],
        tenants,
        created_at: now,
        updated_at: now,
        created_by: "ops (token)".into(),
        request_id: "r".into(),
        owner: String::new(),
        consecutive_failures: 0,
        lint: vec![],
    };
    let bytes = store::RolloutStore::encode(&doc);
    let plain = serde_json::to_vec(&doc).unwrap().len();
    assert!(
        bytes.len() < 1024 * 1024,
        "{} bytes compressed ({plain} plain): over etcd's 1.5 MiB request limit soon",
        bytes.len()
    );
    assert!(
        plain > 1536 * 1024,
        "the plain document ({plain}) would not fit"
    );
    eprintln!(
        "10,000 tenants: {plain} bytes of JSON, {} compressed",
        bytes.len()
    );
    assert_eq!(store::RolloutStore::decode("x", &bytes).unwrap(), doc);
    // Documents written before compression still read.
    assert_eq!(
        store::RolloutStore::decode("x", &serde_json::to_vec(&doc).unwrap()).unwrap(),
        doc
    );
}

#[test]
fn a_carried_view_wants_a_look_only_when_the_claim_loop_would_act() {
    use super::driver::anything_to_do;
    use super::store::Claimable;
    use std::collections::{HashMap, HashSet};
    let set = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<HashSet<_>>();
    let view = |active: &[&str], owners: &[(&str, &str)]| Claimable {
        active: active.iter().map(|s| s.to_string()).collect(),
        owners: owners
            .iter()
            .map(|(id, o)| (id.to_string(), o.to_string()))
            .collect::<HashMap<_, _>>(),
    };
    // Driving our own rollout, helping with another's: nothing to do.
    let steady = view(&["mine", "theirs"], &[("mine", "me"), ("theirs", "r2")]);
    assert!(!anything_to_do(
        &steady,
        "me",
        &set(&["mine"]),
        &set(&["theirs"])
    ));
    // Nothing active: nothing to do.
    assert!(!anything_to_do(&view(&[], &[]), "me", &set(&[]), &set(&[])));
    // An owner died (its key is gone): claim it.
    let orphan = view(&["mine", "theirs"], &[("mine", "me")]);
    assert!(anything_to_do(
        &orphan,
        "me",
        &set(&["mine"]),
        &set(&["theirs"])
    ));
    // Ours but not driven here (our driver stopped on an etcd error): drive it again.
    assert!(anything_to_do(&steady, "me", &set(&[]), &set(&["theirs"])));
    // Another replica's rollout no helper pass of ours runs on: help.
    assert!(anything_to_do(&steady, "me", &set(&["mine"]), &set(&[])));
}
