//! Bearer tokens: static tokens (a file of subjects, scopes and SHA-256 hashes; compared in
//! constant time) and JWTs verified with a configured public key, issuer and audience.

use std::path::{Path, PathBuf};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Scope;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("configuration key {key}: {message}")]
    Config { key: &'static str, message: String },
}

fn config_error(key: &'static str, message: impl Into<String>) -> TokenError {
    TokenError::Config {
        key,
        message: message.into(),
    }
}

/// One entry of `auth.tokens_file`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticToken {
    pub subject: String,
    pub scopes: Vec<Scope>,
    /// Hex SHA-256 of the token (`printf %s "$TOKEN" | sha256sum`).
    sha256: String,
    #[serde(skip)]
    digest: [u8; 32],
}

impl std::fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticToken")
            .field("subject", &self.subject)
            .field("scopes", &self.scopes)
            .field("sha256", &"[REDACTED]")
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<StaticToken>,
}

pub fn load_static(path: &Path) -> Result<Vec<StaticToken>, TokenError> {
    let key = "auth.tokens_file";
    let text = std::fs::read_to_string(path)
        .map_err(|e| config_error(key, format!("{}: {e}", path.display())))?;
    let file: TokensFile = toml::from_str(&text)
        .map_err(|e| config_error(key, format!("{}: {}", path.display(), e.message())))?;
    let mut tokens = file.token;
    for (i, t) in tokens.iter_mut().enumerate() {
        let at = format!("{} token #{} ({})", path.display(), i + 1, t.subject);
        let digest = hex::decode(&t.sha256)
            .ok()
            .and_then(|d| <[u8; 32]>::try_from(d).ok())
            .ok_or_else(|| config_error(key, format!("{at}: sha256 must be 64 hex digits")))?;
        t.digest = digest;
        if t.subject.trim().is_empty() {
            return Err(config_error(key, format!("{at}: subject is empty")));
        }
    }
    Ok(tokens)
}

/// The entry whose hash matches; every entry is compared, in constant time.
pub fn match_static<'a>(tokens: &'a [StaticToken], presented: &str) -> Option<&'a StaticToken> {
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let mut found = None;
    for t in tokens {
        if bool::from(t.digest.ct_eq(&digest)) {
            found = Some(t);
        }
    }
    found
}

/// `[auth.jwt]`: signed tokens from an identity provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// PEM public key (RSA, EC or Ed25519, matching `algorithm`).
    pub public_key: PathBuf,
    /// RS256, RS384, RS512, PS256, ES256, ES384 or EdDSA.
    #[serde(default = "default_algorithm")]
    pub algorithm: String,
    pub issuer: String,
    pub audience: String,
    /// The claim holding scopes: a space-separated string or an array of strings.
    #[serde(default = "default_scope_claim")]
    pub scope_claim: String,
}

fn default_algorithm() -> String {
    "RS256".into()
}

fn default_scope_claim() -> String {
    "scope".into()
}

pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    scope_claim: String,
}

impl JwtVerifier {
    pub fn load(c: &JwtConfig) -> Result<JwtVerifier, TokenError> {
        let algorithm: Algorithm = c.algorithm.parse().map_err(|_| {
            config_error(
                "auth.jwt.algorithm",
                format!("'{}' is not a JWT algorithm", c.algorithm),
            )
        })?;
        let pem = std::fs::read(&c.public_key).map_err(|e| {
            config_error(
                "auth.jwt.public_key",
                format!("{}: {e}", c.public_key.display()),
            )
        })?;
        let key = match algorithm {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => DecodingKey::from_rsa_pem(&pem),
            Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
            Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
            _ => {
                return Err(config_error(
                    "auth.jwt.algorithm",
                    "shared-secret algorithms (HS*) are not accepted: use a public key",
                ));
            }
        }
        .map_err(|e| {
            config_error(
                "auth.jwt.public_key",
                format!("{}: {e}", c.public_key.display()),
            )
        })?;
        if c.issuer.is_empty() || c.audience.is_empty() {
            return Err(config_error("auth.jwt", "issuer and audience are required"));
        }
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[&c.issuer]);
        validation.set_audience(&[&c.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 30;
        validation.validate_nbf = true;
        Ok(JwtVerifier {
            key,
            validation,
            scope_claim: c.scope_claim.clone(),
        })
    }

    /// The subject and the fleetmig scopes of a valid token; other scopes are ignored.
    pub fn verify(&self, token: &str) -> Result<(String, Vec<Scope>), String> {
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &self.key,
            &self.validation,
        )
        .map_err(|e| {
            match e.kind() {
                ErrorKind::ExpiredSignature => "the token has expired",
                ErrorKind::InvalidAudience => "the token is not meant for this service (aud)",
                ErrorKind::InvalidIssuer => "the token's issuer is not trusted (iss)",
                ErrorKind::InvalidSignature => "the token's signature does not verify",
                ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
                ErrorKind::InvalidAlgorithm => "the token is signed with another algorithm",
                ErrorKind::MissingRequiredClaim(_) => {
                    "the token lacks a required claim (exp, iss, aud, sub)"
                }
                _ => "the bearer token is not valid",
            }
            .to_string()
        })?;
        let claims = data.claims;
        let subject = claims
            .get("sub")
            .and_then(|s| s.as_str())
            .filter(|s| !s.is_empty())
            .ok_or("the token has no subject (sub)")?
            .to_string();
        let scopes = match claims.get(&self.scope_claim) {
            Some(serde_json::Value::String(s)) => {
                s.split_whitespace().filter_map(Scope::parse).collect()
            }
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().and_then(Scope::parse))
                .collect(),
            _ => vec![],
        };
        Ok((subject, scopes))
    }
}
