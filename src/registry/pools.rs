//! Connections to tenant databases: one small bb8 pool per database, and a budget of open
//! connections per Postgres host. A connection holds a host permit for its whole life (idle
//! in a pool included), so the number of connections fleetmig opens to a host never exceeds
//! the host limit. Pools idle for a while are dropped. Passwords are resolved here, at
//! connect time, from their references; they are never logged or put in errors.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_postgres::Client;

use super::tenant::{ChannelBinding, ConnectionSpec, DatabaseKey, PasswordRef, SslNegotiation};
use crate::pg::conninfo::{ConnInfo, Source};
use crate::pg::{Canceller, SslMode, Target};

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("password for {user}@{key}: {problem}")]
    Password {
        user: String,
        key: DatabaseKey,
        problem: String,
    },
    #[error("{source}")]
    Connect {
        key: DatabaseKey,
        #[source]
        source: crate::pg::ConnectError,
    },
    #[error("connecting to {key}: {source}")]
    Query {
        key: DatabaseKey,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("connecting to {key}: {problem}")]
    Setup { key: DatabaseKey, problem: String },
    #[error("connecting to {key}: {problem}")]
    Insecure { key: DatabaseKey, problem: String },
    #[error(
        "connecting to {key}: role {user} is {what}; fleetmig needs a role that owns the tenant's schema, not a superuser and without BYPASSRLS (or set pools.privileged_roles = \"warn\")"
    )]
    Privileged {
        key: DatabaseKey,
        user: String,
        what: String,
    },
    #[error(
        "connecting to {key}: timed out waiting for a connection (host limit reached or server unreachable)"
    )]
    Timeout { key: DatabaseKey },
}

impl PoolError {
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            PoolError::Connect { source, .. } => source.sqlstate(),
            PoolError::Query { source, .. } => source.code().map(|c| c.code()),
            _ => None,
        }
    }
}

/// A pooled connection. Its host permit lives in the task driving its socket, so the permit
/// is returned only once the connection is really closed.
pub struct Budgeted {
    client: Client,
    canceller: Canceller,
    /// Closed when returned, not kept idle.
    close_on_return: bool,
}

impl Budgeted {
    /// Sends cancel requests for this connection (over TLS when it uses TLS).
    pub fn canceller(&self) -> &Canceller {
        &self.canceller
    }

    /// Never hand this connection out again: it may be mid-statement or mid-transaction
    /// (e.g. after a lease loss). It is closed when dropped.
    pub fn poison(&mut self) {
        self.close_on_return = true;
    }

    /// Done with this database for now: closed when dropped, not kept idle. A migration
    /// visits a database once, and an idle backend is not free for its server: it holds a
    /// connection slot and memory, and every DDL statement on the server (any database's)
    /// sends catalog invalidations it must catch up with.
    pub fn retire(&mut self) {
        self.close_on_return = true;
    }
}

impl Deref for Budgeted {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl DerefMut for Budgeted {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

/// What to do when a tenant's role is a superuser or has BYPASSRLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrivilegedRoles {
    /// Connect, and log a warning (development: the local superuser).
    #[default]
    Warn,
    /// Refuse the connection: least privilege, enforced.
    Refuse,
}

/// Superuser and BYPASSRLS of the connected role, in one round trip: a role with either can
/// read or change any tenant's data, far beyond what a schema migration needs. Asked on a
/// role's first connection to a host, then again after [`ROLE_CHECK_TTL`].
async fn check_privileges(
    client: &Client,
    key: &DatabaseKey,
    policy: PrivilegedRoles,
) -> Result<(), PoolError> {
    // The simple protocol: one round trip (an extended-protocol query would take two). The
    // session's first statement: its search_path pinned, nothing left to a tenant's plants.
    let messages = client
        .simple_query(&crate::engine::pinned(
            "SELECT CURRENT_USER::pg_catalog.text, rolsuper, rolbypassrls FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) CURRENT_USER",
        ))
        .await
        .map_err(|source| PoolError::Query {
            key: key.clone(),
            source,
        })?;
    let Some(row) = messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
        _ => None,
    }) else {
        return Ok(()); // no pg_roles row for current_user: nothing to judge
    };
    let (user, superuser, bypassrls) = (
        row.get(0).unwrap_or_default().to_string(),
        row.get(1) == Some("t"),
        row.get(2) == Some("t"),
    );
    let what = match (superuser, bypassrls) {
        (false, false) => return Ok(()),
        (true, _) => "a superuser",
        (false, true) => "allowed to bypass row-level security (BYPASSRLS)",
    };
    match policy {
        PrivilegedRoles::Warn => {
            tracing::warn!(database = %key, role = %user, "tenant role is {what}: fleetmig needs far less (pools.privileged_roles = \"refuse\" enforces it)");
            Ok(())
        }
        PrivilegedRoles::Refuse => Err(PoolError::Privileged {
            key: key.clone(),
            user,
            what: what.into(),
        }),
    }
}

