//! `fleetmig.v1.Tenants`: the registry over gRPC.

use std::sync::Arc;

use chrono::Utc;
use tonic::{Request, Response, Status};

use super::audited;
use super::convert::{self, tenant_to_proto};
use super::guard::caller;
use super::proto;
use super::status::invalid;
use crate::fleet::Fleet;
use crate::registry::Tenant;
use crate::registry::tenant::field_error;

/// A tenant to create, validated field by field (`at`: the request path of the message).
pub fn new_tenant(fleet: &Fleet, t: Option<proto::Tenant>, at: &str) -> Result<Tenant, Status> {
    let t = t.ok_or_else(|| invalid(field_error(at, "required")))?;
    let id = convert::tenant_id(&format!("{at}.id"), &t.id).map_err(invalid)?;
    let app_name = convert::app_name(&format!("{at}.app"), &t.app).map_err(invalid)?;
    let app = fleet.app(&app_name).map_err(|e| {
        invalid(field_error(
            format!("{at}.app"),
            e.to_string().trim_start_matches("app: "),
        ))
    })?;
    let now = Utc::now();
    let connection =
        convert::connection(t.connection, &format!("{at}.connection")).map_err(invalid)?;
    fleet
        .check_connection_policy(&connection)
        .map_err(|m| invalid(field_error(format!("{at}.connection.sslmode"), m)))?;
    Ok(Tenant {
        id,
        app: app_name,
        connection,
        labels: convert::labels(t.labels, &format!("{at}.labels")).map_err(invalid)?,
        placeholders: convert::placeholders(app, t.placeholders, &format!("{at}.placeholders"))
            .map_err(invalid)?,
        created_at: now,
        updated_at: now,
    })
}

/// An admin role for CREATE/DROP DATABASE: (user, password reference); None: the tenant's own.
pub fn admin(
    user: String,
    password: Option<proto::PasswordRef>,
) -> Result<Option<(String, Option<crate::registry::PasswordRef>)>, Status> {
    if user.is_empty() {
        return Ok(None);
    }
    let c = convert::connection(
        Some(proto::Connection {
            host: "localhost".into(),
            port: 5432,
            dbname: "postgres".into(),
            user,
            password,
            ..Default::default()
        }),
        "admin",
    )
    .map_err(|e| {
        invalid(field_error(
            e.field
                .replace("admin.password", "admin_password")
                .replace("admin.user", "admin_user"),
            e.message,
        ))
    })?;
    Ok(Some((c.user, c.password)))
}

/// Pointing the daemon at a password (or moving a tenant that has one to another host) makes
/// it send a secret where the caller says: that needs `admin`, not `write`.
fn needs_admin(caller: &crate::auth::Caller, field: &str) -> Result<(), Status> {
    if caller.may(crate::auth::Scope::Admin) {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "{field}: setting or redirecting a password reference needs scope 'admin' (the daemon \
         sends that password to the tenant's host); {} has write",
        caller.subject
    )))
}

pub struct TenantsService {
    pub fleet: Arc<Fleet>,
}

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

#[tonic::async_trait]
impl proto::tenants_server::Tenants for TenantsService {
    async fn register(
        &self,
        request: Request<proto::RegisterTenantRequest>,
    ) -> Result<Response<proto::Tenant>, Status> {
        let caller = caller(&request);
        let named = request.get_ref().tenant.as_ref().map(|t| t.id.clone());
        let result: Result<_, Status> = async {
            let tenant = new_tenant(&self.fleet, request.into_inner().tenant, "tenant")?;
            if tenant.connection.password.is_some() {
                needs_admin(&caller, "tenant.connection.password")?;
            }
            let tenant = self.fleet.registry().register(tenant).await?;
            tracing::info!(tenant = %tenant.id, app = %tenant.app, database = %tenant.connection.database_key(), "tenant registered");
            Ok(Response::new(tenant_to_proto(&tenant)))
        }
        .await;
        audited(&self.fleet, &caller, "Tenants/Register", named, result)
    }

    async fn get(
        &self,
        request: Request<proto::GetTenantRequest>,
    ) -> Result<Response<proto::Tenant>, Status> {
        let id = convert::tenant_id("id", &request.into_inner().id).map_err(invalid)?;
        Ok(Response::new(tenant_to_proto(
            &self.fleet.registry().get(&id).await?,
        )))
    }

