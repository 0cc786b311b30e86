//! The tools the benchmark compares, each running one phase (every tenant of one database set
//! to head, or back to base) at a given concurrency and returning its wall time:
//! - the daemon: gRPC Upgrade/Downgrade over the set's label;
//! - the floor: the same rendered SQL (`fleetmig upgrade --sql`) applied with `psql -f`, one
//!   session per tenant;
//! - Alembic in-process ([`crate::alembic::Driver`]);
//! - the CLI loops: `fleetmig upgrade head` or `alembic upgrade head` once per tenant under
//!   `xargs -P <concurrency>`, DATABASE_URL per tenant, as teams script it today.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use fleetmig::grpc::proto;
use tonic::transport::Channel;

use crate::daemon_harness as dh;

/// One tool of the comparison; each works on a database set of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tool {
    Daemon,
    Floor,
    AlembicInProcess,
    FleetmigCli,
    AlembicCli,
}

impl Tool {
    pub fn name(self) -> &'static str {
        match self {
            Tool::Daemon => "daemon",
            Tool::Floor => "floor",
            Tool::AlembicInProcess => "alembic_in_process",
            Tool::FleetmigCli => "fleetmig_cli_loop",
            Tool::AlembicCli => "alembic_cli_loop",
        }
    }

    /// The letter before the index in its databases' names (`pg_statement_cpu.py` reads it).
    pub fn letter(self) -> char {
        match self {
            Tool::Daemon => 'd',
            Tool::Floor => 'f',
            Tool::AlembicInProcess => 'a',
            Tool::FleetmigCli => 'c',
            Tool::AlembicCli => 'l',
        }
    }

    pub fn needs_alembic(self) -> bool {
        matches!(self, Tool::AlembicInProcess | Tool::AlembicCli)
    }
}

/// Up (base -> head) or down (head -> base).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
    fn command(self) -> &'static str {
        match self {
            Direction::Up => "upgrade",
            Direction::Down => "downgrade",
        }
    }
    fn target(self) -> &'static str {
        match self {
            Direction::Up => "head",
            Direction::Down => "base",
        }
    }
}

/// The daemon's phase: wall time in ms, and tenants failed or interrupted.
pub async fn daemon(
    daemon: &dh::Process,
    channel: &Channel,
    app: &str,
    label: &str,
    direction: Direction,
    concurrency: u32,
) -> (f64, u32) {
    let mut m = proto::migrations_client::MigrationsClient::new(channel.clone());
    let request = proto::MigrateRequest {
        app: app.into(),
        target: direction.target().into(),
        selector: Some(proto::Selector {
            labels: [("bench".to_string(), label.to_string())].into(),
            ..Default::default()
        }),
        concurrency,
        ..Default::default()
    };
    let started = Instant::now();
    let mut stream = match direction {
        Direction::Up => m.upgrade(request).await,
        Direction::Down => m.downgrade(request).await,
    }
    .unwrap()
    .into_inner();
    loop {
        match stream.message().await {
            Ok(Some(proto::MigrationEvent {
                event: Some(proto::migration_event::Event::Summary(s)),
                ..
            })) => {
                return (
                    started.elapsed().as_secs_f64() * 1000.0,
                    s.failed + s.interrupted,
                );
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended without a summary; {}", log_tail(daemon)),
            Err(status) => panic!("the stream failed: {status}; {}", log_tail(daemon)),
        }
    }
}

/// The last lines of the daemon's log, for a failure message.
fn log_tail(daemon: &dh::Process) -> String {
    let logs = daemon.logs();
    let lines: Vec<&str> = logs.lines().collect();
    format!(
        "the daemon's log ends:\n{}",
        lines[lines.len().saturating_sub(20)..].join("\n")
    )
}

/// The floor's phase: `psql -f file` per database, `concurrency` at a time; (ms, failures).
pub async fn floor(psql: &Path, urls: &[String], file: &Path, concurrency: u32) -> (f64, u32) {
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency as usize));
    let started = Instant::now();
    let mut tasks = vec![];
    for url in urls {
        let (slots, psql, url, file) = (
            slots.clone(),
            psql.to_path_buf(),
            url.clone(),
            file.to_path_buf(),
        );
        tasks.push(tokio::spawn(async move {
            let _slot = slots.acquire_owned().await.unwrap();
            let out = tokio::process::Command::new(psql)
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &url, "-f"])
                .arg(&file)
                .output()
                .await
                .unwrap();
            if !out.status.success() {
                eprintln!("psql -f failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            u32::from(!out.status.success())
        }));
    }
    let mut failures = 0;
    for t in tasks {
        failures += t.await.unwrap();
    }
    (started.elapsed().as_secs_f64() * 1000.0, failures)
}

