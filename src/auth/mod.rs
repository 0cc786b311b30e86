//! Who is calling and what they may do. A caller is authenticated by a bearer token (a
//! static token from a file, or a signed JWT) or by its verified client certificate, and
//! holds scopes: `read` < `write` < `admin` (each includes the ones before it). Every RPC
//! needs one scope ([`required`]); health and reflection are open or `read` by config.

mod tokens;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use tokens::{JwtConfig, StaticToken, TokenError};

/// What an RPC needs. Ordered: a scope includes every scope before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

/// What a call to `path` (`/package.Service/Method`) needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Health,
    Reflection,
    Needs(Scope),
}

/// The scope of every RPC. Methods not listed here (a newer client, a typo) need `admin`:
/// nothing is open by omission.
pub fn required(path: &str) -> Access {
    let path = path.trim_start_matches('/');
    if path.starts_with("grpc.health.") {
        return Access::Health;
    }
    if path.starts_with("grpc.reflection.") {
        return Access::Reflection;
    }
    Access::Needs(match path {
        "fleetmig.v1.Tenants/Get"
        | "fleetmig.v1.Tenants/List"
        | "fleetmig.v1.Migrations/Current"
        | "fleetmig.v1.Migrations/History"
        | "fleetmig.v1.Migrations/Heads"
        | "fleetmig.v1.Migrations/Plan"
        | "fleetmig.v1.Migrations/Verify"
        | "fleetmig.v1.Rollouts/Get"
        | "fleetmig.v1.Rollouts/List"
        | "fleetmig.v1.Rollouts/Watch" => Scope::Read,
        "fleetmig.v1.Tenants/Register"
        | "fleetmig.v1.Tenants/Update"
        | "fleetmig.v1.Migrations/Upgrade"
        | "fleetmig.v1.Migrations/Downgrade"
        | "fleetmig.v1.Migrations/Cancel"
        | "fleetmig.v1.Rollouts/Start"
        | "fleetmig.v1.Rollouts/Pause"
        | "fleetmig.v1.Rollouts/Resume"
        | "fleetmig.v1.Rollouts/Cancel"
        | "fleetmig.v1.Rollouts/RetryFailed" => Scope::Write,
        _ => Scope::Admin,
    })
}

/// `[auth]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `tokens`: every call is authenticated (bearer token or client certificate).
    /// `none`: every call is accepted with every scope; for local development only.
    pub mode: AuthMode,
    /// A TOML file of `[[token]]` entries: `subject`, `scopes`, `sha256` (hex SHA-256 of the
    /// token; the file holds no secret).
    pub tokens_file: Option<PathBuf>,
    pub jwt: Option<JwtConfig>,
    /// Client certificate subject (common name) -> scopes; needs mTLS (`server.tls.client_ca`).
    pub certificates: BTreeMap<String, Vec<Scope>>,
    /// `grpc.health.v1` without credentials (probes).
    pub open_health: bool,
    /// Server reflection without credentials (`grpcurl list`); otherwise it needs `read`.
    pub open_reflection: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::Tokens,
            tokens_file: None,
            jwt: None,
            certificates: BTreeMap::new(),
            open_health: true,
            open_reflection: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    Tokens,
    None,
}

/// How the caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    StaticToken,
    Jwt,
    Certificate,
    /// `auth.mode = "none"`, or an open health/reflection call.
    Anonymous,
    /// Work a daemon does for an earlier caller (a rollout's waves): the subject names both.
    OnBehalf,
}

/// An authenticated caller, put into each request's extensions by the auth layer.
#[derive(Debug, Clone)]
pub struct Caller {
    pub subject: String,
    pub via: Via,
    pub scopes: Vec<Scope>,
    /// The client's `x-request-id` when it is a plain token, else a fresh UUID.
    pub request_id: String,
    /// The verified client certificate's common name, when mTLS is on.
    pub certificate: Option<String>,
}

impl Caller {
    /// "subject (via)", for audit records and logs.
    pub fn who(&self) -> String {
        let via = match self.via {
            Via::StaticToken => "token",
            Via::Jwt => "jwt",
            Via::Certificate => "certificate",
            Via::Anonymous => "anonymous",
            Via::OnBehalf => return self.subject.clone(),
        };
        match (&self.certificate, self.via) {
            (Some(cn), Via::StaticToken | Via::Jwt) => {
                format!("{} ({via}, certificate {cn})", self.subject)
            }
            _ => format!("{} ({via})", self.subject),
        }
    }

    pub fn may(&self, scope: Scope) -> bool {
        self.scopes.iter().any(|s| *s >= scope)
    }
}

