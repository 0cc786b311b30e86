//! The composition root of `fleetmig serve`: builds the etcd client and session, registry,
//! pools and fleet; serves gRPC (with health and reflection); owns the root cancellation and
//! the task tracker, and shuts down in order: NOT_SERVING, no new work, in-flight revisions
//! finish (bounded by the grace period), locks released, lease revoked.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Server;

use crate::audit::AuditLog;
use crate::auth::{AuthMode, Authenticator};
use crate::config::Config;
use crate::fleet::{Fleet, FleetLimits};
use crate::grpc::guard::AuthLayer;
use crate::grpc::migrations::MigrationsService;
use crate::grpc::proto::migrations_server::MigrationsServer;
use crate::grpc::proto::rollouts_server::RolloutsServer;
use crate::grpc::proto::tenants_server::TenantsServer;
use crate::grpc::rollouts::RolloutsService;
use crate::grpc::tenants::TenantsService;
use crate::lock::etcd::EtcdSession;
use crate::registry::pools::PoolLimits;
use crate::registry::{Pools, Registry};
use crate::revision::App;
use crate::rollout::driver::Rollouts;
use crate::rollout::store::RolloutStore;

/// A control call (pause, resume, cancel) waits up to the lease TTL plus this for the rollout's
/// owner to act on it.
const CONTROL_ANSWER_MARGIN: Duration = Duration::from_secs(15);

/// After the jobs are done, how long open client connections get to close by themselves.
const SERVER_DRAIN: Duration = Duration::from_secs(2);

/// After the grace period, how long abandoned tenants get to cancel their statements before the
/// lease (and with it every lock) is revoked.
const ABANDON_WAIT: Duration = Duration::from_secs(2);

/// Who this daemon is, in history rows and lock values.
pub fn owner() -> String {
    format!(
        "fleetmig {} on {} pid {}",
        env!("CARGO_PKG_VERSION"),
        gethostname::gethostname().to_string_lossy(),
        std::process::id()
    )
}

/// The apps the daemon serves, each checked whole, and their lint verdicts (computed here,
/// once per app, never per tenant).
type Loaded = (
    BTreeMap<String, Arc<App>>,
    BTreeMap<String, Arc<crate::lint::AppLint>>,
);

fn load_apps(config: &Config) -> anyhow::Result<Loaded> {
    let names = App::list(&config.migrations_dir);
    if names.is_empty() {
        bail!(
            "no apps under {}: set migrations_dir",
            config.migrations_dir.display()
        );
    }
    // Every app checked whole before anything else starts: a broken revision stops the
    // daemon here, never a tenant halfway through a job. All problems of all apps at once.
    let mut apps = BTreeMap::new();
    let mut lints = BTreeMap::new();
    let mut problems = Vec::new();
    for name in &names {
        let app = match App::load_checked(&config.migrations_dir, name) {
            Ok(app) => app,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        match crate::lint::lint_at_load(&app) {
            Ok(lint) => {
                let c = lint.counts();
                tracing::info!(app = %name, errors = c.errors, warnings = c.warnings, ignored = c.ignored, "lint verdicts computed (rollouts that would apply an error are refused)");
                lints.insert(name.clone(), Arc::new(lint));
                apps.insert(name.clone(), Arc::new(app));
            }
            Err(e) => problems.push(crate::revision::LoadError::Manifest {
                path: app.dir.join(crate::revision::MANIFEST),
                message: match e {
                    crate::lint::LintError::Config { message, .. } => format!("[lint] {message}"),
                    other => other.to_string(),
                },
            }),
        }
    }
    match problems.len() {
        0 => Ok((apps, lints)),
        1 => Err(problems.remove(0).into()),
        _ => Err(crate::revision::LoadError::Several(problems).into()),
    }
}

async fn signalled() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}

/// The server span of one gRPC call (OpenTelemetry rpc conventions), continuing the caller's
/// `traceparent`. Health checks and reflection get none.
fn rpc_span(request: &http::Request<()>) -> tracing::Span {
    let path = request.uri().path().trim_start_matches('/');
    let Some((service, method)) = path
        .split_once('/')
        .filter(|(s, _)| s.starts_with("fleetmig."))
    else {
        return tracing::Span::none();
    };
    let span = tracing::info_span!(
        "rpc",
        otel.name = %path,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
    );
    crate::telemetry::continue_trace(&span, request.headers());
    span
}

/// Serve until SIGTERM/SIGINT.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    serve_until(config, signalled(), |_| {}).await
}

