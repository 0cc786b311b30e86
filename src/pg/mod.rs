//! One way to connect to PostgreSQL. Every connection fleetmig opens to a tenant or admin
//! database (the CLI, the daemon's pools, onboarding, the scratch databases of adopt and
//! verify, cancel requests) goes through [`Target::connect`]: a libpq-style target in, a
//! client over TLS or plaintext per `sslmode` out. Nothing else opens a Postgres socket.
//!
//! - [`conninfo`]: `postgresql://` URLs and `key=value` strings, `PG*` variables.
//! - [`target`]: the checked target (hosts, `sslmode`, certificates, `require_auth`, TCP).
//! - [`tls`]: rustls configurations per `sslmode`; [`auth`]: `require_auth` enforcement;
//!   [`socket`]: TCP/Unix sockets; [`passfile`]: `~/.pgpass`.

pub mod auth;
pub mod conninfo;
mod error;
pub mod passfile;
pub mod socket;
pub mod target;
pub mod tls;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;
use tokio_postgres::config::SslMode as WireSsl;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};

pub use conninfo::ConnInfo;
pub use error::ConnectError;
pub use target::{Defaults, SslMode, Target, TargetError};

use auth::Watched;
use socket::{Addr, Socket};

/// Whether a connection reaches the server directly or through a pooler, and which kind.
/// Behind a transaction-mode pooler fleetmig keeps no state on the server connection
/// between transactions (no session settings, session locks or prepared statements).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooler {
    /// The server itself (or anything that keeps one server session per client session).
    #[default]
    None,
    /// A session-mode pooler (PgBouncer `pool_mode = session`): the same as direct.
    Session,
    /// A transaction-mode pooler (PgBouncer `pool_mode = transaction`).
    Transaction,
}

impl Pooler {
    pub fn as_str(self) -> &'static str {
        match self {
            Pooler::None => "none",
            Pooler::Session => "session",
            Pooler::Transaction => "transaction",
        }
    }

    pub fn parse(s: &str) -> Option<Pooler> {
        Some(match s {
            "" | "none" => Pooler::None,
            "session" => Pooler::Session,
            "transaction" => Pooler::Transaction,
            _ => return None,
        })
    }
}

type Rustls = tokio_postgres_rustls::MakeRustlsConnect;
type RustlsConnect = <Rustls as MakeTlsConnect<Watched<Socket>>>::TlsConnect;
type TlsStream = Watched<<RustlsConnect as TlsConnect<Watched<Socket>>>::Stream>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// tokio-postgres-rustls under the `require_auth` watcher.
struct Tls {
    make: Option<Rustls>,
    hostname: String,
    rule: Option<auth::RequireAuth>,
    /// Set once a handshake succeeded: the session is encrypted.
    used: Arc<AtomicBool>,
}

impl TlsConnect<Watched<Socket>> for Tls {
    type Stream = TlsStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<TlsStream, BoxError>> + Send>>;

    fn connect(self, stream: Watched<Socket>) -> Self::Future {
        Box::pin(async move {
            let mut make = self
                .make
                .ok_or("TLS is not configured for this connection")?;
            let connect: RustlsConnect =
                MakeTlsConnect::<Watched<Socket>>::make_tls_connect(&mut make, &self.hostname)?;
            let stream = connect.connect(stream).await?;
            self.used.store(true, Ordering::Relaxed);
            Ok(Watched::new(stream, self.rule))
        })
    }
}

/// Sends cancel requests for one connection, over TLS when the connection uses it.
#[derive(Clone)]
pub struct Canceller {
    token: tokio_postgres::CancelToken,
    addr: Addr,
    target: Target,
}

impl Canceller {
    /// Ask the server to cancel the statement running on the connection (best effort).
    pub async fn cancel(&self) -> Result<(), ConnectError> {
        let socket = socket::connect(&self.addr, &self.target.tcp)
            .await
            .map_err(|e| ConnectError::socket(&self.target, &self.addr, e))?;
        self.token
            .cancel_query_raw(Watched::new(socket, None), self.target.tls_for(&self.addr))
            .await
            .map_err(|e| ConnectError::postgres(&self.target, &self.addr, e))
    }
}

/// A new connection: the client, its cancel handle, and the task that drives its socket
/// (to spawn with [`Connected::spawn`]).
pub struct Connected {
    pub client: Client,
    pub canceller: Canceller,
    driver: Pin<Box<dyn Future<Output = Result<(), tokio_postgres::Error>> + Send>>,
    /// Whether the session is encrypted.
    pub tls: bool,
}

impl Connected {
    /// Drive the connection on its own task; `on_close` runs when the socket is closed.
    pub fn spawn(
        self,
        on_close: impl FnOnce(Option<tokio_postgres::Error>) + Send + 'static,
    ) -> (Client, Canceller) {
        let driver = self.driver;
        tokio::spawn(async move { on_close(driver.await.err()) });
        (self.client, self.canceller)
    }

    /// Drive the connection on its own task; only the client is wanted.
    pub fn into_client(self) -> Client {
        self.spawn(|e| {
            if let Some(e) = e {
                tracing::debug!(error = %e, "postgres connection closed");
            }
        })
        .0
    }
}

