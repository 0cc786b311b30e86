//! Client commands that talk to a running daemon: `tenants ...` and `fleet ...`, with a
//! live progress display for jobs, or `--output json` (one JSON object per line) for scripts.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use super::Failure;
pub use super::connect::{Connect, Output};
use super::connect::{Daemon, channel};
use crate::grpc::proto::migrations_client::MigrationsClient;
use crate::grpc::proto::tenants_client::TenantsClient;
use crate::grpc::proto::{self, migration_event::Event, tenant_event::Kind};

#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// Register a tenant database.
    Add(AddTenant),
    /// List tenants (filter by app and labels).
    Ls {
        #[arg(long)]
        app: Option<String>,
        /// KEY=VALUE (repeatable).
        #[arg(long = "label", short = 'l')]
        labels: Vec<String>,
    },
    /// Show one tenant.
    Show { id: String },
    /// Replace a tenant's labels and/or placeholder values.
    Update {
        id: String,
        /// KEY=VALUE (repeatable); replaces all labels.
        #[arg(long = "label", short = 'l')]
        labels: Vec<String>,
        /// NAME=VALUE (repeatable); replaces all placeholder values.
        #[arg(long = "placeholder", short = 'p')]
        placeholders: Vec<String>,
    },
    /// Remove a tenant from the registry (its database is not touched unless --drop-database).
    Rm {
        id: String,
        /// Also drop the database; needs --confirm with the database name.
        #[arg(long)]
        drop_database: bool,
        /// The database name, repeated, to confirm --drop-database.
        #[arg(long)]
        confirm: Option<String>,
    },
    /// Provision a tenant end to end: create its database, register, migrate to head, verify.
    Onboard {
        #[command(flatten)]
        tenant: AddTenant,
        /// Idempotency key: the same id again does not onboard twice.
        #[arg(long)]
        request_id: String,
        /// Role creating the database and extensions (default: the tenant's user).
        #[arg(long)]
        admin_user: Option<String>,
        /// Extension to create as the admin role before migrating (repeatable).
        #[arg(long = "extension")]
        extensions: Vec<String>,
        /// Copy a template database kept at head instead of migrating from empty.
        #[arg(long)]
        use_template: bool,
    },
}

#[derive(Debug, Args)]
pub struct AddTenant {
    pub id: String,
    #[arg(long)]
    pub app: String,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 5432)]
    pub port: u32,
    #[arg(long)]
    pub dbname: String,
    #[arg(long, default_value = "postgres")]
    pub user: String,
    /// disable, allow, prefer, require, verify-ca or verify-full (libpq's meaning).
    #[arg(long, default_value = "prefer")]
    pub sslmode: String,
    /// CA file (on the daemon's machine) that signed the server's certificate, or `system`.
    #[arg(long)]
    pub sslrootcert: Option<String>,
    /// Client certificate and key files (on the daemon's machine), for clientcert servers.
    #[arg(long, requires = "sslkey")]
    pub sslcert: Option<String>,
    #[arg(long, requires = "sslcert")]
    pub sslkey: Option<String>,
    /// Authentication methods the server may ask for, e.g. scram-sha-256 (libpq's require_auth).
    #[arg(long)]
    pub require_auth: Option<String>,
    /// disable, prefer or require (SCRAM channel binding).
    #[arg(long)]
    pub channel_binding: Option<String>,
    /// none, session or transaction: the kind of pooler at host:port.
    #[arg(long)]
    pub pooler: Option<String>,
    /// With --pooler transaction: host[:port] of a session connection to the same database.
    #[arg(long)]
    pub session_host: Option<String>,
    #[arg(long)]
    pub schema: Option<String>,
    /// Read the password from this environment variable of the daemon.
    #[arg(long, conflicts_with_all = ["password_file", "passfile"])]
    pub password_env: Option<String>,
    /// Read the password from this file (absolute path, on the daemon's machine).
    #[arg(long, conflicts_with = "passfile")]
    pub password_file: Option<String>,
    /// Look the password up in the daemon's libpq passfile.
    #[arg(long)]
    pub passfile: bool,
    /// KEY=VALUE (repeatable).
    #[arg(long = "label", short = 'l')]
    pub labels: Vec<String>,
    /// NAME=VALUE (repeatable), e.g. EMBEDDING_DIM=768.
    #[arg(long = "placeholder", short = 'p')]
    pub placeholders: Vec<String>,
}

