//! `fleetmig rollout ...`: start, list, inspect, watch and steer rollouts on the daemon, with
//! a progress bar per wave (counts by state, ETA from the rate so far) or `--output json`.

use std::collections::{BTreeMap, HashMap};

use clap::{Args, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Failure;
use super::client::{SelectArgs, pairs, print_json, selector, status};
use super::connect::{Connect, Output, channel};
use crate::grpc::proto::{self, rollouts_client::RolloutsClient};

#[derive(Debug, Subcommand)]
// Parsed once per process: the size of its largest variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum RolloutCommand {
    /// Start a rollout (all tenants of the app unless --tenant or --label).
    Start(StartArgs),
    /// Rollouts, newest first.
    Ls {
        #[arg(long)]
        app: Option<String>,
        /// running, paused, halted, cancelled, done.
        #[arg(long)]
        state: Option<String>,
    },
    /// One rollout: waves, counts, failed tenants.
    Status {
        id: String,
    },
    /// Follow a rollout to its end (re-attach any time, on any replica).
    Watch {
        id: String,
    },
    /// Stop taking tenants; revisions in flight finish.
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    /// Stop for good; revisions in flight finish.
    Cancel {
        id: String,
    },
    /// Failed tenants back to pending, and run again (after fixing the cause).
    Retry {
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct StartArgs {
    #[command(flatten)]
    pub select: SelectArgs,
    /// Upgrade target (default head); with --downgrade: -N, a revision or base.
    #[arg(long, allow_hyphen_values = true)]
    pub target: Option<String>,
    #[arg(long)]
    pub downgrade: bool,
    /// Proceed on tenants whose applied revision files changed since.
    #[arg(long)]
    pub allow_changed: bool,
    #[command(flatten)]
    pub blockers: super::policy::BlockerArgs,
    /// The first wave: this many tenants.
    #[arg(long)]
    pub canary: Option<u32>,
    /// The first wave: tenants with these labels (KEY=VALUE, repeatable).
    #[arg(long = "canary-label")]
    pub canary_labels: Vec<String>,
    /// Then waves of this many tenants...
    #[arg(long)]
    pub batch: Option<u32>,
    /// ...or of this percent of the tenants.
    #[arg(long)]
    pub batch_percent: Option<u32>,
    /// Order tenants by a label's values: LABEL=V1,V2,... (e.g. tier=free,pro,enterprise).
    #[arg(long)]
    pub order: Option<String>,
    /// Seconds to wait after each wave.
    #[arg(long, default_value_t = 0)]
    pub bake_seconds: u32,
    /// Halt when failures exceed this count (per wave and overall).
    #[arg(long, default_value_t = 0)]
    pub max_failures: u32,
    /// Halt when failures exceed this percent of tenants attempted.
    #[arg(long, default_value_t = 0)]
    pub max_failure_percent: u32,
    /// Halt after this many failures in a row.
    #[arg(long, default_value_t = 0)]
    pub max_consecutive_failures: u32,
    #[arg(long, short = 'c', default_value_t = 0)]
    pub concurrency: u32,
    /// Retrying automation passes the same key and gets the same rollout.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Start and return at once, without following progress.
    #[arg(long)]
    pub detach: bool,
}

fn start_request(a: StartArgs) -> Result<proto::StartRolloutRequest, Failure> {
    let (order_label, order_values) = match &a.order {
        Some(o) => {
            let (label, values) = o.split_once('=').ok_or_else(|| {
                Failure::input(format!(
                    "--order {o}: use LABEL=V1,V2,... (e.g. tier=free,pro)"
                ))
            })?;
            (
                label.to_string(),
                values.split(',').map(str::to_string).collect(),
            )
        }
        None => (String::new(), vec![]),
    };
    Ok(proto::StartRolloutRequest {
        app: a.select.app.clone(),
        direction: if a.downgrade { "downgrade" } else { "upgrade" }.into(),
        target: a.target.clone().unwrap_or_default(),
        selector: Some(selector(&a.select)?),
        waves: Some(proto::WavePlan {
            canary_count: a.canary.unwrap_or(0),
            canary_labels: pairs("--canary-label", &a.canary_labels)?,
            batch_count: a.batch.unwrap_or(0),
            batch_percent: a.batch_percent.unwrap_or(0),
            order_label,
            order_values,
            bake_seconds: a.bake_seconds,
        }),
        budget: Some(proto::FailureBudget {
            max_failures: a.max_failures,
            max_failure_percent: a.max_failure_percent,
            max_consecutive_failures: a.max_consecutive_failures,
        }),
        concurrency: a.concurrency,
        idempotency_key: a.idempotency_key.unwrap_or_default(),
        allow_changed: a.allow_changed,
        blockers: a.blockers.to_proto()?,
    })
}

fn describe(r: &proto::Rollout) -> String {
    let counts: BTreeMap<_, _> = r.counts.iter().collect();
    let counts = counts
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{:16} {:12} {:9} to {:10} {:9} {}{}",
        r.id,
        r.app,
        r.direction,
        r.target,
        r.state,
        counts,
        if r.reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", r.reason)
        }
    )
}

