//! The single-database engine against real Postgres: round trips, failures, retries,
//! concurrent index builds, adoption of existing databases, offline SQL, Alembic state.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleetmig::engine::fingerprint::{Fingerprint, fingerprint};
use fleetmig::engine::{Applied, Engine, EngineError, Event, RunOptions, Settings};
use fleetmig::model::Direction;
use fleetmig::revision::{App, Resolved, Target};
use tokio_postgres::Client;

use crate::harness;

pub fn values(app: &App, explicit: &[(&str, &str)]) -> Resolved {
    let explicit: BTreeMap<String, String> = explicit
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    app.declarations.resolve(&|_| None, &explicit).unwrap()
}

pub struct Run<'a> {
    pub app: &'a App,
    pub values: Resolved,
    pub settings: Settings,
    pub events: Arc<Mutex<Vec<Event>>>,
}

impl<'a> Run<'a> {
    pub fn new(app: &'a App) -> Self {
        Run {
            app,
            values: values(app, &[]),
            settings: Settings::default(),
            events: Arc::default(),
        }
    }

    pub async fn go(
        &self,
        client: &mut Client,
        direction: Direction,
        target: &str,
    ) -> Result<Vec<Applied>, EngineError> {
        let events = self.events.clone();
        let sink = move |e: Event| events.lock().unwrap().push(e);
        let opts = RunOptions {
            fence: None,
            allow_changed: false,
            applied_by: "test",
            events: &sink,
            stop: &|| false,
            live: &|| true,
            blockers: None,
        };
        Engine::new(self.app, &self.values, &self.settings)
            .migrate(client, direction, &target.parse::<Target>().unwrap(), &opts)
            .await
            .map(|m| m.applied)
    }

    pub async fn go_allow_changed(
        &self,
        client: &mut Client,
        target: &str,
    ) -> Result<Vec<Applied>, EngineError> {
        let sink = |_: Event| {};
        let opts = RunOptions {
            fence: None,
            allow_changed: true,
            applied_by: "test",
            events: &sink,
            stop: &|| false,
            live: &|| true,
            blockers: None,
        };
        Engine::new(self.app, &self.values, &self.settings)
            .migrate(
                client,
                Direction::Upgrade,
                &target.parse::<Target>().unwrap(),
                &opts,
            )
            .await
            .map(|m| m.applied)
    }

    pub async fn rows(&self, client: &Client) -> Vec<String> {
        let state = Engine::new(self.app, &self.values, &self.settings)
            .state(client)
            .await
            .unwrap();
        state.rows.iter().map(|r| r.to_string()).collect()
    }
}

pub async fn fp(client: &Client) -> Fingerprint {
    fingerprint(client, &Settings::default().tables)
        .await
        .unwrap()
}

async fn fresh(hint: &str) -> Option<(Client, String)> {
    let pg = harness::postgres()?;
    let (url, _) = pg.database(hint).await;
    Some((fleetmig::pg::connect_str(&url).await.unwrap(), url))
}

fn load(root: &Path, app: &str) -> App {
    App::load(root, app).unwrap()
}

#[tokio::test]
async fn every_revision_of_both_apps_round_trips() {
    for app_name in ["aletheia", "truthgraph"] {
        let Some((mut client, _)) = fresh(&format!("roundtrip_{app_name}")).await else {
            return;
        };
        let app = load(&harness::repo_migrations(), app_name);
        let run = Run::new(&app);
        let mut fingerprints = vec![fp(&client).await];
        for _ in 0..app.graph.len() {
            run.go(&mut client, Direction::Upgrade, "+1").await.unwrap();
            fingerprints.push(fp(&client).await);
        }
        assert!(
            run.go(&mut client, Direction::Upgrade, "+1").await.is_err(),
            "no step past head"
        );
        for i in (1..fingerprints.len()).rev() {
            run.go(&mut client, Direction::Downgrade, "-1")
                .await
                .unwrap();
            let down = fp(&client).await;
            // Downgrades keep the vector extension (other objects may use it): compare the rest.
            let ext = |f: &Fingerprint| Fingerprint {
                lines: f
                    .lines
                    .iter()
                    .filter(|l| !l.starts_with("extension vector"))
                    .cloned()
                    .collect(),
            };
            assert_eq!(
                ext(&down),
                ext(&fingerprints[i - 1]),
                "{app_name}: downgrade of step {i} differs: {:?}",
                down.diff(&fingerprints[i - 1])
            );
            run.go(&mut client, Direction::Upgrade, "+1").await.unwrap();
            assert_eq!(
                ext(&fp(&client).await),
                ext(&fingerprints[i]),
                "{app_name}: re-upgrade of step {i} differs"
            );
            run.go(&mut client, Direction::Downgrade, "-1")
                .await
                .unwrap();
        }
        assert!(run.rows(&client).await.is_empty());
        let last = fingerprints.last().unwrap();
        assert!(
            last.lines.iter().any(|l| l.contains("USING ivfflat")),
            "{app_name}: the IVFFlat index exists at head"
        );
        assert!(
            last.lines.iter().any(|l| l.contains("vector(")),
            "{app_name}: a vector column exists at head"
        );
    }
}

