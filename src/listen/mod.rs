//! Every port the daemon serves accepts connections through here, with limits in force before
//! a byte is read: a connection cap (when it is reached, the oldest connection still in its
//! handshake makes room), one deadline for the TLS handshake and the HTTP/2 client preface,
//! TCP keep-alive, and accept errors (EMFILE when descriptors run out) backed off and logged
//! at most once per interval instead of spun on. What comes out is a stream for tonic's
//! `serve_with_incoming`; HTTP/2 keep-alive, concurrent streams and connection age are
//! tonic's own settings ([`Limits::apply`]).
//!
//! Why not tonic's own TLS: its handshake timeout ends with the TLS handshake, and nothing in
//! tonic or hyper bounds the wait for the HTTP/2 preface after it (or on a plaintext port), so
//! the TLS handshake is done here, inside the same deadline.
//!
//! Not here: what is served (`app.rs`), which certificates (`transport.rs`).

mod accept;
mod conn;
pub mod rlimit;

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Server;

pub use conn::Guarded;

use crate::config::Config;

/// Descriptors kept out of the connection caps' budget: etcd, logs, files, and this many per
/// tenant migrated at once (its pooled connection, a cancel request or a scratch database).
const RESERVED_DESCRIPTORS: u64 = 64;
const DESCRIPTORS_PER_TENANT: u64 = 2;
/// A cap never goes below this, whatever the descriptor budget says.
const MIN_CAP: usize = 8;

/// The limits of one port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// From accept to the end of the HTTP/2 client preface (TLS handshake included).
    pub handshake_timeout: Duration,
    /// Open connections at most, handshakes included.
    pub max_connections: usize,
    pub tcp_keepalive: Option<Duration>,
    /// HTTP/2 PING after this much silence; no answer within the timeout closes the connection.
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
    /// After this, a connection is asked to go away (GOAWAY); calls in flight finish.
    pub max_connection_age: Option<Duration>,
    pub max_concurrent_streams: u32,
}

impl Limits {
    /// The limits `[server]` sets for the gRPC port and the health port.
    pub fn from_config(config: &Config) -> (Limits, Limits) {
        let s = &config.server;
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        let grpc = Limits {
            handshake_timeout: s.handshake_timeout,
            max_connections: s.max_connections,
            tcp_keepalive: nonzero(s.tcp_keepalive),
            http2_keepalive_interval: s.http2_keepalive_interval,
            http2_keepalive_timeout: s.http2_keepalive_timeout,
            max_connection_age: nonzero(s.max_connection_age),
            max_concurrent_streams: s.max_concurrent_streams,
        };
        let health = Limits {
            max_connections: s.health_max_connections,
            ..grpc.clone()
        };
        (grpc, health)
    }

    /// The limits of the gRPC and the health port at `fleetmig serve`'s start: the soft
    /// open-file limit raised to the hard one (logged), the caps lowered to what it leaves
    /// (with a warning).
    pub fn at_start(config: &Config) -> (Limits, Limits) {
        let (mut grpc, mut health) = Limits::from_config(config);
        match rlimit::raise() {
            Ok(n) => {
                if n.before < n.soft {
                    tracing::info!(
                        from = n.before,
                        to = n.soft,
                        "raised the open-file limit (RLIMIT_NOFILE) to its hard limit"
                    );
                } else {
                    tracing::info!(limit = n.soft, "open-file limit (RLIMIT_NOFILE)");
                }
                let with_health = config.server.health_listen.map(|_| &mut health);
                let concurrency = config.fleet.global_concurrency;
                if let Some(note) = fit_caps(&mut grpc, with_health, n.soft, concurrency) {
                    tracing::warn!("{note}");
                }
            }
            Err(e) => tracing::warn!(
                error = %e,
                "could not read or raise the open-file limit (RLIMIT_NOFILE)"
            ),
        }
        (grpc, health)
    }

    /// The HTTP/2 settings of tonic's server.
    pub fn apply<L>(&self, server: Server<L>) -> Server<L> {
        let server = server
            .http2_keepalive_interval(Some(self.http2_keepalive_interval))
            .http2_keepalive_timeout(Some(self.http2_keepalive_timeout))
            .max_concurrent_streams(self.max_concurrent_streams)
            .accept_http1(false);
        match self.max_connection_age {
            Some(age) => server.max_connection_age(age),
            None => server,
        }
    }
}

