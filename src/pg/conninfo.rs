//! libpq connection strings: `postgresql://` URLs and `key=value` strings parsed into
//! keyword/value pairs, the `PG*` environment variables that fill what a string leaves out,
//! in libpq's order (string > environment > defaults). Only parsing: what the values mean is
//! [`super::target`]'s business.

use std::collections::BTreeMap;
use std::fmt;

/// Where a keyword's value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The connection string (`DATABASE_URL`).
    String,
    /// A `PG*` environment variable.
    Env(&'static str),
    /// A field of a tenant's registry record, e.g. `tenant.connection.sslmode`.
    Field(String),
    /// libpq's default.
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::String => f.write_str("the connection string"),
            Source::Env(var) => write!(f, "{var}"),
            Source::Field(field) => f.write_str(field),
            Source::Default => f.write_str("the default"),
        }
    }
}

/// A keyword's value and its origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub value: String,
    pub source: Source,
}

/// Parsed keyword/value pairs (libpq keyword names), last one wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnInfo(pub BTreeMap<String, Value>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

/// The keywords fleetmig understands, with the environment variable libpq reads for each.
pub const KEYWORDS: &[(&str, Option<&str>)] = &[
    ("host", Some("PGHOST")),
    ("hostaddr", Some("PGHOSTADDR")),
    ("port", Some("PGPORT")),
    ("dbname", Some("PGDATABASE")),
    ("user", Some("PGUSER")),
    ("password", Some("PGPASSWORD")),
    ("passfile", Some("PGPASSFILE")),
    ("options", Some("PGOPTIONS")),
    ("application_name", Some("PGAPPNAME")),
    ("fallback_application_name", None),
    ("connect_timeout", Some("PGCONNECT_TIMEOUT")),
    ("client_encoding", Some("PGCLIENTENCODING")),
    ("sslmode", Some("PGSSLMODE")),
    ("sslrootcert", Some("PGSSLROOTCERT")),
    ("sslcert", Some("PGSSLCERT")),
    ("sslkey", Some("PGSSLKEY")),
    ("sslnegotiation", Some("PGSSLNEGOTIATION")),
    ("sslsni", Some("PGSSLSNI")),
    ("sslcompression", Some("PGSSLCOMPRESSION")),
    ("ssl_min_protocol_version", Some("PGSSLMINPROTOCOLVERSION")),
    ("channel_binding", Some("PGCHANNELBINDING")),
    ("require_auth", Some("PGREQUIREAUTH")),
    ("gssencmode", Some("PGGSSENCMODE")),
    ("target_session_attrs", Some("PGTARGETSESSIONATTRS")),
    ("load_balance_hosts", Some("PGLOADBALANCEHOSTS")),
    ("keepalives", None),
    ("keepalives_idle", None),
    ("keepalives_interval", None),
    ("keepalives_count", None),
    ("tcp_user_timeout", None),
];

fn known(keyword: &str) -> bool {
    KEYWORDS.iter().any(|(k, _)| *k == keyword)
}

impl ConnInfo {
    pub fn get(&self, keyword: &str) -> Option<&Value> {
        self.0.get(keyword)
    }

    pub fn value(&self, keyword: &str) -> Option<&str> {
        self.0.get(keyword).map(|v| v.value.as_str())
    }

    pub fn set(&mut self, keyword: &str, value: impl Into<String>, source: Source) {
        self.0.insert(
            keyword.to_string(),
            Value {
                value: value.into(),
                source,
            },
        );
    }

