//! The application's view of a migration that waits for a lock (`make bench-blocking`):
//! pgbench runs against a tenant while a revision ALTERs the table it updates
//! (`pgbench_accounts`) and a long "reporting" transaction holds a conflicting lock. While the
//! ALTER waits, every query on the table queues behind it; fleetmig's lock_timeout makes it
//! give way, retry, and succeed once the blocker is gone. Measured per scenario: the latency
//! of pgbench's transactions that completed while the migration was under way (p50, p99, max)
//! and of those that waited behind it, against the baseline and lock_timeout + 100 ms:
//! - `psql, no lock_timeout`: the plain ALTER, the control (the app stalls behind it);
//! - `fleetmig`: the default (blockers named, nothing ended);
//! - `fleetmig --blockers terminate`: blockers idle in transaction over 2 s are terminated.
//!
//! `cargo bench --bench blocking` (or `BENCH_FULL=1 cargo test --bench blocking`, from a test
//! build) runs the full experiment and fails if a fleetmig scenario's p99, or its longest wait
//! behind the migration, exceeds lock_timeout + 100 ms; `cargo test --bench blocking` runs a
//! short smoke size. Knobs: BENCH_SCALE=1 (pgbench -s), BENCH_CLIENTS=4, BENCH_SECONDS=14,
//! BENCH_HOLD_SECONDS=6, BENCH_LOCK_TIMEOUT_MS=500, BENCH_OUT=target/bench/blocking.json,
//! BENCH_PGBENCH=<path>.

#[allow(dead_code)]
#[path = "../tests/integration/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

struct Opts {
    scale: u32,
    clients: u32,
    seconds: u64,
    hold: Duration,
    lock_timeout: Duration,
    scenarios: Vec<Scenario>,
    out: PathBuf,
    check: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Psql,
    Fleetmig,
    Terminate,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Psql => "psql, no lock_timeout",
            Scenario::Fleetmig => "fleetmig",
            Scenario::Terminate => "fleetmig --blockers terminate (idle in transaction > 2 s)",
        }
    }
}

