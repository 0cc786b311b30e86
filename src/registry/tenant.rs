//! A tenant record: identity, connection (with a password *reference*), labels and
//! placeholder values; validated against allowlists before anything stores or uses it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A field that failed validation: `field` is the request path (e.g. `tenant.connection.port`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

pub fn field_error(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// Show at most 64 characters of hostile input in messages.
pub fn shown(s: &str) -> String {
    let cut: String = s.chars().take(64).collect();
    format!(
        "{:?}{}",
        cut,
        if s.chars().count() > 64 { "..." } else { "" }
    )
}

/// `field["key"]` for an entry of a map field (labels, placeholders): the key always quoted
/// and escaped, whatever it is, since a client may send any key.
pub fn map_entry(field: &str, key: &str) -> String {
    format!("{field}[{}]", shown(key))
}

/// A tenant id: 1-63 of a-z 0-9 _ -, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(String);

impl TenantId {
    pub fn parse(field: &str, s: &str) -> Result<TenantId, FieldError> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 63
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-');
        if ok {
            Ok(TenantId(s.to_string()))
        } else {
            Err(field_error(
                field,
                format!(
                    "{} is not a tenant id: use 1-63 characters from a-z 0-9 _ -, starting with a letter or digit",
                    shown(s)
                ),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where the daemon reads a tenant's password at connect time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PasswordRef {
    Env(String),
    File(PathBuf),
    Passfile,
}

impl PasswordRef {
    fn kind(&self) -> &'static str {
        match self {
            PasswordRef::Env(_) => "env",
            PasswordRef::File(_) => "file",
            PasswordRef::Passfile => "passfile",
        }
    }

    /// Whether the installed [`SecretsPolicy`](super::secrets::SecretsPolicy) lets the
    /// daemon follow this reference.
    pub fn allowed(&self) -> Result<(), String> {
        let policy = super::secrets::SecretsPolicy::current();
        match self {
            PasswordRef::Env(var) => policy.allows_env(var),
            PasswordRef::File(path) => policy.allows_file(path),
            PasswordRef::Passfile => Ok(()),
        }
    }
}

use crate::pg::Pooler;
pub use crate::pg::SslMode;
use crate::pg::tls::RootCert;

/// libpq's `sslnegotiation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SslNegotiation {
    /// An SSLRequest first, as every PostgreSQL version understands.
    #[default]
    Postgres,
    /// TLS at once (PostgreSQL 17+ servers, and TLS-terminating proxies).
    Direct,
}

/// libpq's `channel_binding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelBinding {
    Disable,
    #[default]
    Prefer,
    /// SCRAM with channel binding only: no cleartext or md5 password ever leaves.
    Require,
}

/// Where a session-mode connection to the same database is made, for what cannot run
/// behind a transaction-mode pooler (CREATE INDEX CONCURRENTLY, admin work).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

fn is_default<T: Default + PartialEq>(t: &T) -> bool {
    *t == T::default()
}

/// TLS files, authentication rules and pooling of a connection: all optional. Files are
/// paths on the daemon's machine, read at connect time, never stored content.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectionOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sslrootcert: Option<RootCert>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sslcert: Option<PathBuf>,
    /// A private key: confined like password files (`secrets.password_dirs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sslkey: Option<PathBuf>,
    #[serde(skip_serializing_if = "is_default")]
    pub sslnegotiation: SslNegotiation,
    #[serde(skip_serializing_if = "is_default")]
    pub channel_binding: ChannelBinding,
    /// libpq's `require_auth`, e.g. `scram-sha-256` or `!password,!md5`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub require_auth: Option<String>,
    #[serde(skip_serializing_if = "is_default")]
    pub pooler: Pooler,
    /// Behind a transaction-mode pooler: the direct (or session-mode) way to the database.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<Endpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionSpec {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    pub sslmode: SslMode,
    pub schema: Option<String>,
    pub password: Option<PasswordRef>,
    #[serde(default, flatten)]
    pub options: ConnectionOptions,
}