/// Why a call is refused: `Unauthenticated` (no or bad credentials) or `Denied` (valid
/// credentials without the scope).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Denied(String),
}

/// The configured ways to authenticate, loaded once at start.
pub struct Authenticator {
    mode: AuthMode,
    static_tokens: Vec<StaticToken>,
    jwt: Option<tokens::JwtVerifier>,
    certificates: BTreeMap<String, Vec<Scope>>,
    open_health: bool,
    open_reflection: bool,
}

impl Authenticator {
    /// Load token files and keys; errors name the configuration key.
    pub fn load(c: &AuthConfig) -> Result<Arc<Authenticator>, TokenError> {
        let static_tokens = match &c.tokens_file {
            Some(path) => tokens::load_static(path)?,
            None => vec![],
        };
        let jwt = c.jwt.as_ref().map(tokens::JwtVerifier::load).transpose()?;
        if c.mode == AuthMode::Tokens
            && c.tokens_file.is_none()
            && jwt.is_none()
            && c.certificates.is_empty()
        {
            return Err(TokenError::Config {
                key: "auth",
                message: "auth.mode = \"tokens\" but no auth.tokens_file, [auth.jwt] or \
                          [auth.certificates] is configured: configure one, or set \
                          auth.mode = \"none\" for local development"
                    .into(),
            });
        }
        Ok(Arc::new(Authenticator {
            mode: c.mode,
            static_tokens,
            jwt,
            certificates: c.certificates.clone(),
            open_health: c.open_health,
            open_reflection: c.open_reflection,
        }))
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Decide on one call. `authorization`: the header's value; `certificate`: the verified
    /// client certificate's common name.
    pub fn check(
        &self,
        path: &str,
        authorization: Option<&str>,
        certificate: Option<&str>,
        request_id: String,
    ) -> Result<Caller, AuthError> {
        let anonymous = |request_id: String| Caller {
            subject: "anonymous".into(),
            via: Via::Anonymous,
            scopes: vec![Scope::Admin],
            request_id,
            certificate: certificate.map(str::to_string),
        };
        let needs = match required(path) {
            Access::Health if self.open_health => return Ok(anonymous(request_id)),
            Access::Reflection if self.open_reflection => return Ok(anonymous(request_id)),
            Access::Health | Access::Reflection => Scope::Read,
            Access::Needs(scope) => scope,
        };
        if self.mode == AuthMode::None {
            return Ok(anonymous(request_id));
        }
        let caller = match authorization {
            Some(header) => {
                let token = bearer(header)?;
                let (subject, scopes, via) = self.verify_token(token)?;
                Caller {
                    subject,
                    via,
                    scopes,
                    request_id,
                    certificate: certificate.map(str::to_string),
                }
            }
            None => match certificate.and_then(|cn| Some((cn, self.certificates.get(cn)?))) {
                Some((cn, scopes)) => Caller {
                    subject: cn.to_string(),
                    via: Via::Certificate,
                    scopes: scopes.clone(),
                    request_id,
                    certificate: Some(cn.to_string()),
                },
                None => {
                    return Err(AuthError::Unauthenticated(
                        "no credentials: send `authorization: Bearer <token>` (or a client \
                         certificate listed in auth.certificates)"
                            .into(),
                    ));
                }
            },
        };
        if caller.may(needs) {
            Ok(caller)
        } else {
            Err(AuthError::Denied(format!(
                "{} needs scope '{}'; {} has {}",
                path.trim_start_matches('/'),
                needs.as_str(),
                caller.subject,
                if caller.scopes.is_empty() {
                    "none".to_string()
                } else {
                    caller
                        .scopes
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )))
        }
    }

    fn verify_token(&self, token: &str) -> Result<(String, Vec<Scope>, Via), AuthError> {
        if let Some(t) = tokens::match_static(&self.static_tokens, token) {
            return Ok((t.subject.clone(), t.scopes.clone(), Via::StaticToken));
        }
        match &self.jwt {
            Some(jwt) if token.matches('.').count() == 2 => {
                let (subject, scopes) = jwt.verify(token).map_err(AuthError::Unauthenticated)?;
                Ok((subject, scopes, Via::Jwt))
            }
            _ => Err(AuthError::Unauthenticated(
                "the bearer token is not valid".into(),
            )),
        }
    }
}

fn bearer(header: &str) -> Result<&str, AuthError> {
    let (scheme, token) = header.split_once(' ').unwrap_or((header, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::Unauthenticated(
            "the authorization header must be `Bearer <token>`".into(),
        ));
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests;