#[derive(Debug, Default, Clone, Serialize)]
struct Latency {
    transactions: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

#[derive(Debug, Serialize)]
struct Row {
    scenario: &'static str,
    lock_timeout_ms: u128,
    /// From the migration's start to its end.
    migration_ms: f64,
    lock_retries: usize,
    /// Whether the migration named the reporting session as its blocker.
    blocker_named: bool,
    baseline: Latency,
    /// Every transaction that completed while the migration was under way.
    during_migration: Latency,
    /// Those that waited behind it: slower than 50 ms and ten times the baseline's p99.
    waited: Latency,
    /// during_migration.p99_ms and waited.max_ms <= lock_timeout + 100 ms.
    within_bound: bool,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pgbench() -> Option<PathBuf> {
    let candidates = [
        std::env::var("BENCH_PGBENCH").ok().map(PathBuf::from),
        std::env::var("FLEETMIG_PG_BIN")
            .ok()
            .map(|b| PathBuf::from(b).join("pgbench")),
        Some(PathBuf::from("/usr/lib/postgresql/15/bin/pgbench")),
    ];
    candidates.into_iter().flatten().find(|p| p.exists())
}

fn epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// pgbench's per-transaction logs (`-l`): (completion time in epoch seconds, latency in ms).
fn transactions(dir: &Path, prefix: &str) -> Vec<(f64, f64)> {
    let mut out = vec![];
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with(&format!("{prefix}.")) {
            continue;
        }
        for line in std::fs::read_to_string(entry.path()).unwrap().lines() {
            // client_id transaction_no time script_no time_epoch time_us [schedule_lag]
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 6 {
                continue;
            }
            let (Ok(us), Ok(secs), Ok(frac)) = (
                f[2].parse::<f64>(),
                f[4].parse::<f64>(),
                f[5].parse::<f64>(),
            ) else {
                continue;
            };
            out.push((secs + frac / 1e6, us / 1000.0));
        }
    }
    out
}

fn latency(txns: &[(f64, f64)], from: f64, to: f64) -> Latency {
    let mut ms: Vec<f64> = txns
        .iter()
        .filter(|(at, _)| *at >= from && *at <= to)
        .map(|(_, l)| *l)
        .collect();
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Latency {
        transactions: ms.len(),
        p50_ms: percentile(&ms, 0.50),
        p99_ms: percentile(&ms, 0.99),
        max_ms: ms.last().copied().unwrap_or(0.0),
    }
}

const REVISION: &str = "-- revision: n1\n-- down_revision:\n-- message: a column on the table pgbench updates\n-- +upgrade\nALTER TABLE pgbench_accounts ADD COLUMN note text;\n-- +downgrade\nALTER TABLE pgbench_accounts DROP COLUMN note;\n";

fn fleetmig(root: &Path, url: &str, opts: &Opts, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fleetmig"))
        .arg("--migrations-dir")
        .arg(root)
        .args(args)
        .env("DATABASE_URL", url)
        .env(
            "FLEETMIG_ENGINE__LOCK_TIMEOUT",
            format!("{}ms", opts.lock_timeout.as_millis()),
        )
        .env("FLEETMIG_ENGINE__LOCK_RETRIES", "60")
        .env("FLEETMIG_ENGINE__RETRY_MIN_DELAY", "200ms")
        .env("FLEETMIG_ENGINE__RETRY_MAX_DELAY", "1s")
        .env_remove("FLEETMIG_CONFIG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

async fn scenario(
    s: Scenario,
    opts: &Opts,
    pg: &harness::Postgres,
    db: &str,
    root: &Path,
    logs: &Path,
) -> Row {
    let url = pg.url(db);
    let prefix = format!("s{}", s as u8);
    let started = epoch();
    let mut bench = tokio::process::Command::new(pgbench().unwrap())
        .args(["-n", "-l", "--log-prefix"])
        .arg(logs.join(&prefix))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
        ])
        .args(["-c", &opts.clients.to_string(), "-j", "2"])
        .args(["-T", &opts.seconds.to_string(), db])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The reporting transaction: it read the table and stays open, holding its lock.
    let reporting = fleetmig::pg::connect_str(&format!("{url}?application_name=nightly-report"))
        .await
        .unwrap();
    let held_at = epoch();
    reporting
        .batch_execute("BEGIN; SELECT count(*) FROM pgbench_accounts WHERE abalance > 0")
        .await
        .unwrap();
    let hold = opts.hold;
    let holder = tokio::spawn(async move {
        tokio::time::sleep(hold).await;
        // Terminated by the policy in one scenario: then there is nothing to commit.
        let _ = reporting.batch_execute("COMMIT").await;
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = epoch();
    let clock = Instant::now();
    let (ok, stderr) = match s {
        Scenario::Psql => {
            let out = Command::new(pg.bin.join("psql"))
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &url, "-c"])
                .arg("ALTER TABLE pgbench_accounts ADD COLUMN note text")
                .output()
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        }
        Scenario::Fleetmig => fleetmig(root, &url, opts, &["upgrade"]),
        Scenario::Terminate => fleetmig(
            root,
            &url,
            opts,
            &[
                "upgrade",
                "--blockers",
                "terminate",
                "--blockers-idle-in-transaction",
                "2s",
            ],
        ),
    };
    let migration = clock.elapsed();
    let t1 = epoch();
    assert!(ok, "{}: the migration failed: {stderr}", s.name());
    let status = bench.wait().await.unwrap();
    assert!(status.success(), "pgbench failed");
    holder.await.unwrap();
    // Back to the start for the next scenario.
    let undo = match s {
        Scenario::Psql => pg.psql_file(&url, &{
            let f = logs.join("undo.sql");
            std::fs::write(&f, "ALTER TABLE pgbench_accounts DROP COLUMN note;").unwrap();
            f
        }),
        _ => fleetmig(root, &url, opts, &["downgrade", "base"]),
    };
    assert!(undo.0, "undo: {}", undo.1);
    let txns = transactions(logs, &prefix);
    let baseline = latency(&txns, started + 0.5, held_at - 0.1);
    let during = latency(&txns, t0, t1 + 0.2);
    let slow = (baseline.p99_ms * 10.0).max(50.0);
    let stalled: Vec<(f64, f64)> = txns.iter().copied().filter(|(_, l)| *l > slow).collect();
    let waited = latency(&stalled, t0, t1 + 0.2);
    let bound = opts.lock_timeout.as_secs_f64() * 1000.0 + 100.0;
    Row {
        scenario: s.name(),
        lock_timeout_ms: opts.lock_timeout.as_millis(),
        migration_ms: migration.as_secs_f64() * 1000.0,
        lock_retries: stderr.matches("lock timeout").count(),
        blocker_named: stderr.contains("(app nightly-report"),
        within_bound: during.p99_ms <= bound && waited.max_ms <= bound,
        baseline,
        during_migration: during,
        waited,
    }
}

fn markdown(rows: &[Row], opts: &Opts) -> String {
    let mut s = format!(
        "pgbench -s {} -c {} -j 2 (TPC-B) for {} s; a transaction holds AccessShareLock on pgbench_accounts for {} s; lock_timeout {} ms\n\n",
        opts.scale,
        opts.clients,
        opts.seconds,
        opts.hold.as_secs(),
        opts.lock_timeout.as_millis()
    );
    s += "| scenario | migration | lock retries | blocker named | baseline p99 | during: txns | p50 | p99 | max | waited behind it: txns | p99 | max | within lock_timeout + 100 ms |\n";
    s += "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n";
    for r in rows {
        s += &format!(
            "| {} | {:.0} ms | {} | {} | {:.1} ms | {} | {:.1} ms | {:.1} ms | {:.0} ms | {} | {:.0} ms | {:.0} ms | {} |\n",
            r.scenario,
            r.migration_ms,
            r.lock_retries,
            if r.blocker_named { "yes" } else { "no" },
            r.baseline.p99_ms,
            r.during_migration.transactions,
            r.during_migration.p50_ms,
            r.during_migration.p99_ms,
            r.during_migration.max_ms,
            r.waited.transactions,
            r.waited.p99_ms,
            r.waited.max_ms,
            if r.within_bound { "yes" } else { "no" },
        );
    }
    s
}

async fn run(opts: &Opts) -> Vec<Row> {
    let pg = harness::postgres().expect("PostgreSQL is needed: run `make setup`");
    let (_, db) = pg.database("blocking").await;
    let init = Command::new(pgbench().unwrap())
        .args(["-i", "-q", "-s", &opts.scale.to_string()])
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
            &db,
        ])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let (_tmp, root) = harness::scratch_app("pgbench", "", &[("n1.sql", REVISION)]);
    let logs = tempfile::tempdir().unwrap();
    let mut rows = vec![];
    for s in &opts.scenarios {
        let row = scenario(*s, opts, pg, &db, &root, logs.path()).await;
        eprintln!("{}: {row:?}", s.name());
        rows.push(row);
    }
    rows
}

