//! The socket under a PostgreSQL connection: TCP (with a connect timeout, TCP keepalives and
//! `tcp_user_timeout`, so a vanished server is noticed) or a Unix-domain socket.

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// Where one connection attempt goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    /// A host name or IP address (also the TLS server name), and optionally the IP to dial
    /// instead of resolving it (libpq's `hostaddr`).
    Tcp {
        host: String,
        hostaddr: Option<IpAddr>,
        port: u16,
    },
    /// The directory holding `.s.PGSQL.<port>`.
    Unix { dir: PathBuf, port: u16 },
}

impl Addr {
    pub fn port(&self) -> u16 {
        match self {
            Addr::Tcp { port, .. } | Addr::Unix { port, .. } => *port,
        }
    }

    /// `host:port` (or the socket directory) for messages.
    pub fn describe(&self) -> String {
        match self {
            Addr::Tcp { host, port, .. } if host.contains(':') => format!("[{host}]:{port}"),
            Addr::Tcp { host, port, .. } => format!("{host}:{port}"),
            Addr::Unix { dir, port } => format!("{}/.s.PGSQL.{port}", dir.display()),
        }
    }
}

/// TCP settings of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSettings {
    pub connect_timeout: Option<Duration>,
    /// None: no keepalives. Some: idle time before the first probe, interval, probes.
    pub keepalive: Option<(Duration, Duration, u32)>,
    pub user_timeout: Option<Duration>,
}

impl Default for TcpSettings {
    fn default() -> Self {
        TcpSettings {
            connect_timeout: None,
            // libpq's defaults: keepalives on, the kernel's timings.
            keepalive: Some((Duration::from_secs(7200), Duration::from_secs(75), 9)),
            user_timeout: None,
        }
    }
}

pub enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

fn timed_out(what: &str, t: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("connecting to {what} timed out after {t:?} (connect_timeout)"),
    )
}

async fn with_timeout<T>(
    what: &str,
    t: Option<Duration>,
    f: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match t {
        Some(t) => tokio::time::timeout(t, f)
            .await
            .map_err(|_| timed_out(what, t))?,
        None => f.await,
    }
}

/// Open the socket: every address the host resolves to is tried in turn.
pub async fn connect(addr: &Addr, tcp: &TcpSettings) -> io::Result<Socket> {
    match addr {
        Addr::Unix { dir, port } => {
            let path = dir.join(format!(".s.PGSQL.{port}"));
            let s = with_timeout(
                &addr.describe(),
                tcp.connect_timeout,
                UnixStream::connect(&path),
            )
            .await?;
            Ok(Socket::Unix(s))
        }
        Addr::Tcp {
            host,
            hostaddr,
            port,
        } => {
            let targets: Vec<std::net::SocketAddr> = match hostaddr {
                Some(ip) => vec![(*ip, *port).into()],
                None => with_timeout(
                    &addr.describe(),
                    tcp.connect_timeout,
                    tokio::net::lookup_host((host.as_str(), *port)),
                )
                .await?
                .collect(),
            };
            let mut last = io::Error::new(
                io::ErrorKind::NotFound,
                format!("{host} resolves to no address"),
            );
            for target in targets {
                match with_timeout(
                    &addr.describe(),
                    tcp.connect_timeout,
                    TcpStream::connect(target),
                )
                .await
                {
                    Ok(s) => {
                        configure(&s, tcp)?;
                        return Ok(Socket::Tcp(s));
                    }
                    Err(e) => last = e,
                }
            }
            Err(last)
        }
    }
}

fn configure(s: &TcpStream, tcp: &TcpSettings) -> io::Result<()> {
    s.set_nodelay(true)?;
    let sock = socket2::SockRef::from(s);
    if let Some((idle, interval, retries)) = tcp.keepalive {
        sock.set_tcp_keepalive(
            &socket2::TcpKeepalive::new()
                .with_time(idle)
                .with_interval(interval)
                .with_retries(retries),
        )?;
    }
    if let Some(t) = tcp.user_timeout {
        sock.set_tcp_user_timeout(Some(t))?;
    }
    Ok(())
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
