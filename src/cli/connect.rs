//! How the CLI client reaches the daemon: address, TLS (CA, client certificate for mTLS) and
//! a bearer token, from flags or `FLEETMIG_*` environment variables.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use super::Failure;

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct Connect {
    /// The daemon's gRPC address (`https://` for TLS).
    #[arg(
        long,
        env = "FLEETMIG_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub server: String,
    /// CA certificate (PEM) that signed the daemon's certificate; implies TLS.
    #[arg(long, env = "FLEETMIG_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS, with --client-key.
    #[arg(
        long,
        env = "FLEETMIG_CLIENT_CERT",
        global = true,
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    #[arg(
        long,
        env = "FLEETMIG_CLIENT_KEY",
        global = true,
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
    /// File holding the bearer token (a static token or a JWT).
    #[arg(long, env = "FLEETMIG_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// `json`: one JSON object per line, for scripts.
    #[arg(long, short = 'o', value_enum, default_value = "text", global = true)]
    pub output: Output,
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    }
}

/// A connection to the daemon, with the token attached.
pub type Daemon = InterceptedService<Channel, Bearer>;

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| Failure::input(format!("{flag} {}: {e}", path.display())))
}

pub async fn channel(c: &Connect) -> Result<Daemon, Failure> {
    let mut endpoint = Channel::from_shared(c.server.clone())
        .map_err(|e| Failure::input(format!("--server {}: {e}", c.server)))?
        .connect_timeout(Duration::from_secs(5));
    if c.server.starts_with("https://") || c.ca_cert.is_some() || c.client_cert.is_some() {
        if !c.server.starts_with("https://") {
            return Err(Failure::input(format!(
                "--server {}: TLS options need an https:// address",
                c.server
            )));
        }
        let mut tls = ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = &c.ca_cert {
            tls = tls.ca_certificate(Certificate::from_pem(read("--ca-cert", ca)?));
        }
        if let (Some(cert), Some(key)) = (&c.client_cert, &c.client_key) {
            tls = tls.identity(Identity::from_pem(
                read("--client-cert", cert)?,
                read("--client-key", key)?,
            ));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| Failure::input(format!("TLS settings: {e}")))?;
    }
    let token = match &c.token_file {
        Some(_) if !c.server.starts_with("https://") && !is_loopback(&c.server) => {
            return Err(Failure::input(format!(
                "--token-file with --server {}: a token is only sent over TLS (https://) or to a loopback address",
                c.server
            )));
        }
        Some(path) => {
            let token = String::from_utf8(read("--token-file", path)?)
                .map_err(|_| Failure::input("--token-file: not UTF-8"))?;
            let header = format!("Bearer {}", token.trim());
            let mut value: MetadataValue<tonic::metadata::Ascii> =
                header.parse().map_err(|_| {
                    Failure::input("--token-file: the token has characters a header cannot carry")
                })?;
            value.set_sensitive(true);
            Some(value)
        }
        None => None,
    };
    let channel = endpoint.connect().await.map_err(|e| Failure {
        code: 1,
        message: format!(
            "cannot reach the daemon at {}: {} (is `fleetmig serve` running? --server / FLEETMIG_SERVER; for TLS: https://, --ca-cert)",
            c.server,
            crate::cli::connect::chain(&e)
        ),
    })?;
    Ok(InterceptedService::new(channel, Bearer(token)))
}

fn is_loopback(server: &str) -> bool {
    let Ok(uri) = server.parse::<http::Uri>() else {
        return false;
    };
    let host = uri.host().unwrap_or("").trim_matches(['[', ']']);
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// An error with its causes (TLS failures hide the reason in the source chain).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_addresses_are_recognised() {
        for s in [
            "http://127.0.0.1:50051",
            "http://localhost:1",
            "http://[::1]:5",
        ] {
            assert!(super::is_loopback(s), "{s}");
        }
        for s in [
            "http://fleetmig.example:50051",
            "http://10.0.0.1:50051",
            "not a uri",
        ] {
            assert!(!super::is_loopback(s), "{s}");
        }
    }
}
