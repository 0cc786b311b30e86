//! From the phases measured in a cell to what the benchmark reports: medians with min-max,
//! per-pair ratios (each pair's two phases ran back to back, so a ratio compares like with
//! like on a machine whose load drifts), CPU per tenant by process and by side, etcd
//! requests per tenant by method; then the markdown tables, the JSON file and the sentence a
//! user can quote, all from the same figures ([`crate::markdown`] renders the tables).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::measure::Cpu;
use crate::tools::{Direction, Tool};

/// One phase of one tool: a database set to head (or back to base).
#[derive(Debug, Default, Clone, Serialize)]
pub struct Phase {
    pub ms: f64,
    pub cpu: Cpu,
    pub failures: u32,
    /// etcd messages received during the phase, by gRPC method, counted over
    /// `etcd_window_ms` (the phase and a moment after it, for its last lock releases).
    pub etcd: BTreeMap<String, f64>,
    pub etcd_window_ms: f64,
    /// The daemon's write requests during the phase, by source ([`crate::etcd_tap`]).
    pub etcd_writes: BTreeMap<String, f64>,
    /// Connections opened to the tool's databases.
    pub connections: f64,
}

impl Phase {
    /// CPU ms of the tool's side: its own processes and Postgres (and etcd for the daemon,
    /// whose locks and rollouts live there).
    pub fn side_cpu(&self, tool: Tool) -> f64 {
        let c = &self.cpu;
        c.postgres
            + match tool {
                Tool::Daemon => c.daemon + c.etcd,
                Tool::AlembicInProcess => c.driver,
                Tool::Floor | Tool::FleetmigCli | Tool::AlembicCli => c.children,
            }
    }

    /// The tool's own processes' CPU ms (not Postgres, not etcd).
    fn client_cpu(&self, tool: Tool) -> f64 {
        match tool {
            Tool::Daemon => self.cpu.daemon,
            Tool::AlembicInProcess => self.cpu.driver,
            _ => self.cpu.children,
        }
    }
}

/// The phases of one cell, by tool, in pair order.
pub struct Cell {
    pub app: String,
    pub direction: Direction,
    pub tenants: usize,
    pub concurrency: u32,
    pub phases: BTreeMap<Tool, Vec<Phase>>,
}

/// Median with min and max.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    pub fn of(values: &[f64]) -> Stat {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Stat::default();
        }
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Stat {
            median,
            min: v[0],
            max: v[n - 1],
        }
    }

    pub fn show(&self, digits: usize) -> String {
        format!(
            "{:.d$} ({:.d$}-{:.d$})",
            self.median,
            self.min,
            self.max,
            d = digits
        )
    }
}

#[derive(Debug, Serialize)]
pub struct ToolSummary {
    pub ms: Stat,
    /// Each pair's phase, in order.
    pub ms_per_pair: Vec<f64>,
    pub tenants_per_s: f64,
    /// Mean over pairs, ms per tenant.
    pub cpu_ms_per_tenant: CpuPerTenant,
    pub connections_per_tenant: f64,
    pub failures: u32,
}

#[derive(Debug, Serialize)]
pub struct CpuPerTenant {
    /// The tool's own processes (daemon; psql; the Alembic driver and workers; xargs and
    /// the CLI processes).
    pub client: f64,
    /// etcd (counted on the daemon's side only).
    pub etcd: f64,
    pub postgres: f64,
    /// The side's total: client + postgres (+ etcd for the daemon).
    pub total: f64,
}

/// `numerator / denominator`, pair by pair.
#[derive(Debug, Serialize)]
pub struct Comparison {
    pub name: &'static str,
    pub numerator: &'static str,
    pub denominator: &'static str,
    /// Wall time ratio per pair: median, min, max.
    pub wall: Stat,
    /// CPU ratio per pair (each side's processes, with Postgres).
    pub cpu: Stat,
    pub wall_per_pair: Vec<f64>,
    pub cpu_per_pair: Vec<f64>,
}

#[derive(Debug, Serialize)]
pub struct EtcdSummary {
    /// Every message etcd received during the daemon's phases, per tenant.
    pub per_tenant: f64,
    pub by_method_per_tenant: BTreeMap<String, f64>,
    /// Write requests (one etcd revision each) by source, per tenant; `(releases riding)`
    /// counts releases carried by a lock acquire (no request of their own), `(audit records
    /// riding)` the acquires that carried audit records.
    pub writes_per_tenant: BTreeMap<String, f64>,
    /// Range, Txn, Put and DeleteRange requests that wrote nothing: reads, read-only
    /// transactions, and transactions whose compare failed.
    pub reads_per_tenant: f64,
    /// Everything else: lease keep-alives, watches created, lease grants.
    pub other_per_tenant: f64,
    /// What etcd received per second while the daemon was idle (the other tools' phases):
    /// its periodic requests (lease keep-alive, lock sweep, rollout claim loop, member
    /// probe), by method.
    pub idle_per_s: BTreeMap<String, f64>,
    /// That idle rate over the daemon's phase time, per tenant: the share of `per_tenant`
    /// that is periodic, not caused by the tenants.
    pub periodic_per_tenant: f64,
}

