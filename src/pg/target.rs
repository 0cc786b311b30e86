//! A connection target: libpq keywords (from a connection string, `PG*` variables or a
//! tenant's registry record) checked and turned into what [`super::connect`] needs: the
//! addresses to try, the startup settings, the TLS configuration per `sslmode`, the
//! `require_auth` rule and the TCP settings. Every value is checked here, once, with an
//! error naming the keyword and where its value came from.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::auth::RequireAuth;
use super::conninfo::{ConnInfo, Source};
use super::passfile;
use super::socket::{Addr, TcpSettings};
use super::tls::{RootCert, TlsSettings, Verify};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// Plaintext first; TLS if the server refuses plaintext.
    Allow,
    /// TLS first; plaintext if the server does not offer TLS.
    #[default]
    Prefer,
    /// TLS only; the certificate is checked only if a root certificate is configured.
    Require,
    /// TLS, the certificate chain checked against the root certificate.
    VerifyCa,
    /// TLS, the chain and the host name checked.
    VerifyFull,
}

pub const SSLMODES: &str = "disable, allow, prefer, require, verify-ca, verify-full";

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    pub fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// Whether every connection made with this mode is encrypted.
    pub fn always_tls(self) -> bool {
        self >= SslMode::Require
    }
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A keyword whose value cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{keyword} (from {origin}): {message}")]
pub struct TargetError {
    pub keyword: String,
    pub origin: Source,
    pub message: String,
}

/// Everything needed to open connections to one database.
#[derive(Clone)]
pub struct Target {
    pub(super) addrs: Vec<Addr>,
    pub(super) config: tokio_postgres::Config,
    pub(super) sslmode: SslMode,
    pub(super) tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    pub(super) root: Option<RootCert>,
    pub(super) client_cert: Option<PathBuf>,
    pub(super) require_auth: Option<RequireAuth>,
    pub(super) tcp: TcpSettings,
    pub(super) session_attrs: tokio_postgres::config::TargetSessionAttrs,
    pub(super) load_balance: bool,
    pub(super) dbname: String,
    pub(super) user: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("Target")
            .field("what", &self.describe())
            .field("sslmode", &self.sslmode)
            .finish_non_exhaustive()
    }
}

/// Facts about the machine a target's defaults come from (the CLI's environment; tests
/// replace them).
pub struct Defaults {
    pub home: Option<PathBuf>,
    pub os_user: Option<String>,
    /// Directories where a server's Unix socket is looked for when no host is given.
    pub socket_dirs: Vec<PathBuf>,
}

impl Defaults {
    pub fn from_environment() -> Defaults {
        Defaults {
            home: std::env::var_os("HOME").map(PathBuf::from),
            os_user: std::env::var("USER")
                .or_else(|_| std::env::var("LOGNAME"))
                .ok(),
            socket_dirs: vec!["/var/run/postgresql".into(), "/tmp".into()],
        }
    }

    /// No defaults taken from the machine (registry tenants: everything is explicit).
    pub fn none() -> Defaults {
        Defaults {
            home: None,
            os_user: None,
            socket_dirs: vec![],
        }
    }

    fn dot_postgresql(&self, file: &str) -> Option<PathBuf> {
        self.home
            .as_ref()
            .map(|h| h.join(".postgresql").join(file))
            .filter(|p| p.exists())
    }
}

struct Reader<'a> {
    info: &'a ConnInfo,
}

impl Reader<'_> {
    fn get(&self, k: &str) -> Option<&str> {
        self.info.value(k)
    }

    fn fail(&self, keyword: &str, message: impl Into<String>) -> TargetError {
        TargetError {
            keyword: keyword.to_string(),
            origin: self
                .info
                .get(keyword)
                .map_or(Source::Default, |v| v.source.clone()),
            message: message.into(),
        }
    }

    fn seconds(&self, k: &str) -> Result<Option<u64>, TargetError> {
        self.get(k)
            .map(|v| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| self.fail(k, format!("\"{v}\" is not a number of seconds")))
            })
            .transpose()
    }

    fn choice<T: Copy>(
        &self,
        k: &str,
        options: &[(&str, T)],
        default: T,
    ) -> Result<T, TargetError> {
        let Some(v) = self.get(k) else {
            return Ok(default);
        };
        options
            .iter()
            .find(|(name, _)| *name == v)
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                self.fail(
                    k,
                    format!(
                        "\"{v}\" is not one of {}",
                        options
                            .iter()
                            .map(|(n, _)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })
    }
}

