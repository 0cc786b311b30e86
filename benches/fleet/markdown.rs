//! The report as markdown: the machine and knobs, then daemon against the floor, against
//! Alembic (in-process and CLI loops), CPU per tenant by process, etcd requests per tenant by
//! source, scale and registry lines, and the quotable sentence.

use std::collections::BTreeMap;

use crate::report::{Report, cmp};
use crate::tools::Tool;

pub fn markdown(r: &Report) -> String {
    let mut s = format!(
        "Machine: {}. Daemon peak RSS: {:.0} MB.\n",
        r.machine, r.daemon_peak_rss_mb
    );
    s += &format!(
        "Knobs: {}.\n",
        r.knobs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    for why in &r.skipped {
        s += &format!("Skipped: {why}.\n");
    }
    s += "\nDaemon against the floor (the same SQL with psql), interleaved pairs; ratios are the median of the per-pair ratios (min-max). CPU: all processes' CPU per tenant, daemon + etcd + Postgres against psql + Postgres.\n\n";
    s += "| app | direction | tenants | concurrency | pairs | daemon ms | floor ms | daemon / floor | CPU daemon / floor | daemon tenants/s | etcd req/tenant | connections/tenant |\n";
    s += "|---|---|---:|---:|---:|---|---|---|---|---:|---:|---:|\n";
    for c in &r.cells {
        let (Some(d), Some(f), Some(x)) = (
            c.tools.get("daemon"),
            c.tools.get("floor"),
            cmp(c, "daemon / floor"),
        ) else {
            continue;
        };
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {} | {:.2} |\n",
            c.app,
            c.direction,
            c.tenants,
            c.concurrency,
            c.pairs,
            d.ms.show(0),
            f.ms.show(0),
            x.wall.show(2),
            x.cpu.show(2),
            d.tenants_per_s,
            c.etcd
                .as_ref()
                .map_or("-".into(), |e| format!("{:.2}", e.per_tenant)),
            d.connections_per_tenant
        );
    }
    let alembic = r
        .cells
        .iter()
        .any(|c| cmp(c, "alembic in-process / daemon").is_some());
    let cli = r
        .cells
        .iter()
        .any(|c| cmp(c, "alembic CLI loop / fleetmig CLI loop").is_some());
    if alembic || cli {
        s += "\nAgainst Alembic (the same SQL, `benches/alembic/`), interleaved with the phases above: how many times as long Alembic took, median of the per-pair ratios (min-max); CPU likewise (each side's processes with Postgres).\n\n";
        s += "| app | direction | tenants | concurrency | daemon ms | Alembic in-process ms | Alembic in-process / daemon | CPU | fleetmig CLI loop ms | Alembic CLI loop ms | Alembic CLI / fleetmig CLI | CPU |\n";
        s += "|---|---|---:|---:|---|---|---|---|---|---|---|---|\n";
        for c in &r.cells {
            let tool = |t: &str| c.tools.get(t).map_or("-".into(), |x| x.ms.show(0));
            let ratio = |name: &str| {
                cmp(c, name).map_or(("-".into(), "-".into()), |x| {
                    (x.wall.show(2), x.cpu.show(2))
                })
            };
            let (a, a_cpu) = ratio("alembic in-process / daemon");
            let (l, l_cpu) = ratio("alembic CLI loop / fleetmig CLI loop");
            s += &format!(
                "| {} | {} | {} | {} | {} | {} | {a} | {a_cpu} | {} | {} | {l} | {l_cpu} |\n",
                c.app,
                c.direction,
                c.tenants,
                c.concurrency,
                tool("daemon"),
                tool("alembic_in_process"),
                tool("fleetmig_cli_loop"),
                tool("alembic_cli_loop"),
            );
        }
    }
    s += "\nCPU ms per tenant by process (mean over pairs; client + etcd + Postgres = total; the cores are shared by all of them):\n\n";
    s += "| app | direction | concurrency | daemon | floor (psql) | Alembic in-process | fleetmig CLI loop | Alembic CLI loop |\n";
    s += "|---|---|---:|---|---|---|---|---|\n";
    for c in &r.cells {
        let cell = |t: Tool| {
            c.tools.get(t.name()).map_or("-".into(), |x| {
                let p = &x.cpu_ms_per_tenant;
                if t == Tool::Daemon {
                    format!(
                        "{:.1} + {:.1} + {:.1} = {:.1}",
                        p.client, p.etcd, p.postgres, p.total
                    )
                } else {
                    format!("{:.1} + {:.1} = {:.1}", p.client, p.postgres, p.total)
                }
            })
        };
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            c.app,
            c.direction,
            c.concurrency,
            cell(Tool::Daemon),
            cell(Tool::Floor),
            cell(Tool::AlembicInProcess),
            cell(Tool::FleetmigCli),
            cell(Tool::AlembicCli),
        );
    }
    s += "\netcd requests per tenant during the daemon's phases. Writes (one etcd revision each) by source, read back from etcd's history of the daemon's keys; reads: Range and transactions that wrote nothing (read-only, or a compare that failed); other: lease keep-alives, watches. Periodic: etcd's rate while the daemon was idle (keep-alive, lock sweep, rollout claim loop), over the daemon's phase time:\n\n";
    s += "| app | direction | tenants | concurrency | total | writes by source | reads | other | by method | periodic | idle rate (req/s) |\n";
    s += "|---|---|---:|---:|---:|---|---:|---:|---|---:|---|\n";
    for c in &r.cells {
        let Some(e) = &c.etcd else { continue };
        let list = |m: &BTreeMap<String, f64>, d: usize| {
            m.iter()
                .filter(|(_, x)| **x >= 0.005)
                .map(|(k, x)| format!("{k} {x:.d$}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        s += &format!(
            "| {} | {} | {} | {} | {:.2} | {} | {:.2} | {:.2} | {} | {:.2} | {} |\n",
            c.app,
            c.direction,
            c.tenants,
            c.concurrency,
            e.per_tenant,
            list(&e.writes_per_tenant, 2),
            e.reads_per_tenant,
            e.other_per_tenant,
            list(&e.by_method_per_tenant, 2),
            e.periodic_per_tenant,
            list(&e.idle_per_s, 1)
        );
    }
    if !r.scale.is_empty() {
        s += "\n";
        for x in &r.scale {
            s += &format!(
                "After the {}-tenant cells: {} failed tenants, daemon peak RSS {:.0} MB.\n",
                x.tenants, x.failures, x.daemon_peak_rss_mb
            );
        }
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
    s += &targets(r);
    if let Some(q) = &r.quote {
        s += &format!("\n{q}\n");
    }
    s
}

/// A target: what, its bound, whether higher is better, each cell's value.
type Target<'a> = (&'a str, f64, bool, Vec<(String, f64)>);

/// Issue 19's targets against this run's figures: how many cells meet each, and the worst.
fn targets(r: &Report) -> String {
    let cell = |c: &crate::report::CellReport| {
        format!(
            "{} {} n={} c={}",
            c.app, c.direction, c.tenants, c.concurrency
        )
    };
    let mut rows: Vec<Target> = vec![];
    let by = |name: &str, cpu: bool| -> Vec<(String, f64)> {
        r.cells
            .iter()
            .filter_map(|c| {
                let x = cmp(c, name)?;
                Some((cell(c), if cpu { x.cpu.median } else { x.wall.median }))
            })
            .collect()
    };
    rows.push((
        "daemon / floor, median per-pair",
        1.10,
        false,
        by("daemon / floor", false),
    ));
    rows.push((
        "daemon / floor, CPU",
        1.10,
        false,
        by("daemon / floor", true),
    ));
    rows.push((
        "Alembic in-process / daemon",
        1.5,
        true,
        by("alembic in-process / daemon", false),
    ));
    rows.push((
        "Alembic CLI loop / fleetmig CLI loop",
        5.0,
        true,
        by("alembic CLI loop / fleetmig CLI loop", false),
    ));
    rows.push((
        "etcd requests per tenant (N = 200)",
        1.2,
        false,
        r.cells
            .iter()
            .filter(|c| c.tenants == 200)
            .filter_map(|c| Some((cell(c), c.etcd.as_ref()?.per_tenant)))
            .collect(),
    ));
    rows.push((
        "daemon peak RSS, MB",
        150.0,
        false,
        r.scale
            .iter()
            .map(|x| (format!("after n={}", x.tenants), x.daemon_peak_rss_mb))
            .collect(),
    ));
    let mut s = "\nIssue 19's targets, against this run:\n\n| figure | target | cells meeting it | worst |\n|---|---|---:|---|\n".to_string();
    for (what, target, higher, values) in rows {
        if values.is_empty() {
            continue;
        }
        let meets = |v: f64| if higher { v >= target } else { v <= target };
        let worst = values
            .iter()
            .min_by(|a, b| {
                let (a, b) = if higher { (a.1, b.1) } else { (b.1, a.1) };
                a.partial_cmp(&b).unwrap()
            })
            .unwrap();
        s += &format!(
            "| {what} | {} {target:.2} | {} of {} | {:.2} ({}) |\n",
            if higher { ">=" } else { "<=" },
            values.iter().filter(|v| meets(v.1)).count(),
            values.len(),
            worst.1,
            worst.0
        );
    }
    let failures: u32 = r.scale.iter().map(|x| x.failures).sum();
    s += &format!("| failed tenants | 0 | | {failures} |\n");
    s
}