#[derive(Debug, Serialize)]
pub struct CellReport {
    pub app: String,
    pub direction: &'static str,
    pub tenants: usize,
    pub concurrency: u32,
    pub pairs: usize,
    pub tools: BTreeMap<&'static str, ToolSummary>,
    pub comparisons: Vec<Comparison>,
    pub etcd: Option<EtcdSummary>,
}

/// The comparisons: what is divided by what (the faster tool's time below the line for the
/// Alembic ones, so they read as "times faster").
const COMPARISONS: [(&str, Tool, Tool); 3] = [
    ("daemon / floor", Tool::Daemon, Tool::Floor),
    (
        "alembic in-process / daemon",
        Tool::AlembicInProcess,
        Tool::Daemon,
    ),
    (
        "alembic CLI loop / fleetmig CLI loop",
        Tool::AlembicCli,
        Tool::FleetmigCli,
    ),
];

impl Cell {
    pub fn report(&self) -> CellReport {
        let n = self.tenants as f64;
        let mut tools = BTreeMap::new();
        for (&tool, phases) in &self.phases {
            let count = phases.len().max(1) as f64;
            let mean = |f: &dyn Fn(&Phase) -> f64| phases.iter().map(f).sum::<f64>() / count / n;
            let ms = Stat::of(&phases.iter().map(|p| p.ms).collect::<Vec<_>>());
            tools.insert(
                tool.name(),
                ToolSummary {
                    ms,
                    ms_per_pair: phases.iter().map(|p| p.ms).collect(),
                    tenants_per_s: n / (ms.median / 1000.0),
                    cpu_ms_per_tenant: CpuPerTenant {
                        client: mean(&|p| p.client_cpu(tool)),
                        etcd: if tool == Tool::Daemon {
                            mean(&|p| p.cpu.etcd)
                        } else {
                            0.0
                        },
                        postgres: mean(&|p| p.cpu.postgres),
                        total: mean(&|p| p.side_cpu(tool)),
                    },
                    connections_per_tenant: mean(&|p| p.connections),
                    failures: phases.iter().map(|p| p.failures).sum(),
                },
            );
        }
        let mut comparisons = vec![];
        for (name, num, den) in COMPARISONS {
            let (Some(a), Some(b)) = (self.phases.get(&num), self.phases.get(&den)) else {
                continue;
            };
            let wall: Vec<f64> = a.iter().zip(b).map(|(a, b)| a.ms / b.ms).collect();
            let cpu: Vec<f64> = a
                .iter()
                .zip(b)
                .map(|(a, b)| a.side_cpu(num) / b.side_cpu(den))
                .collect();
            comparisons.push(Comparison {
                name,
                numerator: num.name(),
                denominator: den.name(),
                wall: Stat::of(&wall),
                cpu: Stat::of(&cpu),
                wall_per_pair: wall,
                cpu_per_pair: cpu,
            });
        }
        CellReport {
            app: self.app.clone(),
            direction: self.direction.name(),
            tenants: self.tenants,
            concurrency: self.concurrency,
            pairs: self.phases.values().map(Vec::len).max().unwrap_or(0),
            tools,
            comparisons,
            etcd: self.etcd(),
        }
    }

