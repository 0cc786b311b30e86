//! The fleet benchmark (`make bench`): tenants per second through the daemon's gRPC Upgrade and
//! Downgrade, against the floor measured in the same run on the same machine: the same
//! rendered SQL (offline `--sql`) applied with `psql -f`, one session per tenant, at the same
//! concurrency. Also registry scale (List/Get over many tenants) and the daemon's RSS.
//!
//! `cargo bench --bench fleet` runs the configured sizes; `cargo test --bench fleet` (in
//! `make test`) runs a tiny smoke size. Knobs (environment): BENCH_SIZES=50,200,
//! BENCH_CONCURRENCY=1,2,8, BENCH_RUNS=3, BENCH_APPS=aletheia,truthgraph, BENCH_REGISTRY=10000,
//! BENCH_OUT=target/bench/fleet.json, BENCH_PER_HOST=64 (the daemon's per-host connection budget),
//! BENCH_PGLOG=<file> (Postgres statement statistics, summarized by `benches/pg_statement_cpu.py`).

#[allow(dead_code)]
#[path = "../tests/integration/harness.rs"]
mod harness;

#[allow(dead_code)]
#[path = "../tests/integration/daemon_harness.rs"]
mod daemon_harness;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use daemon_harness as dh;
use fleetmig::grpc::proto;
use serde::Serialize;
use tonic::transport::Channel;

fn env_list<T: std::str::FromStr>(name: &str, default: &str) -> Vec<T> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

struct Opts {
    sizes: Vec<usize>,
    concurrency: Vec<u32>,
    runs: usize,
    apps: Vec<String>,
    registry: usize,
    out: PathBuf,
}

#[derive(Debug, Serialize)]
struct Row {
    app: String,
    direction: &'static str,
    tenants: usize,
    concurrency: u32,
    daemon_ms_median: f64,
    daemon_ms_min: f64,
    daemon_ms_max: f64,
    floor_ms_median: f64,
    floor_ms_min: f64,
    floor_ms_max: f64,
    /// Median daemon time over median floor time.
    ratio: f64,
    /// Each run's daemon time over the floor time measured right after it: their spread
    /// says how far a single run can be trusted on this machine.
    ratio_run_min: f64,
    ratio_run_max: f64,
    daemon_tenants_per_s: f64,
    daemon_ms_per_tenant: f64,
    etcd_requests_per_tenant: f64,
    connections_per_tenant: f64,
    /// CPU time per tenant (ms, mean over runs) while the daemon migrated: where its time goes.
    daemon_cpu_ms_per_tenant: CpuSplit,
    /// CPU time per tenant (ms, mean over runs) while psql applied the same SQL.
    floor_cpu_ms_per_tenant: CpuSplit,
    failures: u32,
}

/// CPU time by process, in ms: the daemon, etcd, PostgreSQL (server and backends), and the
/// benchmark's own children (the psql sessions of the floor).
#[derive(Debug, Default, Clone, Copy, Serialize)]
struct CpuSplit {
    daemon: f64,
    etcd: f64,
    postgres: f64,
    psql: f64,
}

impl CpuSplit {
    /// Now, cumulative: each process's user + system time, with its reaped children's (the
    /// postmaster holds the CPU of its ended backends; this process, of its ended psql runs).
    fn now(daemon_pid: u32) -> CpuSplit {
        let tick_ms = 1000.0 / 100.0; // USER_HZ: 100 on Linux
        let mut split = CpuSplit::default();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let comm = &stat[open + 1..close];
            let f: Vec<f64> = stat[close + 2..]
                .split_whitespace()
                .map(|x| x.parse().unwrap_or(0.0))
                .collect();
            let (own, children) = (f[11] + f[12], f[13] + f[14]);
            if pid == daemon_pid {
                split.daemon += own * tick_ms;
            } else if pid == std::process::id() {
                split.psql += children * tick_ms;
            } else if comm == "etcd" {
                split.etcd += (own + children) * tick_ms;
            } else if comm == "postgres" {
                split.postgres += (own + children) * tick_ms;
            }
        }
        split
    }

    fn minus(self, o: CpuSplit) -> CpuSplit {
        CpuSplit {
            daemon: self.daemon - o.daemon,
            etcd: self.etcd - o.etcd,
            postgres: self.postgres - o.postgres,
            psql: self.psql - o.psql,
        }
    }

    fn add(&mut self, o: CpuSplit, scale: f64) {
        self.daemon += o.daemon * scale;
        self.etcd += o.etcd * scale;
        self.postgres += o.postgres * scale;
        self.psql += o.psql * scale;
    }

    fn total(&self) -> f64 {
        self.daemon + self.etcd + self.postgres + self.psql
    }
}

