//! Where the daemon's etcd writes come from. After a phase, etcd's own history of the daemon's
//! keys over the phase is read back (a watch from the revision before it, outside the measured
//! time and after the request counters were read), and every write request, one etcd revision,
//! is put under its source by the keys it touched: a lock acquire (with the releases riding in
//! it), a release sent alone, a rollout document save, the audit, and so on. etcd's request
//! counters give the rest by method: what is not a write is a read (Range, a read-only Txn, or
//! a Txn whose compare failed), a keep-alive or a watch.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};

/// The store's current revision.
pub async fn revision(client: &mut Client) -> i64 {
    let r = client
        .get("\0", Some(GetOptions::new().with_count_only()))
        .await
        .unwrap();
    r.header().map_or(0, |h| h.revision())
}

/// The sources of a write request, by the keys of one revision under the daemon's prefix.
fn source(keys: &[(String, bool)]) -> &'static str {
    let has = |dir: &str, put: Option<bool>| {
        keys.iter()
            .any(|(k, p)| k.starts_with(dir) && put.is_none_or(|want| *p == want))
    };
    if has("locks/", Some(true)) {
        "lock acquires"
    } else if has("rollout-active/", Some(true)) {
        "rollout created"
    } else if has("rollouts/", Some(true)) {
        "rollout document saves"
    } else if has("audit/", Some(true)) {
        "audit records"
    } else if has("audit/", Some(false)) {
        "audit trims"
    } else if has("rollout-gate/", None) {
        "rollout gate"
    } else if has("rollout-owner/", None) {
        "rollout ownership"
    } else if has("rollout-tenants/", None) {
        "helpers' claims"
    } else if has("tenants/", None) {
        "registry"
    } else if has("locks/", Some(false)) {
        "releases sent alone"
    } else {
        "other writes"
    }
}

/// Write requests under `prefix` in revisions `from + 1 ..= to`, by source, plus the number
/// of lock releases that rode in an acquire (`"(releases riding)"`, not a request of its own),
/// and of acquires that carried audit records (`"(audit records riding)"`).
pub async fn writes(
    client: &mut Client,
    prefix: &str,
    from: i64,
    to: i64,
) -> BTreeMap<String, f64> {
    let mut by_revision: BTreeMap<i64, Vec<(String, bool)>> = BTreeMap::new();
    if to > from {
        let mut stream = client
            .watch(
                prefix,
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(from + 1),
                ),
            )
            .await
            .unwrap();
        // The replay ends with revision `to`, unless the last writes were not ours: then a
        // quiet moment ends it.
        'replay: while let Ok(Ok(Some(msg))) =
            tokio::time::timeout(Duration::from_millis(300), stream.message()).await
        {
            for e in msg.events() {
                let Some(kv) = e.kv() else { continue };
                if kv.mod_revision() > to {
                    break 'replay;
                }
                let key = String::from_utf8_lossy(kv.key());
                let key = key.strip_prefix(prefix).unwrap_or(&key).to_string();
                by_revision
                    .entry(kv.mod_revision())
                    .or_default()
                    .push((key, e.event_type() == EventType::Put));
                if kv.mod_revision() == to {
                    break 'replay;
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    for keys in by_revision.values() {
        let s = source(keys);
        *out.entry(s.to_string()).or_insert(0.0) += 1.0;
        if s == "lock acquires" {
            let riding: BTreeSet<&String> = keys
                .iter()
                .filter(|(k, put)| k.starts_with("locks/") && !put)
                .map(|(k, _)| k)
                .collect();
            *out.entry("(releases riding)".to_string()).or_insert(0.0) += riding.len() as f64;
            let audit = keys.iter().any(|(k, put)| k.starts_with("audit/") && *put);
            if audit {
                *out.entry("(audit records riding)".to_string())
                    .or_insert(0.0) += 1.0;
            }
        }
    }
    out
}