#[tokio::test]
async fn placeholders_shape_the_schema_and_history() {
    let Some((mut client, _)) = fresh("placeholders").await else {
        return;
    };
    let app = load(&harness::repo_migrations(), "aletheia");
    let mut run = Run::new(&app);
    run.values = values(
        &app,
        &[("EMBEDDING_DIM", "1536"), ("PGVECTOR_IVFFLAT_LISTS", "7")],
    );
    run.go(&mut client, Direction::Upgrade, "head")
        .await
        .unwrap();
    let f = fp(&client).await;
    assert!(
        f.lines
            .iter()
            .any(|l| l.contains("embedding public.vector(1536)")),
        "{:?}",
        f.lines
    );
    assert!(
        f.lines.iter().any(|l| l.contains("lists='7'")),
        "{:?}",
        f.lines
    );
    let row = client
        .query_one(
            "SELECT placeholders->>'EMBEDDING_DIM' FROM fleetmig_history WHERE revision = '0001'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "1536");
}

#[tokio::test]
async fn conditional_revision_is_skipped_and_remembered() {
    let Some((mut client, _)) = fresh("condition").await else {
        return;
    };
    let app = load(&harness::repo_migrations(), "aletheia");
    let mut run = Run::new(&app);
    run.values = values(&app, &[("PGVECTOR_ENABLE_IVFFLAT", "false")]);
    let done = run
        .go(&mut client, Direction::Upgrade, "head")
        .await
        .unwrap();
    assert_eq!(
        done[2].skipped_by.as_deref(),
        Some("PGVECTOR_ENABLE_IVFFLAT")
    );
    assert_eq!(run.rows(&client).await, vec!["0003"]);
    assert!(
        !fp(&client)
            .await
            .lines
            .iter()
            .any(|l| l.contains("ivfflat"))
    );
    let skipped: bool = client
        .query_one(
            "SELECT skipped FROM fleetmig_history WHERE revision = '0003'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(skipped);
    // Turning the flag on later does not make the downgrade drop an index that was never built
    // (it is skipped too, as recorded), and the downgrade still succeeds.
    run.values = values(&app, &[("PGVECTOR_ENABLE_IVFFLAT", "true")]);
    let down = run
        .go(&mut client, Direction::Downgrade, "-1")
        .await
        .unwrap();
    assert_eq!(
        down[0].skipped_by.as_deref(),
        Some("PGVECTOR_ENABLE_IVFFLAT")
    );
}

const MANIFEST: &str = "";

/// Three revisions, the third failing. By default they share one transaction (Alembic's
/// PostgreSQL default): the failure leaves the database at its starting revision, with no
/// history row of the group, and names the revisions rolled back with it. With
/// `transaction_per_revision = true` it is left after the second.
#[tokio::test]
async fn a_failure_in_a_group_rolls_back_the_group_and_per_revision_keeps_the_rest() {
    for per_revision in [false, true] {
        let Some((mut client, _)) = fresh(&format!("failing_{per_revision}")).await else {
            return;
        };
        let (_tmp, root) = harness::scratch_app(
            "app",
            &format!("transaction_per_revision = {per_revision}\n"),
            &[
                (
                    "0001_a.sql",
                    "-- revision: 0001\n-- down_revision:\n-- +upgrade\nCREATE TABLE a (x int);\n-- +downgrade\nDROP TABLE a;\n",
                ),
                (
                    "0002_b.sql",
                    "-- revision: 0002\n-- down_revision: 0001\n-- +upgrade\nCREATE TABLE b (x int);\nINSERT INTO a VALUES (1);\n-- +downgrade\nDROP TABLE b;\n",
                ),
                (
                    "0003_c.sql",
                    "-- revision: 0003\n-- down_revision: 0002\n-- +upgrade\nCREATE TABLE c (x int);\nSELECT 1 / 0;\n-- +downgrade\nDROP TABLE c;\n",
                ),
            ],
        );
        let app = load(&root, "app");
        let run = Run::new(&app);
        let err = run
            .go(&mut client, Direction::Upgrade, "head")
            .await
            .unwrap_err();
        let EngineError::StepFailed { failure, applied } = &err else {
            panic!("{err}")
        };
        assert_eq!(failure.revision.as_str(), "0003");
        assert_eq!(failure.sqlstate.as_deref(), Some("22012"));
        assert!(
            failure
                .location
                .as_deref()
                .unwrap()
                .ends_with("0003_c.sql:5"),
            "{failure}"
        );
        let exists = |t: &'static str| {
            let client = &client;
            async move {
                client
                    .query_one(&format!("SELECT to_regclass('{t}') IS NOT NULL"), &[])
                    .await
                    .unwrap()
                    .get::<_, bool>(0)
            }
        };
        let history: i64 = if exists("fleetmig_history").await {
            client
                .query_one("SELECT count(*) FROM fleetmig_history", &[])
                .await
                .unwrap()
                .get(0)
        } else {
            0
        };
        if per_revision {
            assert_eq!(
                applied.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
                ["0001", "0002"]
            );
            assert!(failure.rolled_back.is_empty());
            assert_eq!(run.rows(&client).await, vec!["0002"]);
            assert!(exists("b").await);
            assert_eq!(history, 2);
        } else {
            assert!(applied.is_empty(), "{err}");
            assert_eq!(
                failure
                    .rolled_back
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>(),
                ["0001", "0002"]
            );
            assert!(
                err.to_string()
                    .contains("rolled back with it (the same transaction): 0001, 0002"),
                "{err}"
            );
            assert!(
                run.rows(&client).await.is_empty(),
                "at its starting revision"
            );
            assert!(!exists("a").await && !exists("b").await);
            assert_eq!(history, 0, "no history row of the group");
        }
        assert!(
            !exists("c").await,
            "the failed revision's table was rolled back"
        );
    }
}

fn lock_app() -> (tempfile::TempDir, std::path::PathBuf) {
    harness::scratch_app(
        "app",
        MANIFEST,
        &[
            (
                "0001_a.sql",
                "-- revision: 0001\n-- down_revision:\n-- +upgrade\nCREATE TABLE busy (x int);\n-- +downgrade\nDROP TABLE busy;\n",
            ),
            (
                "0002_b.sql",
                "-- revision: 0002\n-- down_revision: 0001\n-- +upgrade\nALTER TABLE busy ADD COLUMN y int;\n-- +downgrade\nALTER TABLE busy DROP COLUMN y;\n",
            ),
        ],
    )
}

#[tokio::test]
async fn lock_timeouts_are_retried_with_backoff() {
    let Some((mut client, url)) = fresh("locktimeout").await else {
        return;
    };
    let (_tmp, root) = lock_app();
    let app = load(&root, "app");
    let mut run = Run::new(&app);
    run.settings.lock_timeout = Duration::from_millis(100);
    run.settings.retry_min_delay = Duration::from_millis(50);
    run.settings.retry_max_delay = Duration::from_millis(200);
    run.settings.lock_retries = 30;
    run.go(&mut client, Direction::Upgrade, "0001")
        .await
        .unwrap();

    // Another session holds a conflicting lock for a while, then lets go.
    let holder = fleetmig::pg::connect_str(&url).await.unwrap();
    holder
        .batch_execute("BEGIN; LOCK TABLE busy IN ACCESS SHARE MODE")
        .await
        .unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        holder.batch_execute("COMMIT").await.unwrap();
    });
    let done = run
        .go(&mut client, Direction::Upgrade, "head")
        .await
        .unwrap();
    release.await.unwrap();
    assert!(
        done[0].attempts > 1,
        "the first attempt must have timed out"
    );
    let retries = run
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, Event::LockRetry { .. }))
        .count();
    assert_eq!(retries as u32, done[0].attempts - 1);
    assert_eq!(run.rows(&client).await, vec!["0002"]);
}

