//! Onboarding: one call provisions a tenant end to end: create its database (from a template
//! kept at head, or empty), create the extensions that need an admin, register it, migrate it
//! to head, verify its schema against a full replay. A failure at any step rolls back what the
//! call created. Idempotent by request id: the outcome is recorded in etcd and replayed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_postgres::Client;
use tracing::Instrument;

use super::tenant_run::tenant_values;
use super::{Fleet, FleetError, JobEvent, JobSpec, Selector};
use crate::engine::{self, Engine, Event, RunOptions};
use crate::model::Direction;
use crate::registry::tenant::shown;
use crate::registry::{ConnectionSpec, PasswordRef, RequestRecord, Tenant};
use crate::revision::placeholder::quote_ident;
use crate::revision::plan::Target;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct OnboardSpec {
    pub request_id: String,
    pub tenant: Tenant,
    pub admin_user: Option<String>,
    pub admin_password: Option<PasswordRef>,
    pub extensions: Vec<String>,
    pub use_template: bool,
    /// Who asked: the migration's audit records name them.
    pub caller: crate::auth::Caller,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnboardEvent {
    pub step: String,
    pub status: String,
    pub message: String,
    pub duration: Duration,
}

async fn connect(target: &crate::pg::Target) -> Result<Client, String> {
    Ok(target
        .connect()
        .await
        .map_err(|e| e.to_string())?
        .into_client())
}

fn pg(e: tokio_postgres::Error) -> String {
    engine::error::describe_pg(&e)
}

/// Drop `dbname` through the maintenance database of `admin`'s server, ending its sessions.
async fn drop_db(admin: &ConnectionSpec, dbname: &str) -> Result<(), String> {
    let client = connect(
        &crate::registry::pools::target(
            admin,
            CONNECT_TIMEOUT,
            crate::registry::pools::DEAD_SERVER_AFTER,
        )
        .map_err(|e| e.to_string())?,
    )
    .await?;
    client
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(dbname)
        ))
        .await
        .map_err(pg)
}

/// What a failed step reports.
struct StepFailed {
    step: &'static str,
    message: String,
}

impl Fleet {
    /// Start an onboarding; its events arrive on the returned channel. A request id seen before
    /// replays its recorded outcome.
    pub async fn onboard(
        self: &Arc<Self>,
        spec: OnboardSpec,
    ) -> Result<mpsc::UnboundedReceiver<OnboardEvent>, FleetError> {
        if self.shutdown.is_cancelled() {
            return Err(FleetError::ShuttingDown);
        }
        self.app(&spec.tenant.app)?;
        let record = RequestRecord {
            tenant_id: spec.tenant.id.to_string(),
            state: "running".into(),
            events: vec![],
        };
        let (tx, rx) = mpsc::unbounded_channel();
        if let Some(earlier) = self
            .registry
            .claim_request(&spec.request_id, &record)
            .await?
        {
            if earlier.tenant_id != spec.tenant.id.as_str() {
                return Err(FleetError::Selector(format!(
                    "request_id {} was used for tenant {}",
                    spec.request_id, earlier.tenant_id
                )));
            }
            for (step, status, message) in earlier.events {
                let _ = tx.send(OnboardEvent {
                    step,
                    status,
                    message,
                    duration: Duration::ZERO,
                });
            }
            let _ = tx.send(OnboardEvent {
                step: "done".into(),
                status: "replayed".into(),
                message: format!(
                    "request {} was already handled ({}): nothing was done again",
                    spec.request_id, earlier.state
                ),
                duration: Duration::ZERO,
            });
            return Ok(rx);
        }
        let fleet = self.clone();
        let span = tracing::info_span!("onboard", otel.name = %format!("onboard {}", spec.tenant.id), fleetmig.tenant.id = %spec.tenant.id, fleetmig.app = %spec.tenant.app);
        self.tracker
            .spawn(async move { fleet.run_onboard(spec, tx).await }.instrument(span));
        Ok(rx)
    }

