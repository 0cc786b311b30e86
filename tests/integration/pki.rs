//! Test certificates (rcgen): a CA, a server certificate for localhost/127.0.0.1, client
//! certificates (valid, expired, from another CA), written as PEM files in a temp dir.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

pub struct Pki {
    pub dir: tempfile::TempDir,
}

/// A PEM certificate and key on disk.
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    dir: &Path,
    file: &str,
    issuer: &CertifiedIssuer<'static, KeyPair>,
    cn: &str,
    server: bool,
    expired: bool,
) -> Pair {
    let sans = if server {
        vec!["localhost".to_string(), "127.0.0.1".to_string()]
    } else {
        vec![]
    };
    leaf_with(dir, file, issuer, cn, sans, server, expired)
}

fn leaf_with(
    dir: &Path,
    file: &str,
    issuer: &CertifiedIssuer<'static, KeyPair>,
    cn: &str,
    sans: Vec<String>,
    server: bool,
    expired: bool,
) -> Pair {
    let mut p = CertificateParams::new(sans).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    if expired {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, issuer).unwrap();
    let pair = Pair {
        cert: dir.join(format!("{file}.crt")),
        key: dir.join(format!("{file}.key")),
    };
    std::fs::write(&pair.cert, cert.pem()).unwrap();
    std::fs::write(&pair.key, key.serialize_pem()).unwrap();
    // Private keys readable by their owner only: libpq (and fleetmig) refuse others.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pair.key, std::fs::Permissions::from_mode(0o600)).unwrap();
    pair
}

/// Certificates for a PostgreSQL server and its clients.
pub struct PgPki {
    /// Keeps the files.
    _dir: tempfile::TempDir,
    pub ca: PathBuf,
    /// A CA that signed nothing the server uses.
    pub foreign_ca: PathBuf,
    /// For the server, valid for `server_sans` only.
    pub server: Pair,
    /// A client certificate whose common name is `client_cn` (signed by the CA).
    pub client: Pair,
    /// A client certificate with the same name from the foreign CA.
    pub foreign_client: Pair,
}

pub fn pg_pki(server_sans: &[&str], client_cn: &str) -> PgPki {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ca1, ca2) = (ca("fleetmig pg test CA"), ca("another pg CA"));
    std::fs::write(d.join("ca.crt"), ca1.pem()).unwrap();
    std::fs::write(d.join("foreign-ca.crt"), ca2.pem()).unwrap();
    let sans = server_sans.iter().map(|s| s.to_string()).collect();
    PgPki {
        ca: d.join("ca.crt"),
        foreign_ca: d.join("foreign-ca.crt"),
        server: leaf_with(d, "server", &ca1, server_sans[0], sans, true, false),
        client: leaf_with(d, "client", &ca1, client_cn, vec![], false, false),
        foreign_client: leaf_with(d, "foreign-client", &ca2, client_cn, vec![], false, false),
        _dir: dir,
    }
}

pub struct Issued {
    pub ca: PathBuf,
    pub server: Pair,
    /// Signed by the CA, common name "rollout-bot".
    pub client: Pair,
    pub expired_client: Pair,
    /// A client certificate from a CA the server does not trust.
    pub foreign_client: Pair,
    /// The other CA (a client trusting it cannot verify the server).
    pub foreign_ca: PathBuf,
}

impl Pki {
    pub fn issue() -> (Pki, Issued) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (ca1, ca2) = (ca("fleetmig test CA"), ca("someone else's CA"));
        std::fs::write(d.join("ca.crt"), ca1.pem()).unwrap();
        std::fs::write(d.join("foreign-ca.crt"), ca2.pem()).unwrap();
        let issued = Issued {
            ca: d.join("ca.crt"),
            server: leaf(d, "server", &ca1, "localhost", true, false),
            client: leaf(d, "client", &ca1, "rollout-bot", false, false),
            expired_client: leaf(d, "expired", &ca1, "rollout-bot", false, true),
            foreign_client: leaf(d, "foreign", &ca2, "rollout-bot", false, false),
            foreign_ca: d.join("foreign-ca.crt"),
        };
        (Pki { dir }, issued)
    }
}
