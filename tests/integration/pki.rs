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
    pair
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