/// The lock key of a database: `host:port/dbname[/schema]`. Two registry entries for one
/// database get the same key, so they serialize.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DatabaseKey(pub String);

impl fmt::Display for DatabaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_name(s: &str, extra: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || extra.contains(&c))
}

impl ConnectionSpec {
    /// Validate every field; `at` is the request path of the connection message.
    pub fn validate(&self, at: &str) -> Result<(), FieldError> {
        if !is_host(&self.host) {
            return Err(field_error(
                format!("{at}.host"),
                format!("{} is not a host name or IP address", shown(&self.host)),
            ));
        }
        if self.port == 0 {
            return Err(field_error(format!("{at}.port"), "must be 1-65535"));
        }
        if !is_name(&self.dbname, b"-") {
            return Err(field_error(
                format!("{at}.dbname"),
                format!(
                    "{} is not a database name: use 1-63 characters from A-Z a-z 0-9 _ -",
                    shown(&self.dbname)
                ),
            ));
        }
        if !is_name(&self.user, b"-") {
            return Err(field_error(
                format!("{at}.user"),
                format!(
                    "{} is not a role name: use 1-63 characters from A-Z a-z 0-9 _ -",
                    shown(&self.user)
                ),
            ));
        }
        if let Some(schema) = &self.schema
            && !crate::revision::placeholder::is_safe_identifier(schema)
        {
            return Err(field_error(
                format!("{at}.schema"),
                format!(
                    "{} is not a schema name: use 1-63 characters from A-Z a-z 0-9 _, not starting with a digit",
                    shown(schema)
                ),
            ));
        }
        self.validate_password(at)?;
        self.options.validate(at, self.sslmode)
    }

    fn validate_password(&self, at: &str) -> Result<(), FieldError> {
        match &self.password {
            Some(PasswordRef::Env(var))
                if var.is_empty()
                    || var.len() > 128
                    || !var
                        .bytes()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_') =>
            {
                Err(field_error(
                    format!("{at}.password.env"),
                    super::secrets::NOT_AN_ENV_NAME,
                ))
            }
            Some(PasswordRef::File(path))
                if !path.is_absolute() || path.as_os_str().len() > 4096 =>
            {
                Err(field_error(
                    format!("{at}.password.file"),
                    super::secrets::NOT_A_PATH,
                ))
            }
            Some(reference) => reference
                .allowed()
                .map_err(|m| field_error(format!("{at}.password.{}", reference.kind()), m)),
            None => Ok(()),
        }
    }

    /// Where sessions that need a real server session go: the declared session endpoint
    /// behind a transaction-mode pooler, else this same connection.
    pub fn session_spec(&self) -> ConnectionSpec {
        match (&self.options.pooler, &self.options.session) {
            (Pooler::Transaction, Some(e)) => ConnectionSpec {
                host: e.host.clone(),
                port: e.port,
                options: ConnectionOptions {
                    pooler: Pooler::None,
                    session: None,
                    ..self.options.clone()
                },
                ..self.clone()
            },
            _ => self.clone(),
        }
    }

    pub fn database_key(&self) -> DatabaseKey {
        let mut k = format!(
            "{}:{}/{}",
            self.host.to_ascii_lowercase(),
            self.port,
            self.dbname
        );
        if let Some(s) = &self.schema {
            k.push('/');
            k.push_str(s);
        }
        DatabaseKey(k)
    }

    /// `host:port`: connection limits apply per Postgres server.
    pub fn host_key(&self) -> String {
        format!("{}:{}", self.host.to_ascii_lowercase(), self.port)
    }
}

fn absolute_plain(path: &std::path::Path) -> bool {
    path.is_absolute()
        && path.as_os_str().len() <= 4096
        && path.components().all(|c| {
            matches!(
                c,
                std::path::Component::RootDir | std::path::Component::Normal(_)
            )
        })
}

fn is_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b':'))
        && !host.starts_with('-')
}