fn main() {
    // `cargo bench` passes --bench; anything else (cargo test) is the smoke size, unless
    // BENCH_FULL=1 (the full experiment from a test build: it measures lock waits, not CPU).
    let full = std::env::args().any(|a| a == "--bench")
        || std::env::var("BENCH_FULL").is_ok_and(|v| v == "1");
    if pgbench().is_none() {
        assert!(!harness::ci(), "pgbench is needed under CI (make setup)");
        eprintln!("SKIP: no pgbench (BENCH_PGBENCH, FLEETMIG_PG_BIN or Debian's postgresql-15)");
        return;
    }
    if !full && harness::postgres().is_none() {
        return;
    }
    let opts = if full {
        Opts {
            scale: env_or("BENCH_SCALE", 1),
            clients: env_or("BENCH_CLIENTS", 4),
            seconds: env_or("BENCH_SECONDS", 14),
            hold: Duration::from_secs(env_or("BENCH_HOLD_SECONDS", 6)),
            lock_timeout: Duration::from_millis(env_or("BENCH_LOCK_TIMEOUT_MS", 500)),
            scenarios: vec![Scenario::Psql, Scenario::Fleetmig, Scenario::Terminate],
            out: std::env::var("BENCH_OUT")
                .map(PathBuf::from)
                .unwrap_or_else(|_| {
                    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench/blocking.json")
                }),
            check: true,
        }
    } else {
        Opts {
            scale: 1,
            clients: 2,
            seconds: 6,
            hold: Duration::from_secs(2),
            lock_timeout: Duration::from_millis(300),
            scenarios: vec![Scenario::Fleetmig],
            out: std::env::temp_dir().join("fleetmig-bench-blocking-smoke.json"),
            check: false,
        }
    };
    let rows = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(&opts));
    println!("{}", markdown(&rows, &opts));
    if let Some(dir) = opts.out.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&opts.out, serde_json::to_string_pretty(&rows).unwrap()).unwrap();
    eprintln!("JSON report: {}", opts.out.display());
    for r in rows.iter().filter(|r| r.scenario != Scenario::Psql.name()) {
        assert!(r.blocker_named, "{}: the blocker was not named", r.scenario);
        if opts.check {
            assert!(
                r.within_bound,
                "{}: the application's p99 during the migration ({:.0} ms) or its longest wait behind it ({:.0} ms) exceeds lock_timeout + 100 ms",
                r.scenario, r.during_migration.p99_ms, r.waited.max_ms
            );
        }
    }
    if !full {
        println!("1 passed, 0 failed");
    }
}
