//! The fleet benchmark (`make bench`): fleetmig's daemon against the floor (the same rendered
//! SQL applied with `psql -f`) and against Alembic (in-process, and as a CLI loop beside the
//! fleetmig CLI loop), on the same machine in the same run, with ratios that mean something on
//! a shared 2-core machine:
//! - every cell (app x direction x tenants x concurrency) runs its tools' phases in
//!   interleaved pairs, the order flipped every pair, and reports the median of the per-pair
//!   ratios with min-max, beside the CPU ratio (all processes' CPU per tenant, each side);
//! - each tool works on a database set of its own, created from a template with pgvector
//!   installed; a pair runs every tool's upgrade (base -> head), then every tool's downgrade
//!   (head -> base), so each phase starts where the same phase of the previous pair started;
//! - `CHECKPOINT` and `sync` before every phase; the tools' schemas are compared by fingerprint
//!   after the first pair's upgrade and downgrade;
//! - etcd requests per tenant by method (and the periodic share), connections per tenant, the
//!   daemon's peak RSS per size, registry scale, as markdown tables and a JSON file, and one
//!   sentence a user can quote.
//!
//! `cargo bench --bench fleet` runs the configured sizes (also `BENCH_FULL=1 cargo test
//! --bench fleet`, from a test build); `cargo test --bench fleet` (in `make test`) runs a smoke
//! size. Knobs (environment):
//! - BENCH_SIZES=200, BENCH_CONCURRENCY=2,8, BENCH_APPS=aletheia,truthgraph (and `long`, a
//!   generated history of BENCH_LONG=300 revisions: [`apps`]);
//! - BENCH_PAIRS=5: interleaved pairs per cell (each pair: one phase of every tool, each way);
//! - BENCH_PEERS=floor,alembic,cli: what the daemon is compared with (`alembic`: Alembic
//!   in-process; `cli`: the fleetmig and Alembic CLI loops); empty: the daemon alone;
//! - BENCH_REGISTRY=10000 (0: no registry scale), BENCH_PER_HOST=64 (the daemon's per-host
//!   connection budget), BENCH_OUT=target/bench/fleet.json, BENCH_MD=target/bench/fleet.md;
//! - BENCH_PGLOG=<file>: Postgres statement statistics, summarized by
//!   `benches/pg_statement_cpu.py`.

#[allow(dead_code)]
#[path = "../../tests/integration/harness.rs"]
mod harness;

#[allow(dead_code)]
#[path = "../../tests/integration/daemon_harness.rs"]
mod daemon_harness;

mod alembic;
mod apps;
mod etcd_tap;
mod markdown;
mod measure;
mod phase;
mod registry;
mod report;
mod sets;
mod tools;

use std::collections::BTreeMap;
use std::path::PathBuf;

use daemon_harness as dh;
use tonic::transport::Channel;

use measure::Pids;
use report::{Cell, Report, Scale};
use tools::{Direction, Tool};

fn env_list<T: std::str::FromStr>(name: &str, default: &str) -> Vec<T> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

fn env_one<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

struct Opts {
    sizes: Vec<usize>,
    concurrency: Vec<u32>,
    pairs: usize,
    apps: Vec<String>,
    /// Revisions of the generated `long` app.
    long: usize,
    /// Tools besides the daemon, and as BENCH_PEERS named them.
    peers: Vec<Tool>,
    peers_spec: String,
    registry: usize,
    out: PathBuf,
    md: PathBuf,
}

impl Opts {
    fn knobs(&self) -> BTreeMap<&'static str, String> {
        let list = |v: Vec<String>| v.join(",");
        [
            (
                "BENCH_SIZES",
                list(self.sizes.iter().map(|s| s.to_string()).collect()),
            ),
            (
                "BENCH_CONCURRENCY",
                list(self.concurrency.iter().map(|s| s.to_string()).collect()),
            ),
            ("BENCH_PAIRS", self.pairs.to_string()),
            ("BENCH_APPS", list(self.apps.clone())),
            ("BENCH_LONG", self.long.to_string()),
            ("BENCH_PEERS", self.peers_spec.clone()),
            ("BENCH_REGISTRY", self.registry.to_string()),
        ]
        .into()
    }
}

fn peers(spec: &str) -> Vec<Tool> {
    let mut out = vec![];
    for p in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match p {
            "floor" => out.push(Tool::Floor),
            "alembic" => out.push(Tool::AlembicInProcess),
            "cli" => out.extend([Tool::FleetmigCli, Tool::AlembicCli]),
            other => panic!("BENCH_PEERS: unknown peer {other:?} (floor, alembic, cli)"),
        }
    }
    out
}

