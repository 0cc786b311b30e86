//! Connection failures in words a person can act on: which server, what went wrong (an
//! untrusted certificate, a host name mismatch, a server without TLS, a refused client
//! certificate, a server that demands TLS), and what to change. Never a password.

use std::fmt;
use std::time::Duration;

use super::socket::Addr;
use super::target::{SslMode, Target};

#[derive(Debug)]
enum Kind {
    Invalid(String),
    Socket(std::io::Error),
    Timeout(Duration),
    Postgres(tokio_postgres::Error),
    SessionAttrs(&'static str),
}

/// A failed connection to one server (boxed: it travels inside other errors).
#[derive(Debug)]
pub struct ConnectError(Box<Details>);

#[derive(Debug)]
struct Details {
    /// `host:port/dbname`.
    what: String,
    sslmode: SslMode,
    root: Option<String>,
    client_cert: Option<String>,
    host: String,
    kind: Kind,
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.0.kind {
            Kind::Socket(e) => Some(e),
            Kind::Postgres(e) => Some(e),
            _ => None,
        }
    }
}

impl ConnectError {
    fn new(target: &Target, addr: &Addr, kind: Kind) -> ConnectError {
        ConnectError(Box::new(Details {
            what: format!("{}/{}", addr.describe(), target.dbname),
            sslmode: target.sslmode,
            root: target.root.as_ref().map(|r| r.to_string()),
            client_cert: target.client_cert.as_ref().map(|c| c.display().to_string()),
            host: match addr {
                Addr::Tcp { host, .. } => host.clone(),
                Addr::Unix { dir, .. } => dir.display().to_string(),
            },
            kind,
        }))
    }

    pub(super) fn socket(target: &Target, addr: &Addr, e: std::io::Error) -> ConnectError {
        ConnectError::new(target, addr, Kind::Socket(e))
    }

    pub(super) fn postgres(target: &Target, addr: &Addr, e: tokio_postgres::Error) -> ConnectError {
        ConnectError::new(target, addr, Kind::Postgres(e))
    }

    pub(super) fn timeout(target: &Target, addr: &Addr, t: Duration) -> ConnectError {
        ConnectError::new(target, addr, Kind::Timeout(t))
    }

    pub(super) fn session_attrs(target: &Target, addr: &Addr, why: &'static str) -> ConnectError {
        ConnectError::new(target, addr, Kind::SessionAttrs(why))
    }

    /// A connection string or target that could not be used at all.
    pub fn invalid(message: String) -> ConnectError {
        ConnectError(Box::new(Details {
            what: String::new(),
            sslmode: SslMode::default(),
            root: None,
            client_cert: None,
            host: String::new(),
            kind: Kind::Invalid(message),
        }))
    }

    /// The server's SQLSTATE, when the server answered with an error.
    pub fn sqlstate(&self) -> Option<&str> {
        match &self.0.kind {
            Kind::Postgres(e) => e.code().map(|c| c.code()),
            _ => None,
        }
    }

    /// A failure that a server restart or a failover causes and that ends by itself: refused
    /// or reset connections, a timeout, a server starting up or shutting down, a read-only
    /// server while a primary is promoted, no free connection slots. Not a wrong password, a
    /// refused certificate or a bad connection string.
    pub fn transient(&self) -> bool {
        use std::io::ErrorKind as K;
        let io_transient = |e: &std::io::Error| {
            matches!(
                e.kind(),
                K::ConnectionRefused
                    | K::ConnectionReset
                    | K::ConnectionAborted
                    | K::BrokenPipe
                    | K::UnexpectedEof
            )
        };
        match &self.0.kind {
            Kind::Socket(e) => io_transient(e),
            Kind::Timeout(_) | Kind::SessionAttrs(_) => true,
            Kind::Invalid(_) => false,
            Kind::Postgres(e) => {
                if let Some(db) = e.as_db_error() {
                    return matches!(db.code().code(), "57P01" | "57P02" | "57P03" | "53300");
                }
                if self.0.rustls_error().is_some() {
                    return false;
                }
                io_errors(e)
                    .next()
                    .map_or_else(|| e.is_closed(), io_transient)
            }
        }
    }

    /// The server answered and refused (not a network or TLS failure): `allow` retries with TLS.
    pub(super) fn server_refused(&self) -> bool {
        matches!(&self.0.kind, Kind::Postgres(e) if e.as_db_error().is_some())
    }

