//! The fleet's read paths (current versions and skew, one tenant's history and plan) and
//! stamp, which writes under the tenant's lock like a migration.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::StreamExt;

use super::tenant_run::tenant_values;
use super::{Fleet, FleetError, Selector};
use crate::engine::{self, Engine, Event, RunOptions};
use crate::model::Direction;
use crate::registry::{Tenant, TenantId};
use crate::revision::plan::{self, Target};

#[derive(Debug, Clone)]
pub struct TenantVersion {
    pub tenant_id: String,
    pub revisions: Vec<String>,
    pub at_head: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct CurrentReport {
    pub tenants: Vec<TenantVersion>,
    pub by_version: BTreeMap<String, u32>,
    pub heads: Vec<String>,
    pub at_head: u32,
    pub behind: u32,
    pub unreachable: u32,
}

#[derive(Debug, Clone)]
pub struct HistoryEntry {
    pub id: i64,
    pub revision: String,
    pub direction: String,
    pub checksum: String,
    pub placeholders_json: String,
    pub skipped: bool,
    pub applied_at: DateTime<Utc>,
    pub duration_ms: i64,
    pub applied_by: String,
    pub fence_token: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct TenantPlan {
    pub current: Vec<String>,
    pub revisions: Vec<String>,
    pub sql: String,
}

impl Fleet {
    async fn tenant_version(&self, tenant: &Tenant, heads: &[String]) -> TenantVersion {
        let settings = self.settings_for(&tenant.connection);
        let read = async {
            let app = self.app(&tenant.app).map_err(|e| e.to_string())?;
            let values = tenant_values(app, tenant).map_err(|e| e.to_string())?;
            let conn = self
                .pools
                .get(&tenant.connection)
                .await
                .map_err(|e| e.to_string())?;
            let state = Engine::new(app, &values, &settings)
                .state(&conn)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(state.rows.iter().map(|r| r.to_string()).collect::<Vec<_>>())
        };
        match read.await {
            Ok(revisions) => {
                let at_head = !revisions.is_empty()
                    && revisions.iter().all(|r| heads.contains(r))
                    && revisions.len() == heads.len();
                TenantVersion {
                    tenant_id: tenant.id.to_string(),
                    revisions,
                    at_head,
                    error: None,
                }
            }
            Err(e) => TenantVersion {
                tenant_id: tenant.id.to_string(),
                revisions: vec![],
                at_head: false,
                error: Some(e),
            },
        }
    }

    /// Each selected tenant's version rows, read concurrently, and the fleet's skew.
    pub async fn current(
        self: &Arc<Self>,
        app: &str,
        selector: &Selector,
    ) -> Result<CurrentReport, FleetError> {
        let graph = &self.app(app)?.graph;
        // At head = the rows `upgrade heads` leaves: the heads nothing depends on.
        let heads: Vec<String> = graph
            .real_heads()
            .into_iter()
            .map(|h| graph.revision(h).id.to_string())
            .collect();
        let tenants = self.select(app, selector).await?;
        let concurrency = self.limits.global_concurrency.max(1);
        let reads = tenants.into_iter().map(|t| {
            let (fleet, heads) = (self.clone(), heads.clone());
            async move { fleet.tenant_version(&t, &heads).await }
        });
        let versions: Vec<TenantVersion> = futures::stream::iter(reads)
            .buffered(concurrency)
            .collect()
            .await;
        let mut report = CurrentReport {
            heads,
            ..CurrentReport::default()
        };
        for v in &versions {
            if v.error.is_some() {
                report.unreachable += 1;
                continue;
            }
            let label = crate::model::version_label(&v.revisions, ",");
            *report.by_version.entry(label).or_default() += 1;
            if v.at_head {
                report.at_head += 1
            } else {
                report.behind += 1
            }
        }
        report.tenants = versions;
        Ok(report)
    }

    /// The newest `limit` rows of a tenant's history table, oldest first.
    pub async fn history(
        &self,
        id: &TenantId,
        limit: u32,
    ) -> Result<Vec<HistoryEntry>, FleetError> {
        let tenant = self.registry.get(id).await?;
        let settings = self.settings_for(&tenant.connection);
        let mut conn =
            self.pools
                .get(&tenant.connection)
                .await
                .map_err(|source| FleetError::Connect {
                    tenant: id.clone(),
                    source,
                })?;
        let read_error = |e| FleetError::Engine {
            tenant: id.clone(),
            source: Box::new(engine::EngineError::db("reading the history table")(e)),
        };
        // In a transaction of its own (safe behind a transaction-mode pooler), with the
        // search_path pinned: nothing a tenant planted runs here.
        let tx = conn.transaction().await.map_err(read_error)?;
        tx.batch_execute("SET LOCAL search_path = pg_catalog, pg_temp")
            .await
            .map_err(read_error)?;
        let exists: bool = tx
            .query_one(
                "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
                &[&settings.tables.history.sql()],
            )
            .await
            .map_err(read_error)?
            .get(0);
        if !exists {
            return Ok(vec![]);
        }
        let sql = format!(
            "SELECT * FROM (SELECT id, revision::pg_catalog.text, direction, COALESCE(checksum, ''), placeholders::pg_catalog.text, skipped, applied_at, duration_ms, applied_by, fence_token FROM {} ORDER BY id DESC LIMIT $1) h ORDER BY id",
            settings.tables.history.sql()
        );
        let rows = tx
            .query(&sql, &[&i64::from(limit)])
            .await
            .map_err(read_error)?;
        tx.commit().await.map_err(read_error)?;
        Ok(rows
            .iter()
            .map(|r| HistoryEntry {
                id: r.get(0),
                revision: r.get(1),
                direction: r.get(2),
                checksum: r.get(3),
                placeholders_json: r.get(4),
                skipped: r.get(5),
                applied_at: r.get(6),
                duration_ms: r.get(7),
                applied_by: r.get(8),
                fence_token: r.get(9),
            })
            .collect())
    }