/// How one attempt negotiates TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    Plain,
    /// TLS if the server offers it, else plaintext (tokio-postgres' `prefer`).
    TryTls,
    Tls,
}

impl Target {
    fn tls_for(&self, addr: &Addr) -> Tls {
        Tls {
            make: self.tls.clone(),
            hostname: match addr {
                Addr::Tcp { host, .. } => host.clone(),
                Addr::Unix { .. } => String::new(),
            },
            rule: self.require_auth,
            used: Arc::default(),
        }
    }

    /// Connect to the first host that accepts, as libpq would for this target's `sslmode`.
    pub async fn connect(&self) -> Result<Connected, ConnectError> {
        let mut order: Vec<&Addr> = self.addrs.iter().collect();
        if self.load_balance {
            use rand::seq::SliceRandom;
            order.shuffle(&mut rand::rng());
        }
        let mut last = None;
        for addr in order {
            match self.connect_addr(addr).await {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("a target has at least one address"))
    }

    async fn connect_addr(&self, addr: &Addr) -> Result<Connected, ConnectError> {
        // Like libpq: no TLS over Unix-domain sockets, whatever sslmode says.
        if matches!(addr, Addr::Unix { .. }) {
            return self.attempt(addr, Attempt::Plain).await;
        }
        match self.sslmode {
            SslMode::Disable => self.attempt(addr, Attempt::Plain).await,
            SslMode::Allow => match self.attempt(addr, Attempt::Plain).await {
                Err(e) if e.server_refused() => self.attempt(addr, Attempt::Tls).await,
                other => other,
            },
            SslMode::Prefer => match self.attempt(addr, Attempt::TryTls).await {
                // libpq's prefer: a failed TLS handshake falls back to plaintext.
                Err(e) if e.is_tls_handshake() => self.attempt(addr, Attempt::Plain).await,
                other => other,
            },
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                self.attempt(addr, Attempt::Tls).await
            }
        }
    }

    async fn attempt(&self, addr: &Addr, how: Attempt) -> Result<Connected, ConnectError> {
        let work = async {
            let socket = socket::connect(addr, &self.tcp)
                .await
                .map_err(|e| ConnectError::socket(self, addr, e))?;
            let mut config = self.config.clone();
            config.ssl_mode(match how {
                Attempt::Plain => WireSsl::Disable,
                Attempt::TryTls => WireSsl::Prefer,
                Attempt::Tls => WireSsl::Require,
            });
            let tls = self.tls_for(addr);
            let used = tls.used.clone();
            let (client, connection) = config
                .connect_raw(Watched::new(socket, self.require_auth), tls)
                .await
                .map_err(|e| ConnectError::postgres(self, addr, e))?;
            let tls = used.load(Ordering::Relaxed);
            let canceller = Canceller {
                token: client.cancel_token(),
                addr: addr.clone(),
                target: self.clone(),
            };
            let mut connected = Connected {
                client,
                canceller,
                driver: Box::pin(connection),
                tls,
            };
            self.check_session_attrs(&mut connected, addr).await?;
            Ok(connected)
        };
        match self.tcp.connect_timeout {
            Some(t) => tokio::time::timeout(t, work)
                .await
                .map_err(|_| ConnectError::timeout(self, addr, t))?,
            None => work.await,
        }
    }

    /// `target_session_attrs=read-write|read-only`: the server must match.
    async fn check_session_attrs(
        &self,
        connected: &mut Connected,
        addr: &Addr,
    ) -> Result<(), ConnectError> {
        use tokio_postgres::config::TargetSessionAttrs as Tsa;
        if self.session_attrs == Tsa::Any {
            return Ok(());
        }
        let query = connected.client.simple_query("SHOW transaction_read_only");
        let driver = &mut connected.driver;
        tokio::pin!(query);
        let rows = tokio::select! {
            rows = &mut query => rows,
            _ = &mut *driver => {
                return Err(ConnectError::session_attrs(self, addr, "the server closed the connection"));
            }
        }
        .map_err(|e| ConnectError::postgres(self, addr, e))?;
        let read_only = rows.iter().any(
            |m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("on")),
        );
        match (self.session_attrs, read_only) {
            (Tsa::ReadWrite, true) => Err(ConnectError::session_attrs(
                self,
                addr,
                "the server is read-only (target_session_attrs=read-write)",
            )),
            (Tsa::ReadOnly, false) => Err(ConnectError::session_attrs(
                self,
                addr,
                "the server accepts writes (target_session_attrs=read-only)",
            )),
            _ => Ok(()),
        }
    }
}

/// Parse a libpq connection string (no environment, no machine defaults) and connect: for
/// tests and tools that hold a complete URL.
pub async fn connect_str(s: &str) -> Result<Client, ConnectError> {
    let info = ConnInfo::parse(s).map_err(|e| ConnectError::invalid(e.to_string()))?;
    let target = Target::new(&info, &Defaults::from_environment())
        .map_err(|e| ConnectError::invalid(e.to_string()))?;
    Ok(target.connect().await?.into_client())
}
