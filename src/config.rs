//! Typed configuration, layered: defaults < file (`fleetmig.toml`, or `--config`) <
//! environment (`FLEETMIG_*`, nested keys with `__`, e.g. `FLEETMIG_ENGINE__LOCK_TIMEOUT=10s`)
//! < command-line flags. Errors name the key and where its value came from.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::engine::{Settings, TableName, Tables};

/// `FLEETMIG_*` variables that are not configuration: tool paths of the Makefile and tests,
/// the log filter, the `--config` flag's variable, the CLI client's daemon address.
const NOT_CONFIG: &[&str] = &[
    "grpcurl",
    "pg_bin",
    "etcd_bin",
    "alembic",
    "log",
    "config",
    "server",
    "token",
    "token_file",
    "ca_cert",
    "client_cert",
    "client_key",
    "pooler",
    "session_url",
];

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
    pub server: ServerConfig,
    pub etcd: EtcdConfig,
    pub fleet: FleetConfig,
    pub pools: PoolsConfig,
    pub telemetry: crate::telemetry::TelemetryConfig,
    pub secrets: crate::registry::secrets::SecretsPolicy,
    /// `production` refuses insecure settings at start (see [`crate::transport::check_profile`]).
    pub profile: crate::transport::Profile,
    pub auth: crate::auth::AuthConfig,
    pub audit: crate::audit::AuditConfig,
}

/// `[server]`: the daemon's gRPC endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: std::net::SocketAddr,
    /// After SIGTERM: how long in-flight revisions get to commit or roll back.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Serve without TLS: local development only (a warning is logged at start).
    pub plaintext: bool,
    pub tls: Option<crate::transport::ServerTls>,
    /// A second, plaintext port serving only `grpc.health.v1`: for probes that cannot speak
    /// TLS (Kubernetes' gRPC probes). Unset: none.
    pub health_listen: Option<std::net::SocketAddr>,
    /// From accept to the end of the HTTP/2 client preface, TLS handshake included: a
    /// connection that has not got that far is closed.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Open connections on the gRPC port at most (handshakes included). At the cap, the oldest
    /// connection still in its handshake is closed to make room. Lowered at start when the
    /// open-file limit cannot hold it.
    pub max_connections: usize,
    /// The same for the health port.
    pub health_max_connections: usize,
    /// TCP keep-alive probes on accepted connections after this much silence ("0s": off).
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive: Duration,
    /// HTTP/2 PING after this much silence on a connection ...
    #[serde(with = "humantime_serde")]
    pub http2_keepalive_interval: Duration,
    /// ... and the connection is closed when the PING is not answered within this.
    #[serde(with = "humantime_serde")]
    pub http2_keepalive_timeout: Duration,
    /// A connection older than this is asked to go away (HTTP/2 GOAWAY; calls in flight
    /// finish, clients reconnect). "0s": never.
    #[serde(with = "humantime_serde")]
    pub max_connection_age: Duration,
    /// Concurrent calls (HTTP/2 streams) per connection.
    pub max_concurrent_streams: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:50051".parse().expect("valid"),
            shutdown_grace: Duration::from_secs(30),
            plaintext: false,
            tls: None,
            health_listen: None,
            handshake_timeout: Duration::from_secs(5),
            max_connections: 1024,
            health_max_connections: 64,
            tcp_keepalive: Duration::from_secs(60),
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(3600),
            max_concurrent_streams: 200,
        }
    }
}

/// `[etcd]`: the registry and the locks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    /// Every key fleetmig writes starts with this.
    pub prefix: String,
    /// The daemon's lease: its locks die this long after it stops answering.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// A backstop for each etcd request (the lease keep-alive has its own, shorter one).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// CA (PEM) of etcd's server certificates, for https:// endpoints.
    pub ca_cert: Option<PathBuf>,
    /// Client certificate and key (PEM) when etcd asks for one.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// etcd authentication: the user, and its password from a file or an environment variable.
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/fleetmig/".into(),
            lease_ttl: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            ca_cert: None,
            cert: None,
            key: None,
            user: None,
            password_file: None,
            password_env: None,
        }
    }
}

/// `[fleet]`: how many tenants at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    pub global_concurrency: usize,
    pub default_job_concurrency: usize,
    pub max_job_concurrency: usize,
    /// How long a tenant waits for its database lock.
    #[serde(with = "humantime_serde")]
    pub lock_wait: Duration,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            global_concurrency: 32,
            default_job_concurrency: 8,
            max_job_concurrency: 64,
            lock_wait: Duration::from_secs(30),
        }
    }
}

/// `[pools]`: connections to tenant databases.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolsConfig {
    /// Open connections per Postgres server (host:port), all its databases together.
    pub per_host_connections: usize,
    pub per_database_connections: u32,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A server that vanishes without a TCP reset (a dead host, a blackholed network) is given
    /// up on within this time: TCP keep-alive probes while waiting for an answer, and a limit
    /// on unacknowledged data while sending (`tcp_user_timeout`).
    #[serde(with = "humantime_serde")]
    pub dead_server_after: Duration,
    /// A tenant role that is a superuser or has BYPASSRLS: "warn" or "refuse".
    pub privileged_roles: crate::registry::pools::PrivilegedRoles,
    /// A tenant whose connection may go without TLS (sslmode below require) or may hand a
    /// password to an unverified server: "allow", "warn" or "refuse". Unset: "allow", or
    /// "refuse" under profile = "production".
    pub insecure_connections: Option<crate::registry::pools::InsecureConnections>,
}

impl Default for PoolsConfig {
    fn default() -> Self {
        PoolsConfig {
            per_host_connections: 16,
            per_database_connections: 2,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            dead_server_after: crate::registry::pools::DEAD_SERVER_AFTER,
            privileged_roles: Default::default(),
            insecure_connections: None,
        }
    }
}