#[tokio::test]
async fn exhausted_lock_retries_fail_with_55p03() {
    let Some((mut client, url)) = fresh("lockexhausted").await else {
        return;
    };
    let (_tmp, root) = lock_app();
    let app = load(&root, "app");
    let mut run = Run::new(&app);
    run.settings.lock_timeout = Duration::from_millis(50);
    run.settings.retry_min_delay = Duration::from_millis(10);
    run.settings.retry_max_delay = Duration::from_millis(20);
    run.settings.lock_retries = 2;
    run.go(&mut client, Direction::Upgrade, "0001")
        .await
        .unwrap();
    let mut holder = fleetmig::pg::connect_str(&url).await.unwrap();
    let tx = holder.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE busy IN ACCESS SHARE MODE")
        .await
        .unwrap();
    let err = run
        .go(&mut client, Direction::Upgrade, "head")
        .await
        .unwrap_err();
    let EngineError::StepFailed { failure, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(failure.sqlstate.as_deref(), Some("55P03"));
    assert_eq!(failure.attempts, 3);
    assert!(err.to_string().contains("after 3 attempts"), "{err}");
    tx.rollback().await.unwrap();
    assert_eq!(run.rows(&client).await, vec!["0001"]);
}

#[tokio::test]
async fn an_invalid_index_leftover_is_dropped_and_rebuilt() {
    let Some((mut client, _)) = fresh("invalidindex").await else {
        return;
    };
    let (_tmp, root) = harness::scratch_app(
        "app",
        MANIFEST,
        &[
            (
                "0001_a.sql",
                "-- revision: 0001\n-- down_revision:\n-- +upgrade\nCREATE TABLE t (x int);\n-- +downgrade\nDROP TABLE t;\n",
            ),
            (
                "0002_b.sql",
                "-- revision: 0002\n-- down_revision: 0001\n-- transaction: none\n-- analyze: t\n-- +upgrade\nCREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS ix_t_x ON t (x);\n-- +downgrade\nDROP INDEX CONCURRENTLY IF EXISTS ix_t_x;\n",
            ),
        ],
    );
    let app = load(&root, "app");
    let run = Run::new(&app);
    run.go(&mut client, Direction::Upgrade, "0001")
        .await
        .unwrap();
    // An earlier build failed halfway (duplicates), leaving an INVALID index of that name.
    client
        .batch_execute("INSERT INTO t VALUES (1), (1)")
        .await
        .unwrap();
    assert!(
        client
            .batch_execute("CREATE UNIQUE INDEX CONCURRENTLY ix_t_x ON t (x)")
            .await
            .is_err()
    );
    let state = "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = 'ix_t_x'";
    assert!(
        !client
            .query_one(state, &[])
            .await
            .unwrap()
            .get::<_, bool>(0),
        "the leftover is INVALID"
    );
    // With the duplicates still there, the rebuild fails again and reports it.
    let err = run
        .go(&mut client, Direction::Upgrade, "head")
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), Some("23505"), "{err}");
    assert_eq!(run.rows(&client).await, vec!["0001"]);
    // Fix the cause: the retry drops the INVALID index and builds a valid one.
    client.batch_execute("DELETE FROM t").await.unwrap();
    run.go(&mut client, Direction::Upgrade, "head")
        .await
        .unwrap();
    assert!(
        client
            .query_one(state, &[])
            .await
            .unwrap()
            .get::<_, bool>(0),
        "rebuilt and valid"
    );
    assert!(
        run.events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, Event::InvalidIndexDropped { .. }))
    );
    assert_eq!(run.rows(&client).await, vec!["0002"]);
}

