//! Where one tenant stands, read from its database (the source of truth): its version rows
//! and how many revisions would still run to reach a target. Read under the tenant's lock
//! when it can be had in time, so that no run of another replica is half-way through it;
//! read anyway (and said so) when it cannot. Writes nothing.

use std::time::Duration;

use super::tenant_run::tenant_values;
use super::{Fleet, FleetError};
use crate::engine::Engine;
use crate::model::Direction;
use crate::registry::TenantId;
use crate::revision::plan::{self, Target};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    /// The version table's rows.
    pub rows: Vec<String>,
    /// Revisions `direction` to the target would still apply (0: at the target).
    pub remaining: usize,
    /// Whether it was read under the tenant's lock.
    pub locked: bool,
}

impl Fleet {
    /// Tenant `id` against `direction` to `target`, waiting up to `wait` for its lock.
    pub async fn standing(
        &self,
        id: &TenantId,
        direction: Direction,
        target: &str,
        wait: Duration,
    ) -> Result<Standing, FleetError> {
        let tenant = self.registry.get(id).await?;
        let app = self.app(&tenant.app)?;
        let target: Target = target.parse().expect("infallible");
        let values = tenant_values(app, &tenant).map_err(|source| FleetError::Placeholders {
            tenant: id.clone(),
            source,
        })?;
        let settings = self.settings_for(&tenant.connection);
        let guard = self
            .locks
            .lock(&tenant.connection.database_key(), wait)
            .await
            .inspect_err(|e| tracing::warn!(tenant = %id, error = %e, "reading where a tenant stands without its lock"))
            .ok();
        let engine_err = |source| FleetError::Engine {
            tenant: id.clone(),
            source: Box::new(source),
        };
        let read =
            async {
                let conn = self.pools.get(&tenant.connection).await.map_err(|source| {
                    FleetError::Connect {
                        tenant: id.clone(),
                        source,
                    }
                })?;
                let state = Engine::new(app, &values, &settings)
                    .state(&conn)
                    .await
                    .map_err(engine_err)?;
                let rows = plan::rows_from_db(&app.graph, &state.rows)
                    .map_err(|e| engine_err(e.into()))?;
                let planned = plan::plan(&app.graph, &rows, direction, &target)
                    .map_err(|e| engine_err(e.into()))?;
                Ok(Standing {
                    rows: state.rows.iter().map(|r| r.to_string()).collect(),
                    remaining: planned.steps.len(),
                    locked: guard.is_some(),
                })
            }
            .await;
        if let Some(g) = guard {
            g.release().await;
        }
        read
    }
}
