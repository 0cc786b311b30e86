//! What the benchmark reads around a phase, outside the tools it measures: CPU time per
//! process from `/proc`, a process's resident set, etcd's own request counters (per gRPC
//! method), connections opened (from the server's connection log), and the settling of the
//! server before a phase.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// CPU time by process, in ms: the daemon, etcd, PostgreSQL (server and backends), the
/// benchmark's reaped children (psql, xargs with the CLI runs under it), and the Alembic
/// driver with its workers.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Cpu {
    pub daemon: f64,
    pub etcd: f64,
    pub postgres: f64,
    pub children: f64,
    pub driver: f64,
}

/// USER_HZ: 100 on Linux.
const TICK_MS: f64 = 1000.0 / 100.0;

/// (pid, parent pid, comm, own user+system ticks, reaped children's ticks) of every process.
fn processes() -> Vec<(u32, u32, String, f64, f64)> {
    let mut out = vec![];
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
        let f: Vec<f64> = stat[close + 2..]
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0.0))
            .collect();
        if f.len() < 15 {
            continue;
        }
        out.push((
            pid,
            f[1] as u32,
            stat[open + 1..close].to_string(),
            f[11] + f[12],
            f[13] + f[14],
        ));
    }
    out
}

/// The processes whose CPU is counted: other servers on a shared machine are not ours.
#[derive(Debug, Clone, Copy)]
pub struct Pids {
    pub daemon: u32,
    /// Our Postgres's postmaster: its backends are its children.
    pub postmaster: u32,
    pub etcd: u32,
    /// The Alembic in-process driver: its workers are its children.
    pub driver: Option<u32>,
}

impl Pids {
    /// The postmaster of the server whose data directory is `data`, and the etcd serving
    /// `endpoint`.
    pub fn find(daemon: u32, data: &Path, endpoint: &str) -> Pids {
        let postmaster = std::fs::read_to_string(data.join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse().ok())
            .expect("our Postgres's postmaster.pid");
        let flag = format!("--listen-client-urls {endpoint}");
        let etcd = processes()
            .into_iter()
            .filter(|p| p.2 == "etcd")
            .find(|p| {
                std::fs::read(format!("/proc/{}/cmdline", p.0))
                    .map(|c| {
                        String::from_utf8_lossy(&c)
                            .replace('\0', " ")
                            .contains(&flag)
                    })
                    .unwrap_or(false)
            })
            .map(|p| p.0)
            .expect("our etcd's process");
        Pids {
            daemon,
            postmaster,
            etcd,
            driver: None,
        }
    }
}

impl Cpu {
    /// Now, cumulative: each process's user + system time, with its reaped children's (the
    /// postmaster holds the CPU of its ended backends; this process, of its ended psql and
    /// xargs runs; the driver, of workers it reaped). Live children of the postmaster (the
    /// backends) and of the driver (its pool's workers) are added.
    pub fn now(pids: Pids) -> Cpu {
        let mut cpu = Cpu::default();
        let me = std::process::id();
        for (pid, ppid, _, own, children) in processes() {
            let ms = (own + children) * TICK_MS;
            if pid == pids.daemon {
                cpu.daemon += own * TICK_MS;
            } else if pid == me {
                cpu.children += children * TICK_MS;
            } else if pids.driver.is_some_and(|d| pid == d || ppid == d) {
                cpu.driver += ms;
            } else if pid == pids.etcd {
                cpu.etcd += ms;
            } else if pid == pids.postmaster || ppid == pids.postmaster {
                cpu.postgres += ms;
            }
        }
        cpu
    }

    pub fn minus(self, o: Cpu) -> Cpu {
        Cpu {
            daemon: self.daemon - o.daemon,
            etcd: self.etcd - o.etcd,
            postgres: self.postgres - o.postgres,
            children: self.children - o.children,
            driver: self.driver - o.driver,
        }
    }
}

/// Peak (`VmHWM:`) or current (`VmRSS:`) resident set of a process, in MB.
pub fn rss_mb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// gRPC messages etcd has received, by method (`Txn`, `Range`, `LeaseKeepAlive`, `Watch`,
/// `Status`...), from its Prometheus counter `grpc_server_msg_received_total`: every unary
/// request, and every message a client sent on a stream (a keep-alive, a watch created).
pub async fn etcd_messages(endpoint: &str) -> BTreeMap<String, f64> {
    let url = format!("{}/metrics", endpoint.trim_end_matches('/'));
    let body = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-s", &url])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
    })
    .await
    .unwrap();
    let mut out = BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| l.starts_with("grpc_server_msg_received_total{"))
    {
        let method = line
            .split("grpc_method=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("?");
        if let Some(n) = line.rsplit(' ').next().and_then(|n| n.parse::<f64>().ok()) {
            *out.entry(method.to_string()).or_default() += n;
        }
    }
    out
}

/// `after - before`, per method, leaving out methods that did not move.
pub fn etcd_delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(m, n)| (m.clone(), n - before.get(m).copied().unwrap_or(0.0)))
        .filter(|(_, n)| *n > 0.0)
        .collect()
}

/// Connections opened to these databases since byte `from` of the server log (its
/// `log_connections` lines): exact, unlike `pg_stat_database.sessions`, which an idle pooled
/// backend reports only when it flushes its statistics, often in a later phase.
pub fn connections(log: &Path, from: u64, dbs: &HashSet<String>) -> f64 {
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

pub fn log_len(log: &Path) -> u64 {
    std::fs::metadata(log).unwrap().len()
}

/// Before each measured phase: write out what the previous phase (or the databases' creation)
/// left dirty, so its write-back lands in no other phase.
pub async fn settle(admin: &tokio_postgres::Client) {
    admin.batch_execute("CHECKPOINT").await.unwrap();
    tokio::task::spawn_blocking(|| std::process::Command::new("sync").status())
        .await
        .unwrap()
        .unwrap();
}

/// The machine: CPU model, cores, memory.
pub fn machine() -> String {
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
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    format!("{model}, {cpus} cores, {mem_gib:.0} GiB")
}