/// How long a role found unprivileged on a host is trusted without asking again: the check
/// costs a catalog query on every new connection, and a fleet opens one per tenant.
const ROLE_CHECK_TTL: Duration = Duration::from_secs(300);

/// Roles (`host:port|user`) last checked (and not refused), and when: roles are per cluster.
/// One host:port that reaches several clusters (a pooler routing by database) shares one
/// verdict per user name.
type RoleVerdicts = Arc<Mutex<HashMap<String, Instant>>>;

pub struct BudgetedManager {
    target: Target,
    privileged_roles: PrivilegedRoles,
    role_verdicts: RoleVerdicts,
    role: String,
    host: Arc<Semaphore>,
    key: DatabaseKey,
    /// Closes other databases' idle pools on this host when the budget is spent.
    release_idle: Box<dyn Fn() + Send + Sync>,
}

impl bb8::ManageConnection for BudgetedManager {
    type Connection = Budgeted;
    type Error = PoolError;

    async fn connect(&self) -> Result<Budgeted, PoolError> {
        // Wait for a slot on the host: a tenant queues behind the budget rather than failing.
        // Idle connections of other databases on the host give theirs back while we wait.
        let permit = loop {
            if let Ok(p) = self.host.clone().try_acquire_owned() {
                break p;
            }
            (self.release_idle)();
            if let Ok(p) =
                tokio::time::timeout(BUDGET_POLL, self.host.clone().acquire_owned()).await
            {
                break p.expect("host semaphores are never closed");
            }
        };
        let connected = self
            .target
            .connect()
            .await
            .map_err(|source| PoolError::Connect {
                key: self.key.clone(),
                source,
            })?;
        let key = self.key.clone();
        let (client, canceller) = connected.spawn(move |e| {
            if let Some(e) = e {
                tracing::debug!(database = %key, error = %e, "tenant connection ended");
            }
            drop(permit);
        });
        let checked_at = self.role_verdicts.lock().unwrap().get(&self.role).copied();
        if checked_at.is_none_or(|at| at.elapsed() >= ROLE_CHECK_TTL) {
            check_privileges(&client, &self.key, self.privileged_roles).await?;
            self.role_verdicts
                .lock()
                .unwrap()
                .insert(self.role.clone(), Instant::now());
        }
        Ok(Budgeted {
            client,
            canceller,
            close_on_return: false,
        })
    }

    async fn is_valid(&self, conn: &mut Budgeted) -> Result<(), PoolError> {
        conn.client
            .simple_query("")
            .await
            .map(|_| ())
            .map_err(|source| PoolError::Query {
                key: self.key.clone(),
                source,
            })
    }

    fn has_broken(&self, conn: &mut Budgeted) -> bool {
        conn.close_on_return || conn.client.is_closed()
    }
}

pub type PooledClient = bb8::PooledConnection<'static, BudgetedManager>;

/// How often a connect waiting for the host budget asks idle pools to give way.
const BUDGET_POLL: Duration = Duration::from_millis(250);
/// bb8's own wait for a connection: effectively unbounded, so tenants queue for the host budget.
const QUEUE_LIMIT: Duration = Duration::from_secs(24 * 3600);

/// How long a server may stop answering, without a reset, before its connection is given up
/// (the default of `pools.dead_server_after`; what onboarding and scratch connections use).
pub const DEAD_SERVER_AFTER: Duration = Duration::from_secs(30);

