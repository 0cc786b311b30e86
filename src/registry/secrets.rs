//! Which password references the daemon may follow. A caller who can register a tenant
//! chooses its host; if it could also name any environment variable or any file, it could
//! have the daemon send the daemon's own secrets (cloud keys, TLS keys) as a "password" to a
//! server of its choosing. So references are confined: environment variables by name prefix,
//! files by directory. Checked when a tenant is registered or updated, and again at connect.

use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// `[secrets]`: where tenant passwords may come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretsPolicy {
    /// Environment variables a password reference may name must start with one of these.
    pub env_prefixes: Vec<String>,
    /// Files a password reference may name must lie under one of these directories.
    pub password_dirs: Vec<PathBuf>,
}

impl Default for SecretsPolicy {
    fn default() -> Self {
        SecretsPolicy {
            env_prefixes: vec!["TENANT_".into()],
            password_dirs: vec![PathBuf::from("/run/secrets")],
        }
    }
}

static POLICY: OnceLock<SecretsPolicy> = OnceLock::new();

// A reference field's value is never shown in a message: someone may have typed the password
// itself where its reference belongs, and messages end up in replies, logs, audit records and
// etcd. The messages say what shape was expected instead.

/// `password.env` is not a variable name.
pub const NOT_AN_ENV_NAME: &str = "expected the NAME of an environment variable holding the \
     password (1-128 characters from A-Z 0-9 _), not the password itself; the value given is not \
     shown";

/// `password.file` is not an absolute path.
pub const NOT_A_PATH: &str = "expected the absolute PATH of a file holding the password, not \
     the password itself; the value given is not shown";

impl SecretsPolicy {
    /// Make `self` the process's policy (the daemon does this once at start). A second call
    /// with a different policy is refused: the policy cannot change under running tenants.
    pub fn install(self) -> Result<(), String> {
        let installed = POLICY.get_or_init(|| self.clone());
        if *installed == self {
            Ok(())
        } else {
            Err("a different [secrets] policy is already installed in this process".into())
        }
    }

    /// The installed policy, or the default one.
    pub fn current() -> &'static SecretsPolicy {
        POLICY.get_or_init(SecretsPolicy::default)
    }

    pub fn allows_env(&self, var: &str) -> Result<(), String> {
        if self
            .env_prefixes
            .iter()
            .any(|p| var.starts_with(p.as_str()))
        {
            Ok(())
        } else {
            Err(format!(
                "the variable named is not one the daemon may read for passwords: its name must start with one of {:?} (configuration key secrets.env_prefixes); the value given is not shown",
                self.env_prefixes
            ))
        }
    }

    pub fn allows_file(&self, path: &Path) -> Result<(), String> {
        // No `..`: a path is judged by its components, not by what it resolves to later.
        let plain = path.is_absolute()
            && path
                .components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if plain && self.password_dirs.iter().any(|d| path.starts_with(d)) {
            Ok(())
        } else {
            Err(format!(
                "the file named is not one the daemon may read for passwords: use an absolute path without `..` under one of {:?} (configuration key secrets.password_dirs); the value given is not shown",
                self.password_dirs
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_confined_to_prefixes_and_directories() {
        let p = SecretsPolicy::default();
        assert!(p.allows_env("TENANT_42_PASSWORD").is_ok());
        for bad in ["AWS_SECRET_ACCESS_KEY", "PGPASSWORD", "TENANT", "XTENANT_A"] {
            let e = p.allows_env(bad).unwrap_err();
            // Never echoed ("TENANT" is in the prefix the message names).
            assert!(bad == "TENANT" || !e.contains(bad), "{e}");
        }
        assert!(p.allows_file(Path::new("/run/secrets/t42")).is_ok());
        for bad in [
            "/etc/shadow",
            "/run/secrets/../../etc/shadow",
            "/run/secretsX/t",
            "run/secrets/t",
        ] {
            let e = p.allows_file(Path::new(bad)).unwrap_err();
            assert!(!e.contains(bad), "{e}");
        }
    }
}
