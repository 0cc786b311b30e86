//! Daemons for tests: in-process (`app::serve_until` on port 0, stopped by a token) or as a
//! real `fleetmig serve` process (logs captured); a TCP proxy that can cut a daemon off etcd.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fleetmig::config::Config;
use fleetmig::grpc::proto;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::harness;

pub struct InProcess {
    pub addr: std::net::SocketAddr,
    pub stop: CancellationToken,
    pub handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }
    pub async fn tenants(&self) -> proto::tenants_client::TenantsClient<Channel> {
        proto::tenants_client::TenantsClient::new(self.channel().await)
    }
    pub async fn migrations(&self) -> proto::migrations_client::MigrationsClient<Channel> {
        proto::migrations_client::MigrationsClient::new(self.channel().await)
    }
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.handle.await.unwrap()
    }
}

pub fn config(etcd_endpoint: &str, prefix: &str, migrations: &Path) -> Config {
    let mut c = Config {
        migrations_dir: migrations.to_path_buf(),
        ..Config::default()
    };
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.server.shutdown_grace = Duration::from_secs(10);
    // Security tests configure TLS and tokens themselves.
    c.server.plaintext = true;
    c.auth.mode = fleetmig::auth::AuthMode::None;
    c.etcd.endpoints = vec![etcd_endpoint.to_string()];
    c.etcd.prefix = prefix.to_string();
    c.etcd.lease_ttl = Duration::from_secs(2);
    c.fleet.lock_wait = Duration::from_secs(30);
    c
}

pub async fn start(config: Config) -> InProcess {
    let stop = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let s = stop.clone();
    let handle = tokio::spawn(async move {
        fleetmig::app::serve_until(config, async move { s.cancelled().await }, move |addr| {
            let _ = tx.send(addr);
        })
        .await
    });
    let addr = tokio::time::timeout(Duration::from_secs(20), rx)
        .await
        .expect("daemon started")
        .expect("daemon bound");
    InProcess { addr, stop, handle }
}

/// A TCP proxy to `target` that can be cut: open connections are dropped and new ones refused.
pub struct Proxy {
    pub endpoint: String,
    cut: Arc<AtomicBool>,
    cut_now: CancellationToken,
}

impl Proxy {
    pub async fn start(target: &str) -> Proxy {
        let target = target.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let cut = Arc::new(AtomicBool::new(false));
        let cut_now = CancellationToken::new();
        let (c, token) = (cut.clone(), cut_now.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if c.load(Ordering::SeqCst) {
                    continue;
                }
                let (target, token) = (target.clone(), token.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = token.cancelled() => {}
                    }
                });
            }
        });
        Proxy {
            endpoint,
            cut,
            cut_now,
        }
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.cut_now.cancel();
    }
}

/// A real `fleetmig serve` process; stderr (its logs) goes to a file.
pub struct Process {
    pub child: Child,
    pub addr: String,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Process {
    pub fn start(etcd: &str, prefix: &str, migrations: &Path, env: &[(&str, &str)]) -> Process {
        Process::start_under(&[], &[etcd], prefix, migrations, env)
    }

    /// A daemon given every endpoint of an etcd cluster, in this order.
    pub fn start_on(
        etcd: &[&str],
        prefix: &str,
        migrations: &Path,
        env: &[(&str, &str)],
    ) -> Process {
        Process::start_under(&[], etcd, prefix, migrations, env)
    }

    /// [`Process::start_on`] under a wrapper command (e.g. `prlimit --nofile=128:512`).
    pub fn start_under(
        wrapper: &[&str],
        etcd: &[&str],
        prefix: &str,
        migrations: &Path,
        env: &[(&str, &str)],
    ) -> Process {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("daemon.log");
        let port = harness::free_port();
        let mut cmd = match wrapper {
            [] => Command::new(env!("CARGO_BIN_EXE_fleetmig")),
            [program, args @ ..] => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_fleetmig"));
                c
            }
        };
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")]);
        for e in etcd {
            cmd.args(["--etcd", e]);
        }
        cmd.args(["--etcd-prefix", prefix, "--migrations-dir"])
            .arg(migrations)
            // The test suite's own knob: the daemon's config would refuse an unknown FLEETMIG_ key.
            .env_remove("FLEETMIG_CHAOS")
            .env("FLEETMIG_LOG", "info,fleetmig=debug")
            .env("FLEETMIG_ETCD__LEASE_TTL", "2s")
            .env("FLEETMIG_SERVER__PLAINTEXT", "true")
            .env("FLEETMIG_AUTH__MODE", "none")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                std::fs::File::create(dir.path().join("stdout.log")).unwrap(),
            ))
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("fleetmig listening on")
        {
            assert!(
                Instant::now() < deadline,
                "daemon did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Process {
            child,
            addr: format!("127.0.0.1:{port}"),
            log,
            _dir: dir,
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
            + &std::fs::read_to_string(self.log.with_file_name("stdout.log")).unwrap_or_default()
    }

    /// SIGTERM, then wait; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tenant registration for a database on the test Postgres.
pub fn tenant(
    id: &str,
    app: &str,
    dbname: &str,
    labels: &[(&str, &str)],
    placeholders: &[(&str, &str)],
) -> proto::Tenant {
    let pg = harness::postgres().unwrap();
    proto::Tenant {
        id: id.into(),
        app: app.into(),
        connection: Some(proto::Connection {
            host: "127.0.0.1".into(),
            port: u32::from(pg.port),
            dbname: dbname.into(),
            user: "postgres".into(),
            ..Default::default()
        }),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        placeholders: placeholders
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

/// Registers a tenant; the test fails if the daemon refuses it.
pub async fn register(
    tenants: &mut proto::tenants_client::TenantsClient<Channel>,
    tenant: proto::Tenant,
) {
    tenants
        .register(proto::RegisterTenantRequest {
            tenant: Some(tenant),
        })
        .await
        .unwrap();
}

/// Read a job's stream to its end.
pub async fn collect(
    mut stream: tonic::Streaming<proto::MigrationEvent>,
) -> Vec<proto::MigrationEvent> {
    let mut out = vec![];
    while let Ok(Some(e)) = stream.message().await {
        out.push(e);
    }
    out
}

pub fn summary(events: &[proto::MigrationEvent]) -> proto::JobSummary {
    events
        .iter()
        .find_map(|e| match &e.event {
            Some(proto::migration_event::Event::Summary(s)) => Some(s.clone()),
            _ => None,
        })
        .expect("the stream ends with a summary")
}

/// An Upgrade or Downgrade of every registered tenant of `app` (target "" is the default).
pub fn all(app: &str, target: &str, concurrency: u32) -> proto::MigrateRequest {
    proto::MigrateRequest {
        app: app.into(),
        target: target.into(),
        selector: Some(proto::Selector {
            all: true,
            ..Default::default()
        }),
        concurrency,
        ..Default::default()
    }
}
