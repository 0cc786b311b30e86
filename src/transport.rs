//! TLS and credentials of the daemon's two network edges: the gRPC server it offers (TLS,
//! optional mTLS; plaintext only by explicit opt-in) and the etcd client it uses (TLS, client
//! certificate, etcd user). `profile = "production"` refuses every insecure choice at start.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError};

/// `[server.tls]`: PEM files. rustls speaks TLS 1.2 and 1.3 only (no older versions).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Set: clients must present a certificate signed by this CA (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// `profile`: `production` refuses plaintext gRPC or etcd, unauthenticated calls, etcd without
/// authentication, and tenant roles that are superusers (pools.privileged_roles = "warn").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    #[default]
    Development,
    Production,
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError::Key {
        key,
        message: format!("{}: {e}", path.display()),
    })
}

fn refuse(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key,
        message: message.into(),
    }
}

/// The server's TLS acceptor, or None for plaintext (which must be asked for). TLS 1.2 and
/// 1.3 (rustls' safe defaults), ALPN h2; with `client_ca`, a client certificate signed by it
/// is required. The handshake itself runs in [`crate::listen`], under the handshake deadline.
pub fn server_tls(config: &Config) -> Result<Option<tokio_rustls::TlsAcceptor>, ConfigError> {
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::server::WebPkiClientVerifier;
    use tokio_rustls::rustls::{RootCertStore, ServerConfig};

    let t = match (&config.server.tls, config.server.plaintext) {
        (Some(_), true) => {
            return Err(refuse(
                "server.plaintext",
                "set together with [server.tls]: choose one",
            ));
        }
        (None, false) => {
            return Err(refuse(
                "server.tls",
                "not configured: set server.tls.cert and server.tls.key (and server.tls.client_ca \
                 for mTLS), or server.plaintext = true for local development",
            ));
        }
        (None, true) => return Ok(None),
        (Some(t), false) => t,
    };
    let certs =
        |key: &'static str, path: &Path| -> Result<Vec<CertificateDer<'static>>, ConfigError> {
            let pem = read(key, path)?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    refuse(
                        key,
                        format!("{}: not PEM certificates: {e}", path.display()),
                    )
                })?;
            if certs.is_empty() {
                return Err(refuse(
                    key,
                    format!("{}: no certificate in it", path.display()),
                ));
            }
            Ok(certs)
        };
    let chain = certs("server.tls.cert", &t.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&read("server.tls.key", &t.key)?).map_err(|e| {
        refuse(
            "server.tls.key",
            format!("{}: no PEM private key in it: {e}", t.key.display()),
        )
    })?;
    let builder = ServerConfig::builder();
    let builder = match &t.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(certs("server.tls.client_ca", ca)?);
            let verifier = WebPkiClientVerifier::builder(roots.into())
                .build()
                .map_err(|e| refuse("server.tls.client_ca", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut tls = builder.with_single_cert(chain, key).map_err(|e| {
        refuse(
            "server.tls.key",
            format!("does not fit server.tls.cert: {e}"),
        )
    })?;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(
        tls,
    ))))
}

/// etcd connection options from `[etcd]`: timeouts, TLS, client certificate, user.
pub fn etcd_options(config: &Config) -> Result<etcd_client::ConnectOptions, ConfigError> {
    let e = &config.etcd;
    let mut options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(e.connect_timeout)
        .with_timeout(e.request_timeout);
    let https = e.endpoints.iter().any(|u| u.starts_with("https://"));
    if https || e.ca_cert.is_some() || e.cert.is_some() {
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &e.ca_cert {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(
                "etcd.ca_cert",
                ca,
            )?));
        }
        match (&e.cert, &e.key) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(etcd_client::Identity::from_pem(
                    read("etcd.cert", cert)?,
                    read("etcd.key", key)?,
                ));
            }
            (None, None) => {}
            _ => return Err(refuse("etcd.cert", "etcd.cert and etcd.key go together")),
        }
        options = options.with_tls(tls);
    }
    if let Some(user) = &e.user {
        // The reference is never shown: it may be the password typed in the wrong place.
        let password = match (&e.password_file, &e.password_env) {
            (Some(path), None) => String::from_utf8(std::fs::read(path).map_err(|e| {
                refuse(
                    "etcd.password_file",
                    format!(
                        "cannot read the file it names ({}); expected the absolute path of a file holding the password (the value is not shown)",
                        e.kind()
                    ),
                )
            })?)
            .map_err(|_| refuse("etcd.password_file", "not UTF-8"))?
            .trim_end_matches(['\n', '\r'])
            .to_string(),
            (None, Some(var)) => std::env::var(var).map_err(|_| {
                refuse(
                    "etcd.password_env",
                    "the environment variable it names is not set; expected the NAME of a variable holding the password (the value is not shown)",
                )
            })?,
            _ => {
                return Err(refuse(
                    "etcd.user",
                    "needs exactly one of etcd.password_file or etcd.password_env",
                ));
            }
        };
        options = options.with_user(user.clone(), password);
    }
    Ok(options)
}

/// What `fleetmig serve` checks beyond the shape of the config: the production profile.
pub fn check_profile(config: &Config) -> Result<(), ConfigError> {
    if config.profile != Profile::Production {
        return Ok(());
    }
    let why = " (profile = \"production\")";
    if config.server.plaintext || config.server.tls.is_none() {
        return Err(refuse(
            "server.plaintext",
            format!("plaintext gRPC is refused{why}: configure [server.tls]"),
        ));
    }
    if config.auth.mode == crate::auth::AuthMode::None {
        return Err(refuse(
            "auth.mode",
            format!("unauthenticated calls are refused{why}: use auth.mode = \"tokens\""),
        ));
    }
    if let Some(plain) = config
        .etcd
        .endpoints
        .iter()
        .find(|u| !u.starts_with("https://"))
    {
        return Err(refuse(
            "etcd.endpoints",
            format!(
                "{plain}: plaintext etcd is refused{why}: use https:// endpoints and etcd.ca_cert"
            ),
        ));
    }
    if config.etcd.user.is_none() && config.etcd.cert.is_none() {
        return Err(refuse(
            "etcd.user",
            format!(
                "etcd without authentication is refused{why}: set etcd.user (and a password) or a client certificate (etcd.cert, etcd.key)"
            ),
        ));
    }
    if config.pools.insecure_connections(config.profile)
        == crate::registry::pools::InsecureConnections::Allow
    {
        return Err(refuse(
            "pools.insecure_connections",
            format!(
                "must be \"refuse\" (the default) or \"warn\"{why}: tenant connections without TLS, or that could send a password in cleartext, are not allowed silently"
            ),
        ));
    }
    if config.pools.privileged_roles != crate::registry::pools::PrivilegedRoles::Refuse {
        return Err(refuse(
            "pools.privileged_roles",
            format!(
                "must be \"refuse\"{why}: fleetmig's tenant roles must not be superusers or bypass RLS"
            ),
        ));
    }
    Ok(())
}