    async fn run_onboard(
        self: Arc<Self>,
        spec: OnboardSpec,
        tx: mpsc::UnboundedSender<OnboardEvent>,
    ) {
        let mut record = RequestRecord {
            tenant_id: spec.tenant.id.to_string(),
            state: "running".into(),
            events: vec![],
        };
        let mut emit = |step: &str, status: &str, message: String, started: Instant| {
            record
                .events
                .push((step.to_string(), status.to_string(), message.clone()));
            let _ = tx.send(OnboardEvent {
                step: step.into(),
                status: status.into(),
                message,
                duration: started.elapsed(),
            });
        };
        let tenant = &spec.tenant;
        let c = &tenant.connection;
        // Admin work needs a real session: around a transaction-mode pooler when one is declared.
        let session = c.session_spec();
        let admin_spec = ConnectionSpec {
            user: spec.admin_user.clone().unwrap_or_else(|| c.user.clone()),
            password: if spec.admin_user.is_some() {
                spec.admin_password.clone()
            } else {
                c.password.clone()
            },
            dbname: "postgres".into(),
            schema: None,
            ..session
        };
        let (mut created, mut registered) = (false, false);
        let result: Result<(), StepFailed> = async {
            let admin_config = crate::registry::pools::target(
                &admin_spec,
                CONNECT_TIMEOUT,
                crate::registry::pools::DEAD_SERVER_AFTER,
            )
            .map_err(|e| StepFailed {
                step: "create_database",
                message: e.to_string(),
            })?;
            let app = self
                .app(&tenant.app)
                .map_err(|e| StepFailed {
                    step: "create_database",
                    message: e.to_string(),
                })?
                .clone();
            let values = tenant_values(&app, tenant).map_err(|e| StepFailed {
                step: "create_database",
                message: e.to_string(),
            })?;

            let t = Instant::now();
            emit(
                "create_database",
                "started",
                format!("{} on {}", c.dbname, c.host_key()),
                t,
            );
            let admin = connect(&admin_config).await.map_err(|m| StepFailed {
                step: "create_database",
                message: m,
            })?;
            let template = if spec.use_template {
                Some(
                    self.template(&app, &values, &admin, &admin_config, &spec.extensions)
                        .await
                        .map_err(|m| StepFailed {
                            step: "create_database",
                            message: format!("template: {m}"),
                        })?,
                )
            } else {
                None
            };
            let sql = format!(
                "CREATE DATABASE {} OWNER {}{}",
                quote_ident(&c.dbname),
                quote_ident(&c.user),
                template
                    .as_ref()
                    .map(|t| format!(" TEMPLATE {}", quote_ident(t)))
                    .unwrap_or_default()
            );
            admin.batch_execute(&sql).await.map_err(|e| StepFailed {
                step: "create_database",
                message: pg(e),
            })?;
            created = true;
            emit(
                "create_database",
                "ok",
                template.map_or("empty".into(), |t| format!("from template {t}")),
                t,
            );

            let t = Instant::now();
            if spec.extensions.is_empty() {
                emit("extensions", "skipped", "none requested".into(), t);
            } else {
                let client = connect(&admin_config.with_dbname(&c.dbname))
                    .await
                    .map_err(|m| StepFailed {
                        step: "extensions",
                        message: m,
                    })?;
                for ext in &spec.extensions {
                    client
                        .batch_execute(&format!(
                            "CREATE EXTENSION IF NOT EXISTS {}",
                            quote_ident(ext)
                        ))
                        .await
                        .map_err(|e| StepFailed {
                            step: "extensions",
                            message: pg(e),
                        })?;
                }
                emit("extensions", "ok", spec.extensions.join(", "), t);
            }

            let t = Instant::now();
            self.registry
                .register(tenant.clone())
                .await
                .map_err(|e| StepFailed {
                    step: "register",
                    message: e.to_string(),
                })?;
            registered = true;
            emit("register", "ok", tenant.id.to_string(), t);

            let t = Instant::now();
            let mut job = self
                .start(JobSpec {
                    app: app.name.clone(),
                    direction: Direction::Upgrade,
                    target: "head".into(),
                    selector: Selector::Ids(vec![tenant.id.clone()]),
                    concurrency: 1,
                    dry_run: false,
                    allow_changed: false,
                    skip_locked: false,
                    leave: None,
                    caller: spec.caller.clone(),
                    // A database created by this call: nobody else holds its locks.
                    blockers: None,
                })
                .await
                .map_err(|e| StepFailed {
                    step: "migrate",
                    message: e.to_string(),
                })?;
            let mut failure = None;
            let mut finished = false;
            while let Some(event) = job.events.recv().await {
                match event {
                    JobEvent::Tenant {
                        event: super::TenantEvent::Failed(f),
                        ..
                    } => failure = Some(f.message),
                    JobEvent::Tenant {
                        event: super::TenantEvent::Interrupted { reason, .. },
                        ..
                    } => failure = Some(reason),
                    JobEvent::Tenant {
                        event: super::TenantEvent::Skipped { reason },
                        ..
                    } => failure = Some(reason),
                    JobEvent::Summary(s) => finished = s.done + s.up_to_date == 1,
                    _ => {}
                }
            }
            if let Some(message) = failure.filter(|_| !finished) {
                return Err(StepFailed {
                    step: "migrate",
                    message,
                });
            }
            emit("migrate", "ok", "at head".into(), t);

            let t = Instant::now();
            let settings = self.settings_for(c);
            let conn = self.pools.get(c).await.map_err(|e| StepFailed {
                step: "verify",
                message: e.to_string(),
            })?;
            let rows = Engine::new(&app, &values, &settings)
                .state(&conn)
                .await
                .map_err(|e| StepFailed {
                    step: "verify",
                    message: e.to_string(),
                })?
                .rows;
            let live = engine::fingerprint::fingerprint(&conn, &settings.tables)
                .await
                .map_err(|e| StepFailed {
                    step: "verify",
                    message: e.to_string(),
                })?;
            drop(conn);
            let expected = self
                .expected_fingerprint(&app, &values, &admin_config, &rows)
                .await
                .map_err(|m| StepFailed {
                    step: "verify",
                    message: m,
                })?;
            let diff = expected.diff(&live);
            if !diff.is_empty() {
                return Err(StepFailed {
                    step: "verify",
                    message: format!("the schema differs from a full replay: {}", diff.join("; ")),
                });
            }
            emit(
                "verify",
                "ok",
                format!(
                    "schema equals a full replay (fingerprint {})",
                    &live.hash()[..12]
                ),
                t,
            );
            Ok(())
        }
        .await;
        let t = Instant::now();
        match result {
            Ok(()) => {
                record.state = "done".into();
                emit("done", "ok", format!("tenant {} onboarded", tenant.id), t);
            }
            Err(f) => {
                tracing::warn!(tenant = %tenant.id, step = f.step, error = %f.message, "onboarding failed; rolling back");
                emit(f.step, "failed", f.message, t);
                let mut undone = vec![];
                if registered {
                    match self.registry.deregister(&tenant.id).await {
                        Ok(_) => undone.push("registry entry removed".to_string()),
                        Err(e) => undone.push(format!("could not remove the registry entry: {e}")),
                    }
                }
                if created {
                    self.pools.discard(&c.database_key());
                    let dropped = drop_db(&admin_spec, &c.dbname).await;
                    undone.push(match dropped {
                        Ok(()) => format!("database {} dropped", c.dbname),
                        Err(e) => format!("could not drop database {}: {e}", c.dbname),
                    });
                }
                record.state = "failed".into();
                emit(
                    "rollback",
                    "rolled_back",
                    if undone.is_empty() {
                        "nothing to undo".into()
                    } else {
                        undone.join(", ")
                    },
                    t,
                );
            }
        }
        if let Err(e) = self.registry.save_request(&spec.request_id, &record).await {
            tracing::warn!(request = %spec.request_id, error = %e, "could not record the onboarding outcome");
        }
    }