#[derive(Debug, Serialize)]
struct RegistryScale {
    tenants: usize,
    register_s: f64,
    list_filtered_page500_ms_median: f64,
    get_ms_median: f64,
    daemon_rss_mb: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    machine: String,
    rows: Vec<Row>,
    daemon_peak_rss_mb: f64,
    registry: Option<RegistryScale>,
}

/// Per direction: daemon times, floor times, etcd requests and connections per tenant (summed
/// over runs), failures, CPU per tenant of the daemon's runs and of the floor's (summed).
type Samples = (Vec<f64>, Vec<f64>, f64, f64, u32, CpuSplit, CpuSplit);

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Peak and current resident set of a process, in MB.
fn rss_mb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Every gRPC message etcd has received (its own Prometheus counter).
async fn etcd_messages(endpoint: &str) -> f64 {
    let url = format!("{}/metrics", endpoint.trim_end_matches('/'));
    let body = tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("curl")
            .args(["-s", &url])
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
    })
    .await
    .unwrap();
    body.lines()
        .filter(|l| l.starts_with("grpc_server_msg_received_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Connections opened to these databases since byte `from` of the server log (its
/// `log_connections` lines): exact, unlike `pg_stat_database.sessions`, which an idle pooled
/// backend reports only when it flushes its statistics, often in a later phase.
fn connections(log: &Path, from: u64, dbs: &std::collections::HashSet<String>) -> f64 {
    use std::io::{Read, Seek};
    let mut text = String::new();
    let mut file = std::fs::File::open(log).unwrap();
    file.seek(std::io::SeekFrom::Start(from)).unwrap();
    file.read_to_string(&mut text).unwrap();
    text.lines()
        .filter_map(|l| l.split("connection authorized: ").nth(1))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("database="))
        })
        .filter(|db| dbs.contains(*db))
        .count() as f64
}

fn log_len(log: &Path) -> u64 {
    std::fs::metadata(log).unwrap().len()
}

/// Before each measured phase: write out what the previous phase (or the databases' creation)
/// left dirty, so its write-back lands in neither the daemon's phase nor the floor's.
async fn settle(admin: &tokio_postgres::Client) {
    admin.batch_execute("CHECKPOINT").await.unwrap();
    tokio::task::spawn_blocking(|| std::process::Command::new("sync").status())
        .await
        .unwrap()
        .unwrap();
}