fn show_status(r: &proto::Rollout) {
    println!("{}", describe(r));
    println!(
        "started by {}; owner {}",
        r.created_by,
        if r.owner.is_empty() { "none" } else { &r.owner }
    );
    for w in &r.waves {
        let states: BTreeMap<&str, usize> =
            r.tenants
                .iter()
                .filter(|t| t.wave == w.index)
                .fold(BTreeMap::new(), |mut m, t| {
                    *m.entry(t.state.as_str()).or_default() += 1;
                    m
                });
        println!(
            "  {:8} {:8} {:4} tenant(s) {:?}",
            w.name,
            w.state,
            w.tenant_ids.len(),
            states
        );
    }
    for t in r.tenants.iter().filter(|t| t.state == "failed") {
        println!("  FAILED {}: {}", t.tenant_id, t.error);
    }
    if !r.lint.is_empty() {
        let mut by: BTreeMap<&str, usize> = BTreeMap::new();
        for v in &r.lint {
            *by.entry(v.verdict.as_str()).or_default() += 1;
        }
        println!("  lint (at start): {by:?}");
        for v in r.lint.iter().filter(|v| !v.ignored.is_empty()) {
            println!("    {} ignores {}", v.revision, v.ignored.join("; "));
        }
    }
}

/// Bars per wave, fed by watch events.
struct Progress {
    multi: MultiProgress,
    bars: Vec<ProgressBar>,
    tenants: HashMap<String, (u32, String)>,
    /// What each tenant was last shown blocked by.
    blocked: HashMap<String, Vec<String>>,
}