impl PoolsConfig {
    /// `insecure_connections` as configured, or the profile's default.
    pub fn insecure_connections(
        &self,
        profile: crate::transport::Profile,
    ) -> crate::registry::pools::InsecureConnections {
        use crate::registry::pools::InsecureConnections as I;
        self.insecure_connections.unwrap_or(match profile {
            crate::transport::Profile::Development => I::Allow,
            crate::transport::Profile::Production => I::Refuse,
        })
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            migrations_dir: PathBuf::from("migrations"),
            app: None,
            engine: EngineConfig::default(),
            server: ServerConfig::default(),
            etcd: EtcdConfig::default(),
            fleet: FleetConfig::default(),
            pools: PoolsConfig::default(),
            telemetry: crate::telemetry::TelemetryConfig::default(),
            secrets: crate::registry::secrets::SecretsPolicy::default(),
            profile: Default::default(),
            auth: Default::default(),
            audit: Default::default(),
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
        let t = Tables::default();
        EngineConfig {
            version_table: t.version,
            history_table: t.history,
            fence_table: t.fence,
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
        let tables = Tables {
            version: self.version_table.clone(),
            history: self.history_table.clone(),
            fence: self.fence_table.clone(),
        };
        Settings {
            // A table without a schema lives in the first schema of the pinned search_path.
            tables: match self.search_path.first() {
                Some(first) => tables.qualified(first),
                None => tables,
            },
            lock_timeout: self.lock_timeout,
            statement_timeout: self.statement_timeout,
            idle_in_transaction_timeout: self.idle_in_transaction_timeout,
            lock_retries: self.lock_retries,
            retry_min_delay: self.retry_min_delay,
            retry_max_delay: self.retry_max_delay,
            search_path: self.search_path.clone(),
            pooler: crate::pg::Pooler::None,
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
    #[error("configuration key {key}: {message}")]
    Key { key: &'static str, message: String },
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
        config.validate_daemon()?;
        Ok(config)
    }

    fn validate_daemon(&self) -> Result<(), ConfigError> {
        let bad = |key: &'static str, message: &str| {
            Err(ConfigError::Key {
                key,
                message: message.to_string(),
            })
        };
        if self.etcd.endpoints.is_empty() {
            return bad(
                "etcd.endpoints",
                "name at least one endpoint, e.g. [\"http://127.0.0.1:2379\"]",
            );
        }
        if !self.etcd.prefix.starts_with('/') || !self.etcd.prefix.ends_with('/') {
            return bad(
                "etcd.prefix",
                "must start and end with / (e.g. \"/fleetmig/\")",
            );
        }
        if self.etcd.lease_ttl < Duration::from_secs(2) {
            return bad(
                "etcd.lease_ttl",
                "must be at least 2s (etcd's minimum lease)",
            );
        }
        if self.fleet.global_concurrency == 0
            || self.fleet.default_job_concurrency == 0
            || self.fleet.max_job_concurrency == 0
        {
            return bad("fleet", "concurrency limits must be at least 1");
        }
        if self.pools.per_host_connections == 0 || self.pools.per_database_connections == 0 {
            return bad("pools", "connection limits must be at least 1");
        }
        let s = &self.server;
        for (key, value) in [
            ("server.handshake_timeout", s.handshake_timeout),
            (
                "server.http2_keepalive_interval",
                s.http2_keepalive_interval,
            ),
            ("server.http2_keepalive_timeout", s.http2_keepalive_timeout),
        ] {
            if value.is_zero() {
                return bad(key, "must be above zero");
            }
        }
        if s.max_connections == 0 || s.health_max_connections == 0 || s.max_concurrent_streams == 0
        {
            return bad(
                "server",
                "max_connections, health_max_connections and max_concurrent_streams must be at least 1",
            );
        }
        Ok(())
    }

    /// The standard environment provider: `FLEETMIG_` prefix, `__` for nesting.
    pub fn env() -> Env {
        Env::prefixed("FLEETMIG_").split("__").ignore(NOT_CONFIG)
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
    fn the_documented_example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/fleetmig.toml");
        let c = Config::load(
            Some(&path),
            Env::prefixed("FLEETMIG_UNUSED_IN_TEST_"),
            NoFlags::default(),
        )
        .unwrap();
        assert_eq!(c.engine.version_table.name, "alembic_version");
        assert_eq!(c.server.listen.port(), 50051);
    }

    #[test]
    fn the_kubernetes_config_passes_the_production_profile() {
        let yaml = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/k8s/configmap.yaml"),
        )
        .unwrap();
        let toml: String = yaml
            .lines()
            .skip_while(|l| !l.contains("fleetmig.toml: |"))
            .skip(1)
            .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fleetmig.toml");
        std::fs::write(&file, toml).unwrap();
        let c = Config::load(
            Some(&file),
            Env::prefixed("FLEETMIG_UNUSED_IN_TEST_"),
            NoFlags::default(),
        )
        .unwrap();
        assert_eq!(c.profile, crate::transport::Profile::Production);
        crate::transport::check_profile(&c).unwrap();
    }

    #[test]
    fn the_production_profile_refuses_silently_insecure_tenants() {
        let mut c = Config {
            profile: crate::transport::Profile::Production,
            ..Config::default()
        };
        assert_eq!(
            c.pools.insecure_connections(c.profile),
            crate::registry::pools::InsecureConnections::Refuse,
            "refused unless configured otherwise"
        );
        c.pools.insecure_connections = Some(crate::registry::pools::InsecureConnections::Allow);
        assert_eq!(
            c.pools.insecure_connections(c.profile),
            crate::registry::pools::InsecureConnections::Allow
        );
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