#[derive(Debug, Args)]
pub struct SelectArgs {
    #[arg(long)]
    pub app: String,
    /// Tenant id (repeatable).
    #[arg(long = "tenant", short = 't')]
    pub tenants: Vec<String>,
    /// KEY=VALUE (repeatable): tenants carrying all these labels.
    #[arg(long = "label", short = 'l')]
    pub labels: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Upgrade tenants (all of the app unless --tenant or --label), with live progress.
    Upgrade(FleetMigrate),
    /// Downgrade tenants to -N, a revision or base.
    Downgrade(FleetMigrate),
    /// Each tenant's revision, and how many tenants are at each version.
    Current(SelectArgs),
    /// The SQL an upgrade (or --downgrade) would run on one tenant now.
    Plan {
        tenant: String,
        #[arg(default_value = "")]
        target: String,
        #[arg(long)]
        downgrade: bool,
        /// Plan even if applied revision files changed since they were applied.
        #[arg(long)]
        allow_changed: bool,
    },
    /// Stop a job after the revisions in flight.
    Cancel { job_id: String },
    /// Drift report: each tenant's live schema against what its revision should produce.
    Verify(SelectArgs),
}

#[derive(Debug, Args)]
pub struct FleetMigrate {
    #[arg(allow_negative_numbers = true, allow_hyphen_values = true)]
    pub target: Option<String>,
    #[command(flatten)]
    pub select: SelectArgs,
    #[arg(long, short = 'c', default_value_t = 0)]
    pub concurrency: u32,
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub allow_changed: bool,
    #[command(flatten)]
    pub blockers: super::policy::BlockerArgs,
}

pub(super) fn pairs(flag: &str, items: &[String]) -> Result<HashMap<String, String>, Failure> {
    items
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| Failure::input(format!("--{flag} {kv:?}: expected KEY=VALUE")))
        })
        .collect()
}

pub(super) fn status(e: tonic::Status) -> Failure {
    let code = match e.code() {
        tonic::Code::InvalidArgument | tonic::Code::NotFound | tonic::Code::AlreadyExists => 2,
        tonic::Code::FailedPrecondition
        | tonic::Code::Aborted
        | tonic::Code::PermissionDenied
        | tonic::Code::Unauthenticated => 3,
        _ => 1,
    };
    let hint = match e.code() {
        tonic::Code::Unauthenticated => " (pass a token: --token-file / FLEETMIG_TOKEN_FILE)",
        tonic::Code::PermissionDenied => " (ask for a token with that scope)",
        tonic::Code::Unavailable | tonic::Code::Unknown => {
            " (TLS? use an https:// --server with --ca-cert, and --client-cert/--client-key for mTLS)"
        }
        _ => "",
    };
    Failure {
        code,
        message: format!("{:?}: {}{hint}", e.code(), e.message()),
    }
}

pub(super) fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string(v).expect("protos serialize"));
}

fn describe_tenant(t: &proto::Tenant) -> String {
    let c = t.connection.clone().unwrap_or_default();
    let labels: BTreeMap<_, _> = t.labels.iter().collect();
    let labels = labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "{:24} {:12} {}:{}/{}{}  {}",
        t.id,
        t.app,
        c.host,
        c.port,
        c.dbname,
        if c.schema.is_empty() {
            String::new()
        } else {
            format!("/{}", c.schema)
        },
        labels
    )
}

