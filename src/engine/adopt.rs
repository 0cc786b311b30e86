//! Fingerprints of what each revision should produce, computed on a scratch database that is
//! created on the same server and dropped afterwards. They recognise a database built outside
//! fleetmig (adopt: which revision is it at?) and show drift (verify: does the live schema
//! equal the one its recorded revision should have?).

use tokio_postgres::Client;

use super::fingerprint::{Fingerprint, fingerprint};
use super::{Engine, EngineError, Event, RunOptions, Settings};
use crate::model::{Direction, RevisionId};
use crate::pg;
use crate::revision::placeholder::quote_ident;
use crate::revision::plan::Target;
use crate::revision::{App, Resolved};

/// A throwaway database on the same server as `base`; dropped by [`Scratch::drop`].
pub struct Scratch {
    admin: Client,
    name: String,
    target: pg::Target,
}

async fn connect(target: &pg::Target) -> Result<Client, EngineError> {
    Ok(target
        .connect()
        .await
        .map_err(EngineError::Connect)?
        .into_client())
}

/// Errors on a scratch database say so, and name it: the user's database is not the one
/// that failed.
fn on_scratch(app: &App, database: &str) -> impl FnOnce(EngineError) -> EngineError {
    let template = app.scratch.template_name().to_string();
    let manifest = app
        .dir
        .join(crate::revision::MANIFEST)
        .display()
        .to_string();
    let database = database.to_string();
    move |source| match source {
        already @ EngineError::Scratch { .. } => already,
        source => EngineError::Scratch {
            database,
            template,
            manifest,
            source: Box::new(source),
        },
    }
}

impl Scratch {
    /// Needs CREATEDB on the server (via its `postgres` database), and the right to copy the
    /// app's scratch template when it declares one. The app's prelude runs on it first.
    pub async fn create(base: &pg::Target, app: &App) -> Result<Scratch, EngineError> {
        let admin = connect(&base.with_dbname("postgres")).await?;
        let name = format!("fleetmig_scratch_{}", uuid::Uuid::new_v4().simple());
        let template = app
            .scratch
            .template
            .as_deref()
            .map(|t| format!(" TEMPLATE {}", quote_ident(t)))
            .unwrap_or_default();
        admin
            .batch_execute(&format!("CREATE DATABASE {}{template}", quote_ident(&name)))
            .await
            .map_err(EngineError::db(
                "creating a scratch database (needs CREATEDB, and the right to copy its template)",
            ))
            .map_err(on_scratch(app, &name))?;
        let scratch = Scratch {
            admin,
            target: base.with_dbname(&name),
            name,
        };
        if let Some(prelude) = &app.scratch.prelude {
            let ran = async {
                let client = scratch.client().await?;
                for stmt in &prelude.statements {
                    client.batch_execute(&stmt.text).await.map_err(|source| {
                        EngineError::Prelude {
                            location: prelude.location(stmt.line),
                            source,
                        }
                    })?;
                }
                Ok(())
            }
            .await;
            if let Err(e) = ran {
                let e = on_scratch(app, &scratch.name)(e);
                scratch.drop().await;
                return Err(e);
            }
        }
        Ok(scratch)
    }

    pub async fn client(&self) -> Result<Client, EngineError> {
        connect(&self.target).await
    }

    pub async fn drop(self) {
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        if let Err(e) = self.admin.batch_execute(&sql).await {
            tracing::warn!(database = %self.name, error = %super::error::describe_pg(&e), "could not drop the scratch database");
        }
    }
}

/// Upgrade a scratch database: no fence, no refusal of changed files, no progress events.
async fn scratch_upgrade(
    engine: &Engine<'_>,
    client: &mut Client,
    target: &Target,
) -> Result<super::Migrated, EngineError> {
    let events = |_: Event| {};
    let opts = RunOptions {
        fence: None,
        allow_changed: true,
        applied_by: "fleetmig fingerprint (scratch)",
        events: &events,
        stop: &|| false,
        live: &|| true,
        blockers: None,
    };
    engine
        .migrate(client, Direction::Upgrade, target, &opts)
        .await
}

/// The schema after each revision, in topological order from base: `(version rows, fingerprint)`.
/// A branchy graph is walked in one topological order, so a state mixing branches differently
/// is not among the candidates.
pub async fn revision_fingerprints(
    app: &App,
    values: &Resolved,
    settings: &Settings,
    base: &pg::Target,
) -> Result<Vec<(Vec<RevisionId>, Fingerprint)>, EngineError> {
    let scratch = Scratch::create(base, app).await?;
    let result = async {
        let mut client = scratch.client().await?;
        let engine = Engine::new(app, values, settings);
        let mut out = vec![(vec![], fingerprint(&client, &settings.tables).await?)];
        let all = (0..app.graph.len()).collect();
        for node in app.graph.topo_order(&all) {
            let target = Target::revision(app.graph.id(node));
            let run = scratch_upgrade(&engine, &mut client, &target).await?;
            out.push((run.after, fingerprint(&client, &settings.tables).await?));
        }
        Ok(out)
    }
    .await
    .map_err(on_scratch(app, &scratch.name));
    scratch.drop().await;
    result
}

/// The schema a database at `rows` should have.
pub async fn expected(
    app: &App,
    values: &Resolved,
    settings: &Settings,
    base: &pg::Target,
    rows: &[RevisionId],
) -> Result<Fingerprint, EngineError> {
    let scratch = Scratch::create(base, app).await?;
    let result = async {
        let mut client = scratch.client().await?;
        let engine = Engine::new(app, values, settings);
        for row in rows {
            scratch_upgrade(&engine, &mut client, &Target::revision(row.as_str())).await?;
        }
        fingerprint(&client, &settings.tables).await
    }
    .await
    .map_err(on_scratch(app, &scratch.name));
    scratch.drop().await;
    result
}
