//! The daemon's etcd client: every configured member in one balanced channel, members that
//! are down or cut off from the cluster's leader taken out of it ([`members`]), and one
//! classification of etcd errors with a retry within a deadline ([`retry`]).
//!
//! Why: tonic's balanced channel keeps a dead member in rotation (its lazy connection reports
//! ready and fails each call), so a third of the requests failed while one of three members
//! was down. The Go client skips such members through gRPC health; this module does the same.
//! It knows nothing of locks, tenants or rollouts.

mod members;
pub mod retry;

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError};

/// HTTP/2 pings on every etcd connection: a member that vanished without a TCP reset (a host
/// gone, a blackholed network) is noticed within interval + timeout, not at the OS's TCP
/// timeout.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("etcd.endpoints: {0}")]
    Client(#[from] etcd_client::Error),
}

/// An endpoint with its scheme, as the balanced channel keys it (`host:port` gets `http://`,
/// or `https://` when TLS is configured), so that members can be taken out and put back.
fn normalize(endpoint: &str, tls: bool) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else if tls {
        format!("https://{endpoint}")
    } else {
        format!("http://{endpoint}")
    }
}

/// Connection options of every etcd client of the daemon: `[etcd]` (timeouts, TLS, user),
/// plus: a request fails at once on a member without a leader (etcd's `hasleader` metadata;
/// it is retried on another member) instead of hanging until its timeout, and a watch on such
/// a member is cancelled by the server rather than going silent.
pub fn options(config: &Config) -> Result<etcd_client::ConnectOptions, ConfigError> {
    Ok(crate::transport::etcd_options(config)?
        .with_require_leader(true)
        .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
        .with_keep_alive_while_idle(true))
}

/// The daemon's client over every member of `[etcd] endpoints`. With more than one, a task
/// (owned by `tracker`, stopped by `stop`) probes each member and keeps only healthy ones in
/// rotation.
pub async fn connect(
    config: &Config,
    tracker: &TaskTracker,
    stop: CancellationToken,
) -> Result<etcd_client::Client, EtcdError> {
    let options = options(config)?;
    let tls = config.etcd.ca_cert.is_some() || config.etcd.cert.is_some();
    let endpoints: Vec<String> = config
        .etcd
        .endpoints
        .iter()
        .map(|e| normalize(e, tls))
        .collect();
    let client = etcd_client::Client::connect(&endpoints, Some(options.clone())).await?;
    if endpoints.len() > 1 {
        let watcher = members::Members::new(client.clone(), endpoints, options);
        tracker.spawn(async move { watcher.run(stop).await });
    }
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn endpoints_get_the_scheme_the_channel_keys_them_by() {
        assert_eq!(normalize("10.0.0.1:2379", false), "http://10.0.0.1:2379");
        assert_eq!(normalize("10.0.0.1:2379", true), "https://10.0.0.1:2379");
        assert_eq!(normalize("https://e:2379", false), "https://e:2379");
    }
}
