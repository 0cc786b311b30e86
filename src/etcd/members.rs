//! Which etcd members take requests: each member is probed every [`PROBE_EVERY`] through a
//! client of its own (`Maintenance/Status` with the leader required); a member that does not
//! answer, or answers without a leader, is taken out of the shared balanced channel, and put
//! back once it answers with a leader again. The last member in rotation is never taken out:
//! with no healthy member at all, requests keep trying the ones there are.

use std::collections::BTreeSet;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio_util::sync::CancellationToken;

/// How often every member is probed: a dead member leaves the rotation within about this
/// plus [`PROBE_TIMEOUT`] (requests that meet it meanwhile are retried on another member).
const PROBE_EVERY: Duration = Duration::from_millis(500);
const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

pub(super) struct Members {
    /// The daemon's client: its balanced channel is the rotation.
    client: Client,
    endpoints: Vec<String>,
    options: ConnectOptions,
}

impl Members {
    pub fn new(client: Client, endpoints: Vec<String>, options: ConnectOptions) -> Members {
        Members {
            client,
            endpoints,
            options,
        }
    }

    /// One member, through a client of its own (created again after a failure: with etcd
    /// authentication, creating it already talks to the member).
    async fn probe(&self, endpoint: &str, probe: &mut Option<Client>) -> Result<(), String> {
        let attempt = async {
            if probe.is_none() {
                *probe = Some(
                    Client::connect([endpoint], Some(self.options.clone()))
                        .await
                        .map_err(|e| e.to_string())?,
                );
            }
            let status = probe
                .as_mut()
                .expect("just set")
                .status()
                .await
                .map_err(|e| e.to_string())?;
            if status.leader() == 0 {
                return Err("the member has no leader".to_string());
            }
            Ok(())
        };
        match tokio::time::timeout(PROBE_TIMEOUT, attempt).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                *probe = None;
                Err(e)
            }
            Err(_) => {
                *probe = None;
                Err(format!("no answer within {PROBE_TIMEOUT:?}"))
            }
        }
    }

    pub async fn run(self, stop: CancellationToken) {
        let mut probes: Vec<Option<Client>> = vec![None; self.endpoints.len()];
        let mut out: BTreeSet<usize> = BTreeSet::new();
        loop {
            let me = &self;
            let results = futures::future::join_all(
                me.endpoints
                    .iter()
                    .zip(probes.iter_mut())
                    .map(|(e, p)| me.probe(e, p)),
            )
            .await;
            for (i, result) in results.into_iter().enumerate() {
                let endpoint = &self.endpoints[i];
                match result {
                    Ok(()) if out.contains(&i) => match self.client.add_endpoint(endpoint).await {
                        Ok(()) => {
                            out.remove(&i);
                            tracing::info!(%endpoint, "etcd member healthy again: back in rotation");
                        }
                        Err(e) => {
                            tracing::warn!(%endpoint, error = %e, "could not put an etcd member back")
                        }
                    },
                    Err(why) if !out.contains(&i) => {
                        if out.len() + 1 >= self.endpoints.len() {
                            tracing::warn!(%endpoint, %why, "etcd member unhealthy; it is the last one in rotation, so it stays");
                            continue;
                        }
                        match self.client.remove_endpoint(endpoint).await {
                            Ok(()) => {
                                out.insert(i);
                                tracing::warn!(%endpoint, %why, "etcd member unhealthy: requests go to the other members");
                            }
                            Err(e) => {
                                tracing::warn!(%endpoint, error = %e, "could not take an etcd member out")
                            }
                        }
                    }
                    _ => {}
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(PROBE_EVERY) => {}
            }
        }
    }
}
