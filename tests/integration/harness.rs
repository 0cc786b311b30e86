//! Real services for integration tests: PostgreSQL with pgvector and etcd, started once per
//! test run on free loopback ports and stopped (data removed) when the test process exits,
//! by a watchdog shell that outlives nothing but us. Each test gets its own database and its
//! own etcd key prefix. A missing service skips the test locally and fails it under CI=true.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A service is missing: skip (None) locally, fail under CI.
pub fn missing(service: &str, why: String) -> Option<()> {
    if ci() {
        panic!("{service} is required under CI=true but unavailable: {why} (run `make setup`)");
    }
    eprintln!(
        "SKIP: {service} unavailable ({why}); run `make setup` or set FLEETMIG_PG_BIN / FLEETMIG_ETCD_BIN"
    );
    None
}

/// A loopback port nobody listens on, never the same twice in this process: the kernel may
/// hand a just-closed ephemeral port out again before its first taker binds it (a three-member
/// etcd cluster once got two members on one peer port).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Start `cmd` (a shell command line) under a watchdog: when this test process dies, the
/// service gets SIGINT and its directory is removed.
// The watchdog is meant to outlive this process: nobody waits for it.
#[allow(clippy::zombie_processes)]
pub fn spawn_watched(cmd: &str, dir: &Path) {
    let script = format!(
        "{cmd} & svc=$!; while kill -0 {parent} 2>/dev/null && kill -0 $svc 2>/dev/null; do sleep 0.5; done; kill -INT $svc 2>/dev/null; wait $svc; rm -rf '{dir}'",
        parent = std::process::id(),
        dir = dir.display()
    );
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sh");
}

pub fn wait_for_port(port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{what} did not start on port {port}; log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fleetmig-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---------------------------------------------------------------- Postgres

pub struct Postgres {
    pub port: u16,
    pub bin: PathBuf,
    /// The server's log file (the benchmark copies it out with `BENCH_PGLOG`).
    #[allow(dead_code)]
    pub log: PathBuf,
    counter: AtomicUsize,
}

fn pg_bin() -> Option<PathBuf> {
    let candidates = [
        std::env::var("FLEETMIG_PG_BIN").ok().map(PathBuf::from),
        Some(PathBuf::from(
            "/opt/fleetmig-tools/pg/pgserver/pginstall/bin",
        )),
        std::env::var("HOME")
            .ok()
            .map(|h| PathBuf::from(h).join(".cache/fleetmig-tools/pg/pgserver/pginstall/bin")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.join("postgres").exists())
}

fn start_postgres() -> Option<Postgres> {
    let Some(bin) = pg_bin() else {
        missing(
            "PostgreSQL+pgvector",
            "no postgres binary in FLEETMIG_PG_BIN".into(),
        )?;
        unreachable!()
    };
    let dir = scratch_dir("pg");
    let root = is_root();
    // Postgres refuses to run as root: run it as `nobody`, with its directory handed over.
    let as_user = if root {
        "setpriv --reuid=nobody --regid=nogroup --clear-groups "
    } else {
        ""
    };
    if root {
        let st = Command::new("chown")
            .arg("-R")
            .arg("nobody:nogroup")
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success(), "chown {dir:?} to nobody");
    }
    let data = dir.join("data");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{as_user}'{}' -D '{}' -U postgres -A trust -E UTF8 --no-locale",
            bin.join("initdb").display(),
            data.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Roles named pw_* must authenticate with a password (tests of secret handling); others trust.
    let hba = data.join("pg_hba.conf");
    let rest = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all /^pw_ 127.0.0.1/32 scram-sha-256\n{rest}"),
    )
    .unwrap();
    let port = free_port();
    let log = dir.join("postgres.log");
    spawn_watched(
        &format!(
            "{as_user}'{}' -D '{}' -p {port} -k '{}' -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400 -c shared_buffers=128MB > '{}' 2>&1",
            bin.join("postgres").display(),
            data.display(),
            dir.display(),
            log.display()
        ),
        &dir,
    );
    wait_for_port(port, "postgres", &log);
    // Accepting TCP is not yet accepting queries: wait for pg_isready.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Command::new(bin.join("pg_isready"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "postgres never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Postgres {
        port,
        bin,
        log,
        counter: AtomicUsize::new(0),
    })
}

pub fn postgres() -> Option<&'static Postgres> {
    static PG: OnceLock<Option<Postgres>> = OnceLock::new();
    PG.get_or_init(start_postgres).as_ref()
}

impl Postgres {
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A fresh, empty database for one test.
    pub async fn database(&self, hint: &str) -> (String, String) {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let name = format!(
            "t{n}_{}",
            hint.chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(40)
                .collect::<String>()
        );
        let admin = fleetmig::pg::connect_str(&self.url("postgres"))
            .await
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap();
        (self.url(&name), name)
    }