    /// A `postgresql://` / `postgres://` URL or a `key=value` string.
    pub fn parse(s: &str) -> Result<ConnInfo, ParseError> {
        let s = s.trim();
        let info = if s.starts_with("postgresql://") || s.starts_with("postgres://") {
            parse_url(s)?
        } else {
            parse_key_values(s)?
        };
        if let Some(unknown) = info.0.keys().find(|k| !known(k)) {
            return Err(ParseError(format!(
                "invalid connection option \"{unknown}\" (fleetmig understands: {})",
                KEYWORDS
                    .iter()
                    .map(|(k, _)| *k)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(info)
    }

    /// Fill keywords the string left out from `PG*` variables (libpq's precedence: the string
    /// wins over the environment).
    pub fn with_env(mut self, env: &dyn Fn(&str) -> Option<String>) -> ConnInfo {
        for (keyword, var) in KEYWORDS {
            if let Some(var) = var
                && !self.0.contains_key(*keyword)
                && let Some(v) = env(var).filter(|v| !v.is_empty())
            {
                self.set(keyword, v, Source::Env(var));
            }
        }
        self
    }

    /// The string for messages and logs: every keyword but the password (shown as `***`).
    pub fn redacted(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| {
                if k == "password" {
                    format!("{k}=***")
                } else {
                    format!("{k}={}", quote_value(&v.value))
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A value as `key=value` strings write it: quoted when it needs to be.
fn quote_value(v: &str) -> String {
    if !v.is_empty()
        && !v
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\')
    {
        return v.to_string();
    }
    let escaped = v.replace('\\', "\\\\").replace('\'', "\\'");
    format!("'{escaped}'")
}

fn percent_decode(s: &str, what: &str) -> Result<String, ParseError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    ParseError(format!("invalid percent-encoded token in the URL's {what}"))
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ParseError(format!("the URL's {what} is not UTF-8")))
}

/// `postgresql://[user[:password]@][host[:port][,...]][/dbname][?key=value&...]`
fn parse_url(s: &str) -> Result<ConnInfo, ParseError> {
    let mut info = ConnInfo::default();
    let rest = s
        .strip_prefix("postgresql://")
        .or_else(|| s.strip_prefix("postgres://"))
        .expect("checked by the caller");
    let (before_query, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (before_query, None),
    };
    // The user part ends at the last '@' (a password may carry '@' only percent-encoded, but be lenient).
    let hosts = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                info.set("user", percent_decode(user, "user")?, Source::String);
            }
            if let Some(p) = password {
                info.set("password", percent_decode(p, "password")?, Source::String);
            }
            hosts
        }
        None => authority,
    };
    if !hosts.is_empty() {
        let (mut host_list, mut port_list) = (Vec::new(), Vec::new());
        for hostport in hosts.split(',') {
            let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
                let (h, after) = v6.split_once(']').ok_or_else(|| {
                    ParseError("unterminated IPv6 host address ('[' without ']') in the URL".into())
                })?;
                (h.to_string(), after.strip_prefix(':').unwrap_or(""))
            } else {
                match hostport.rsplit_once(':') {
                    Some((h, p)) => (percent_decode(h, "host")?, p),
                    None => (percent_decode(hostport, "host")?, ""),
                }
            };
            host_list.push(host);
            port_list.push(port.to_string());
        }
        if host_list.iter().any(|h| !h.is_empty()) {
            info.set("host", host_list.join(","), Source::String);
        }
        if port_list.iter().any(|p| !p.is_empty()) {
            info.set("port", port_list.join(","), Source::String);
        }
    }
    if let Some(db) = path.filter(|p| !p.is_empty()) {
        info.set(
            "dbname",
            percent_decode(db, "database name")?,
            Source::String,
        );
    }
    if let Some(query) = query {
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                ParseError(format!(
                    "missing \"=\" after \"{}\" in the URL's query",
                    percent_decode(pair, "query").unwrap_or_else(|_| pair.to_string())
                ))
            })?;
            let k = percent_decode(k, "query")?;
            // libpq's own alias in URLs.
            let k = if k == "ssl" && v == "true" {
                info.set("sslmode", "require", Source::String);
                continue;
            } else {
                k
            };
            info.set(&k, percent_decode(v, "query")?, Source::String);
        }
    }
    Ok(info)
}

