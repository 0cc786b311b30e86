//! Following a rollout: a snapshot, then updates (the rollout's new state and the tenants that
//! changed) as its document changes in etcd, on any replica. Each watcher has a small buffer;
//! one that falls behind misses updates and gets a fresh snapshot when it reads again, so a
//! stalled watcher never holds anything up.

use tokio::sync::mpsc;

use super::store::{RolloutStore, StoreError};
use super::{RolloutDoc, TenantDoc};

#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    Snapshot(RolloutDoc),
    Update {
        rollout: RolloutDoc,
        changed: Vec<TenantDoc>,
    },
}

/// Updates a watcher may have unread before it is moved to snapshots.
const BUFFER: usize = 16;

fn changed(before: &RolloutDoc, after: &RolloutDoc) -> Vec<TenantDoc> {
    let before: std::collections::HashMap<&str, &TenantDoc> =
        before.tenants.iter().map(|t| (t.id.as_str(), t)).collect();
    after
        .tenants
        .iter()
        .filter(|t| before.get(t.id.as_str()) != Some(t))
        .cloned()
        .collect()
}

/// Watch rollout `id` until it reaches a final state (or the receiver is dropped).
pub async fn watch(
    store: RolloutStore,
    id: &str,
) -> Result<mpsc::Receiver<Result<WatchEvent, StoreError>>, StoreError> {
    let (first, revision) = store.get(id).await?;
    let (tx, rx) = mpsc::channel(BUFFER);
    let key = store.doc_key(id);
    let id = id.to_string();
    tokio::spawn(async move {
        let final_already = first.state.is_final();
        let _ = tx.send(Ok(WatchEvent::Snapshot(first.clone()))).await;
        if final_already {
            return;
        }
        // From the revision after `from`: again after the stream broke (its etcd member died,
        // or lost the leader), so a watcher sees every version, whichever member serves it.
        let open = |from: i64| {
            let (client, key) = (store.client(), key.clone());
            async move {
                crate::etcd::retry::within("watching a rollout", || {
                    let (mut client, key) = (client.clone(), key.clone());
                    async move {
                        client
                            .watch(
                                key.as_str(),
                                Some(
                                    etcd_client::WatchOptions::new().with_start_revision(from + 1),
                                ),
                            )
                            .await
                    }
                })
                .await
            }
        };
        let mut seen = revision;
        let mut stream = match open(seen).await {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        let (mut sent, mut behind) = (first, false);
        loop {
            let response = tokio::select! {
                r = stream.message() => r,
                _ = tx.closed() => return,
            };
            let response = match response {
                Ok(Some(r)) if !r.canceled() => r,
                _ => match open(seen).await {
                    Ok(s) => {
                        stream = s;
                        continue;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                },
            };
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                seen = seen.max(kv.mod_revision());
                if kv.value().is_empty() {
                    continue;
                }
                let doc = match RolloutStore::decode(&id, kv.value()) {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                let done = doc.state.is_final();
                let event = if behind {
                    WatchEvent::Snapshot(doc.clone())
                } else {
                    WatchEvent::Update {
                        changed: changed(&sent, &doc),
                        rollout: doc.clone(),
                    }
                };
                if done {
                    // The rollout is over: waiting for a slow reader holds nothing up now.
                    let last = if behind {
                        event
                    } else {
                        WatchEvent::Snapshot(doc)
                    };
                    let _ = tx.send(Ok(last)).await;
                    return;
                }
                match tx.try_send(Ok(event)) {
                    Ok(()) => {
                        sent = doc;
                        behind = false;
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => behind = true,
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
        }
    });
    Ok(rx)
}