/// Lower the caps to what the open-file limit `soft` leaves after the daemon's own
/// descriptors; returns the message to log when it had to.
pub fn fit_caps(
    grpc: &mut Limits,
    health: Option<&mut Limits>,
    soft: u64,
    concurrency: usize,
) -> Option<String> {
    let reserved = RESERVED_DESCRIPTORS + DESCRIPTORS_PER_TENANT * concurrency as u64;
    let budget = usize::try_from(soft.saturating_sub(reserved)).unwrap_or(usize::MAX);
    let health_cap = health.as_ref().map_or(0, |h| h.max_connections);
    if grpc.max_connections + health_cap <= budget {
        return None;
    }
    let before = (grpc.max_connections, health_cap);
    let mut note = String::new();
    let mut health_now = 0;
    if let Some(h) = health {
        h.max_connections = h.max_connections.min(budget / 8).max(MIN_CAP);
        health_now = h.max_connections;
        note = format!(", health port {} -> {health_now}", before.1);
    }
    grpc.max_connections = budget.saturating_sub(health_now).max(MIN_CAP);
    Some(format!(
        "the open-file limit ({soft}) leaves {budget} descriptors for connections after {reserved} for etcd, Postgres and files: connection caps lowered (server.max_connections {} -> {}{note}); raise the hard open-file limit to keep them",
        before.0, grpc.max_connections
    ))
}

/// Connections of a plaintext port.
pub fn plain(
    listener: TcpListener,
    limits: &Limits,
    port: &'static str,
    tracker: &TaskTracker,
    stop: CancellationToken,
) -> ReceiverStream<Result<Guarded<TcpStream>, Infallible>> {
    accept::spawn(
        listener,
        limits.clone(),
        port,
        |tcp, _, _| async move { Ok(tcp) },
        tracker,
        stop,
    )
}

/// Connections of a TLS port: the TLS handshake runs under the same deadline as the preface,
/// and the cap can evict it.
pub fn tls(
    listener: TcpListener,
    limits: &Limits,
    acceptor: TlsAcceptor,
    port: &'static str,
    tracker: &TaskTracker,
    stop: CancellationToken,
) -> ReceiverStream<Result<Guarded<TlsStream<TcpStream>>, Infallible>> {
    let acceptor = Arc::new(acceptor);
    accept::spawn(
        listener,
        limits.clone(),
        port,
        move |tcp, shared, deadline| {
            let acceptor = acceptor.clone();
            async move {
                tokio::select! {
                    r = tokio::time::timeout_at(deadline, acceptor.accept(tcp)) => {
                        r.map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no TLS handshake within server.handshake_timeout"))?
                    }
                    _ = shared.evicted() => Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "closed by the connection cap during its TLS handshake",
                    )),
                }
            }
        },
        tracker,
        stop,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(cap: usize) -> Limits {
        let (mut l, _) = Limits::from_config(&Config::default());
        l.max_connections = cap;
        l
    }

    #[test]
    fn caps_fit_in_the_open_file_limit() {
        let (mut grpc, mut health) = (limits(1024), limits(64));
        assert_eq!(fit_caps(&mut grpc, Some(&mut health), 1 << 20, 32), None);
        assert_eq!((grpc.max_connections, health.max_connections), (1024, 64));
        // 1024 descriptors, 64 + 2 * 32 reserved: 896 for both ports.
        let note = fit_caps(&mut grpc, Some(&mut health), 1024, 32).unwrap();
        assert!(note.contains("1024 -> "), "{note}");
        assert!(grpc.max_connections + health.max_connections <= 896);
        assert!(health.max_connections >= MIN_CAP);
        // Nothing left: the floor, and the log line says why.
        let (mut grpc, mut health) = (limits(1024), limits(64));
        assert!(fit_caps(&mut grpc, Some(&mut health), 100, 32).is_some());
        assert_eq!(
            (grpc.max_connections, health.max_connections),
            (MIN_CAP, MIN_CAP)
        );
    }
}