/// A CLI run once per tenant under `xargs -P concurrency`: `program args...` with
/// DATABASE_URL set to each URL in turn, in a clean environment (PATH, HOME and `env`) and a
/// scratch working directory (no .env, no config file). (ms, failures: 1 if any run failed,
/// its output printed.)
pub async fn cli_loop(
    program: &Path,
    args: &[String],
    env: &[(String, String)],
    urls: &[String],
    concurrency: u32,
    scratch: &Path,
) -> (f64, u32) {
    let stderr = tempfile::NamedTempFile::new_in(scratch).unwrap();
    let mut cmd = tokio::process::Command::new("xargs");
    cmd.args([
        "-P",
        &concurrency.to_string(),
        "-I",
        "{}",
        "env",
        "DATABASE_URL={}",
    ])
    .arg(program)
    .args(args)
    .env_clear()
    .env("PATH", std::env::var("PATH").unwrap_or_default())
    .env("HOME", std::env::var("HOME").unwrap_or_default())
    .envs(env.iter().map(|(k, v)| (k, v)))
    .current_dir(scratch)
    .stdin(Stdio::piped())
    .stdout(Stdio::null())
    .stderr(Stdio::from(stderr.reopen().unwrap()));
    let input = urls.join("\n") + "\n";
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).await.unwrap();
    }
    let status = child.wait().await.unwrap();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if !status.success() {
        let text = std::fs::read_to_string(stderr.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        eprintln!(
            "{} {} failed for some tenant ({status}); its output ends:\n{}",
            program.display(),
            args.join(" "),
            lines[lines.len().saturating_sub(20)..].join("\n")
        );
    }
    (ms, u32::from(!status.success()))
}

/// `fleetmig --migrations-dir ... --app APP upgrade head` (or `downgrade base`).
pub fn fleetmig_cli_args(app: &str, direction: Direction) -> Vec<String> {
    vec![
        "--migrations-dir".into(),
        crate::apps::migrations().display().to_string(),
        "--app".into(),
        app.into(),
        direction.command().into(),
        direction.target().into(),
    ]
}

/// `alembic -c <APP's project>/alembic.ini upgrade head` (or `downgrade base`).
pub fn alembic_cli_args(ini: &Path, direction: Direction) -> Vec<String> {
    vec![
        "-c".into(),
        ini.display().to_string(),
        direction.command().into(),
        direction.target().into(),
    ]
}

/// The offline SQL of one direction (`fleetmig upgrade --sql base:head`), the floor's input.
pub fn offline_sql(app: &str, direction: Direction, path: &Path) {
    let range = match direction {
        Direction::Up => "base:head",
        Direction::Down => "head:base",
    };
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetmig"))
        .arg("--migrations-dir")
        .arg(crate::apps::migrations())
        .args(["--app", app, direction.command(), "--sql", range])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(path, out.stdout).unwrap();
}

/// The schema fingerprint of a database (`fleetmig fingerprint`; fleetmig's own tables are
/// left out): the tools' databases must agree after each direction.
pub fn fingerprint(url: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetmig"))
        .arg("fingerprint")
        .env("DATABASE_URL", url)
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fleetmig fingerprint: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    text.lines()
        .find_map(|l| l.strip_prefix("fingerprint "))
        .unwrap_or_else(|| panic!("no fingerprint line in: {text}"))
        .trim()
        .to_string()
}
