//! TLS to PostgreSQL with rustls, as libpq's `sslmode` means it: `verify-full` checks the
//! chain and the host name, `verify-ca` the chain only, weaker modes check the chain when a
//! root certificate is configured (libpq does the same when `root.crt` exists) and nothing
//! otherwise. Client certificates for `clientcert=verify-*` servers. The handshake itself
//! and channel binding are tokio-postgres-rustls'.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Where trusted roots come from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootCert {
    /// A PEM file with one or more CA certificates.
    File(PathBuf),
    /// The operating system's trust store (`sslrootcert=system`, libpq 16+).
    System,
}

impl std::fmt::Display for RootCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RootCert::File(p) => write!(f, "{}", p.display()),
            RootCert::System => f.write_str("system"),
        }
    }
}

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Nothing checked (libpq's `require`/`prefer` without a root certificate).
    Nothing,
    /// The chain up to a trusted root, not the host name.
    Chain,
    /// The chain and the host name.
    Full,
}

/// What a TLS client needs: verification, roots, an optional client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub verify: Verify,
    pub root: Option<RootCert>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Send the host name in the handshake (`sslsni`, on by default).
    pub sni: bool,
    /// `ssl_min_protocol_version=TLSv1.3` (rustls never speaks below TLS 1.2).
    pub tls13_only: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("{keyword}: {message}")]
pub struct TlsSetupError {
    pub keyword: &'static str,
    pub message: String,
}

fn setup(keyword: &'static str, message: impl Into<String>) -> TlsSetupError {
    TlsSetupError {
        keyword,
        message: message.into(),
    }
}

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The OS trust store, loaded once per process.
fn system_roots() -> Result<Arc<RootCertStore>, TlsSetupError> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let loaded = rustls_native_certs::load_native_certs();
            let mut store = RootCertStore::empty();
            let (added, _) = store.add_parsable_certificates(loaded.certs);
            if added == 0 {
                Err(format!(
                    "sslrootcert=system: no trusted certificates found in the system store ({})",
                    loaded
                        .errors
                        .first()
                        .map_or("it is empty".to_string(), |e| e.to_string())
                ))
            } else {
                Ok(Arc::new(store))
            }
        })
        .clone()
        .map_err(|m| setup("sslrootcert", m))
}

fn file_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsSetupError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| setup("sslrootcert", format!("{}: {e}", path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| setup("sslrootcert", format!("{}: {e}", path.display())))?;
    let mut store = RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(setup(
            "sslrootcert",
            format!("{}: no PEM certificate in it", path.display()),
        ));
    }
    Ok(Arc::new(store))
}

/// libpq refuses a private key others can read; so do we (it would be a secret on display).
fn check_key_permissions(path: &Path) -> Result<(), TlsSetupError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| setup("sslkey", format!("{}: {}", path.display(), e.kind())))?;
    let mode = meta.mode() & 0o777;
    // libpq: 0600 or less for the owner; 0640 or less when root owns the file.
    let allowed = if meta.uid() == 0 { 0o640 } else { 0o600 };
    if mode & !allowed != 0 {
        return Err(setup(
            "sslkey",
            format!(
                "{}: private key file has group or world access (mode {mode:o}); permissions should be u=rw (0600) or less",
                path.display()
            ),
        ));
    }
    Ok(())
}

fn client_identity(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsSetupError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| setup("sslcert", format!("{}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| setup("sslcert", format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(setup(
            "sslcert",
            format!("{}: no PEM certificate in it", cert.display()),
        ));
    }
    check_key_permissions(key)?;
    // Never the file's content in a message: only its path and what kind of problem.
    let key = PrivateKeyDer::from_pem_file(key).map_err(|_| {
        setup(
            "sslkey",
            format!(
                "{}: not an unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1)",
                key.display()
            ),
        )
    })?;
    Ok((certs, key))
}

impl TlsSettings {
    /// A rustls client config for these settings (reads the files now).
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsSetupError> {
        let provider = provider();
        let roots = match &self.root {
            Some(RootCert::System) => Some(system_roots()?),
            Some(RootCert::File(path)) => Some(file_roots(path)?),
            None => None,
        };
        let verifier: Arc<dyn ServerCertVerifier> = match (self.verify, roots) {
            (Verify::Full, Some(roots)) => {
                rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| setup("sslrootcert", e.to_string()))?
            }
            (Verify::Chain, Some(roots)) => Arc::new(ChainOnly {
                roots,
                algorithms: provider.signature_verification_algorithms,
            }),
            (Verify::Nothing, _) => Arc::new(Unverified {
                algorithms: provider.signature_verification_algorithms,
            }),
            (_, None) => {
                return Err(setup(
                    "sslrootcert",
                    "server certificate verification needs a root certificate: set sslrootcert to the CA file that signed the server's certificate, or sslrootcert=system for the system's trusted roots",
                ));
            }
        };
        let versions: &[&rustls::SupportedProtocolVersion] = if self.tls13_only {
            &[&rustls::version::TLS13]
        } else {
            rustls::DEFAULT_VERSIONS
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| setup("ssl_min_protocol_version", e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match &self.client_cert {
            Some((cert, key)) => {
                let (certs, key) = client_identity(cert, key)?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| setup("sslcert", format!("{}: {e}", cert.display())))?
            }
            None => builder.with_no_client_auth(),
        };
        config.enable_sni = self.sni;
        // PostgreSQL 17's direct TLS negotiation requires it; older servers ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Arc::new(config))
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not checked.
#[derive(Debug)]
struct ChainOnly {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `require` without a root certificate: encrypted, the server not authenticated (libpq's
/// meaning; the handshake's own signatures are still checked).
#[derive(Debug)]
struct Unverified {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