impl Progress {
    fn new(r: &proto::Rollout) -> Progress {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{prefix:10} {bar:30} {pos}/{len} {msg} [{elapsed}, eta {eta}]",
        )
        .expect("valid template");
        let bars = r
            .waves
            .iter()
            .map(|w| {
                let b = multi.add(ProgressBar::new(w.tenant_ids.len() as u64));
                b.set_style(style.clone());
                b.set_prefix(w.name.clone());
                b
            })
            .collect();
        Progress {
            multi,
            bars,
            tenants: HashMap::new(),
            blocked: HashMap::new(),
        }
    }

    fn apply(&mut self, r: &proto::Rollout, tenants: &[proto::RolloutTenant]) {
        for t in tenants {
            let before = self
                .tenants
                .insert(t.tenant_id.clone(), (t.wave, t.state.clone()));
            if t.state == "failed" && before.as_ref().map(|b| b.1.as_str()) != Some("failed") {
                let _ = self
                    .multi
                    .println(format!("FAILED {}: {}", t.tenant_id, t.error));
            }
            if !t.blocked_by.is_empty() && self.blocked.get(&t.tenant_id) != Some(&t.blocked_by) {
                for line in &t.blocked_by {
                    let _ = self.multi.println(format!(
                        "BLOCKED {} (lock timeouts so far: {}): {line}",
                        t.tenant_id, t.lock_retries
                    ));
                }
                self.blocked
                    .insert(t.tenant_id.clone(), t.blocked_by.clone());
            }
        }
        for (i, bar) in self.bars.iter().enumerate() {
            let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
            for (wave, state) in self.tenants.values() {
                if *wave == i as u32 {
                    *by_state.entry(state.as_str()).or_default() += 1;
                }
            }
            let finished: u64 = ["done", "failed", "skipped"]
                .iter()
                .map(|s| by_state.get(s).copied().unwrap_or(0))
                .sum();
            bar.set_position(finished);
            let state = r.waves.get(i).map(|w| w.state.as_str()).unwrap_or("");
            bar.set_message(format!(
                "{state} {}",
                by_state
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }

    fn finish(&self) {
        for b in &self.bars {
            b.finish();
        }
    }
}

async fn watch(
    client: &mut RolloutsClient<super::connect::Daemon>,
    id: String,
    output: Output,
) -> Result<(), Failure> {
    let mut stream = client
        .watch(proto::GetRolloutRequest { id })
        .await
        .map_err(status)?
        .into_inner();
    let mut progress: Option<Progress> = None;
    let mut last = None;
    while let Some(event) = stream.message().await.map_err(status)? {
        if output == Output::Json {
            print_json(&event);
        } else if let Some(r) = &event.rollout {
            let p = progress.get_or_insert_with(|| Progress::new(r));
            let tenants = if event.kind == "snapshot" {
                &r.tenants
            } else {
                &event.changed
            };
            p.apply(r, tenants);
        }
        last = event.rollout;
    }
    if let Some(p) = &progress {
        p.finish();
    }
    let Some(r) = last else {
        return Err(Failure {
            code: 1,
            message: "the watch ended without a rollout".into(),
        });
    };
    if output == Output::Text {
        eprintln!("{}", describe(&r));
    }
    let failed = r.counts.get("failed").copied().unwrap_or(0);
    match r.state.as_str() {
        "done" if failed == 0 => Ok(()),
        "running" | "paused" => Err(Failure {
            code: 1,
            message: format!(
                "the watch ended while the rollout is {}: re-attach with `fleetmig rollout watch {}`",
                r.state, r.id
            ),
        }),
        state => Err(Failure {
            code: 1,
            message: format!(
                "rollout {} {state}{}: {failed} tenant(s) failed (`fleetmig rollout status {}`; after a fix, `fleetmig rollout retry {}`)",
                r.id,
                if r.reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", r.reason)
                },
                r.id,
                r.id
            ),
        }),
    }
}

pub async fn run(conn: &Connect, cmd: RolloutCommand) -> Result<(), Failure> {
    let mut client = RolloutsClient::new(channel(conn).await?);
    let json = conn.output == Output::Json;
    let control = |id: String| proto::RolloutControlRequest { id };
    let asked = matches!(
        cmd,
        RolloutCommand::Pause { .. }
            | RolloutCommand::Resume { .. }
            | RolloutCommand::Cancel { .. }
    );
    let shown = match cmd {
        RolloutCommand::Start(a) => {
            let detach = a.detach;
            let r = client
                .start(start_request(a)?)
                .await
                .map_err(status)?
                .into_inner();
            if detach {
                r
            } else {
                if !json {
                    eprintln!("rollout {} started: {} wave(s)", r.id, r.waves.len());
                }
                return watch(&mut client, r.id, conn.output).await;
            }
        }
        RolloutCommand::Ls { app, state } => {
            let list = client
                .list(proto::ListRolloutsRequest {
                    app: app.unwrap_or_default(),
                    state: state.unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner();
            for r in &list.rollouts {
                if json {
                    print_json(r)
                } else {
                    println!("{}", describe(r))
                }
            }
            return Ok(());
        }
        RolloutCommand::Status { id } => client
            .get(proto::GetRolloutRequest { id })
            .await
            .map_err(status)?
            .into_inner(),
        RolloutCommand::Watch { id } => return watch(&mut client, id, conn.output).await,
        RolloutCommand::Pause { id } => client
            .pause(control(id))
            .await
            .map_err(status)?
            .into_inner(),
        RolloutCommand::Resume { id } => client
            .resume(control(id))
            .await
            .map_err(status)?
            .into_inner(),
        RolloutCommand::Cancel { id } => client
            .cancel(control(id))
            .await
            .map_err(status)?
            .into_inner(),
        RolloutCommand::Retry { id } => client
            .retry_failed(control(id))
            .await
            .map_err(status)?
            .into_inner(),
    };
    if json {
        print_json(&shown);
    } else {
        show_status(&shown);
    }
    if asked && !json {
        eprintln!(
            "asked; the replica driving it follows within a second (`fleetmig rollout watch {}`)",
            shown.id
        );
    }
    Ok(())
}
