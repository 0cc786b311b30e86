//! TLS endpoints for tests, real ones: Debian's PostgreSQL 15 (built with OpenSSL) with
//! `ssl=on` and a pg_hba.conf that rejects plaintext and wants a client certificate from one
//! role; and Debian's PgBouncer, terminating TLS in front of the pgvector server, in
//! transaction mode and in session mode. Started once per test run as `nobody` (neither runs
//! as root); a missing binary skips locally and fails under CI=true.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::harness;
use crate::pki::{PgPki, pg_pki};

const PG15_BIN: &str = "/usr/lib/postgresql/15/bin";
const PGBOUNCER: &str = "/usr/sbin/pgbouncer";

/// The password of role `app` (an owner of test databases) on the TLS server.
pub const APP_PASSWORD: &str = "app-Pw-4e1c";
/// The password of role `certuser`, which must also present a client certificate.
pub const CERT_PASSWORD: &str = "cert-Pw-9a7f";

fn as_nobody() -> &'static str {
    if harness::is_root() {
        "setpriv --reuid=nobody --regid=nogroup --clear-groups "
    } else {
        ""
    }
}

fn give_to_nobody(path: &Path) {
    if harness::is_root() {
        let st = Command::new("chown")
            .arg("-R")
            .arg("nobody:nogroup")
            .arg(path)
            .status()
            .unwrap();
        assert!(st.success(), "chown {path:?}");
    }
}

fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn copy_private(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::copy(from, to).unwrap();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o600)).unwrap();
}

// ---------------------------------------------------------------- PostgreSQL 15 with TLS

pub struct TlsPostgres {
    pub port: u16,
    /// The server's Unix socket directory (trusted there: for setting up).
    pub socket_dir: PathBuf,
    /// Certificates: the server's is valid for "localhost" only (127.0.0.1 mismatches).
    pub pki: PgPki,
    counter: AtomicUsize,
}

pub fn tls_postgres() -> Option<&'static TlsPostgres> {
    static PG: OnceLock<Option<TlsPostgres>> = OnceLock::new();
    PG.get_or_init(start_tls_postgres).as_ref()
}

fn start_tls_postgres() -> Option<TlsPostgres> {
    let bin = Path::new(PG15_BIN);
    if !bin.join("postgres").exists() {
        harness::missing(
            "PostgreSQL 15 with TLS (Debian postgresql-15)",
            format!("no {}/postgres", bin.display()),
        )?;
    }
    let dir = harness::scratch_dir("pgtls");
    let pki = pg_pki(&["localhost"], "certuser");
    let data = dir.join("data");
    give_to_nobody(&dir);
    sh(&format!(
        "{}'{}/initdb' -D '{}' -U postgres -A trust -E UTF8 --no-locale >/dev/null",
        as_nobody(),
        bin.display(),
        data.display()
    ));
    for (from, to) in [
        (&pki.server.cert, "server.crt"),
        (&pki.server.key, "server.key"),
        (&pki.ca, "ca.crt"),
    ] {
        copy_private(from, &data.join(to));
    }
    // TLS only: a client certificate (and a password) from certuser, a password from others,
    // and plaintext rejected.
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\n\
         hostssl all certuser 127.0.0.1/32 scram-sha-256 clientcert=verify-full\n\
         hostssl all all 127.0.0.1/32 scram-sha-256\n\
         hostnossl all all 127.0.0.1/32 reject\n",
    )
    .unwrap();
    give_to_nobody(&dir);
    let port = harness::free_port();
    let log = dir.join("postgres.log");
    harness::spawn_watched(
        &format!(
            "{}'{}/postgres' -D '{}' -p {port} -k '{}' -c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key -c ssl_ca_file=ca.crt -c fsync=off -c synchronous_commit=off -c full_page_writes=off > '{}' 2>&1",
            as_nobody(),
            bin.display(),
            data.display(),
            dir.display(),
            log.display()
        ),
        &dir,
    );
    harness::wait_for_port(port, "postgres 15 (TLS)", &log);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !Command::new(bin.join("pg_isready"))
        .args([
            "-h",
            &dir.display().to_string(),
            "-p",
            &port.to_string(),
            "-q",
        ])
        .status()
        .is_ok_and(|s| s.success())
    {
        assert!(Instant::now() < deadline, "postgres 15 never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pg = TlsPostgres {
        port,
        socket_dir: dir,
        pki,
        counter: AtomicUsize::new(0),
    };
    pg.psql(&format!(
        "CREATE ROLE app LOGIN CREATEDB PASSWORD '{APP_PASSWORD}'; CREATE ROLE certuser LOGIN PASSWORD '{CERT_PASSWORD}';"
    ));
    Some(pg)
}