/// Limits of the pools.
#[derive(Debug, Clone)]
pub struct PoolLimits {
    /// Open connections per Postgres host (host:port), across all its databases.
    pub per_host: usize,
    /// Connections per database (a tenant's migration uses one).
    pub per_database: u32,
    pub connect_timeout: Duration,
    /// A server that stops answering without a reset is given up on within this time.
    pub dead_server_after: Duration,
    /// Idle connections close after this; idle pools are dropped after it too.
    pub idle_timeout: Duration,
    pub privileged_roles: PrivilegedRoles,
    pub insecure_connections: InsecureConnections,
}

/// What to do with a tenant connection that is not encrypted for sure (sslmode below
/// `require`), or that could hand a password to a server whose identity is not verified.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InsecureConnections {
    /// Connect silently (local development).
    #[default]
    Allow,
    /// Connect, and log a warning when the pool is made.
    Warn,
    /// Refuse to register such a tenant, and to connect to one stored before.
    Refuse,
}

/// What is insecure about a tenant's connection, if anything.
pub fn insecurity(spec: &ConnectionSpec) -> Option<String> {
    if !spec.sslmode.always_tls() {
        return Some(format!(
            "sslmode {} may connect without TLS: use require, verify-ca or verify-full",
            spec.sslmode
        ));
    }
    let weak_rule = spec
        .options
        .require_auth
        .as_deref()
        .and_then(|r| crate::pg::auth::RequireAuth::parse(r).ok())
        .is_none_or(|r| r.allows_weak_password());
    // libpq's require checks the chain when a root certificate is given: verified too.
    let verified = spec.sslmode >= SslMode::VerifyCa || spec.options.sslrootcert.is_some();
    if spec.password.is_some()
        && weak_rule
        && spec.options.channel_binding != ChannelBinding::Require
        && !verified
    {
        return Some(format!(
            "sslmode {} does not verify the server, and a password could go to it in cleartext: use sslmode verify-full (or verify-ca), require_auth scram-sha-256, or channel_binding require",
            spec.sslmode
        ));
    }
    None
}

/// Receives bb8's connect errors (bb8 itself only reports a timeout to the waiter), so a
/// bad password or a missing database is reported at once, with its cause.
#[derive(Debug, Clone, Default)]
struct ConnectErrors {
    last: Arc<Mutex<Option<(Instant, PoolError)>>>,
    arrived: Arc<tokio::sync::Notify>,
}

impl bb8::ErrorSink<PoolError> for ConnectErrors {
    fn sink(&self, error: PoolError) {
        *self.last.lock().unwrap() = Some((Instant::now(), error));
        self.arrived.notify_waiters();
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<PoolError>> {
        Box::new(self.clone())
    }
}

struct Entry {
    pool: bb8::Pool<BudgetedManager>,
    errors: ConnectErrors,
    host: String,
    last_used: Instant,
}

/// A pool serves one database with one set of credentials: two tenants on one database with
/// different roles never share connections, and a changed password reference gets a new pool.
type PoolKey = (DatabaseKey, String);

fn pool_key(spec: &ConnectionSpec) -> PoolKey {
    // The reference, never a resolved password.
    (
        spec.database_key(),
        format!(
            "{}|{:?}|{}|{:?}",
            spec.user, spec.password, spec.sslmode, spec.options
        ),
    )
}

pub struct Pools {
    limits: PoolLimits,
    role_verdicts: RoleVerdicts,
    databases: Arc<Mutex<HashMap<PoolKey, Entry>>>,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Pools {
    pub fn new(limits: PoolLimits) -> Pools {
        Pools {
            limits,
            role_verdicts: RoleVerdicts::default(),
            databases: Arc::default(),
            hosts: Mutex::default(),
        }
    }

    /// Whether the configured policy accepts this connection (`pools.insecure_connections`):
    /// refused with what is insecure and how to fix it, or accepted (logged under "warn").
    pub fn check_policy(&self, spec: &ConnectionSpec) -> Result<(), String> {
        let Some(problem) = insecurity(spec) else {
            return Ok(());
        };
        match self.limits.insecure_connections {
            InsecureConnections::Allow => Ok(()),
            InsecureConnections::Warn => {
                tracing::warn!(database = %spec.database_key(), "{problem} (pools.insecure_connections = \"warn\")");
                Ok(())
            }
            InsecureConnections::Refuse => Err(format!(
                "{problem} (refused by pools.insecure_connections = \"refuse\", the default under profile = \"production\")"
            )),
        }
    }

    fn host_budget(&self, host: &str) -> Arc<Semaphore> {
        self.hosts
            .lock()
            .unwrap()
            .entry(host.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.limits.per_host)))
            .clone()
    }