    /// The schema a database at `rows` should have, built once per (app, rows, values) on a
    /// scratch database and remembered.
    pub(crate) async fn expected_fingerprint(
        &self,
        app: &crate::revision::App,
        values: &crate::revision::Resolved,
        base: &crate::pg::Target,
        rows: &[crate::model::RevisionId],
    ) -> Result<engine::fingerprint::Fingerprint, String> {
        let key = format!(
            "{}|{}|{}",
            app.name,
            rows.iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(","),
            values.to_json()
        );
        if let Some(fp) = self.expected.lock().unwrap().get(&key) {
            return Ok(fp.clone());
        }
        let fp = engine::adopt::expected(app, values, &self.settings, base, rows)
            .await
            .map_err(|e| e.to_string())?;
        self.expected.lock().unwrap().insert(key, fp.clone());
        Ok(fp)
    }

    /// The template database of `app` at head for these values: built on first use (migrated
    /// by the engine, extensions created as admin), then only copied.
    async fn template(
        &self,
        app: &crate::revision::App,
        values: &crate::revision::Resolved,
        admin: &Client,
        admin_config: &crate::pg::Target,
        extensions: &[String],
    ) -> Result<String, String> {
        let g = &app.graph;
        let mut h = Sha256::new();
        h.update(app.name.as_bytes());
        h.update(values.to_json().to_string().as_bytes());
        for (_, rev) in g.revisions() {
            h.update(rev.checksum.as_bytes());
        }
        for e in extensions {
            h.update(e.as_bytes());
        }
        let name = format!(
            "fleetmig_tpl_{}_{}",
            app.name.replace('-', "_"),
            &hex::encode(h.finalize())[..12]
        );
        let exists = admin
            .query_opt(
                "SELECT 1 FROM pg_catalog.pg_database WHERE datname OPERATOR(pg_catalog.=) $1",
                &[&name],
            )
            .await
            .map_err(pg)?
            .is_some();
        if exists {
            return Ok(name);
        }
        let building = format!("{name}_building_{}", std::process::id());
        admin
            .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&building)))
            .await
            .map_err(pg)?;
        let built = async {
            let mut client = connect(&admin_config.with_dbname(&building)).await?;
            for ext in extensions {
                client
                    .batch_execute(&format!(
                        "CREATE EXTENSION IF NOT EXISTS {}",
                        quote_ident(ext)
                    ))
                    .await
                    .map_err(pg)?;
            }
            let events = |_: Event| {};
            let opts = RunOptions {
                fence: None,
                allow_changed: false,
                applied_by: "fleetmig onboarding template",
                events: &events,
                stop: &|| false,
                live: &|| true,
                blockers: None,
            };
            Engine::new(app, values, &self.settings)
                .migrate(&mut client, Direction::Upgrade, &Target::heads(), &opts)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(())
        }
        .await;
        if let Err(e) = built {
            let _ = admin
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    quote_ident(&building)
                ))
                .await;
            return Err(e);
        }
        // Renaming needs no other session on it; a concurrent builder may have won the race.
        if let Err(e) = admin
            .batch_execute(&format!(
                "ALTER DATABASE {} RENAME TO {}",
                quote_ident(&building),
                quote_ident(&name)
            ))
            .await
        {
            let _ = admin
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    quote_ident(&building)
                ))
                .await;
            if e.code().map(|c| c.code()) != Some("42P04") {
                return Err(format!("template {}: {}", shown(&name), pg(e)));
            }
        }
        tracing::info!(template = %name, app = %app.name, "template database built");
        Ok(name)
    }

    /// Deregister a tenant; drop its database only when asked (the caller has checked the
    /// confirmation). The registry entry goes first: a failed drop leaves an unregistered
    /// database, never a registered tenant without one.
    pub async fn offboard(
        &self,
        id: &crate::registry::TenantId,
        drop_database: bool,
        admin: Option<(String, Option<PasswordRef>)>,
    ) -> Result<(Tenant, bool), FleetError> {
        let removed = self.registry.deregister(id).await?;
        if !drop_database {
            return Ok((removed, false));
        }
        let c = &removed.connection;
        let (user, password) = admin.unwrap_or_else(|| (c.user.clone(), c.password.clone()));
        let spec = ConnectionSpec {
            user,
            password,
            dbname: "postgres".into(),
            schema: None,
            ..c.session_spec()
        };
        self.pools.discard(&c.database_key());
        let dropped = drop_db(&spec, &c.dbname).await;
        match dropped {
            Ok(()) => Ok((removed, true)),
            Err(message) => Err(FleetError::Selector(format!(
                "tenant {id} was deregistered, but its database {} could not be dropped: {message}",
                c.dbname
            ))),
        }
    }
}