/// The order of one pair's phases (each direction): the floor, the daemon and Alembic
/// in-process with the daemon in the middle, then the two CLI loops; reversed every other
/// pair, so each tool runs as often first as second against the tools it is compared with.
fn order(tools: &[Tool], pair: usize) -> Vec<Tool> {
    let mut first: Vec<Tool> = [Tool::Floor, Tool::Daemon, Tool::AlembicInProcess]
        .into_iter()
        .filter(|t| tools.contains(t))
        .collect();
    let mut second: Vec<Tool> = [Tool::FleetmigCli, Tool::AlembicCli]
        .into_iter()
        .filter(|t| tools.contains(t))
        .collect();
    if pair % 2 == 1 {
        first.reverse();
        second.reverse();
    }
    first.into_iter().chain(second).collect()
}

async fn bench(opts: &Opts) -> Report {
    let pg = harness::postgres().expect("PostgreSQL is needed: run `make setup`");
    let etcd = harness::etcd().expect("etcd is needed: run `make setup`");
    let mut skipped = vec![];
    let mut tools_on: Vec<Tool> = vec![Tool::Daemon];
    tools_on.extend(&opts.peers);
    let alembic = if tools_on.iter().any(|t| t.needs_alembic()) {
        let found = alembic::Alembic::find();
        if found.is_none() {
            tools_on.retain(|t| !t.needs_alembic());
            skipped.push("Alembic (not installed: `make setup`)".to_string());
        }
        found
    } else {
        None
    };
    let max_c = opts
        .concurrency
        .iter()
        .max()
        .copied()
        .unwrap_or(8)
        .to_string();
    let per_host = std::env::var("BENCH_PER_HOST").unwrap_or_else(|_| "64".into());
    let env = [
        ("FLEETMIG_FLEET__GLOBAL_CONCURRENCY", max_c.as_str()),
        ("FLEETMIG_FLEET__MAX_JOB_CONCURRENCY", max_c.as_str()),
        ("FLEETMIG_POOLS__PER_HOST_CONNECTIONS", per_host.as_str()),
        ("FLEETMIG_LOG", "warn"),
        // The production default: the harness's 2 s (for quick lease-loss tests) can lapse
        // while etcd's fsync waits behind eight index builds, and every tenant stops.
        ("FLEETMIG_ETCD__LEASE_TTL", "15s"),
    ];
    let prefix = etcd.prefix("bench");
    apps::prepare(&opts.apps, opts.long);
    let mut daemon = dh::Process::start(&etcd.endpoint, &prefix, &apps::migrations(), &env);
    let pid = daemon.child.id();
    let channel = Channel::from_shared(format!("http://{}", daemon.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let admin = fleetmig::pg::connect_str(&pg.url("postgres"))
        .await
        .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let pg_log = std::env::var("BENCH_PGLOG").ok();
    // Connections are counted from the log (one line each, on every side). With BENCH_PGLOG,
    // also per-statement CPU of every backend, session ends and background work, for
    // `benches/pg_statement_cpu.py`: that logging costs CPU, not for the tables.
    let diagnostics = [
        "log_statement_stats = on",
        "log_disconnections = on",
        "log_autovacuum_min_duration = 0",
        "log_checkpoints = on",
    ];
    let extra = if pg_log.is_some() {
        &diagnostics[..]
    } else {
        &[]
    };
    for setting in ["log_connections = 'authorization'"].iter().chain(extra) {
        admin
            .batch_execute(&format!("ALTER SYSTEM SET {setting}"))
            .await
            .unwrap();
    }
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    let template = sets::template(pg, &admin).await;
    let ctx = phase::Ctx {
        pg,
        etcd,
        prefix: &prefix,
        tap: etcd.client().await,
        daemon: &daemon,
        channel: &channel,
        admin: &admin,
        alembic: alembic.as_ref(),
        scratch: scratch.path(),
        pids: Pids::find(pid, &pg.log.parent().unwrap().join("data"), &etcd.endpoint),
    };
    let mut cells = vec![];
    let mut scale = vec![];
    for &size in &opts.sizes {
        let mut failures = 0;
        for app in &opts.apps {
            let label = format!("{app}-{size}");
            for direction in [Direction::Up, Direction::Down] {
                let file = scratch
                    .path()
                    .join(format!("{app}-{}.sql", direction.name()));
                tools::offline_sql(app, direction, &file);
            }
            let sets =
                sets::create_sets(pg, &admin, &channel, template, &tools_on, app, size).await;
            for &c in &opts.concurrency {
                let mut driver = tools_on
                    .contains(&Tool::AlembicInProcess)
                    .then(|| alembic.as_ref().unwrap().driver(app, c));
                let mut by_direction: Vec<Cell> = [Direction::Up, Direction::Down]
                    .into_iter()
                    .map(|direction| Cell {
                        app: app.clone(),
                        direction,
                        tenants: size,
                        concurrency: c,
                        phases: BTreeMap::new(),
                    })
                    .collect();
                for pair in 0..opts.pairs {
                    for (d, direction) in [Direction::Up, Direction::Down].into_iter().enumerate() {
                        for tool in order(&tools_on, pair) {
                            let p = phase::phase(
                                &ctx,
                                tool,
                                app,
                                &label,
                                direction,
                                c,
                                &sets[&tool],
                                driver.as_mut(),
                            )
                            .await;
                            eprintln!(
                                "{app} {} n={size} c={c} pair {}: {} {:.0} ms{}",
                                direction.name(),
                                pair + 1,
                                tool.name(),
                                p.ms,
                                if p.failures > 0 { " FAILED" } else { "" }
                            );
                            failures += p.failures;
                            by_direction[d].phases.entry(tool).or_default().push(p);
                        }
                        if pair == 0 {
                            sets::same_schema(&sets, &format!("after {}", direction.name()));
                        }
                    }
                }
                if let Some(d) = driver {
                    d.finish();
                }
                cells.extend(by_direction.iter().map(Cell::report));
            }
            sets::drop_sets(&admin, &channel, sets, &label).await;
        }
        scale.push(Scale {
            tenants: size,
            failures,
            daemon_peak_rss_mb: measure::rss_mb(pid, "VmHWM:"),
        });
    }
    let daemon_peak_rss_mb = measure::rss_mb(pid, "VmHWM:");
    let registry = if opts.registry > 0 {
        Some(registry::scale(&channel, opts.registry, pid).await)
    } else {
        None
    };
    daemon.terminate();
    if let Some(dest) = pg_log {
        std::fs::copy(&pg.log, &dest).unwrap();
        eprintln!("Postgres log with statement statistics: {dest}");
    }
    let mut report = Report {
        machine: measure::machine(),
        knobs: opts.knobs(),
        cells,
        scale,
        daemon_peak_rss_mb,
        registry,
        skipped,
        quote: None,
    };
    report.quote = report.quote();
    report
}

fn main() {
    // `cargo bench` passes --bench; BENCH_FULL=1 runs the configured sizes from a test build;
    // anything else (cargo test) is the smoke size.
    let full = std::env::args().any(|a| a == "--bench")
        || std::env::var("BENCH_FULL").is_ok_and(|v| v == "1");
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let mut opts = if full {
        Opts {
            sizes: env_list("BENCH_SIZES", "200"),
            concurrency: env_list("BENCH_CONCURRENCY", "2,8"),
            pairs: env_one("BENCH_PAIRS", 5),
            apps: env_list("BENCH_APPS", "aletheia,truthgraph"),
            long: env_one("BENCH_LONG", 300),
            peers: vec![],
            peers_spec: std::env::var("BENCH_PEERS").unwrap_or("floor,alembic,cli".into()),
            registry: env_one("BENCH_REGISTRY", 10000),
            out: std::env::var("BENCH_OUT")
                .map(PathBuf::from)
                .unwrap_or_else(|_| target.join("fleet.json")),
            md: std::env::var("BENCH_MD")
                .map(PathBuf::from)
                .unwrap_or_else(|_| target.join("fleet.md")),
        }
    } else {
        if harness::postgres().is_none() || harness::etcd().is_none() {
            return;
        }
        Opts {
            sizes: vec![3],
            concurrency: vec![2],
            pairs: 2,
            apps: vec!["aletheia".into(), apps::LONG.into()],
            long: 12,
            peers: vec![],
            peers_spec: "floor,alembic,cli".into(),
            registry: 50,
            out: std::env::temp_dir().join("fleetmig-bench-smoke.json"),
            md: std::env::temp_dir().join("fleetmig-bench-smoke.md"),
        }
    };
    opts.peers = peers(&opts.peers_spec);
    let report = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(bench(&opts));
    let table = markdown::markdown(&report);
    println!("{table}");
    for path in [&opts.out, &opts.md] {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
    }
    std::fs::write(&opts.out, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    std::fs::write(&opts.md, &table).unwrap();
    eprintln!(
        "JSON report: {}; markdown: {}",
        opts.out.display(),
        opts.md.display()
    );
    assert!(
        report.scale.iter().all(|s| s.failures == 0),
        "every tenant migrated with every tool"
    );
    if !full {
        println!("1 passed, 0 failed");
    }
}