    /// Connections open to `host` (`host:port`) now: sockets this process holds, counted by
    /// the host budget.
    pub fn open_connections(&self, host: &str) -> usize {
        self.hosts
            .lock()
            .unwrap()
            .get(host)
            .map_or(0, |s| self.limits.per_host - s.available_permits())
    }

    /// A connection to the tenant's database, as its configured user.
    pub async fn get(&self, spec: &ConnectionSpec) -> Result<PooledClient, PoolError> {
        let key = spec.database_key();
        let pool_key = pool_key(spec);
        let (pool, errors) = {
            let existing = self.databases.lock().unwrap().get_mut(&pool_key).map(|e| {
                e.last_used = Instant::now();
                (e.pool.clone(), e.errors.clone())
            });
            match existing {
                Some(p) => p,
                None => {
                    // Again at connect: a record stored before the policy was tightened.
                    self.check_policy(spec)
                        .map_err(|problem| PoolError::Insecure {
                            key: key.clone(),
                            problem,
                        })?;
                    let errors = ConnectErrors::default();
                    let manager = BudgetedManager {
                        target: target(
                            spec,
                            self.limits.connect_timeout,
                            self.limits.dead_server_after,
                        )?,
                        privileged_roles: self.limits.privileged_roles,
                        role_verdicts: self.role_verdicts.clone(),
                        role: format!("{}|{}", spec.host_key(), spec.user),
                        host: self.host_budget(&spec.host_key()),
                        key: key.clone(),
                        release_idle: {
                            let (dbs, host, keep) = (
                                Arc::downgrade(&self.databases),
                                spec.host_key(),
                                pool_key.clone(),
                            );
                            Box::new(move || {
                                if let Some(dbs) = dbs.upgrade() {
                                    release_unused(&mut dbs.lock().unwrap(), &host, &keep);
                                }
                            })
                        },
                    };
                    let pool = bb8::Pool::builder()
                        .max_size(self.limits.per_database)
                        .min_idle(None)
                        .idle_timeout(Some(self.limits.idle_timeout))
                        // Waiting for the host budget is queueing, not failure; the TCP connect
                        // itself is bounded by `connect_timeout` in the connection config.
                        .connection_timeout(QUEUE_LIMIT)
                        .test_on_check_out(false)
                        // Report a failed connect (bad password, no such database) at once, with its cause.
                        .retry_connection(false)
                        .error_sink(Box::new(errors.clone()))
                        .build_unchecked(manager);
                    let mut dbs = self.databases.lock().unwrap();
                    let entry = dbs.entry(pool_key).or_insert(Entry {
                        pool,
                        errors,
                        host: spec.host_key(),
                        last_used: Instant::now(),
                    });
                    (entry.pool.clone(), entry.errors.clone())
                }
            }
        };
        let asked = Instant::now();
        let failed = errors.arrived.notified();
        tokio::pin!(failed);
        failed.as_mut().enable();
        let got = tokio::select! {
            got = pool.get_owned() => got,
            _ = &mut failed => Err(bb8::RunError::TimedOut),
        };
        got.map_err(|e| match e {
            bb8::RunError::User(e) => e,
            // Only a connect error that happened while we waited is ours to report.
            bb8::RunError::TimedOut => match errors.last.lock().unwrap().take() {
                Some((at, error)) if at >= asked => error,
                _ => PoolError::Timeout { key },
            },
        })
    }

    /// Drop pools unused for longer than the idle timeout (their connections close).
    pub fn evict_idle(&self) -> usize {
        let idle = self.limits.idle_timeout;
        let mut dbs = self.databases.lock().unwrap();
        let before = dbs.len();
        dbs.retain(|_, e| e.last_used.elapsed() < idle);
        before - dbs.len()
    }