#[tokio::test]
async fn changed_files_are_refused_unless_allowed() {
    let Some((mut client, _)) = fresh("checksum").await else {
        return;
    };
    let body = "-- revision: 0001\n-- down_revision:\n-- +upgrade\nCREATE TABLE a (x int);\n-- +downgrade\nDROP TABLE a;\n";
    let (_tmp, root) = harness::scratch_app("app", MANIFEST, &[("0001_a.sql", body)]);
    let app = load(&root, "app");
    Run::new(&app)
        .go(&mut client, Direction::Upgrade, "head")
        .await
        .unwrap();
    std::fs::write(
        root.join("app/0001_a.sql"),
        body.replace("x int", "x bigint"),
    )
    .unwrap();
    std::fs::write(root.join("app/0002_b.sql"), "-- revision: 0002\n-- down_revision: 0001\n-- +upgrade\nCREATE TABLE b (x int);\n-- +downgrade\nDROP TABLE b;\n").unwrap();
    let app = load(&root, "app");
    let run = Run::new(&app);
    let err = run
        .go(&mut client, Direction::Upgrade, "head")
        .await
        .unwrap_err();
    assert!(
        matches!(err, EngineError::ChecksumMismatch(ref c) if c[0].revision.as_str() == "0001"),
        "{err}"
    );
    assert!(err.to_string().contains("--allow-changed"));
    assert_eq!(run.rows(&client).await, vec!["0001"]);
    run.go_allow_changed(&mut client, "head").await.unwrap();
    assert_eq!(run.rows(&client).await, vec!["0002"]);
}