async fn migrate(
    daemon: &dh::Process,
    channel: &Channel,
    app: &str,
    label: &str,
    target: &str,
    down: bool,
    concurrency: u32,
) -> (f64, u32) {
    let mut m = proto::migrations_client::MigrationsClient::new(channel.clone());
    let request = proto::MigrateRequest {
        app: app.into(),
        target: target.into(),
        selector: Some(proto::Selector {
            labels: [("bench".to_string(), label.to_string())].into(),
            ..Default::default()
        }),
        concurrency,
        ..Default::default()
    };
    let started = Instant::now();
    let mut stream = if down {
        m.downgrade(request).await
    } else {
        m.upgrade(request).await
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

/// `psql -f file` per database, `concurrency` at a time; wall time in ms.
async fn floor(psql: &Path, urls: &[String], file: &Path, concurrency: u32) -> f64 {
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
            assert!(
                out.status.success(),
                "psql -f failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    started.elapsed().as_secs_f64() * 1000.0
}

fn offline_sql(app: &str, args: &[&str], path: &Path) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetmig"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["--app", app])
        .args(args)
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

async fn bench(opts: &Opts) -> Report {
    let pg = harness::postgres().expect("PostgreSQL is needed: run `make setup`");
    let etcd = harness::etcd().expect("etcd is needed: run `make setup`");
    let psql = pg.bin.join("psql");
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
    let mut daemon = dh::Process::start(
        &etcd.endpoint,
        &etcd.prefix("bench"),
        &harness::repo_migrations(),
        &env,
    );
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
    // Connections are counted from the log (one line each, on both sides). With BENCH_PGLOG,
    // also per-statement CPU of every backend, session ends and background work, for
    // `benches/pg_statement_cpu.py`: that logging costs CPU, not for the table.
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
    let mut rows = vec![];
    for &size in &opts.sizes {
        for app in &opts.apps {
            let label = format!("{app}-{size}");
            let (up, down) = (
                scratch.path().join(format!("{app}-up.sql")),
                scratch.path().join(format!("{app}-down.sql")),
            );
            offline_sql(app, &["upgrade", "--sql", "base:head"], &up);
            offline_sql(app, &["downgrade", "--sql", "head:base"], &down);
            let mut tenants = proto::tenants_client::TenantsClient::new(channel.clone());
            let (mut daemon_dbs, mut floor_urls) = (std::collections::HashSet::new(), vec![]);
            eprintln!("creating {size} + {size} databases for {app} ...");
            for i in 0..size {
                let (_, db) = pg.database(&format!("b{size}{app}d{i}")).await;
                let t = dh::tenant(&format!("{label}-{i}"), app, &db, &[("bench", &label)], &[]);
                tenants
                    .register(proto::RegisterTenantRequest { tenant: Some(t) })
                    .await
                    .unwrap();
                daemon_dbs.insert(db);
                floor_urls.push(pg.database(&format!("b{size}{app}f{i}")).await.0);
            }
            for &c in &opts.concurrency {
                let mut m: BTreeMap<&str, Samples> = BTreeMap::new();
                for _ in 0..opts.runs {
                    for (direction, target, down, file) in
                        [("up", "head", false, &up), ("down", "base", true, &down)]
                    {
                        settle(&admin).await;
                        let (etcd0, log0) = (etcd_messages(&etcd.endpoint).await, log_len(&pg.log));
                        let cpu0 = CpuSplit::now(pid);
                        let (d_ms, failures) =
                            migrate(&daemon, &channel, app, &label, target, down, c).await;
                        let cpu1 = CpuSplit::now(pid);
                        let (etcd1, opened) = (
                            etcd_messages(&etcd.endpoint).await,
                            connections(&pg.log, log0, &daemon_dbs),
                        );
                        settle(&admin).await;
                        let cpu2 = CpuSplit::now(pid);
                        let f_ms = floor(&psql, &floor_urls, file, c).await;
                        let cpu3 = CpuSplit::now(pid);
                        let per_run = 1.0 / (size * opts.runs) as f64;
                        let e = m.entry(direction).or_default();
                        e.0.push(d_ms);
                        e.1.push(f_ms);
                        e.2 += (etcd1 - etcd0) / size as f64;
                        e.3 += opened / size as f64;
                        e.4 += failures;
                        e.5.add(cpu1.minus(cpu0), per_run);
                        e.6.add(cpu3.minus(cpu2), per_run);
                    }
                }
                for (direction, (mut d, mut f, etcd_per, conn_per, failures, d_cpu, f_cpu)) in m {
                    let per_run = || d.iter().zip(&f).map(|(d, f)| d / f);
                    let ratio_run_min = per_run().fold(f64::INFINITY, f64::min);
                    let ratio_run_max = per_run().fold(0.0, f64::max);
                    let (dm, fm) = (median(&mut d), median(&mut f));
                    let row = Row {
                        app: app.clone(),
                        direction,
                        tenants: size,
                        concurrency: c,
                        daemon_ms_median: dm,
                        daemon_ms_min: d[0],
                        daemon_ms_max: d[d.len() - 1],
                        floor_ms_median: fm,
                        floor_ms_min: f[0],
                        floor_ms_max: f[f.len() - 1],
                        ratio: dm / fm,
                        ratio_run_min,
                        ratio_run_max,
                        daemon_tenants_per_s: size as f64 / (dm / 1000.0),
                        daemon_ms_per_tenant: dm / size as f64,
                        etcd_requests_per_tenant: etcd_per / opts.runs as f64,
                        connections_per_tenant: conn_per / opts.runs as f64,
                        daemon_cpu_ms_per_tenant: d_cpu,
                        floor_cpu_ms_per_tenant: f_cpu,
                        failures,
                    };
                    eprintln!("{row:?}");
                    rows.push(row);
                }
            }
        }
    }
    let daemon_peak_rss_mb = rss_mb(daemon.child.id(), "VmHWM:");
    let registry = if opts.registry > 0 {
        Some(registry_scale(&channel, opts.registry, daemon.child.id()).await)
    } else {
        None
    };
    daemon.terminate();
    if let Some(dest) = pg_log {
        std::fs::copy(&pg.log, &dest).unwrap();
        eprintln!("Postgres log with statement statistics: {dest}");
    }
    Report {
        machine: machine(),
        rows,
        daemon_peak_rss_mb,
        registry,
    }
}

async fn registry_scale(channel: &Channel, n: usize, pid: u32) -> RegistryScale {
    let mut client = proto::tenants_client::TenantsClient::new(channel.clone());
    let started = Instant::now();
    let slots = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = vec![];
    for i in 0..n {
        let (slots, mut c) = (slots.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            let _s = slots.acquire_owned().await.unwrap();
            let tier = if i % 10 == 0 { "enterprise" } else { "free" };
            let t = proto::Tenant {
                id: format!("scale-{i:06}"),
                app: "aletheia".into(),
                connection: Some(proto::Connection {
                    host: "db-scale.internal".into(),
                    port: 5432,
                    dbname: format!("t{i}"),
                    user: "app".into(),
                    ..Default::default()
                }),
                labels: [
                    ("tier".to_string(), tier.to_string()),
                    ("scale".to_string(), "yes".to_string()),
                ]
                .into(),
                ..Default::default()
            };
            c.register(proto::RegisterTenantRequest { tenant: Some(t) })
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let register_s = started.elapsed().as_secs_f64();
    let mut list = vec![];
    for _ in 0..7 {
        let t = Instant::now();
        let page = client
            .list(proto::ListTenantsRequest {
                app: "aletheia".into(),
                labels: [("tier".to_string(), "enterprise".to_string())].into(),
                page_size: 500,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        list.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(page.tenants.len(), (n / 10).min(500));
    }
    let mut get = vec![];
    for i in 0..25 {
        let t = Instant::now();
        client
            .get(proto::GetTenantRequest {
                id: format!("scale-{:06}", (i * 397) % n),
            })
            .await
            .unwrap();
        get.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    RegistryScale {
        tenants: n,
        register_s,
        list_filtered_page500_ms_median: median(&mut list),
        get_ms_median: median(&mut get),
        daemon_rss_mb: rss_mb(pid, "VmRSS:"),
    }
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown cpu")
        .trim()
        .to_string();
    format!("{cpus} cores, {model}")
}

fn markdown(r: &Report) -> String {
    let mut s = format!(
        "Machine: {}. Daemon peak RSS: {:.0} MB.\n\n",
        r.machine, r.daemon_peak_rss_mb
    );
    s += "| app | direction | tenants | concurrency | daemon ms (median, min-max) | psql floor ms (median, min-max) | daemon / floor (per-run min-max) | tenants/s | ms/tenant | etcd req/tenant | connections/tenant |\n";
    s += "|---|---|---:|---:|---|---|---:|---:|---:|---:|---:|\n";
    for x in &r.rows {
        s += &format!(
            "| {} | {} | {} | {} | {:.0} ({:.0}-{:.0}) | {:.0} ({:.0}-{:.0}) | {:.2} ({:.2}-{:.2}) | {:.1} | {:.1} | {:.1} | {:.2} |\n",
            x.app,
            x.direction,
            x.tenants,
            x.concurrency,
            x.daemon_ms_median,
            x.daemon_ms_min,
            x.daemon_ms_max,
            x.floor_ms_median,
            x.floor_ms_min,
            x.floor_ms_max,
            x.ratio,
            x.ratio_run_min,
            x.ratio_run_max,
            x.daemon_tenants_per_s,
            x.daemon_ms_per_tenant,
            x.etcd_requests_per_tenant,
            x.connections_per_tenant
        );
    }
    s += "\nCPU ms per tenant, by process (where the time goes; the machine's cores are shared by all of them):\n\n";
    s += "| app | direction | concurrency | daemon run: daemon + etcd + postgres = total | floor: psql + postgres = total | CPU ratio |\n";
    s += "|---|---|---:|---|---|---:|\n";
    for x in &r.rows {
        let (d, f) = (&x.daemon_cpu_ms_per_tenant, &x.floor_cpu_ms_per_tenant);
        s += &format!(
            "| {} | {} | {} | {:.1} + {:.1} + {:.1} = {:.1} | {:.1} + {:.1} = {:.1} | {:.2} |\n",
            x.app,
            x.direction,
            x.concurrency,
            d.daemon,
            d.etcd,
            d.postgres,
            d.total(),
            f.psql,
            f.postgres,
            f.total(),
            d.total() / f.total()
        );
    }
    if let Some(g) = &r.registry {
        s += &format!(
            "\nRegistry: {} tenants registered in {:.1} s; List (label filter, page 500) {:.1} ms median; Get {:.2} ms median; daemon RSS {:.0} MB.\n",
            g.tenants,
            g.register_s,
            g.list_filtered_page500_ms_median,
            g.get_ms_median,
            g.daemon_rss_mb
        );
    }
    s
}

fn main() {
    // `cargo bench` passes --bench; anything else (cargo test) is the smoke size.
    let full = std::env::args().any(|a| a == "--bench");
    let opts = if full {
        Opts {
            sizes: env_list("BENCH_SIZES", "50,200"),
            concurrency: env_list("BENCH_CONCURRENCY", "1,2,8"),
            runs: env_list("BENCH_RUNS", "3").first().copied().unwrap_or(3),
            apps: env_list("BENCH_APPS", "aletheia,truthgraph"),
            registry: env_list("BENCH_REGISTRY", "10000")
                .first()
                .copied()
                .unwrap_or(10000),
            out: std::env::var("BENCH_OUT")
                .map(PathBuf::from)
                .unwrap_or_else(|_| {
                    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench/fleet.json")
                }),
        }
    } else {
        if harness::postgres().is_none() || harness::etcd().is_none() {
            return;
        }
        Opts {
            sizes: vec![3],
            concurrency: vec![2],
            runs: 1,
            apps: vec!["aletheia".into()],
            registry: 50,
            out: std::env::temp_dir().join("fleetmig-bench-smoke.json"),
        }
    };
    let report = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(bench(&opts));
    assert!(
        report.rows.iter().all(|r| r.failures == 0),
        "every tenant migrated"
    );
    let table = markdown(&report);
    println!("{table}");
    if let Some(dir) = opts.out.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&opts.out, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    eprintln!("JSON report: {}", opts.out.display());
    if !full {
        println!("1 passed, 0 failed");
    }
}