    /// Forget a database's pool (e.g. after a lease loss: its connections may be mid-statement).
    pub fn discard(&self, key: &DatabaseKey) {
        self.databases.lock().unwrap().retain(|k, _| &k.0 != key);
    }
}

/// Drop the pools of `host` with no connection checked out (except `keep`'s): their idle
/// connections close and give their host permits back. A pool still in use elsewhere closes
/// when its last user is done.
fn release_unused(dbs: &mut HashMap<PoolKey, Entry>, host: &str, keep: &PoolKey) {
    dbs.retain(|k, e| {
        let state = e.pool.state();
        k == keep || e.host != host || state.connections > state.idle_connections
    });
}

/// The connection target of a tenant, password resolved from its reference. Everything
/// goes through libpq's keywords, so a tenant record means what the same keywords mean to psql.
pub fn target(
    spec: &ConnectionSpec,
    connect_timeout: Duration,
    dead_server_after: Duration,
) -> Result<Target, PoolError> {
    let problem = |p: String| PoolError::Password {
        user: spec.user.clone(),
        key: spec.database_key(),
        problem: p,
    };
    if let Some(reference) = &spec.password {
        // Again at connect: a record stored before the policy was tightened is not followed.
        reference.allowed().map_err(problem)?;
    }
    let field = |k: &str| Source::Field(format!("connection.{k}"));
    let mut info = ConnInfo::default();
    info.set("host", &spec.host, field("host"));
    info.set("port", spec.port.to_string(), field("port"));
    info.set("dbname", &spec.dbname, field("dbname"));
    info.set("user", &spec.user, field("user"));
    info.set("application_name", "fleetmig", Source::Default);
    info.set("sslmode", spec.sslmode.as_str(), field("sslmode"));
    info.set(
        "connect_timeout",
        connect_timeout.as_secs().max(1).to_string(),
        Source::Field("pools.connect_timeout".into()),
    );
    let o = &spec.options;
    // A server that vanishes without a reset (a dead host, a blackholed network) is noticed
    // within `dead_server_after` (30 s by default), not the kernel's two hours: keep-alive
    // probes after a third of it idle, three of them a sixth of it apart; unacknowledged data
    // gives up after all of it.
    let secs = dead_server_after.as_secs().max(6);
    for (k, v) in [
        ("keepalives_idle", (secs / 3).to_string()),
        ("keepalives_interval", (secs / 6).to_string()),
        ("keepalives_count", "3".to_string()),
        ("tcp_user_timeout", (secs * 1000).to_string()),
    ] {
        info.set(k, v, Source::Field("pools.dead_server_after".into()));
    }
    if let Some(root) = &o.sslrootcert {
        info.set("sslrootcert", root.to_string(), field("sslrootcert"));
    }
    if let (Some(cert), Some(key)) = (&o.sslcert, &o.sslkey) {
        info.set("sslcert", cert.display().to_string(), field("sslcert"));
        info.set("sslkey", key.display().to_string(), field("sslkey"));
    }
    if o.sslnegotiation == SslNegotiation::Direct {
        info.set("sslnegotiation", "direct", field("sslnegotiation"));
    }
    info.set(
        "channel_binding",
        match o.channel_binding {
            ChannelBinding::Disable => "disable",
            ChannelBinding::Prefer => "prefer",
            ChannelBinding::Require => "require",
        },
        field("channel_binding"),
    );
    if let Some(rule) = &o.require_auth {
        info.set("require_auth", rule, field("require_auth"));
    }
    if let Some(key) = &o.sslkey {
        // Again at connect, as for password files.
        super::secrets::SecretsPolicy::current()
            .allows_file(key)
            .map_err(|m| PoolError::Setup {
                key: spec.database_key(),
                problem: format!("connection.sslkey: {m}"),
            })?;
    }
    match &spec.password {
        None => {}
        Some(PasswordRef::Env(var)) => {
            let pw = std::env::var(var).map_err(|_| {
                problem(format!(
                    "environment variable {var} is not set in the daemon's environment"
                ))
            })?;
            info.set("password", pw, field("password"));
        }
        Some(PasswordRef::File(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| problem(format!("cannot read {}: {}", path.display(), e.kind())))?;
            info.set(
                "password",
                text.lines().next().unwrap_or_default(),
                field("password"),
            );
        }
        Some(PasswordRef::Passfile) => {
            let file = passfile_path()
                .ok_or_else(|| problem("no passfile: set PGPASSFILE or create ~/.pgpass".into()))?;
            let pw =
                crate::pg::passfile::lookup(&file, &spec.host, spec.port, &spec.dbname, &spec.user)
                    .ok_or_else(|| problem(format!("no matching entry in {}", file.display())))?;
            info.set("password", pw, field("password"));
        }
    }
    // Registry tenants are explicit: no defaults from the daemon's home directory.
    Target::new(&info, &crate::pg::Defaults::none()).map_err(|e| PoolError::Setup {
        key: spec.database_key(),
        problem: e.to_string(),
    })
}

