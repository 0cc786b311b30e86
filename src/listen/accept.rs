//! The accept loop of one port: take a slot under the cap (evicting the oldest connection
//! still in its handshake when there is none), accept, run the handshake in a task of its
//! own under the deadline, and hand the connection to tonic through a channel. Accept errors
//! are backed off (descriptors exhausted: the loop sleeps instead of spinning) and logged at
//! most once per interval, with how many were not logged.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Limits;
use super::conn::{Guarded, Pending, Shared};

/// How often a repeated condition (cap reached, accept failing) is logged at most.
pub(super) const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Accept errors back off from this ...
const BACKOFF_MIN: Duration = Duration::from_millis(5);
/// ... doubling up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Connections handed over but not yet taken by tonic's loop.
const HANDOVER: usize = 64;

/// At most one log line per interval; counts what it held back.
#[derive(Debug)]
pub(super) struct Every {
    interval: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl Every {
    pub(super) fn new(interval: Duration) -> Every {
        Every {
            interval,
            last: None,
            held_back: 0,
        }
    }

    /// Some(times held back since the last line) when it is time to log again.
    pub(super) fn hit(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < self.interval)
        {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

/// Exponential backoff between failed accepts, reset by a successful one.
#[derive(Debug)]
pub(super) struct Backoff(Duration);

impl Backoff {
    pub(super) fn new() -> Backoff {
        Backoff(Duration::ZERO)
    }

    pub(super) fn next(&mut self) -> Duration {
        self.0 = (self.0 * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
        self.0
    }

    pub(super) fn reset(&mut self) {
        self.0 = Duration::ZERO;
    }
}

/// Out of descriptors or memory: retrying at once cannot succeed.
fn exhausted(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

fn configure(tcp: &TcpStream, limits: &Limits) {
    // Failing to set an option is not a reason to refuse the connection.
    let _ = tcp.set_nodelay(true);
    if let Some(time) = limits.tcp_keepalive {
        let keepalive = socket2::TcpKeepalive::new().with_time(time);
        let _ = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive);
    }
}

/// Accept on `listener` until `stop` (or tonic drops the stream); `handshake` turns a TCP
/// connection into what tonic serves (itself, or a TLS stream), before `deadline`.
pub(super) fn spawn<IO, H, F>(
    listener: TcpListener,
    limits: Limits,
    port: &'static str,
    handshake: H,
    tracker: &TaskTracker,
    stop: CancellationToken,
) -> ReceiverStream<Result<Guarded<IO>, Infallible>>
where
    IO: Send + 'static,
    H: Fn(TcpStream, Arc<Shared>, Instant) -> F + Send + Sync + 'static,
    F: Future<Output = io::Result<IO>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(HANDOVER);
    let loop_ = Loop {
        listener,
        limits,
        port,
        handshake: Arc::new(handshake),
        tracker: tracker.clone(),
        stop,
        tx,
    };
    tracker.spawn(loop_.run());
    ReceiverStream::new(rx)
}

struct Loop<IO, H> {
    listener: TcpListener,
    limits: Limits,
    port: &'static str,
    handshake: Arc<H>,
    tracker: TaskTracker,
    stop: CancellationToken,
    tx: mpsc::Sender<Result<Guarded<IO>, Infallible>>,
}

impl<IO, H, F> Loop<IO, H>
where
    IO: Send + 'static,
    H: Fn(TcpStream, Arc<Shared>, Instant) -> F + Send + Sync + 'static,
    F: Future<Output = io::Result<IO>> + Send + 'static,
{
    /// Resolves when accepting should stop.
    async fn stopped(stop: &CancellationToken, tx: &mpsc::Sender<Result<Guarded<IO>, Infallible>>) {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tx.closed() => {}
        }
    }

    async fn run(self) {
        let cap = self.limits.max_connections;
        let slots = Arc::new(Semaphore::new(cap));
        let pending = Pending::default();
        let dropped = Arc::new(AtomicU64::new(0));
        let mut backoff = Backoff::new();
        let (mut full_log, mut error_log, mut dropped_log) = (
            Every::new(LOG_INTERVAL),
            Every::new(LOG_INTERVAL),
            Every::new(LOG_INTERVAL),
        );
        loop {
            let slot = match slots.clone().try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => {
                    let evicted = pending.evict_oldest();
                    if let Some(held_back) = full_log.hit(Instant::now()) {
                        tracing::warn!(
                            port = self.port,
                            max_connections = cap,
                            evicted_a_handshake = evicted,
                            times_not_logged = held_back,
                            "connection cap reached: the oldest connection still in its handshake makes room; with none, new connections wait until one closes"
                        );
                    }
                    tokio::select! {
                        slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                        _ = Self::stopped(&self.stop, &self.tx) => return,
                    }
                }
            };
            let accepted = tokio::select! {
                r = self.listener.accept() => r,
                _ = Self::stopped(&self.stop, &self.tx) => return,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => {
                    backoff.reset();
                    a
                }
                Err(e) => {
                    drop(slot);
                    let exhausted = exhausted(&e);
                    // Descriptors ran out: a connection still in its handshake gives one back.
                    let evicted = exhausted && pending.evict_oldest();
                    let delay = backoff.next();
                    if let Some(held_back) = error_log.hit(Instant::now()) {
                        tracing::warn!(
                            port = self.port,
                            error = %e,
                            retry_in = ?delay,
                            evicted_a_handshake = evicted,
                            times_not_logged = held_back,
                            "accepting a connection failed{}",
                            if exhausted { " (out of file descriptors: raise the open-file limit or lower server.max_connections)" } else { "" }
                        );
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => continue,
                        _ = Self::stopped(&self.stop, &self.tx) => return,
                    }
                }
            };
            configure(&tcp, &self.limits);
            let n = dropped.swap(0, Ordering::Relaxed);
            if n > 0 {
                if let Some(held_back) = dropped_log.hit(Instant::now()) {
                    tracing::warn!(
                        port = self.port,
                        handshake_timeout = ?self.limits.handshake_timeout,
                        closed = n,
                        times_not_logged = held_back,
                        "closed connections that did not finish their handshake (TLS and HTTP/2 preface) in time, or were evicted by the cap"
                    );
                } else {
                    dropped.fetch_add(n, Ordering::Relaxed);
                }
            }
            let shared = Shared::new(dropped.clone());
            pending.push(&shared, cap);
            let deadline = Instant::now() + self.limits.handshake_timeout;
            let handshake = (self.handshake)(tcp, shared.clone(), deadline);
            let tx = self.tx.clone();
            self.tracker.spawn(async move {
                match handshake.await {
                    Ok(io) => {
                        // tonic takes it, or has stopped: either way nothing to do.
                        let _ = tx.send(Ok(Guarded::new(io, shared, deadline, slot))).await;
                    }
                    Err(e) => {
                        shared.count_dropped();
                        tracing::debug!(%peer, error = %e, "connection closed in its handshake");
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_condition_is_logged_once_per_interval_with_a_count() {
        let mut every = Every::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(every.hit(t0), Some(0));
        for s in 1..10 {
            assert_eq!(every.hit(t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(every.hit(t0 + Duration::from_secs(10)), Some(9));
        assert_eq!(every.hit(t0 + Duration::from_secs(11)), None);
    }

    #[test]
    fn accept_errors_back_off_exponentially_and_reset_on_success() {
        let mut b = Backoff::new();
        let delays: Vec<Duration> = (0..10).map(|_| b.next()).collect();
        assert_eq!(delays[0], BACKOFF_MIN);
        assert_eq!(delays[1], BACKOFF_MIN * 2);
        assert_eq!(*delays.last().unwrap(), BACKOFF_MAX);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        b.reset();
        assert_eq!(b.next(), BACKOFF_MIN);
    }

    #[test]
    fn descriptor_exhaustion_is_recognised() {
        assert!(exhausted(&io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(exhausted(&io::Error::from_raw_os_error(libc::ENFILE)));
        assert!(!exhausted(&io::Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
    }
}