#[tokio::test]
async fn an_alembic_stamped_database_is_recognised() {
    let Some((mut client, _)) = fresh("alembic").await else {
        return;
    };
    let app = load(&harness::repo_migrations(), "aletheia");
    // What Alembic leaves: its own version table (and no fleetmig tables), schema at 0002.
    let vals = values(&app, &[]);
    for id in ["0001", "0002"] {
        let rev = app.graph.revision(app.graph.node(id).unwrap());
        let r = fleetmig::revision::render::render(rev, Direction::Upgrade, &vals, None).unwrap();
        for s in r.statements {
            client.batch_execute(&s.sql).await.unwrap();
        }
    }
    client
        .batch_execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)); INSERT INTO alembic_version VALUES ('0002');")
        .await
        .unwrap();
    let run = Run::new(&app);
    assert_eq!(run.rows(&client).await, vec!["0002"]);
    let done = run
        .go(&mut client, Direction::Upgrade, "head")
        .await
        .unwrap();
    assert_eq!(
        done.iter().map(|a| a.revision.as_str()).collect::<Vec<_>>(),
        ["0003"]
    );
    let rows: Vec<String> = client
        .query("SELECT version_num FROM alembic_version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        rows,
        vec!["0003"],
        "Alembic's table holds exactly the head, as Alembic would"
    );
}

#[tokio::test]
async fn merges_and_branches_keep_alembic_rows() {
    let Some((mut client, _)) = fresh("branches").await else {
        return;
    };
    let rev = |id: &str, parents: &str| {
        format!(
            "-- revision: {id}\n-- down_revision: {parents}\n-- +upgrade\nCREATE TABLE t_{id} (x int);\n-- +downgrade\nDROP TABLE t_{id};\n"
        )
    };
    let files = [rev("a", ""), rev("b", "a"), rev("c", "a"), rev("m", "b, c")];
    let named: Vec<(String, &str)> = files
        .iter()
        .enumerate()
        .map(|(i, f)| (format!("{i}.sql"), f.as_str()))
        .collect();
    let refs: Vec<(&str, &str)> = named.iter().map(|(n, f)| (n.as_str(), *f)).collect();
    let (_tmp, root) = harness::scratch_app("app", MANIFEST, &refs);
    let app = load(&root, "app");
    let run = Run::new(&app);
    run.go(&mut client, Direction::Upgrade, "b").await.unwrap();
    run.go(&mut client, Direction::Upgrade, "c").await.unwrap();
    assert_eq!(
        run.rows(&client).await,
        vec!["b", "c"],
        "two branch heads, two rows"
    );
    run.go(&mut client, Direction::Upgrade, "head")
        .await
        .unwrap();
    assert_eq!(run.rows(&client).await, vec!["m"]);
    // From the merge, -1 has two ways down: refused like Alembic's "Ambiguous walk"; naming
    // one parent unapplies the merge and keeps both.
    let err = run
        .go(&mut client, Direction::Downgrade, "-1")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Ambiguous walk"), "{err}");
    run.go(&mut client, Direction::Downgrade, "c")
        .await
        .unwrap();
    assert_eq!(run.rows(&client).await, vec!["b", "c"]);
    assert!(
        run.go(&mut client, Direction::Downgrade, "c")
            .await
            .unwrap()
            .is_empty(),
        "c is applied and nothing above it"
    );
    let err = run
        .go(&mut client, Direction::Downgrade, "-1")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ambiguous"), "{err}");
    run.go(&mut client, Direction::Downgrade, "base")
        .await
        .unwrap();
    assert!(run.rows(&client).await.is_empty());
}