    async fn list(
        &self,
        request: Request<proto::ListTenantsRequest>,
    ) -> Result<Response<proto::ListTenantsResponse>, Status> {
        let r = request.into_inner();
        let app = if r.app.is_empty() {
            None
        } else {
            Some(convert::app_name("app", &r.app).map_err(invalid)?)
        };
        let labels = convert::labels(r.labels, "labels").map_err(invalid)?;
        let page_size = match r.page_size {
            0 => DEFAULT_PAGE,
            n if n <= MAX_PAGE => n,
            _ => {
                return Err(invalid(field_error(
                    "page_size",
                    format!("at most {MAX_PAGE}"),
                )));
            }
        };
        let after = if r.page_token.is_empty() {
            None
        } else {
            Some(convert::tenant_id("page_token", &r.page_token).map_err(invalid)?)
        };
        let (tenants, more) = self
            .fleet
            .registry()
            .list(app.as_deref(), &labels, page_size as usize, after.as_ref())
            .await?;
        let next_page_token = if more {
            tenants.last().map(|t| t.id.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(proto::ListTenantsResponse {
            tenants: tenants.iter().map(tenant_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn update(
        &self,
        request: Request<proto::UpdateTenantRequest>,
    ) -> Result<Response<proto::Tenant>, Status> {
        let caller = caller(&request);
        let named = request.get_ref().tenant.as_ref().map(|t| t.id.clone());
        let result = self.update_tenant(request.into_inner(), &caller).await;
        audited(&self.fleet, &caller, "Tenants/Update", named, result)
    }

    async fn deregister(
        &self,
        request: Request<proto::DeregisterTenantRequest>,
    ) -> Result<Response<proto::DeregisterTenantResponse>, Status> {
        let caller = caller(&request);
        let named = Some(request.get_ref().id.clone());
        let result = self.deregister_tenant(request.into_inner()).await;
        audited(&self.fleet, &caller, "Tenants/Deregister", named, result)
    }
}

impl TenantsService {
    async fn update_tenant(
        &self,
        r: proto::UpdateTenantRequest,
        caller: &crate::auth::Caller,
    ) -> Result<Response<proto::Tenant>, Status> {
        let t = r
            .tenant
            .ok_or_else(|| invalid(field_error("tenant", "required")))?;
        let id = convert::tenant_id("tenant.id", &t.id).map_err(invalid)?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let all = paths.is_empty();
        for (i, p) in paths.iter().enumerate() {
            if !matches!(p.as_str(), "connection" | "labels" | "placeholders") {
                return Err(invalid(field_error(
                    format!("update_mask.paths[{i}]"),
                    format!(
                        "{} cannot be updated (connection, labels, placeholders)",
                        crate::registry::tenant::shown(p)
                    ),
                )));
            }
        }
        let wants = |f: &str| all || paths.iter().any(|p| p == f);
        let existing = self.fleet.registry().get(&id).await?;
        if !t.app.is_empty() && t.app != existing.app {
            return Err(invalid(field_error(
                "tenant.app",
                "cannot change a tenant's app: deregister and register again",
            )));
        }
        let app = self.fleet.app(&existing.app)?;
        if wants("connection")
            && (existing.connection.password.is_some()
                || t.connection.as_ref().is_some_and(|c| c.password.is_some()))
        {
            needs_admin(caller, "tenant.connection")?;
        }
        let connection = if wants("connection") {
            let c = convert::connection(t.connection, "tenant.connection").map_err(invalid)?;
            self.fleet
                .check_connection_policy(&c)
                .map_err(|m| invalid(field_error("tenant.connection.sslmode", m)))?;
            Some(c)
        } else {
            None
        };
        let labels = if wants("labels") {
            Some(convert::labels(t.labels, "tenant.labels").map_err(invalid)?)
        } else {
            None
        };
        let placeholders = if wants("placeholders") {
            Some(
                convert::placeholders(app, t.placeholders, "tenant.placeholders")
                    .map_err(invalid)?,
            )
        } else {
            None
        };
        let updated = self
            .fleet
            .registry()
            .update(&id, move |mut old| {
                if let Some(c) = connection {
                    old.connection = c;
                }
                if let Some(l) = labels {
                    old.labels = l;
                }
                if let Some(p) = placeholders {
                    old.placeholders = p;
                }
                old.updated_at = Utc::now();
                old
            })
            .await?;
        tracing::info!(tenant = %updated.id, "tenant updated");
        Ok(Response::new(tenant_to_proto(&updated)))
    }

    async fn deregister_tenant(
        &self,
        r: proto::DeregisterTenantRequest,
    ) -> Result<Response<proto::DeregisterTenantResponse>, Status> {
        let id = convert::tenant_id("id", &r.id).map_err(invalid)?;
        let admin = admin(r.admin_user, r.admin_password)?;
        if r.drop_database {
            let tenant = self.fleet.registry().get(&id).await?;
            if r.confirm_dbname != tenant.connection.dbname {
                return Err(invalid(field_error(
                    "confirm_dbname",
                    format!(
                        "must repeat the database name ({}) to drop it",
                        tenant.connection.dbname
                    ),
                )));
            }
        }
        let (removed, dropped) = self.fleet.offboard(&id, r.drop_database, admin).await?;
        tracing::info!(tenant = %removed.id, database_dropped = dropped, "tenant deregistered");
        Ok(Response::new(proto::DeregisterTenantResponse {
            tenant: Some(tenant_to_proto(&removed)),
            database_dropped: dropped,
        }))
    }
}
