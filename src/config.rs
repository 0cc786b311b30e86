//! Typed configuration, layered: defaults < file (`fleetmig.toml`, or `--config`) <
//! environment (`FLEETMIG_*`, nested keys with `__`, e.g. `FLEETMIG_ENGINE__LOCK_TIMEOUT=10s`)
//! < command-line flags. Errors name the key and where its value came from.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::engine::{Settings, TableName, Tables};

/// The config file read from the working directory when `--config` is not given.
pub const DEFAULT_FILE: &str = "fleetmig.toml";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory holding one sub-directory per app.
    pub migrations_dir: PathBuf,
    /// The app local commands act on (needed when `migrations_dir` holds several).
    pub app: Option<String>,
    pub engine: EngineConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            migrations_dir: PathBuf::from("migrations"),
            app: None,
            engine: EngineConfig::default(),
        }
    }
}

/// `[engine]`: how revisions are applied to each database.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    pub version_table: TableName,
    pub history_table: TableName,
    pub fence_table: TableName,
    #[serde(with = "humantime_serde")]
    pub lock_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_in_transaction_timeout: Duration,
    pub lock_retries: u32,
    #[serde(with = "humantime_serde")]
    pub retry_min_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max_delay: Duration,
    pub search_path: Vec<String>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let s = Settings::default();
        EngineConfig {
            version_table: s.tables.version,
            history_table: s.tables.history,
            fence_table: s.tables.fence,
            lock_timeout: s.lock_timeout,
            statement_timeout: s.statement_timeout,
            idle_in_transaction_timeout: s.idle_in_transaction_timeout,
            lock_retries: s.lock_retries,
            retry_min_delay: s.retry_min_delay,
            retry_max_delay: s.retry_max_delay,
            search_path: s.search_path,
        }
    }
}

impl EngineConfig {
    pub fn settings(&self) -> Settings {
        Settings {
            tables: Tables {
                version: self.version_table.clone(),
                history: self.history_table.clone(),
                fence: self.fence_table.clone(),
            },
            lock_timeout: self.lock_timeout,
            statement_timeout: self.statement_timeout,
            idle_in_transaction_timeout: self.idle_in_transaction_timeout,
            lock_retries: self.lock_retries,
            retry_min_delay: self.retry_min_delay,
            retry_max_delay: self.retry_max_delay,
            search_path: self.search_path.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Invalid(Box<figment::Error>),
    #[error("configuration file {} does not exist", .0.display())]
    MissingFile(PathBuf),
    #[error("configuration key engine.{key}: {message}")]
    Engine { key: &'static str, message: String },
}

impl Config {
    /// Layer the sources. `file`: an explicit `--config` (must exist); otherwise
    /// `fleetmig.toml` in the working directory if present. `flags`: values given on the
    /// command line, as a partial config.
    pub fn load<F: Serialize>(
        file: Option<&Path>,
        env: Env,
        flags: F,
    ) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) if !path.exists() => {
                return Err(ConfigError::MissingFile(path.to_path_buf()));
            }
            Some(path) => figment = figment.merge(Toml::file_exact(path)),
            None if Path::new(DEFAULT_FILE).exists() => {
                figment = figment.merge(Toml::file_exact(DEFAULT_FILE))
            }
            None => {}
        }
        let config: Config = figment
            .merge(env)
            .merge(Serialized::defaults(flags))
            .extract()
            .map_err(|e| ConfigError::Invalid(Box::new(e)))?;
        config.engine.settings().validate().map_err(|e| match e {
            crate::engine::EngineError::Setting { key, message } => {
                ConfigError::Engine { key, message }
            }
            other => ConfigError::Engine {
                key: "?",
                message: other.to_string(),
            },
        })?;
        Ok(config)
    }

    /// The standard environment provider: `FLEETMIG_` prefix, `__` for nesting.
    pub fn env() -> Env {
        Env::prefixed("FLEETMIG_").split("__").ignore(&[
            "grpcurl",
            "pg_bin",
            "etcd_bin",
            "test_keep",
        ])
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail API returns its own large error type
mod tests {
    use super::*;

    #[derive(Serialize, Default)]
    struct NoFlags {}

    #[test]
    fn layers_file_env_and_flags() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "fleetmig.toml",
                "app = \"from_file\"\n[engine]\nlock_timeout = \"2s\"\nlock_retries = 1\n",
            )?;
            jail.set_env("FLEETMIG_ENGINE__LOCK_RETRIES", "9");
            let c = Config::load(None, Config::env(), NoFlags::default()).unwrap();
            assert_eq!(c.app.as_deref(), Some("from_file"));
            assert_eq!(c.engine.lock_timeout, Duration::from_secs(2));
            assert_eq!(c.engine.lock_retries, 9);
            #[derive(Serialize)]
            struct Flags {
                app: &'static str,
            }
            let c = Config::load(None, Config::env(), Flags { app: "from_flag" }).unwrap();
            assert_eq!(c.app.as_deref(), Some("from_flag"));
            Ok(())
        });
    }

    #[test]
    fn errors_name_the_key() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("fleetmig.toml", "[engine]\nlock_timeot = \"2s\"\n")?;
            let e = Config::load(None, Config::env(), NoFlags::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains("lock_timeot"), "{e}");
            jail.create_file("fleetmig.toml", "[engine]\nversion_table = \"x; drop\"\n")?;
            let e = Config::load(None, Config::env(), NoFlags::default())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("version_table") || e.contains("not a table name"),
                "{e}"
            );
            jail.create_file("fleetmig.toml", "[engine]\nlock_timeout = \"0s\"\n")?;
            let e = Config::load(None, Config::env(), NoFlags::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains("engine.lock_timeout"), "{e}");
            Ok(())
        });
    }
}