#[tokio::test]
async fn a_stale_fence_token_writes_nothing() {
    let Some((mut client, _)) = fresh("stalefence").await else {
        return;
    };
    let (_tmp, root) = harness::scratch_app(
        "app",
        MANIFEST,
        &[
            (
                "0001_a.sql",
                "-- revision: 0001\n-- down_revision:\n-- +upgrade\nCREATE TABLE a (x int);\n-- +downgrade\nDROP TABLE a;\n",
            ),
            (
                "0002_b.sql",
                "-- revision: 0002\n-- down_revision: 0001\n-- transaction: none\n-- +upgrade\nCREATE INDEX CONCURRENTLY IF NOT EXISTS ix_a ON a (x);\n-- +downgrade\nDROP INDEX CONCURRENTLY IF EXISTS ix_a;\n",
            ),
        ],
    );
    let app = load(&root, "app");
    let run = Run::new(&app);
    let sink = |_: Event| {};
    let opts = |token: i64| RunOptions {
        fence: Some(fleetmig::model::FenceToken(token)),
        allow_changed: false,
        applied_by: "test",
        events: &sink,
        stop: &|| false,
        live: &|| true,
        blockers: None,
    };
    let engine = Engine::new(&app, &run.values, &run.settings);
    // A newer holder (token 10) applied 0001...
    engine
        .migrate(
            &mut client,
            Direction::Upgrade,
            &"0001".parse().unwrap(),
            &opts(10),
        )
        .await
        .unwrap();
    // ...so an older one (token 5) is rejected before writing anything, transactional or not.
    let err = engine
        .migrate(
            &mut client,
            Direction::Upgrade,
            &"head".parse().unwrap(),
            &opts(5),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, EngineError::StaleFence { theirs: 10, .. }),
        "{err}"
    );
    let index: bool = client
        .query_one("SELECT to_regclass('ix_a') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!index, "the stale holder built nothing");
    let err = engine
        .migrate(
            &mut client,
            Direction::Downgrade,
            &"base".parse().unwrap(),
            &opts(9),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::StaleFence { .. }), "{err}");
    assert_eq!(run.rows(&client).await, vec!["0001"]);
    // Nor does it stamp: the fence is checked inside the stamp's transaction, which rolls
    // back and leaves the session out of any transaction (DISCARD ALL refuses to run in one).
    let err = engine
        .stamp(&mut client, &["base".to_string()], false, &opts(9))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::StaleFence { .. }), "{err}");
    assert_eq!(run.rows(&client).await, vec!["0001"]);
    client.batch_execute("DISCARD ALL").await.unwrap();
    // The newer holder goes on.
    engine
        .migrate(
            &mut client,
            Direction::Upgrade,
            &"head".parse().unwrap(),
            &opts(10),
        )
        .await
        .unwrap();
    assert_eq!(run.rows(&client).await, vec!["0002"]);
}

