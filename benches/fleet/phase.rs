//! One phase: a tool takes its database set to head (or back to base), with what is read
//! around it (settling the server first, etcd's counters and history, CPU by process,
//! connections opened).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tonic::transport::Channel;

use crate::alembic;
use crate::apps;
use crate::daemon_harness as dh;
use crate::etcd_tap;
use crate::harness;
use crate::measure::{self, Cpu, Pids};
use crate::report::Phase;
use crate::sets::DbSet;
use crate::tools::{self, Direction, Tool};

/// After a daemon phase, etcd's counters are read this much later, so that what the phase
/// caused and sent after the stream's summary counts in it: the releases of the last locks
/// (20 ms later) and the last audit records (batched for up to 1 s). Measured time ends at
/// the summary; the periodic requests of this moment are in the count (and in its periodic
/// share).
const ETCD_SETTLE: Duration = Duration::from_millis(1300);

/// What a phase needs besides the tool.
pub struct Ctx<'a> {
    pub pg: &'a harness::Postgres,
    pub etcd: &'a harness::Etcd,
    /// The daemon's key prefix, and a client to read etcd's history of it.
    pub prefix: &'a str,
    pub tap: etcd_client::Client,
    pub daemon: &'a dh::Process,
    pub channel: &'a Channel,
    pub admin: &'a tokio_postgres::Client,
    pub alembic: Option<&'a alembic::Alembic>,
    pub scratch: &'a Path,
    pub pids: Pids,
}

#[allow(clippy::too_many_arguments)]
pub async fn phase(
    ctx: &Ctx<'_>,
    tool: Tool,
    app: &str,
    label: &str,
    direction: Direction,
    concurrency: u32,
    set: &DbSet,
    driver: Option<&mut alembic::Driver>,
) -> Phase {
    measure::settle(ctx.admin).await;
    let mut tap = ctx.tap.clone();
    let rev0 = etcd_tap::revision(&mut tap).await;
    let pids = Pids {
        driver: driver.as_ref().map(|d| d.pid()),
        ..ctx.pids
    };
    let (etcd0, log0) = (
        measure::etcd_messages(&ctx.etcd.endpoint).await,
        measure::log_len(&ctx.pg.log),
    );
    let cpu0 = Cpu::now(pids);
    let (ms, failures) = match tool {
        Tool::Daemon => {
            tools::daemon(ctx.daemon, ctx.channel, app, label, direction, concurrency).await
        }
        Tool::Floor => {
            let file = ctx.scratch.join(format!("{app}-{}.sql", direction.name()));
            tools::floor(&ctx.pg.bin.join("psql"), &set.urls, &file, concurrency).await
        }
        Tool::AlembicInProcess => {
            let driver = driver.expect("a driver for Alembic in-process");
            tokio::task::block_in_place(|| driver.run(direction, &set.urls))
        }
        Tool::FleetmigCli => {
            tools::cli_loop(
                Path::new(env!("CARGO_BIN_EXE_fleetmig")),
                &tools::fleetmig_cli_args(app, direction),
                &[],
                &set.urls,
                concurrency,
                ctx.scratch,
            )
            .await
        }
        Tool::AlembicCli => {
            let (python, mut args, env) = ctx.alembic.expect("Alembic").cli();
            args.extend(tools::alembic_cli_args(&apps::alembic_ini(app), direction));
            tools::cli_loop(&python, &args, &env, &set.urls, concurrency, ctx.scratch).await
        }
    };
    let cpu1 = Cpu::now(pids);
    let settle = if tool == Tool::Daemon {
        ETCD_SETTLE
    } else {
        Duration::ZERO
    };
    tokio::time::sleep(settle).await;
    let etcd1 = measure::etcd_messages(&ctx.etcd.endpoint).await;
    let etcd_writes = if tool == Tool::Daemon {
        let rev1 = etcd_tap::revision(&mut tap).await;
        etcd_tap::writes(&mut tap, ctx.prefix, rev0, rev1).await
    } else {
        BTreeMap::new()
    };
    Phase {
        ms,
        cpu: cpu1.minus(cpu0),
        failures,
        etcd: measure::etcd_delta(&etcd0, &etcd1),
        etcd_writes,
        etcd_window_ms: ms + settle.as_secs_f64() * 1000.0,
        connections: measure::connections(&ctx.pg.log, log0, &set.names),
    }
}