    /// Run `psql -f file` against `url`; returns (success, stderr).
    pub fn psql_file(&self, url: &str, file: &Path) -> (bool, String) {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f"])
            .arg(file)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }
}

// ---------------------------------------------------------------- etcd

pub struct Etcd {
    pub endpoint: String,
    counter: AtomicUsize,
}

/// The audit records the daemon or a lock session with `prefix` wrote to etcd, as etcd holds
/// them (values and revisions), oldest first.
pub async fn audit_kvs(
    client: &mut etcd_client::Client,
    prefix: &str,
) -> Vec<etcd_client::KeyValue> {
    client
        .get(
            format!("{prefix}audit/"),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap()
        .kvs()
        .to_vec()
}

/// The audit records under `prefix` once `done` holds for them (they are written in the
/// background), or as they stand after 10 s: callers assert on what they find.
pub async fn audit_until(
    client: &mut etcd_client::Client,
    prefix: &str,
    done: impl Fn(&[fleetmig::audit::AuditRecord]) -> bool,
) -> Vec<fleetmig::audit::AuditRecord> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let records = fleetmig::audit::read_all(client, prefix).await.unwrap();
        if done(&records) || Instant::now() > deadline {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn etcd_bin() -> Option<PathBuf> {
    let bin = std::env::var("FLEETMIG_ETCD_BIN")
        .ok()
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .or_else(|| {
            let p = PathBuf::from("/usr/bin/etcd");
            p.exists().then_some(p)
        });
    if bin.is_none() {
        missing(
            "etcd",
            "no etcd binary (FLEETMIG_ETCD_BIN or /usr/bin/etcd)".into(),
        )?;
    }
    bin
}

/// Start an etcd on loopback; `client_tls`: extra flags that make its client port TLS.
fn spawn_etcd(name: &str, client_tls: Option<String>) -> Option<String> {
    let bin = etcd_bin()?;
    let dir = scratch_dir(name);
    let (client, peer) = (free_port(), free_port());
    let log = dir.join("etcd.log");
    let scheme = if client_tls.is_some() {
        "https"
    } else {
        "http"
    };
    spawn_watched(
        &format!(
            "'{}' --name fleetmig-test --data-dir '{}' --listen-client-urls {scheme}://127.0.0.1:{client} --advertise-client-urls {scheme}://127.0.0.1:{client} --listen-peer-urls http://127.0.0.1:{peer} --initial-advertise-peer-urls http://127.0.0.1:{peer} --initial-cluster fleetmig-test=http://127.0.0.1:{peer} {} > '{}' 2>&1",
            bin.display(),
            dir.join("data").display(),
            client_tls.unwrap_or_default(),
            log.display()
        ),
        &dir,
    );
    wait_for_port(client, "etcd", &log);
    Some(format!("{scheme}://127.0.0.1:{client}"))
}

fn start_etcd() -> Option<Etcd> {
    Some(Etcd {
        endpoint: spawn_etcd("etcd", None)?,
        counter: AtomicUsize::new(0),
    })
}

/// A separate etcd whose client port speaks TLS with this certificate and requires
/// client certificates signed by `ca`.
pub fn etcd_tls(cert: &Path, key: &Path, ca: &Path) -> Option<String> {
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!("etcd-tls-{}", N.fetch_add(1, Ordering::SeqCst));
    spawn_etcd(
        &name,
        Some(format!(
            "--cert-file '{}' --key-file '{}' --client-cert-auth --trusted-ca-file '{}'",
            cert.display(),
            key.display(),
            ca.display()
        )),
    )
}

pub fn etcd() -> Option<&'static Etcd> {
    static ETCD: OnceLock<Option<Etcd>> = OnceLock::new();
    ETCD.get_or_init(start_etcd).as_ref()
}

impl Etcd {
    /// A plain client of this etcd (no TLS, no auth).
    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.endpoint.as_str()], None)
            .await
            .unwrap()
    }

    /// A key prefix of one test's own.
    pub fn prefix(&self, hint: &str) -> String {
        format!(
            "/fleetmig-test/{}-{hint}/",
            self.counter.fetch_add(1, Ordering::SeqCst)
        )
    }
}

// ---------------------------------------------------------------- apps on disk

/// A scratch migrations directory with one app, from (file name, content) pairs.
pub fn scratch_app(
    app: &str,
    manifest: &str,
    files: &[(&str, &str)],
) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(app);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("fleetmig.toml"), manifest).unwrap();
    for (name, content) in files {
        std::fs::write(dir.join(name), content).unwrap();
    }
    let root = tmp.path().to_path_buf();
    (tmp, root)
}

/// The repository's own migrations directory.
pub fn repo_migrations() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("migrations")
}