fn split_list(v: Option<&str>) -> Vec<String> {
    v.map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
        .unwrap_or_default()
}

impl Target {
    /// Check `info` and build the target. Files named by `sslrootcert`, `sslcert`, `sslkey`
    /// are read now, so a wrong path is reported before any connection.
    pub fn new(info: &ConnInfo, defaults: &Defaults) -> Result<Target, TargetError> {
        let r = Reader { info };
        let (hosts, hostaddrs) = (split_list(r.get("host")), split_list(r.get("hostaddr")));
        let ports = split_list(r.get("port"));
        let n = hosts.len().max(hostaddrs.len()).max(1);
        if !hosts.is_empty() && !hostaddrs.is_empty() && hosts.len() != hostaddrs.len() {
            return Err(r.fail(
                "hostaddr",
                format!(
                    "{} addresses for {} hosts: give one per host",
                    hostaddrs.len(),
                    hosts.len()
                ),
            ));
        }
        if ports.len() > 1 && ports.len() != n {
            return Err(r.fail(
                "port",
                format!(
                    "{} ports for {n} hosts: give one, or one per host",
                    ports.len()
                ),
            ));
        }
        let port_at = |i: usize| -> Result<u16, TargetError> {
            let p = ports.get(i).or_else(|| ports.first()).map(String::as_str);
            match p {
                None | Some("") => Ok(5432),
                Some(p) => p
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| r.fail("port", format!("\"{p}\" is not a port (1-65535)"))),
            }
        };
        let mut addrs = Vec::with_capacity(n);
        for i in 0..n {
            let port = port_at(i)?;
            let hostaddr = hostaddrs
                .get(i)
                .filter(|a| !a.is_empty())
                .map(|a| {
                    a.parse::<IpAddr>()
                        .map_err(|_| r.fail("hostaddr", format!("\"{a}\" is not an IP address")))
                })
                .transpose()?;
            let host = hosts.get(i).cloned().unwrap_or_default();
            addrs.push(if host.starts_with('/') {
                Addr::Unix {
                    dir: host.into(),
                    port,
                }
            } else if !host.is_empty() || hostaddr.is_some() {
                Addr::Tcp {
                    host: if host.is_empty() {
                        hostaddr.expect("checked").to_string()
                    } else {
                        host
                    },
                    hostaddr,
                    port,
                }
            } else {
                default_host(defaults, port)
            });
        }
        let user = match r.get("user") {
            Some(u) if !u.is_empty() => u.to_string(),
            _ => defaults.os_user.clone().ok_or_else(|| {
                r.fail(
                    "user",
                    "no user given, and the operating system user is unknown: set user (PGUSER)",
                )
            })?,
        };
        let dbname = r
            .get("dbname")
            .filter(|d| !d.is_empty())
            .unwrap_or(&user)
            .to_string();
        let mut config = tokio_postgres::Config::new();
        config.user(&user).dbname(&dbname);
        let password = match r.get("password") {
            Some(p) => Some(p.to_string()),
            None => {
                let file = r
                    .get("passfile")
                    .map(PathBuf::from)
                    .or_else(|| defaults.home.as_ref().map(|h| h.join(".pgpass")));
                file.and_then(|f| passfile::lookup_for(&f, &addrs[0], &dbname, &user))
            }
        };
        if let Some(p) = password {
            config.password(p);
        }
        if let Some(name) = r
            .get("application_name")
            .or_else(|| r.get("fallback_application_name"))
        {
            config.application_name(name);
        }
        if let Some(o) = r.get("options") {
            config.options(o);
        }
        if let Some(enc) = r.get("client_encoding")
            && !enc.eq_ignore_ascii_case("utf8")
            && !enc.eq_ignore_ascii_case("utf-8")
        {
            return Err(r.fail("client_encoding", "fleetmig speaks UTF8 only"));
        }
        r.choice("gssencmode", &[("disable", ()), ("prefer", ())], ())
            .map_err(|e| TargetError {
                message: format!("{}; fleetmig does not speak GSSAPI encryption", e.message),
                ..e
            })?;
        let root = match r.get("sslrootcert") {
            Some("system") => Some(RootCert::System),
            Some(p) if !p.is_empty() => Some(RootCert::File(p.into())),
            _ => defaults.dot_postgresql("root.crt").map(RootCert::File),
        };
        let sslmode = match r.get("sslmode") {
            Some(m) => SslMode::parse(m)
                .ok_or_else(|| r.fail("sslmode", format!("\"{m}\" is not one of {SSLMODES}")))?,
            // libpq 16: the system's roots imply a full check.
            None if root == Some(RootCert::System) => SslMode::VerifyFull,
            None => SslMode::Prefer,
        };
        if root == Some(RootCert::System) && sslmode != SslMode::VerifyFull {
            return Err(r.fail(
                "sslmode",
                format!("weak sslmode \"{sslmode}\" may not be used with sslrootcert=system (use \"verify-full\")"),
            ));
        }
        let negotiation = r.choice(
            "sslnegotiation",
            &[
                ("postgres", tokio_postgres::config::SslNegotiation::Postgres),
                ("direct", tokio_postgres::config::SslNegotiation::Direct),
            ],
            tokio_postgres::config::SslNegotiation::Postgres,
        )?;
        if negotiation == tokio_postgres::config::SslNegotiation::Direct && !sslmode.always_tls() {
            return Err(r.fail(
                "sslnegotiation",
                format!("weak sslmode \"{sslmode}\" may not be used with sslnegotiation=direct (use \"require\", \"verify-ca\" or \"verify-full\")"),
            ));
        }
        config.ssl_negotiation(negotiation);
        let channel_binding = r.choice(
            "channel_binding",
            &[
                ("disable", tokio_postgres::config::ChannelBinding::Disable),
                ("prefer", tokio_postgres::config::ChannelBinding::Prefer),
                ("require", tokio_postgres::config::ChannelBinding::Require),
            ],
            tokio_postgres::config::ChannelBinding::Prefer,
        )?;
        if channel_binding == tokio_postgres::config::ChannelBinding::Require
            && sslmode == SslMode::Disable
        {
            return Err(r.fail(
                "channel_binding",
                "\"require\" needs TLS, but sslmode is \"disable\"",
            ));
        }
        config.channel_binding(channel_binding);
        let require_auth = r
            .get("require_auth")
            .map(|v| RequireAuth::parse(v).map_err(|m| r.fail("require_auth", m)))
            .transpose()?;
        let client_cert = match (r.get("sslcert"), r.get("sslkey")) {
            (Some(c), Some(k)) if !c.is_empty() && !k.is_empty() => {
                Some((PathBuf::from(c), PathBuf::from(k)))
            }
            (Some(c), _) if !c.is_empty() => Some((
                PathBuf::from(c),
                defaults.dot_postgresql("postgresql.key").ok_or_else(|| {
                    r.fail(
                        "sslkey",
                        "sslcert is set but no sslkey: name the private key file",
                    )
                })?,
            )),
            (_, Some(k)) if !k.is_empty() => {
                return Err(r.fail(
                    "sslcert",
                    "sslkey is set but no sslcert: name the certificate file",
                ));
            }
            _ => defaults
                .dot_postgresql("postgresql.crt")
                .zip(defaults.dot_postgresql("postgresql.key")),
        };
        let sni = r.choice("sslsni", &[("1", true), ("0", false)], true)?;
        let tls13_only = r.choice(
            "ssl_min_protocol_version",
            &[
                ("TLSv1", false),
                ("TLSv1.1", false),
                ("TLSv1.2", false),
                ("TLSv1.3", true),
            ],
            false,
        )?;
        let tls = if sslmode == SslMode::Disable {
            None
        } else {
            let settings = TlsSettings {
                verify: match sslmode {
                    SslMode::VerifyFull => Verify::Full,
                    SslMode::VerifyCa => Verify::Chain,
                    // libpq checks the chain whenever a root certificate is there.
                    _ if root.is_some() => Verify::Chain,
                    _ => Verify::Nothing,
                },
                root: root.clone(),
                client_cert: client_cert.clone(),
                sni,
                tls13_only,
            };
            let config = settings.client_config().map_err(|e| TargetError {
                keyword: e.keyword.to_string(),
                origin: info.get(e.keyword).map_or(
                    if e.keyword == "sslrootcert" && sslmode >= SslMode::VerifyCa {
                        Source::Field("sslmode".into())
                    } else {
                        Source::Default
                    },
                    |v| v.source.clone(),
                ),
                message: e.message,
            })?;
            Some(tokio_postgres_rustls::MakeRustlsConnect::new(
                (*config).clone(),
            ))
        };
        let mut tcp = TcpSettings::default();
        if let Some(t) = r.seconds("connect_timeout")? {
            // libpq: 0 means wait forever, and anything below 2 seconds counts as 2.
            tcp.connect_timeout = (t > 0).then(|| Duration::from_secs(t.max(2)));
        }
        if r.choice("keepalives", &[("1", true), ("0", false)], true)? {
            let (mut idle, mut interval, mut count) = tcp.keepalive.expect("default on");
            if let Some(s) = r.seconds("keepalives_idle")? {
                idle = Duration::from_secs(s.max(1));
            }
            if let Some(s) = r.seconds("keepalives_interval")? {
                interval = Duration::from_secs(s.max(1));
            }
            if let Some(c) = r.get("keepalives_count") {
                count = c
                    .parse()
                    .map_err(|_| r.fail("keepalives_count", format!("\"{c}\" is not a number")))?;
            }
            tcp.keepalive = Some((idle, interval, count));
        } else {
            tcp.keepalive = None;
        }
        if let Some(ms) = r.get("tcp_user_timeout") {
            let ms: u64 = ms.parse().map_err(|_| {
                r.fail(
                    "tcp_user_timeout",
                    format!("\"{ms}\" is not a number of milliseconds"),
                )
            })?;
            tcp.user_timeout = (ms > 0).then(|| Duration::from_millis(ms));
        }
        use tokio_postgres::config::TargetSessionAttrs as Tsa;
        let session_attrs = r.choice(
            "target_session_attrs",
            &[
                ("any", Tsa::Any),
                ("read-write", Tsa::ReadWrite),
                ("read-only", Tsa::ReadOnly),
            ],
            Tsa::Any,
        )?;
        let load_balance = r.choice(
            "load_balance_hosts",
            &[("disable", false), ("random", true)],
            false,
        )?;
        Ok(Target {
            addrs,
            config,
            sslmode,
            tls,
            root,
            client_cert: client_cert.map(|(c, _)| c),
            require_auth,
            tcp,
            session_attrs,
            load_balance,
            dbname,
            user,
        })
    }

    /// `host:port/dbname` of the first host: for messages, never a secret.
    pub fn describe(&self) -> String {
        format!("{}/{}", self.addrs[0].describe(), self.dbname)
    }

    pub fn sslmode(&self) -> SslMode {
        self.sslmode
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn dbname(&self) -> &str {
        &self.dbname
    }

    /// The same server, another database (scratch and maintenance databases).
    pub fn with_dbname(&self, dbname: &str) -> Target {
        let mut t = self.clone();
        t.dbname = dbname.to_string();
        t.config.dbname(dbname);
        t
    }

    /// The same target with another application_name.
    pub fn with_application_name(&self, name: &str) -> Target {
        let mut t = self.clone();
        t.config.application_name(name);
        t
    }

    /// Whether a password would be sent where someone could read or replay it: the rule
    /// allows cleartext or md5 and the server's identity is not verified by TLS.
    pub fn weak_password_exposure(&self) -> bool {
        self.config.get_password().is_some()
            && self.require_auth.is_none_or(|r| r.allows_weak_password())
            && self.config.get_channel_binding() != tokio_postgres::config::ChannelBinding::Require
            && self.sslmode < SslMode::VerifyCa
    }
}