    /// What `direction` to `target` would run on one tenant now; refused when applied
    /// revision files changed, unless `allow_changed` (as the run itself).
    pub async fn plan(
        &self,
        id: &TenantId,
        direction: Direction,
        target: &str,
        allow_changed: bool,
    ) -> Result<TenantPlan, FleetError> {
        let tenant = self.registry.get(id).await?;
        let app = self.app(&tenant.app)?;
        let target: Target = target.parse().expect("infallible");
        Self::check_target(app, direction, &target)?;
        let values = tenant_values(app, &tenant).map_err(|source| FleetError::Placeholders {
            tenant: id.clone(),
            source,
        })?;
        let settings = self.settings_for(&tenant.connection);
        let conn =
            self.pools
                .get(&tenant.connection)
                .await
                .map_err(|source| FleetError::Connect {
                    tenant: id.clone(),
                    source,
                })?;
        let planned = Engine::new(app, &values, &settings)
            .plan(&conn, direction, &target, allow_changed)
            .await
            .map_err(|source| FleetError::Engine {
                tenant: id.clone(),
                source: Box::new(source),
            })?;
        let ids = |v: Vec<crate::model::RevisionId>| v.into_iter().map(|r| r.to_string()).collect();
        Ok(TenantPlan {
            current: ids(planned.current),
            revisions: ids(planned.steps),
            sql: planned.sql,
        })
    }

    /// Stamp one tenant under its lock, fenced.
    pub async fn stamp(
        &self,
        id: &TenantId,
        revision: &str,
        purge: bool,
        caller: &crate::auth::Caller,
    ) -> Result<Vec<String>, FleetError> {
        if self.shutdown.is_cancelled() {
            return Err(FleetError::ShuttingDown);
        }
        let tenant = self.registry.get(id).await?;
        let app = self.app(&tenant.app)?;
        // Before the lock: an unknown revision is the request's fault, not the tenant's.
        app.graph
            .get_revisions(revision)
            .map_err(|e| FleetError::StampRevision(plan::PlanError::from(e)))?;
        let values = tenant_values(app, &tenant).map_err(|source| FleetError::Placeholders {
            tenant: id.clone(),
            source,
        })?;
        let settings = self.settings_for(&tenant.connection);
        let guard = self
            .locks
            .lock(&tenant.connection.database_key(), self.limits.lock_wait)
            .await
            .map_err(|source| FleetError::Lock {
                tenant: id.clone(),
                source,
            })?;
        let result =
            async {
                let mut conn = self.pools.get(&tenant.connection).await.map_err(|source| {
                    FleetError::Connect {
                        tenant: id.clone(),
                        source,
                    }
                })?;
                let events = |_: Event| {};
                let opts = RunOptions {
                    fence: Some(guard.token()),
                    allow_changed: false,
                    applied_by: &self.owner,
                    events: &events,
                    stop: &|| false,
                    live: &|| guard.valid(),
                    blockers: None,
                };
                let engine = Engine::new(app, &values, &settings);
                let targets = [revision.to_string()];
                let stamped = tokio::select! {
                    r = engine.stamp(&mut conn, &targets, purge, &opts) => r,
                    // Lease lost: stop at once and never reuse this connection.
                    _ = guard.lost() => {
                        conn.poison();
                        return Err(FleetError::Lock { tenant: id.clone(), source: crate::lock::LockError::SessionLost });
                    }
                };
                let rows = stamped.map_err(|source| FleetError::Engine {
                    tenant: id.clone(),
                    source: Box::new(source),
                })?;
                // One audit record per version row written, with the fence token of the
                // write, as the history rows say.
                let stamped: Vec<String> = if rows.is_empty() {
                    vec!["base".into()]
                } else {
                    rows.iter().map(|r| r.to_string()).collect()
                };
                for r in &stamped {
                    let mut record = crate::audit::AuditRecord::new(caller, "stamp revision", "stamped").tenant(id.to_string());
                    record.checksum = app.graph.node(r).map(|n| app.graph.revision(n).checksum.clone());
                    record.revision = Some(r.clone());
                    record.fence_token = Some(guard.token().0);
                    self.audit.record(record);
                }
                Ok(rows.iter().map(|r| r.to_string()).collect())
            }
            .await;
        guard.release().await;
        result
    }
}
