//! One accepted connection while it is being set up: the deadline for its handshake (TLS,
//! then the 24-byte HTTP/2 client preface), its place in the queue of connections that the
//! cap may evict, and the cap's slot it holds until it is dropped. After the preface it is a
//! plain pass-through; hyper's keep-alive and tonic's connection age take over.
//!
//! Not here: accepting, counting, logging (see `accept.rs`).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use tonic::transport::server::Connected;

/// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`: what an HTTP/2 client sends first.
pub(super) const PREFACE_LEN: usize = 24;

const HANDSHAKING: u8 = 0;
const ESTABLISHED: u8 = 1;
const EVICTED: u8 = 2;

/// What the accept loop and a connection share: its stage, and the waker to call when the
/// cap evicts it.
pub(super) struct Shared {
    stage: AtomicU8,
    waker: AtomicWaker,
    /// Connections of this port that never finished their handshake (timed out or evicted).
    dropped: Arc<AtomicU64>,
}

impl Shared {
    pub(super) fn new(dropped: Arc<AtomicU64>) -> Arc<Shared> {
        Arc::new(Shared {
            stage: AtomicU8::new(HANDSHAKING),
            waker: AtomicWaker::new(),
            dropped,
        })
    }

    /// Close it if it is still in its handshake; false if it got past it (or is gone).
    fn evict(&self) -> bool {
        let evicted = self
            .stage
            .compare_exchange(HANDSHAKING, EVICTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if evicted {
            self.waker.wake();
        }
        evicted
    }

    fn establish(&self) -> bool {
        self.stage
            .compare_exchange(
                HANDSHAKING,
                ESTABLISHED,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    fn is_handshaking(&self) -> bool {
        self.stage.load(Ordering::Acquire) == HANDSHAKING
    }

    /// Ready once the cap has evicted this connection.
    pub(super) fn poll_evicted(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.waker.register(cx.waker());
        if self.stage.load(Ordering::Acquire) == EVICTED {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    pub(super) async fn evicted(&self) {
        std::future::poll_fn(|cx| self.poll_evicted(cx)).await
    }

    pub(super) fn count_dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Connections still in their handshake, oldest first: when the cap is reached, the oldest
/// makes room, so idle connections cannot lock out a client that completes its handshake.
#[derive(Default)]
pub(super) struct Pending(Mutex<VecDeque<Weak<Shared>>>);

impl Pending {
    pub(super) fn push(&self, shared: &Arc<Shared>, cap: usize) {
        let mut queue = self.0.lock().expect("not poisoned");
        // Entries of connections that got past their handshake or closed are dropped lazily.
        if queue.len() >= cap.saturating_mul(2).max(64) {
            queue.retain(|w| w.upgrade().is_some_and(|s| s.is_handshaking()));
        }
        queue.push_back(Arc::downgrade(shared));
    }

    /// Evict the oldest connection still in its handshake; false if there is none.
    pub(super) fn evict_oldest(&self) -> bool {
        let mut queue = self.0.lock().expect("not poisoned");
        while let Some(weak) = queue.pop_front() {
            if weak.upgrade().is_some_and(|s| s.evict()) {
                return true;
            }
        }
        false
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what.to_string())
}

struct Handshake {
    deadline: Pin<Box<Sleep>>,
    preface_left: usize,
}

/// An accepted connection (plain TCP or TLS) as tonic gets it.
pub struct Guarded<IO> {
    inner: IO,
    shared: Arc<Shared>,
    /// Until the HTTP/2 preface is in.
    handshake: Option<Handshake>,
    /// The cap's slot: freed when the connection is dropped.
    _slot: OwnedSemaphorePermit,
}

impl<IO> Guarded<IO> {
    pub(super) fn new(
        inner: IO,
        shared: Arc<Shared>,
        deadline: Instant,
        slot: OwnedSemaphorePermit,
    ) -> Self {
        Guarded {
            inner,
            shared,
            handshake: Some(Handshake {
                deadline: Box::pin(tokio::time::sleep_until(deadline)),
                preface_left: PREFACE_LEN,
            }),
            _slot: slot,
        }
    }

    /// Err once the handshake deadline passed or the cap evicted this connection.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let Some(h) = &mut self.handshake else {
            return Ok(());
        };
        if self.shared.poll_evicted(cx).is_ready() {
            self.handshake = None;
            self.shared.count_dropped();
            return Err(timed_out(
                "closed by the connection cap before its handshake finished",
            ));
        }
        if h.deadline.as_mut().poll(cx).is_ready() && self.shared.evict() {
            self.handshake = None;
            self.shared.count_dropped();
            return Err(timed_out(
                "no HTTP/2 preface within server.handshake_timeout",
            ));
        }
        Ok(())
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if let Some(h) = &mut this.handshake {
            h.preface_left = h.preface_left.saturating_sub(buf.filled().len() - before);
            if h.preface_left == 0 {
                this.handshake = None;
                if !this.shared.establish() {
                    return Poll::Ready(Err(timed_out(
                        "closed by the connection cap before its handshake finished",
                    )));
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Requests see the connection info of what is inside (TLS: the client's certificates).
impl<IO: Connected> Connected for Guarded<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::Semaphore;

    fn slot() -> OwnedSemaphorePermit {
        Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap()
    }

    const DEADLINE: std::time::Duration = std::time::Duration::from_millis(300);

    #[tokio::test]
    async fn a_connection_without_its_preface_fails_at_the_deadline() {
        let (server, mut client) = tokio::io::duplex(64);
        let dropped = Arc::new(AtomicU64::new(0));
        let shared = Shared::new(dropped.clone());
        let started = Instant::now();
        let mut conn = Guarded::new(server, shared, started + DEADLINE, slot());
        // Part of the preface is not enough.
        client.write_all(&[b'x'; PREFACE_LEN - 1]).await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(conn.read(&mut buf).await.unwrap(), PREFACE_LEN - 1);
        let e = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= DEADLINE);
        assert!(started.elapsed() < DEADLINE * 5);
        assert_eq!(dropped.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn after_the_preface_the_deadline_is_gone() {
        let (server, mut client) = tokio::io::duplex(64);
        let shared = Shared::new(Arc::default());
        let mut conn = Guarded::new(server, shared.clone(), Instant::now() + DEADLINE, slot());
        client.write_all(&[b'x'; PREFACE_LEN]).await.unwrap();
        let mut buf = [0u8; PREFACE_LEN];
        conn.read_exact(&mut buf).await.unwrap();
        assert!(!shared.is_handshaking());
        tokio::time::sleep(DEADLINE * 2).await;
        client.write_all(b"later").await.unwrap();
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).await.unwrap();
        // Established connections are not evicted.
        let pending = Pending::default();
        pending.push(&shared, 4);
        assert!(!pending.evict_oldest());
    }

    #[tokio::test]
    async fn the_oldest_connection_in_its_handshake_is_evicted_first() {
        let pending = Pending::default();
        let (a, b) = (Shared::new(Arc::default()), Shared::new(Arc::default()));
        pending.push(&a, 4);
        pending.push(&b, 4);
        let (server, _client) = tokio::io::duplex(64);
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        let mut conn = Guarded::new(server, a.clone(), deadline, slot());
        let reading = tokio::spawn(async move {
            let mut buf = [0u8; 1];
            conn.read(&mut buf).await
        });
        tokio::task::yield_now().await;
        assert!(pending.evict_oldest());
        let e = reading.await.unwrap().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(b.is_handshaking(), "the newer one is left alone");
        assert!(pending.evict_oldest());
        assert!(!pending.evict_oldest(), "nothing left to evict");
    }
}