impl TlsPostgres {
    /// Run SQL as the superuser over the Unix socket.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(Path::new(PG15_BIN).join("psql"))
            .args([
                "-X",
                "-q",
                "-t",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                "postgres",
            ])
            .args(["-h", &self.socket_dir.display().to_string()])
            .args(["-p", &self.port.to_string(), "-d", "postgres", "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Run SQL as the superuser in database `db`.
    pub fn psql_in(&self, db: &str, sql: &str) -> String {
        let out = Command::new(Path::new(PG15_BIN).join("psql"))
            .args([
                "-X",
                "-q",
                "-t",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                "postgres",
            ])
            .args(["-h", &self.socket_dir.display().to_string()])
            .args(["-p", &self.port.to_string(), "-d", db, "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A fresh database owned by `owner`.
    pub fn database(&self, hint: &str, owner: &str) -> String {
        let name = format!("tls{}_{hint}", self.counter.fetch_add(1, Ordering::SeqCst));
        self.psql(&format!("CREATE DATABASE \"{name}\" OWNER {owner}"));
        name
    }
}

// ---------------------------------------------------------------- PgBouncer

/// Two PgBouncers in front of the pgvector server, both terminating TLS with one CA's
/// certificate (valid for localhost and 127.0.0.1): one in transaction mode with a single
/// server connection per database (so whatever one client leaves on it, the next one sees),
/// one in session mode.
pub struct Bouncers {
    pub transaction: u16,
    pub session: u16,
    pub pki: PgPki,
}

pub fn bouncers() -> Option<&'static Bouncers> {
    static B: OnceLock<Option<Bouncers>> = OnceLock::new();
    B.get_or_init(start_bouncers).as_ref()
}

fn start_bouncers() -> Option<Bouncers> {
    let pg = harness::postgres()?;
    if !Path::new(PGBOUNCER).exists() {
        harness::missing("PgBouncer (Debian pgbouncer)", format!("no {PGBOUNCER}"))?;
    }
    let dir = harness::scratch_dir("pgbouncer");
    let pki = pg_pki(&["localhost", "127.0.0.1"], "client");
    copy_private(&pki.server.cert, &dir.join("server.crt"));
    copy_private(&pki.server.key, &dir.join("server.key"));
    std::fs::write(dir.join("users.txt"), "\"postgres\" \"\"\n").unwrap();
    let mut ports = vec![];
    for (mode, pool) in [("transaction", 1), ("session", 20)] {
        let port = harness::free_port();
        let ini = dir.join(format!("{mode}.ini"));
        std::fs::write(
            &ini,
            format!(
                "[databases]\n* = host=127.0.0.1 port={pg}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {dir}/users.txt\n\
                 pool_mode = {mode}\ndefault_pool_size = {pool}\nmax_client_conn = 1000\n\
                 client_tls_sslmode = require\n\
                 client_tls_cert_file = {dir}/server.crt\nclient_tls_key_file = {dir}/server.key\n\
                 logfile = {dir}/{mode}.log\npidfile = {dir}/{mode}.pid\n\
                 admin_users = postgres\n",
                pg = pg.port,
                dir = dir.display(),
            ),
        )
        .unwrap();
        ports.push((mode, port, ini));
    }
    give_to_nobody(&dir);
    for (mode, port, ini) in &ports {
        let log = dir.join(format!("{mode}.stderr"));
        harness::spawn_watched(
            &format!(
                "{}{PGBOUNCER} '{}' > '{}' 2>&1",
                as_nobody(),
                ini.display(),
                log.display()
            ),
            &dir,
        );
        harness::wait_for_port(*port, &format!("pgbouncer ({mode})"), &log);
    }
    Some(Bouncers {
        transaction: ports[0].1,
        session: ports[1].1,
        pki,
    })
}