/// `key = value key2 = 'quoted \' value'`
fn parse_key_values(s: &str) -> Result<ConnInfo, ParseError> {
    let mut info = ConnInfo::default();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(ParseError(format!(
                "missing \"=\" after \"{key}\" in the connection string (expected a postgresql:// URL or key=value pairs)"
            )));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    None => {
                        return Err(ParseError(format!(
                            "unterminated quoted string for \"{key}\" in the connection string"
                        )));
                    }
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        info.set(&key, value, Source::String);
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(info: &ConnInfo, k: &str) -> Option<String> {
        info.value(k).map(str::to_string)
    }

    #[test]
    fn urls_follow_libpq() {
        let i = ConnInfo::parse(
            "postgresql://app:p%40ss@db-1.internal:6432/tenant_42?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.crt&application_name=x",
        )
        .unwrap();
        assert_eq!(v(&i, "user").as_deref(), Some("app"));
        assert_eq!(v(&i, "password").as_deref(), Some("p@ss"));
        assert_eq!(v(&i, "host").as_deref(), Some("db-1.internal"));
        assert_eq!(v(&i, "port").as_deref(), Some("6432"));
        assert_eq!(v(&i, "dbname").as_deref(), Some("tenant_42"));
        assert_eq!(v(&i, "sslmode").as_deref(), Some("verify-full"));
        assert_eq!(v(&i, "sslrootcert").as_deref(), Some("/etc/ca.crt"));
        let i = ConnInfo::parse("postgres://[::1]:5433,h2/db").unwrap();
        assert_eq!(v(&i, "host").as_deref(), Some("::1,h2"));
        assert_eq!(v(&i, "port").as_deref(), Some("5433,"));
        let i = ConnInfo::parse("postgresql://%2Fvar%2Frun%2Fpostgresql/db").unwrap();
        assert_eq!(v(&i, "host").as_deref(), Some("/var/run/postgresql"));
        let i = ConnInfo::parse("postgresql:///db?host=/tmp&ssl=true").unwrap();
        assert_eq!(v(&i, "host").as_deref(), Some("/tmp"));
        assert_eq!(v(&i, "sslmode").as_deref(), Some("require"));
        assert_eq!(
            ConnInfo::parse("postgresql://").unwrap(),
            ConnInfo::default()
        );
    }

    #[test]
    fn key_value_strings_follow_libpq() {
        let i =
            ConnInfo::parse("host=db port = 5433 dbname='my db' password='it\\'s' sslmode=require")
                .unwrap();
        assert_eq!(v(&i, "host").as_deref(), Some("db"));
        assert_eq!(v(&i, "port").as_deref(), Some("5433"));
        assert_eq!(v(&i, "dbname").as_deref(), Some("my db"));
        assert_eq!(v(&i, "password").as_deref(), Some("it's"));
        assert!(i.redacted().contains("password=***"));
        assert!(!i.redacted().contains("it's"));
        assert!(i.redacted().contains("dbname='my db'"));
    }

    #[test]
    fn bad_strings_say_what_is_wrong() {
        for (s, want) in [
            (
                "host=db sslmod=require",
                "invalid connection option \"sslmod\"",
            ),
            ("host", "missing \"=\""),
            ("password='open", "unterminated quoted string"),
            ("postgresql://h/db?sslmode", "missing \"=\""),
            ("postgresql://h%zz/db", "percent-encoded"),
            ("postgresql://[::1/db", "IPv6"),
        ] {
            let e = ConnInfo::parse(s).unwrap_err().to_string();
            assert!(e.contains(want), "{s}: {e}");
        }
    }

    #[test]
    fn the_string_wins_over_the_environment() {
        let env = |k: &str| match k {
            "PGHOST" => Some("envhost".to_string()),
            "PGSSLMODE" => Some("verify-full".to_string()),
            "PGPASSWORD" => Some("".to_string()),
            _ => None,
        };
        let i = ConnInfo::parse("postgresql://urlhost/db")
            .unwrap()
            .with_env(&env);
        assert_eq!(v(&i, "host").as_deref(), Some("urlhost"));
        assert_eq!(v(&i, "sslmode").as_deref(), Some("verify-full"));
        assert_eq!(i.get("sslmode").unwrap().source, Source::Env("PGSSLMODE"));
        assert_eq!(v(&i, "password"), None, "an empty variable is unset");
    }
}