/// libpq's default when no host is given: the server's Unix socket if one is there, else
/// localhost over TCP.
fn default_host(defaults: &Defaults, port: u16) -> Addr {
    defaults
        .socket_dirs
        .iter()
        .find(|d| Path::new(d).join(format!(".s.PGSQL.{port}")).exists())
        .map(|d| Addr::Unix {
            dir: d.clone(),
            port,
        })
        .unwrap_or(Addr::Tcp {
            host: "localhost".into(),
            hostaddr: None,
            port,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(s: &str) -> Result<Target, TargetError> {
        Target::new(&ConnInfo::parse(s).unwrap(), &Defaults::none())
    }

    #[test]
    fn hosts_ports_and_defaults() {
        let t = target("postgresql://app@db1:5433,db2/tenant").unwrap();
        assert_eq!(t.addrs.len(), 2);
        assert_eq!(t.addrs[1].describe(), "db2:5432");
        assert_eq!(t.describe(), "db1:5433/tenant");
        assert_eq!(t.sslmode(), SslMode::Prefer);
        let t = target("host=/tmp port=5999 user=u").unwrap();
        assert_eq!(t.addrs[0].describe(), "/tmp/.s.PGSQL.5999");
        assert_eq!(t.dbname(), "u", "dbname defaults to the user");
        let t = target("hostaddr=10.0.0.5 user=u").unwrap();
        assert_eq!(t.addrs[0].describe(), "10.0.0.5:5432");
    }

    #[test]
    fn bad_values_name_their_keyword_and_source() {
        for (s, keyword, want) in [
            (
                "user=u sslmode=verify_full",
                "sslmode",
                "is not one of disable, allow",
            ),
            ("user=u port=99999", "port", "not a port"),
            ("user=u host=a,b port=1,2,3", "port", "3 ports for 2 hosts"),
            (
                "user=u sslmode=verify-full",
                "sslrootcert",
                "needs a root certificate",
            ),
            (
                "user=u sslrootcert=system sslmode=require",
                "sslmode",
                "sslrootcert=system",
            ),
            (
                "user=u sslnegotiation=direct",
                "sslnegotiation",
                "weak sslmode \"prefer\"",
            ),
            (
                "user=u sslmode=disable channel_binding=require",
                "channel_binding",
                "needs TLS",
            ),
            (
                "user=u require_auth=kerberos",
                "require_auth",
                "not an authentication method",
            ),
            ("user=u gssencmode=require", "gssencmode", "GSSAPI"),
            (
                "user=u sslrootcert=/nonexistent/ca.crt sslmode=verify-ca",
                "sslrootcert",
                "/nonexistent/ca.crt",
            ),
            ("user=u sslkey=/x.key", "sslcert", "no sslcert"),
        ] {
            let e = target(s).unwrap_err();
            assert_eq!(e.keyword, keyword, "{s}: {e}");
            assert!(e.to_string().contains(want), "{s}: {e}");
        }
        let e = Target::new(
            &ConnInfo::parse("user=u")
                .unwrap()
                .with_env(&|k| (k == "PGSSLMODE").then(|| "bogus".to_string())),
            &Defaults::none(),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("sslmode (from PGSSLMODE)"), "{e}");
    }

    #[test]
    fn weak_password_exposure_is_judged_by_tls_and_rules() {
        assert!(
            target("user=u password=p sslmode=prefer")
                .unwrap()
                .weak_password_exposure()
        );
        assert!(
            !target("user=u password=p require_auth=scram-sha-256")
                .unwrap()
                .weak_password_exposure()
        );
        assert!(
            !target("user=u password=p sslmode=require channel_binding=require")
                .unwrap()
                .weak_password_exposure()
        );
        assert!(
            !target("user=u sslmode=prefer")
                .unwrap()
                .weak_password_exposure()
        );
    }
}
