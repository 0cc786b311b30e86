//! Fleet drift report: each tenant's live schema fingerprint against the one its recorded
//! revision should produce. Expected fingerprints are built once per (app, version rows,
//! placeholder values) on a scratch database on the tenant's own server, and remembered.

use std::collections::BTreeMap;
use std::time::Duration;

use super::tenant_run::tenant_values;
use super::{Fleet, FleetError, Selector};
use crate::engine::Engine;
use crate::engine::fingerprint::fingerprint;
use crate::registry::Tenant;

#[derive(Debug, Clone, Default)]
pub struct TenantDrift {
    pub tenant_id: String,
    pub revisions: Vec<String>,
    pub differences: Vec<String>,
    pub invalid_indexes: Vec<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct DriftReport {
    pub tenants: Vec<TenantDrift>,
    pub by_version: BTreeMap<String, u32>,
    pub drifted: u32,
    pub with_invalid_indexes: u32,
    pub unreachable: u32,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Fleet {
    /// Tenants are checked one at a time: the expected fingerprints are shared, and a drift
    /// report is not a hot path.
    pub async fn verify(
        &self,
        app_name: &str,
        selector: &Selector,
    ) -> Result<DriftReport, FleetError> {
        let app = self.app(app_name)?.clone();
        let tenants = self.select(app_name, selector).await?;
        let mut report = DriftReport::default();
        for tenant in tenants {
            let d = match self.drift(&app, &tenant).await {
                Ok(d) => d,
                Err(e) => TenantDrift {
                    tenant_id: tenant.id.to_string(),
                    error: Some(e),
                    ..TenantDrift::default()
                },
            };
            if d.error.is_some() {
                report.unreachable += 1;
            } else {
                let label = crate::model::version_label(&d.revisions, ",");
                *report.by_version.entry(label).or_default() += 1;
                report.drifted += u32::from(!d.differences.is_empty());
                report.with_invalid_indexes += u32::from(!d.invalid_indexes.is_empty());
            }
            report.tenants.push(d);
        }
        Ok(report)
    }

    async fn drift(
        &self,
        app: &crate::revision::App,
        tenant: &Tenant,
    ) -> Result<TenantDrift, String> {
        let values = tenant_values(app, tenant).map_err(|e| e.to_string())?;
        let settings = self.settings_for(&tenant.connection);
        let conn = self
            .pools
            .get(&tenant.connection)
            .await
            .map_err(|e| e.to_string())?;
        let state = Engine::new(app, &values, &settings)
            .state(&conn)
            .await
            .map_err(|e| e.to_string())?;
        let live = fingerprint(&conn, &settings.tables)
            .await
            .map_err(|e| e.to_string())?;
        drop(conn);
        let rows: Vec<String> = state.rows.iter().map(|r| r.to_string()).collect();
        // The scratch database is made on the tenant's server, around a transaction pooler.
        let base = crate::registry::pools::target(
            &tenant.connection.session_spec(),
            CONNECT_TIMEOUT,
            crate::registry::pools::DEAD_SERVER_AFTER,
        )
        .map_err(|e| e.to_string())?;
        let expected = self
            .expected_fingerprint(app, &values, &base, &state.rows)
            .await?;
        Ok(TenantDrift {
            tenant_id: tenant.id.to_string(),
            revisions: rows,
            differences: expected.diff(&live),
            invalid_indexes: live
                .lines
                .iter()
                .filter(|l| l.ends_with(" INVALID"))
                .cloned()
                .collect(),
            error: None,
        })
    }
}