    fn etcd(&self) -> Option<EtcdSummary> {
        let daemon = self.phases.get(&Tool::Daemon)?;
        let per = (self.tenants * daemon.len().max(1)) as f64;
        let (mut by_method, mut writes) = (BTreeMap::new(), BTreeMap::new());
        for p in daemon {
            for (m, x) in &p.etcd {
                *by_method.entry(m.clone()).or_insert(0.0) += x / per;
            }
            for (m, x) in &p.etcd_writes {
                *writes.entry(m.clone()).or_insert(0.0) += x / per;
            }
        }
        let kv: f64 = ["Range", "Txn", "Put", "DeleteRange"]
            .iter()
            .filter_map(|m| by_method.get(*m))
            .sum();
        let written: f64 = writes
            .iter()
            .filter(|(k, _)| !k.starts_with('('))
            .map(|(_, x)| x)
            .sum();
        let (mut idle, mut idle_s) = (BTreeMap::new(), 0.0);
        for (tool, phases) in &self.phases {
            if *tool == Tool::Daemon {
                continue;
            }
            for p in phases {
                idle_s += p.etcd_window_ms / 1000.0;
                for (m, x) in &p.etcd {
                    *idle.entry(m.clone()).or_insert(0.0) += x;
                }
            }
        }
        let idle_per_s: BTreeMap<String, f64> = idle
            .into_iter()
            .map(|(m, x)| (m, if idle_s > 0.0 { x / idle_s } else { 0.0 }))
            .collect();
        let daemon_s: f64 = daemon.iter().map(|p| p.etcd_window_ms / 1000.0).sum();
        let per_tenant: f64 = by_method.values().sum();
        Some(EtcdSummary {
            per_tenant,
            by_method_per_tenant: by_method,
            writes_per_tenant: writes,
            reads_per_tenant: kv - written,
            other_per_tenant: per_tenant - kv,
            periodic_per_tenant: idle_per_s.values().sum::<f64>() * daemon_s / per,
            idle_per_s,
        })
    }
}

#[derive(Debug, Serialize)]
pub struct Scale {
    pub tenants: usize,
    pub failures: u32,
    pub daemon_peak_rss_mb: f64,
}

#[derive(Debug, Serialize)]
pub struct RegistryScale {
    pub tenants: usize,
    pub register_s: f64,
    pub list_filtered_page500_ms_median: f64,
    pub get_ms_median: f64,
    pub daemon_rss_mb: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: String,
    pub knobs: BTreeMap<&'static str, String>,
    pub cells: Vec<CellReport>,
    /// The daemon's peak RSS once the cells of each size were done.
    pub scale: Vec<Scale>,
    pub daemon_peak_rss_mb: f64,
    pub registry: Option<RegistryScale>,
    /// Why a tool did not run (Alembic missing locally).
    pub skipped: Vec<String>,
    pub quote: Option<String>,
}

pub fn cmp<'a>(c: &'a CellReport, name: &str) -> Option<&'a Comparison> {
    c.comparisons.iter().find(|x| x.name == name)
}

impl Report {
    /// One sentence a user can quote, from this run's own figures (None without Alembic).
    pub fn quote(&self) -> Option<String> {
        let span = |name: &str| -> Option<(f64, f64, usize, Vec<usize>)> {
            let medians: Vec<(f64, usize)> = self
                .cells
                .iter()
                .filter_map(|c| Some((cmp(c, name)?.wall.median, c.tenants)))
                .collect();
            if medians.is_empty() {
                return None;
            }
            let lo = medians.iter().map(|m| m.0).fold(f64::INFINITY, f64::min);
            let hi = medians.iter().map(|m| m.0).fold(0.0, f64::max);
            let mut sizes: Vec<usize> = medians.iter().map(|m| m.1).collect();
            sizes.sort();
            sizes.dedup();
            Some((lo, hi, medians.len(), sizes))
        };
        let (lo, hi, cells, sizes) = span("alembic in-process / daemon")?;
        let sizes = sizes
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(" and ");
        let mut apps: Vec<String> = self
            .cells
            .iter()
            .map(|c| match c.app.as_str() {
                crate::apps::LONG => format!(
                    "a generated history of {} small revisions",
                    self.knobs.get("BENCH_LONG").map_or("?", String::as_str)
                ),
                app => format!("the example app {app}"),
            })
            .collect();
        apps.dedup();
        let mut s = format!(
            "On this machine ({}), with fleets of {sizes} PostgreSQL databases ({}) taken to head and back at the same concurrency, fleetmig's daemon {} Alembic called in-process (median of interleaved pairs in each of {cells} cells)",
            self.machine,
            apps.join(", "),
            faster(lo, hi)
        );
        if let Some((lo, hi, _, _)) = span("alembic CLI loop / fleetmig CLI loop") {
            s += &format!(
                ", and `fleetmig upgrade` run once per database in a shell loop {} `alembic upgrade head` in the same loop",
                faster(lo, hi)
            );
        }
        Some(s + ".")
    }
}

/// "was 2.1-3.4 times as fast as", from the range of (peer time / fleetmig time); said the
/// other way round when the peer was faster in some cell, so the sentence never flatters.
fn faster(lo: f64, hi: f64) -> String {
    if lo >= 1.0 {
        format!("was {} times as fast as", range(lo, hi))
    } else {
        format!("took {} times as long as", range(1.0 / hi, 1.0 / lo))
    }
}

fn range(lo: f64, hi: f64) -> String {
    if format!("{lo:.1}") == format!("{hi:.1}") {
        format!("{lo:.1}")
    } else {
        format!("{lo:.1}-{hi:.1}")
    }
}