    /// The TLS handshake itself failed: `prefer` retries in plaintext.
    pub(super) fn is_tls_handshake(&self) -> bool {
        matches!(&self.0.kind, Kind::Postgres(e) if e.to_string().contains("TLS handshake"))
            && self.0.rustls_error().is_some()
    }
}

impl Details {
    fn rustls_error(&self) -> Option<&rustls::Error> {
        let Kind::Postgres(e) = &self.kind else {
            return None;
        };
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = source {
            if let Some(r) = err.downcast_ref::<rustls::Error>() {
                return Some(r);
            }
            if let Some(io) = err.downcast_ref::<std::io::Error>()
                && let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
            {
                return Some(r);
            }
            source = err.source();
        }
        None
    }

    /// What went wrong and what to do about it.
    fn explain(&self) -> String {
        use rustls::{AlertDescription as A, CertificateError as C, Error as R};
        let (mode, root) = (self.sslmode, self.root.as_deref().unwrap_or("(none)"));
        if let Some(r) = self.rustls_error() {
            return match r {
                R::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => format!(
                    "the server's certificate is not trusted: it does not chain to a CA in sslrootcert={root}; point sslrootcert at the CA that signed the server's certificate (or sslrootcert=system for a public CA)"
                ),
                R::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
                    format!(
                        "host name mismatch: the server's certificate is not valid for \"{}\" (sslmode={mode}); connect with a name the certificate carries, or use sslmode=verify-ca to check only the CA",
                        self.host
                    )
                }
                R::InvalidCertificate(
                    C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. },
                ) => "the server's certificate has expired or is not valid yet: renew it on the server (or check this machine's clock)".to_string(),
                R::AlertReceived(
                    A::BadCertificate
                    | A::UnknownCA
                    | A::CertificateRequired
                    | A::CertificateUnknown
                    | A::UnsupportedCertificate
                    | A::CertificateExpired
                    | A::AccessDenied,
                ) => format!(
                    "the server refused the client certificate ({}): it must be signed by a CA in the server's ssl_ca_file and not expired; set sslcert and sslkey to such a certificate",
                    self.client_cert.as_deref().map_or("none was sent".to_string(), |c| format!("sslcert={c}"))
                ),
                other => format!("TLS handshake failed (sslmode={mode}): {other}"),
            };
        }
        match &self.kind {
            Kind::Invalid(m) => m.clone(),
            Kind::Timeout(t) => format!(
                "no answer within {t:?} (connect_timeout): is the server up and reachable from here?"
            ),
            Kind::SessionAttrs(why) => why.to_string(),
            Kind::Socket(e) if e.kind() == std::io::ErrorKind::PermissionDenied => e.to_string(),
            Kind::Socket(e) => {
                format!("{e} (is the server running and accepting connections there?)")
            }
            Kind::Postgres(e) => {
                if let Some(db) = e.as_db_error() {
                    let msg = db.message();
                    let hint = if msg.contains("no encryption") {
                        " — the server requires TLS for this connection: use sslmode=require, verify-ca or verify-full"
                    } else if msg.contains("requires a valid client certificate") {
                        " — set sslcert and sslkey to a client certificate the server trusts"
                    } else if msg.contains("password authentication failed") {
                        " — check the password (or its reference) for this user"
                    } else if msg.contains("does not exist") {
                        " — check dbname and user"
                    } else {
                        ""
                    };
                    return format!("{} {}: {msg}{hint}", db.severity(), db.code().code());
                }
                let text = chain(e);
                if text.contains("server does not support TLS") {
                    return format!(
                        "the server does not accept TLS, and sslmode={mode} requires it: turn ssl on at the server, or use sslmode=prefer if plaintext is acceptable"
                    );
                }
                if let Some(refused) = find_io(e, std::io::ErrorKind::PermissionDenied) {
                    return refused;
                }
                text
            }
        }
    }
}

/// The I/O errors in an error's chain of causes, outermost first.
fn io_errors(e: &tokio_postgres::Error) -> impl Iterator<Item = &std::io::Error> {
    std::iter::successors(Some(e as &(dyn std::error::Error + 'static)), |err| {
        err.source()
    })
    .filter_map(|err| err.downcast_ref::<std::io::Error>())
}

fn find_io(e: &tokio_postgres::Error, kind: std::io::ErrorKind) -> Option<String> {
    io_errors(e)
        .find(|io| io.kind() == kind)
        .map(|io| io.to_string())
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.0;
        if d.what.is_empty() {
            f.write_str(&d.explain())
        } else {
            write!(
                f,
                "could not connect to {} (sslmode={}): {}",
                d.what,
                d.sslmode,
                d.explain()
            )
        }
    }
}
