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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
        }
    }
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
        let host_ok = !self.host.is_empty()
            && self.host.len() <= 253
            && self
                .host
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b':'))
            && !self.host.starts_with('-');
        if !host_ok {
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