/// CVE-2018-1058's shape: a `lower(varchar)` planted in `public` is a better match for a
/// varchar argument than `pg_catalog.lower(text)`. A tenant with its own schema migrates with
/// that schema alone on the search_path, so the planted function is never called; with
/// `public` on the path (the control) it is.
#[tokio::test]
async fn a_function_planted_in_public_cannot_hijack_a_schema_tenant() {
    let Some((mut client, _)) = fresh("hijack").await else {
        return;
    };
    client
        .batch_execute(
            "CREATE SCHEMA app;
             CREATE TABLE public.pwned (at timestamptz DEFAULT now());
             CREATE FUNCTION public.lower(varchar) RETURNS text LANGUAGE sql
               AS $$ INSERT INTO public.pwned DEFAULT VALUES RETURNING 'hijacked' $$;",
        )
        .await
        .unwrap();
    let (_tmp, root) = harness::scratch_app(
        "app",
        MANIFEST,
        &[(
            "0001_a.sql",
            "-- revision: 0001\n-- down_revision:\n-- +upgrade\nCREATE TABLE names AS SELECT lower('ABC'::varchar) AS v;\n-- +downgrade\nDROP TABLE names;\n",
        )],
    );
    let app = load(&root, "app");
    let mut run = Run::new(&app);
    run.settings = Settings::default().for_schema(Some("app"));
    run.go(&mut client, Direction::Upgrade, "head")
        .await
        .unwrap();
    let v: String = client
        .query_one("SELECT v FROM app.names", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "abc");
    let calls: i64 = client
        .query_one("SELECT count(*) FROM public.pwned", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(calls, 0, "the planted function ran during the migration");

    // The control: with public on the path, the same revision calls the planted function.
    run.go(&mut client, Direction::Downgrade, "base")
        .await
        .unwrap();
    run.settings = Settings::default();
    run.settings.tables = Settings::default().tables.in_schema("app");
    run.go(&mut client, Direction::Upgrade, "head")
        .await
        .unwrap();
    let v: String = client
        .query_one("SELECT v FROM public.names", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        v, "hijacked",
        "control: the path without pinning is exploitable"
    );
}

/// Hostile identifier and literal values, quoted the way rendered placeholders are, against
/// real Postgres: each statement creates exactly the one table it names, with the value
/// intact as its default, and nothing else runs (a sentinel table survives every `DROP`).
#[tokio::test]
async fn hostile_quoted_values_execute_only_the_intended_statement() {
    use fleetmig::revision::placeholder::{quote_ident, quote_literal};
    use proptest::strategy::{Strategy, ValueTree};
    let Some((client, _)) = fresh("hostile").await else {
        return;
    };
    client
        .batch_execute("CREATE SCHEMA h; CREATE TABLE public.sentinel (x int)")
        .await
        .unwrap();
    let mut values: Vec<String> = [
        "x\"; DROP TABLE public.sentinel; --",
        "x'); DROP TABLE public.sentinel; --",
        "$$; DROP TABLE public.sentinel; $$",
        "a\\\"b",
        "ʼ; DROP TABLE public.sentinel",
        "＂；DROP TABLE public.sentinel",
        "/* */ -- \n DROP TABLE public.sentinel",
    ]
    .map(String::from)
    .to_vec();
    let chars = "'\";-\\$ \n()/*ʼ＂；а\u{2028}aZ0_";
    let strategy = proptest::collection::vec(
        proptest::sample::select(chars.chars().collect::<Vec<_>>()),
        1..60,
    )
    .prop_map(|c| c.into_iter().collect::<String>());
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for _ in 0..40 {
        values.push(strategy.new_tree(&mut runner).unwrap().current());
    }
    for v in &values {
        client
            .batch_execute("DROP SCHEMA h CASCADE; CREATE SCHEMA h")
            .await
            .unwrap();
        let sql = format!(
            "CREATE TABLE h.{} (v text DEFAULT {}); INSERT INTO h.{} DEFAULT VALUES",
            quote_ident(v),
            quote_literal(v),
            quote_ident(v)
        );
        client
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{v:?}: {e}"));
        let rows = client
            .query("SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'h'", &[])
            .await
            .unwrap();
        let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        // Postgres truncates names to 63 bytes (on a character boundary).
        let mut expected = v.clone();
        while expected.len() > 63 {
            expected.pop();
        }
        assert_eq!(names, vec![expected.clone()], "{v:?}");
        let stored: String = client
            .query_one(&format!("SELECT v FROM h.{}", quote_ident(&expected)), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(&stored, v);
        client
            .query_one("SELECT count(*) FROM public.sentinel", &[])
            .await
            .unwrap_or_else(|e| panic!("{v:?} reached outside its statement: {e}"));
    }
}