pub async fn tenants(conn: &Connect, cmd: TenantsCommand) -> Result<(), Failure> {
    let mut client = TenantsClient::new(channel(conn).await?);
    let show = |t: &proto::Tenant| {
        if conn.output == Output::Json {
            print_json(t)
        } else {
            println!("{}", describe_tenant(t))
        }
    };
    match cmd {
        TenantsCommand::Add(a) => {
            let tenant = tenant_proto(a)?;
            let t = client
                .register(proto::RegisterTenantRequest {
                    tenant: Some(tenant),
                })
                .await
                .map_err(status)?
                .into_inner();
            show(&t);
        }
        TenantsCommand::Ls { app, labels } => {
            let mut token = String::new();
            loop {
                let page = client
                    .list(proto::ListTenantsRequest {
                        app: app.clone().unwrap_or_default(),
                        labels: pairs("label", &labels)?,
                        page_size: 500,
                        page_token: token,
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                page.tenants.iter().for_each(show);
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
        }
        TenantsCommand::Show { id } => show(
            &client
                .get(proto::GetTenantRequest { id })
                .await
                .map_err(status)?
                .into_inner(),
        ),
        TenantsCommand::Update {
            id,
            labels,
            placeholders,
        } => {
            let mut paths = vec![];
            if !labels.is_empty() {
                paths.push("labels".to_string());
            }
            if !placeholders.is_empty() {
                paths.push("placeholders".to_string());
            }
            if paths.is_empty() {
                return Err(Failure::input(
                    "nothing to update: give --label and/or --placeholder",
                ));
            }
            let tenant = proto::Tenant {
                id,
                labels: pairs("label", &labels)?,
                placeholders: pairs("placeholder", &placeholders)?,
                ..Default::default()
            };
            let t = client
                .update(proto::UpdateTenantRequest {
                    tenant: Some(tenant),
                    update_mask: Some(prost_types::FieldMask { paths }),
                })
                .await
                .map_err(status)?
                .into_inner();
            show(&t);
        }
        TenantsCommand::Rm {
            id,
            drop_database,
            confirm,
        } => {
            let r = client
                .deregister(proto::DeregisterTenantRequest {
                    id,
                    drop_database,
                    confirm_dbname: confirm.unwrap_or_default(),
                    ..Default::default()
                })
                .await
                .map_err(status)?
                .into_inner();
            if let Some(t) = r.tenant {
                if conn.output == Output::Json {
                    print_json(&t);
                } else if r.database_dropped {
                    println!(
                        "removed {} from the registry and dropped its database",
                        t.id
                    );
                } else {
                    println!(
                        "removed {} from the registry (its database is untouched)",
                        t.id
                    );
                }
            }
        }
        TenantsCommand::Onboard {
            tenant,
            request_id,
            admin_user,
            extensions,
            use_template,
        } => {
            let t = tenant_proto(tenant)?;
            let mut m =
                crate::grpc::proto::migrations_client::MigrationsClient::new(channel(conn).await?);
            let request = proto::OnboardRequest {
                request_id,
                tenant: Some(t),
                admin_user: admin_user.unwrap_or_default(),
                admin_password: None,
                extensions,
                use_template,
            };
            let mut stream = m.onboard(request).await.map_err(status)?.into_inner();
            let mut failed = None;
            while let Some(e) = stream.message().await.map_err(status)? {
                if conn.output == Output::Json {
                    print_json(&e);
                } else {
                    eprintln!(
                        "{:16} {:12} {} ({} ms)",
                        e.step, e.status, e.message, e.duration_ms
                    );
                }
                if e.status == "failed" {
                    failed = Some(format!("{}: {}", e.step, e.message));
                }
            }
            if let Some(f) = failed {
                return Err(Failure {
                    code: 1,
                    message: format!(
                        "onboarding failed at {f} (everything it created was rolled back)"
                    ),
                });
            }
        }
    }
    Ok(())
}

fn tenant_proto(a: AddTenant) -> Result<proto::Tenant, Failure> {
    let source = match (a.password_env, a.password_file, a.passfile) {
        (Some(v), _, _) => Some(proto::password_ref::Source::Env(v)),
        (_, Some(f), _) => Some(proto::password_ref::Source::File(f)),
        (_, _, true) => Some(proto::password_ref::Source::Passfile(true)),
        _ => None,
    };
    let (session_host, session_port) = match a.session_host.as_deref() {
        None => (String::new(), 0),
        Some(hp) => match hp.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.ends_with(']') => (
                h.trim_matches(['[', ']']).to_string(),
                p.parse()
                    .map_err(|_| Failure::input(format!("--session-host {hp}: bad port")))?,
            ),
            _ => (hp.to_string(), 0),
        },
    };
    Ok(proto::Tenant {
        id: a.id,
        app: a.app,
        connection: Some(proto::Connection {
            host: a.host,
            port: a.port,
            dbname: a.dbname,
            user: a.user,
            sslmode: a.sslmode,
            schema: a.schema.unwrap_or_default(),
            password: source.map(|s| proto::PasswordRef { source: Some(s) }),
            sslrootcert: a.sslrootcert.unwrap_or_default(),
            sslcert: a.sslcert.unwrap_or_default(),
            sslkey: a.sslkey.unwrap_or_default(),
            sslnegotiation: String::new(),
            channel_binding: a.channel_binding.unwrap_or_default(),
            require_auth: a.require_auth.unwrap_or_default(),
            pooler: a.pooler.unwrap_or_default(),
            session_host,
            session_port,
        }),
        labels: pairs("label", &a.labels)?,
        placeholders: pairs("placeholder", &a.placeholders)?,
        ..Default::default()
    })
}

pub(super) fn selector(s: &SelectArgs) -> Result<proto::Selector, Failure> {
    Ok(proto::Selector {
        tenant_ids: s.tenants.clone(),
        labels: pairs("label", &s.labels)?,
        all: s.tenants.is_empty() && s.labels.is_empty(),
    })
}

pub async fn fleet(conn: &Connect, cmd: FleetCommand) -> Result<(), Failure> {
    let mut client = MigrationsClient::new(channel(conn).await?);
    match cmd {
        FleetCommand::Upgrade(m) => migrate(conn, &mut client, m, false).await,
        FleetCommand::Downgrade(m) => migrate(conn, &mut client, m, true).await,
        FleetCommand::Current(s) => {
            let r = client
                .current(proto::CurrentRequest {
                    app: s.app.clone(),
                    selector: Some(selector(&s)?),
                })
                .await
                .map_err(status)?
                .into_inner();
            if conn.output == Output::Json {
                print_json(&r);
                return Ok(());
            }
            for t in &r.tenants {
                let state = if !t.error.is_empty() {
                    format!("ERROR {}", t.error)
                } else if t.revisions.is_empty() {
                    "base".into()
                } else {
                    t.revisions.join(",")
                };
                println!(
                    "{:24} {}{}",
                    t.tenant_id,
                    state,
                    if t.at_head { " (head)" } else { "" }
                );
            }
            let skew: BTreeMap<_, _> = r.tenants_by_version.iter().collect();
            println!(
                "\nheads: {} | at head: {} | behind: {} | unreachable: {}",
                r.heads.join(", "),
                r.at_head,
                r.behind,
                r.unreachable
            );
            for (version, n) in skew {
                println!("  {n:5} tenant(s) at {version}");
            }
            Ok(())
        }
        FleetCommand::Plan {
            tenant,
            target,
            downgrade,
            allow_changed,
        } => {
            let r = client
                .plan(proto::PlanRequest {
                    tenant_id: tenant,
                    target,
                    direction: if downgrade {
                        "downgrade".into()
                    } else {
                        "upgrade".into()
                    },
                    allow_changed,
                })
                .await
                .map_err(status)?
                .into_inner();
            if conn.output == Output::Json {
                print_json(&r);
            } else {
                print!("{}", r.sql);
            }
            Ok(())
        }
        FleetCommand::Verify(s) => {
            let r = client
                .verify(proto::VerifyRequest {
                    app: s.app.clone(),
                    selector: Some(selector(&s)?),
                })
                .await
                .map_err(status)?
                .into_inner();
            if conn.output == Output::Json {
                print_json(&r);
            } else {
                for t in &r.tenants {
                    let at = if t.revisions.is_empty() {
                        "base".into()
                    } else {
                        t.revisions.join(",")
                    };
                    if !t.error.is_empty() {
                        println!("{:24} ERROR {}", t.tenant_id, t.error);
                    } else if t.drifted || !t.invalid_indexes.is_empty() {
                        println!("{:24} {at} DRIFTED", t.tenant_id);
                        for d in t.differences.iter().chain(&t.invalid_indexes) {
                            println!("    {d}");
                        }
                    } else {
                        println!("{:24} {at} ok", t.tenant_id);
                    }
                }
                println!(
                    "\ndrifted: {} | invalid indexes: {} | unreachable: {}",
                    r.drifted, r.with_invalid_indexes, r.unreachable
                );
            }
            if r.drifted + r.with_invalid_indexes + r.unreachable > 0 {
                Err(Failure {
                    code: 3,
                    message: "drift found".into(),
                })
            } else {
                Ok(())
            }
        }
        FleetCommand::Cancel { job_id } => {
            let r = client
                .cancel(proto::CancelRequest {
                    job_id: job_id.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            println!(
                "{}",
                if r.cancelled {
                    format!("job {job_id}: cancelling after the revisions in flight")
                } else {
                    format!("job {job_id} had already finished")
                }
            );
            Ok(())
        }
    }
}

async fn migrate(
    conn: &Connect,
    client: &mut MigrationsClient<Daemon>,
    m: FleetMigrate,
    down: bool,
) -> Result<(), Failure> {
    let request = proto::MigrateRequest {
        app: m.select.app.clone(),
        target: m.target.clone().unwrap_or_default(),
        selector: Some(selector(&m.select)?),
        concurrency: m.concurrency,
        dry_run: m.dry_run,
        allow_changed: m.allow_changed,
        blockers: m.blockers.to_proto()?,
    };
    let mut stream = if down {
        client.downgrade(request).await
    } else {
        client.upgrade(request).await
    }
    .map_err(status)?
    .into_inner();
    let json = conn.output == Output::Json;
    let bar = ProgressBar::hidden();
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut summary: Option<proto::JobSummary> = None;
    while let Some(event) = stream.message().await.map_err(status)? {
        if json {
            print_json(&event);
        }
        match event.event {
            Some(Event::Accepted(a)) if !json => {
                eprintln!(
                    "job {} accepted: {} {} to {} on {} tenant(s){}",
                    a.job_id,
                    a.app,
                    a.direction,
                    a.target,
                    a.tenant_ids.len(),
                    if a.dry_run { " (dry run)" } else { "" }
                );
                bar.set_length(a.tenant_ids.len() as u64);
                bar.set_style(
                    ProgressStyle::with_template(
                        "{bar:40} {pos}/{len} tenants {msg} [{elapsed}, eta {eta}]",
                    )
                    .expect("valid template"),
                );
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                bar.enable_steady_tick(Duration::from_millis(200));
            }
            Some(Event::Tenant(t)) if !json => {
                let finished = match &t.kind {
                    Some(Kind::Done(_)) => Some("done"),
                    Some(Kind::UpToDate(_)) => Some("up to date"),
                    Some(Kind::Failed(f)) => {
                        bar.println(format!(
                            "FAILED {}: {}",
                            t.tenant_id,
                            f.message.lines().next().unwrap_or_default()
                        ));
                        Some("failed")
                    }
                    Some(Kind::LockRetry(r)) => {
                        bar.println(format!(
                            "LOCK TIMEOUT {} {} (attempt {}), retrying in {} ms",
                            t.tenant_id, r.revision, r.attempt, r.delay_ms
                        ));
                        for b in &r.blockers {
                            let mut line = format!("  blocked by {}", b.summary);
                            if !b.query.is_empty() {
                                line.push_str(&format!(": {}", b.query));
                            }
                            if !b.action.is_empty() {
                                line.push_str(&format!(" [{}]", b.action));
                            }
                            bar.println(line);
                        }
                        None
                    }
                    Some(Kind::Skipped(_)) => Some("skipped"),
                    Some(Kind::Reconnected(r)) => {
                        bar.println(format!(
                            "RECONNECTED {} (attempt {}): {}",
                            t.tenant_id,
                            r.attempt,
                            r.reason.lines().next().unwrap_or_default()
                        ));
                        None
                    }
                    Some(Kind::Interrupted(i)) => {
                        bar.println(format!("INTERRUPTED {}: {}", t.tenant_id, i.reason));
                        Some("interrupted")
                    }
                    Some(Kind::Planned(p)) => {
                        bar.println(format!(
                            "-- {}: {}\n{}",
                            t.tenant_id,
                            if p.revisions.is_empty() {
                                "nothing to do".into()
                            } else {
                                p.revisions.join(" -> ")
                            },
                            p.sql
                        ));
                        Some("planned")
                    }
                    _ => None,
                };
                if let Some(state) = finished {
                    *counts.entry(state).or_default() += 1;
                    bar.inc(1);
                    bar.set_message(
                        counts
                            .iter()
                            .map(|(k, v)| format!("{k}: {v}"))
                            .collect::<Vec<_>>()
                            .join(", "),
                    );
                }
            }
            Some(Event::Summary(s)) => {
                bar.finish_and_clear();
                summary = Some(s.clone());
                if !json {
                    eprintln!(
                        "job {}: {} tenant(s) in {:.1}s: {} done, {} up to date, {} failed, {} skipped, {} interrupted{}{}",
                        s.job_id,
                        s.tenants,
                        s.wall_time_ms as f64 / 1000.0,
                        s.done,
                        s.up_to_date,
                        s.failed,
                        s.skipped,
                        s.interrupted,
                        if s.planned > 0 {
                            format!(", {} planned", s.planned)
                        } else {
                            String::new()
                        },
                        if s.cancelled { " (cancelled)" } else { "" }
                    );
                }
            }
            _ => {}
        }
    }
    // Scripts read the exit code: only a job that finished every tenant is a success.
    match summary {
        None => Err(Failure { code: 1, message: "the stream ended without a summary: the daemon stopped or the connection broke; the job may still be running (fleet current shows where tenants are)".into() }),
        Some(s) if s.failed + s.interrupted > 0 => Err(Failure { code: 1, message: format!("{} tenant(s) failed or were interrupted", s.failed + s.interrupted) }),
        Some(s) if s.skipped > 0 => Err(Failure { code: 1, message: format!("{} tenant(s) were skipped (job cancelled or daemon shutting down)", s.skipped) }),
        Some(_) => Ok(()),
    }
}
