//! Fingerprints of what each revision should produce, computed on a scratch database that is
//! created on the same server and dropped afterwards. They recognise a database built outside
//! fleetmig (adopt: which revision is it at?) and show drift (verify: does the live schema
//! equal the one its recorded revision should have?).

use tokio_postgres::{Client, NoTls};

use super::fingerprint::{Fingerprint, fingerprint};
use super::{Engine, EngineError, Event, RunOptions, Settings};
use crate::model::{Direction, RevisionId};
use crate::revision::plan::Target;
use crate::revision::{App, Resolved};

/// A throwaway database on the same server as `base`; dropped by [`Scratch::drop`].
pub struct Scratch {
    admin: Client,
    name: String,
    config: tokio_postgres::Config,
}

async fn connect(config: &tokio_postgres::Config) -> Result<Client, EngineError> {
    let (client, connection) = config.connect(NoTls).await.map_err(EngineError::Connect)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

impl Scratch {
    /// Needs CREATEDB on the server (via its `postgres` database).
    pub async fn create(base: &tokio_postgres::Config) -> Result<Scratch, EngineError> {
        let mut admin_config = base.clone();
        admin_config.dbname("postgres");
        let admin = connect(&admin_config).await?;
        let name = format!("fleetmig_scratch_{}", uuid::Uuid::new_v4().simple());
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .map_err(EngineError::db(
                "creating a scratch database (needs CREATEDB)",
            ))?;
        let mut config = base.clone();
        config.dbname(&name);
        Ok(Scratch {
            admin,
            name,
            config,
        })
    }

    pub async fn client(&self) -> Result<Client, EngineError> {
        connect(&self.config).await
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
    base: &tokio_postgres::Config,
) -> Result<Vec<(Vec<RevisionId>, Fingerprint)>, EngineError> {
    let scratch = Scratch::create(base).await?;
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
    .await;
    scratch.drop().await;
    result
}

/// The schema a database at `rows` should have.
pub async fn expected(
    app: &App,
    values: &Resolved,
    settings: &Settings,
    base: &tokio_postgres::Config,
    rows: &[RevisionId],
) -> Result<Fingerprint, EngineError> {
    let scratch = Scratch::create(base).await?;
    let result = async {
        let mut client = scratch.client().await?;
        let engine = Engine::new(app, values, settings);
        for row in rows {
            scratch_upgrade(&engine, &mut client, &Target::revision(row.as_str())).await?;
        }
        fingerprint(&client, &settings.tables).await
    }
    .await;
    scratch.drop().await;
    result
}