/// Serve until `stop` resolves. `on_listening` gets the bound address (tests listen on port 0).
pub async fn serve_until(
    config: Config,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<()> {
    let (apps, lints) = load_apps(&config)?;
    crate::transport::check_profile(&config)?;
    config
        .secrets
        .clone()
        .install()
        .map_err(|e| anyhow::anyhow!(e))?;
    let tls = crate::transport::server_tls(&config)?;
    if tls.is_none() {
        tracing::warn!("server.plaintext = true: gRPC without TLS; for local development only");
        eprintln!(
            "WARNING: serving gRPC without TLS (server.plaintext = true): local development only"
        );
    }
    let auth = Authenticator::load(&config.auth)?;
    if auth.mode() == AuthMode::None {
        tracing::warn!(
            "auth.mode = \"none\": every call is accepted with every scope; for local development only"
        );
        eprintln!(
            "WARNING: auth.mode = \"none\": calls are not authenticated: local development only"
        );
    }
    let tracker = TaskTracker::new();
    // Stops new work (jobs, tenants, revisions) at the first signal.
    let shutdown = CancellationToken::new();
    // Stops the lease keep-alive and housekeeping: only after in-flight work is done.
    let background = CancellationToken::new();
    // Bad etcd settings are bad configuration (exit 2), not an unreachable etcd.
    crate::etcd::options(&config)?;
    let etcd = crate::etcd::connect(&config, &tracker, background.clone())
        .await
        .with_context(|| format!("connecting to etcd at {}", config.etcd.endpoints.join(",")))?;
    let owner = owner();
    let session = EtcdSession::start(
        etcd.clone(),
        &config.etcd.prefix,
        config.etcd.lease_ttl,
        &owner,
        &tracker,
        background.clone(),
    )
    .await
    .context("granting the daemon's etcd lease")?;
    let pools = Arc::new(Pools::new(PoolLimits {
        per_host: config.pools.per_host_connections,
        per_database: config.pools.per_database_connections,
        connect_timeout: config.pools.connect_timeout,
        dead_server_after: config.pools.dead_server_after,
        idle_timeout: config.pools.idle_timeout,
        privileged_roles: config.pools.privileged_roles,
        insecure_connections: config.pools.insecure_connections(config.profile),
    }));
    {
        let (pools, stop, every) = (pools.clone(), background.clone(), config.pools.idle_timeout);
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => { pools.evict_idle(); }
                }
            }
        });
    }
    let audit = AuditLog::to_etcd(
        etcd.clone(),
        &config.etcd.prefix,
        config.audit.max_records,
        &tracker,
        background.clone(),
    );
    if let Some(shelf) = audit.shelf() {
        session.carry_audit(shelf);
    }
    let fleet = Arc::new(Fleet::new(
        apps,
        lints,
        Registry::new(etcd.clone(), &config.etcd.prefix),
        session.clone(),
        pools,
        config.engine.settings(),
        FleetLimits {
            global_concurrency: config.fleet.global_concurrency,
            default_job_concurrency: config.fleet.default_job_concurrency,
            max_job_concurrency: config.fleet.max_job_concurrency,
            lock_wait: config.fleet.lock_wait,
        },
        tracker.clone(),
        shutdown.clone(),
        owner,
        audit,
    ));

    let rollouts = Rollouts::new(
        fleet.clone(),
        RolloutStore::new(etcd.clone(), &config.etcd.prefix),
        // Unique per daemon, also for several daemons in one process (tests): named after its
        // first lease. Its keys live under the lease in force (it changes after a loss).
        format!("{} lease {:x}", self::owner(), session.lease_id()),
        {
            let session = session.clone();
            Arc::new(move || session.lease_id())
        },
        // A control call waits this long for the owner to act: a dead owner is replaced
        // within a TTL, and the new one reconciles before it answers.
        config.etcd.lease_ttl + CONTROL_ANSWER_MARGIN,
        tracker.clone(),
        shutdown.clone(),
    );
    rollouts.supervise(shutdown.clone());

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<TenantsServer<TenantsService>>().await;
    health
        .set_serving::<MigrationsServer<MigrationsService>>()
        .await;
    health
        .set_serving::<RolloutsServer<RolloutsService>>()
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::grpc::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::grpc::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let (limits, health_limits) = crate::listen::Limits::at_start(&config);
    let listener = TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("binding {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, apps = ?fleet.apps().map(|a| a.name.clone()).collect::<Vec<_>>(), "fleetmig serving");
    eprintln!("fleetmig listening on {addr}");
    on_listening(addr);

    // While the daemon holds no live lease (etcd unreachable, a quorum lost), it takes no
    // tenant and says NOT_SERVING; it takes a new lease by itself once etcd answers.
    {
        let (session, health, stopping) = (session.clone(), health.clone(), background.clone());
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = session.lost_token().cancelled_owned() => {}
                    _ = stopping.cancelled() => return,
                }
                if stopping.is_cancelled() {
                    return;
                }
                health
                    .set_service_status("", tonic_health::ServingStatus::NotServing)
                    .await;
                tokio::select! {
                    _ = session.live() => {}
                    _ = stopping.cancelled() => return,
                }
                tracing::info!("etcd lease in force again: serving");
                health
                    .set_service_status("", tonic_health::ServingStatus::Serving)
                    .await;
            }
        });
    }
    // First signal: NOT_SERVING, stop accepting, stop taking new work.
    {
        let (shutdown, health) = (shutdown.clone(), health.clone());
        tokio::spawn(async move {
            stop.await;
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            health
                .set_not_serving::<TenantsServer<TenantsService>>()
                .await;
            health
                .set_not_serving::<MigrationsServer<MigrationsService>>()
                .await;
            health
                .set_not_serving::<RolloutsServer<RolloutsService>>()
                .await;
            shutdown.cancel();
        });
    }
    if let Some(health_addr) = config.server.health_listen {
        let listener = TcpListener::bind(health_addr)
            .await
            .with_context(|| format!("binding server.health_listen {health_addr}"))?;
        tracing::info!(addr = %listener.local_addr()?, "health checks (plaintext, grpc.health.v1 only)");
        let incoming = crate::listen::plain(
            listener,
            &health_limits,
            "health",
            &tracker,
            background.clone(),
        );
        let health_only = health_limits
            .apply(Server::builder())
            .add_service(health_service.clone())
            .serve_with_incoming_shutdown(incoming, background.clone().cancelled_owned());
        tracker.spawn(async move {
            if let Err(e) = health_only.await {
                tracing::error!(error = %e, "health port stopped");
            }
        });
    }
    let router = limits
        .apply(Server::builder())
        .trace_fn(rpc_span)
        .layer(AuthLayer::new(auth))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(TenantsServer::new(TenantsService {
            fleet: fleet.clone(),
        }))
        .add_service(MigrationsServer::new(MigrationsService {
            fleet: fleet.clone(),
            rollouts: rollouts.clone(),
        }))
        .add_service(RolloutsServer::new(RolloutsService {
            fleet: fleet.clone(),
            rollouts: rollouts.clone(),
        }));
    let stop_serving = shutdown.clone().cancelled_owned();
    let mut server: std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send>,
    > = match tls {
        Some(acceptor) => Box::pin(router.serve_with_incoming_shutdown(
            crate::listen::tls(
                listener,
                &limits,
                acceptor,
                "grpc",
                &tracker,
                shutdown.clone(),
            ),
            stop_serving,
        )),
        None => Box::pin(router.serve_with_incoming_shutdown(
            crate::listen::plain(listener, &limits, "grpc", &tracker, shutdown.clone()),
            stop_serving,
        )),
    };
    let mut server_done = false;
    tokio::select! {
        r = &mut server => {
            r.context("gRPC server")?;
            server_done = true;
        }
        _ = shutdown.cancelled() => {}
    }
    // Let running jobs finish their in-flight revisions (their streams end with them), within the grace period.
    let grace = config.server.shutdown_grace;
    // The server keeps being polled meanwhile, so health checks see NOT_SERVING.
    let wait_for_jobs = async {
        while fleet.running_jobs() > 0 || rollouts.driving() > 0 {
            tokio::select! {
                _ = &mut server, if !server_done => server_done = true,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    };
    if tokio::time::timeout(grace, wait_for_jobs).await.is_err() {
        tracing::warn!(
            ?grace,
            "grace period over: abandoning in-flight work (statements are cancelled, open transactions roll back)"
        );
        // Stop all tenant SQL first (as on a lease loss), and only then give the locks up.
        session.abandon();
        let _ = tokio::time::timeout(ABANDON_WAIT, async {
            while fleet.running_jobs() > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    }
    // Jobs are done and their streams have ended: idle client connections need not hold us.
    if !server_done
        && tokio::time::timeout(SERVER_DRAIN, &mut server)
            .await
            .is_err()
    {
        tracing::info!("closing the remaining client connections");
    }
    background.cancel();
    session.revoke().await;
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), tracker.wait()).await;
    tracing::info!("fleetmig stopped");
    Ok(())
}