impl ConnectionOptions {
    /// The shape of each field (files are read at connect time, on the daemon's machine).
    fn validate(&self, at: &str, sslmode: SslMode) -> Result<(), FieldError> {
        let path_error = |field: &str| {
            field_error(
                format!("{at}.{field}"),
                "must be an absolute path without `..` (a file on the daemon's machine)",
            )
        };
        match &self.sslrootcert {
            Some(RootCert::File(p)) if !absolute_plain(p) => return Err(path_error("sslrootcert")),
            Some(RootCert::System) if sslmode != SslMode::VerifyFull => {
                return Err(field_error(
                    format!("{at}.sslmode"),
                    format!(
                        "\"{sslmode}\" may not be used with sslrootcert = \"system\" (use verify-full)"
                    ),
                ));
            }
            None if sslmode >= SslMode::VerifyCa => {
                return Err(field_error(
                    format!("{at}.sslrootcert"),
                    format!(
                        "sslmode {sslmode} checks the server's certificate: name the CA file that signed it, or \"system\" for the system's trusted roots"
                    ),
                ));
            }
            _ => {}
        }
        match (&self.sslcert, &self.sslkey) {
            (Some(c), _) if !absolute_plain(c) => return Err(path_error("sslcert")),
            (_, Some(k)) if !absolute_plain(k) => return Err(path_error("sslkey")),
            (Some(_), None) => {
                return Err(field_error(
                    format!("{at}.sslkey"),
                    "required with sslcert: the client certificate's private key file",
                ));
            }
            (None, Some(_)) => {
                return Err(field_error(
                    format!("{at}.sslcert"),
                    "required with sslkey: the client certificate file",
                ));
            }
            (Some(_), Some(k)) => super::secrets::SecretsPolicy::current()
                .allows_file(k)
                .map_err(|m| {
                    field_error(
                        format!("{at}.sslkey"),
                        m.replace("for passwords", "for secrets"),
                    )
                })?,
            (None, None) => {}
        }
        if self.sslnegotiation == SslNegotiation::Direct && !sslmode.always_tls() {
            return Err(field_error(
                format!("{at}.sslnegotiation"),
                format!("direct needs sslmode require, verify-ca or verify-full (not {sslmode})"),
            ));
        }
        if self.channel_binding == ChannelBinding::Require && sslmode == SslMode::Disable {
            return Err(field_error(
                format!("{at}.channel_binding"),
                "require needs TLS, but sslmode is disable",
            ));
        }
        if let Some(rule) = &self.require_auth {
            crate::pg::auth::RequireAuth::parse(rule)
                .map_err(|m| field_error(format!("{at}.require_auth"), m))?;
        }
        match (&self.pooler, &self.session) {
            (Pooler::Transaction, Some(e)) => {
                if !is_host(&e.host) {
                    return Err(field_error(
                        format!("{at}.session_host"),
                        format!("{} is not a host name or IP address", shown(&e.host)),
                    ));
                }
                if e.port == 0 {
                    return Err(field_error(format!("{at}.session_port"), "must be 1-65535"));
                }
            }
            (_, Some(_)) => {
                return Err(field_error(
                    format!("{at}.session_host"),
                    "only used with pooler = transaction (the way around the pooler)",
                ));
            }
            _ => {}
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub id: TenantId,
    pub app: String,
    pub connection: ConnectionSpec,
    pub labels: BTreeMap<String, String>,
    pub placeholders: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Label keys: 1-63 of a-z 0-9 _ . - /; values: 0-63 of A-Z a-z 0-9 _ . -.
pub fn validate_labels(field: &str, labels: &BTreeMap<String, String>) -> Result<(), FieldError> {
    if labels.len() > 64 {
        return Err(field_error(field, "at most 64 labels"));
    }
    for (k, v) in labels {
        let key_ok = !k.is_empty()
            && k.len() <= 63
            && k.bytes().all(|c| {
                c.is_ascii_lowercase()
                    || c.is_ascii_digit()
                    || matches!(c, b'_' | b'.' | b'-' | b'/')
            });
        if !key_ok {
            return Err(field_error(
                map_entry(field, k),
                "label keys are 1-63 characters from a-z 0-9 _ . - /",
            ));
        }
        if v.len() > 63
            || !v
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
        {
            return Err(field_error(
                map_entry(field, k),
                format!(
                    "{} is not a label value: up to 63 characters from A-Z a-z 0-9 _ . -",
                    shown(v)
                ),
            ));
        }
    }
    Ok(())
}

impl Tenant {
    pub fn matches(&self, app: Option<&str>, labels: &BTreeMap<String, String>) -> bool {
        app.is_none_or(|a| a == self.app)
            && labels.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> ConnectionSpec {
        ConnectionSpec {
            host: "db-1.internal".into(),
            port: 5432,
            dbname: "tenant_42".into(),
            user: "app".into(),
            sslmode: SslMode::Prefer,
            schema: None,
            password: Some(PasswordRef::Env("TENANT_42_PASSWORD".into())),
            options: ConnectionOptions::default(),
        }
    }

    #[test]
    fn ids_and_names_use_allowlists() {
        assert!(TenantId::parse("id", "acme-42").is_ok());
        for bad in [
            "",
            "Acme",
            "a b",
            "a;drop",
            "-x",
            "a\0",
            &"a".repeat(64),
            "ａcme",
        ] {
            let e = TenantId::parse("tenant.id", bad).unwrap_err();
            assert_eq!(e.field, "tenant.id");
        }
        assert!(conn().validate("c").is_ok());
        for (mutate, field) in [
            (
                Box::new(|c: &mut ConnectionSpec| c.host = "h'; --".into())
                    as Box<dyn Fn(&mut ConnectionSpec)>,
                "c.host",
            ),
            (Box::new(|c: &mut ConnectionSpec| c.port = 0), "c.port"),
            (
                Box::new(|c: &mut ConnectionSpec| c.dbname = "db\"x".into()),
                "c.dbname",
            ),
            (
                Box::new(|c: &mut ConnectionSpec| c.user = "".into()),
                "c.user",
            ),
            (
                Box::new(|c: &mut ConnectionSpec| c.schema = Some("1bad".into())),
                "c.schema",
            ),
            (
                Box::new(|c: &mut ConnectionSpec| {
                    c.password = Some(PasswordRef::Env("lower".into()))
                }),
                "c.password.env",
            ),
            (
                Box::new(|c: &mut ConnectionSpec| {
                    c.password = Some(PasswordRef::File("relative".into()))
                }),
                "c.password.file",
            ),
            (
                Box::new(|c: &mut ConnectionSpec| {
                    c.password = Some(PasswordRef::Env("AWS_SECRET_ACCESS_KEY".into()))
                }),
                "c.password.env",
            ),
            (
                Box::new(|c: &mut ConnectionSpec| {
                    c.password = Some(PasswordRef::File("/etc/shadow".into()))
                }),
                "c.password.file",
            ),
        ] {
            let mut c = conn();
            mutate(&mut c);
            assert_eq!(c.validate("c").unwrap_err().field, field);
        }
    }

    #[test]
    fn database_keys_serialize_entries_of_one_database() {
        let mut a = conn();
        a.host = "DB-1.internal".into();
        assert_eq!(a.database_key(), conn().database_key());
        a.schema = Some("t1".into());
        assert_eq!(a.database_key().0, "db-1.internal:5432/tenant_42/t1");
    }

    #[test]
    fn labels_are_checked() {
        let ok = BTreeMap::from([("tier".to_string(), "free".to_string())]);
        assert!(validate_labels("l", &ok).is_ok());
        let bad = BTreeMap::from([("tier".to_string(), "free; drop".to_string())]);
        assert_eq!(
            validate_labels("tenant.labels", &bad).unwrap_err().field,
            "tenant.labels[\"tier\"]"
        );
    }
}