fn passfile_path() -> Option<PathBuf> {
    std::env::var_os("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pgpass")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_errors_never_carry_the_password() {
        let spec = ConnectionSpec {
            host: "h".into(),
            port: 5432,
            dbname: "d".into(),
            user: "u".into(),
            sslmode: SslMode::Prefer,
            schema: None,
            password: Some(PasswordRef::Env("TENANT_UNIT_TEST_UNSET_VAR".into())),
            options: Default::default(),
        };
        let e = target(&spec, Duration::from_secs(1), DEAD_SERVER_AFTER)
            .unwrap_err()
            .to_string();
        assert!(e.contains("TENANT_UNIT_TEST_UNSET_VAR is not set"), "{e}");
    }
}

#[cfg(test)]
mod policy_tests {
    use super::*;
    use crate::registry::tenant::ConnectionOptions;

    fn spec(sslmode: SslMode, password: bool, options: ConnectionOptions) -> ConnectionSpec {
        ConnectionSpec {
            host: "db".into(),
            port: 5432,
            dbname: "d".into(),
            user: "u".into(),
            sslmode,
            schema: None,
            password: password.then(|| PasswordRef::Env("TENANT_X".into())),
            options,
        }
    }

    #[test]
    fn insecure_connections_are_named_with_their_fix() {
        let none = ConnectionOptions::default;
        assert!(
            insecurity(&spec(SslMode::Prefer, false, none()))
                .unwrap()
                .contains("may connect without TLS")
        );
        // TLS without verification and a password anyone on the path could ask for.
        assert!(
            insecurity(&spec(SslMode::Require, true, none()))
                .unwrap()
                .contains("require_auth scram-sha-256")
        );
        assert_eq!(insecurity(&spec(SslMode::Require, false, none())), None);
        assert_eq!(insecurity(&spec(SslMode::VerifyFull, true, none())), None);
        let scram = ConnectionOptions {
            require_auth: Some("scram-sha-256".into()),
            ..none()
        };
        assert_eq!(insecurity(&spec(SslMode::Require, true, scram)), None);
        let bound = ConnectionOptions {
            channel_binding: ChannelBinding::Require,
            ..none()
        };
        assert_eq!(insecurity(&spec(SslMode::Require, true, bound)), None);
    }

    #[test]
    fn the_policy_refuses_warns_or_allows() {
        let limits = |insecure_connections| PoolLimits {
            per_host: 1,
            per_database: 1,
            connect_timeout: Duration::from_secs(1),
            dead_server_after: DEAD_SERVER_AFTER,
            idle_timeout: Duration::from_secs(1),
            privileged_roles: PrivilegedRoles::Warn,
            insecure_connections,
        };
        let weak = spec(SslMode::Prefer, false, Default::default());
        assert!(
            Pools::new(limits(InsecureConnections::Refuse))
                .check_policy(&weak)
                .unwrap_err()
                .contains("refused by pools.insecure_connections")
        );
        assert!(
            Pools::new(limits(InsecureConnections::Warn))
                .check_policy(&weak)
                .is_ok()
        );
        assert!(
            Pools::new(limits(InsecureConnections::Allow))
                .check_policy(&weak)
                .is_ok()
        );
    }
}
