//! Through Debian's PgBouncer (terminating TLS, verified with verify-full) in front of the
//! pgvector server: a fleet upgrade in transaction mode and in session mode, each revision
//! applied once; a transaction-mode run leaves no advisory lock and no setting on the server
//! connection it used; a non-transactional revision is refused there, with what to do, unless
//! a session connection is named.

use std::path::Path;
use std::process::{Command, Output};

use crate::daemon_harness as dh;
use crate::harness;
use crate::tls_services::{self, Bouncers};

fn tls_params(b: &Bouncers) -> String {
    format!("sslmode=verify-full&sslrootcert={}", b.pki.ca.display())
}

fn through(b: &Bouncers, port: u16, db: &str) -> String {
    format!(
        "postgresql://postgres@127.0.0.1:{port}/{db}?{}",
        tls_params(b)
    )
}

/// Per revision, how many upgrade rows the history holds.
async fn upgrades(url: &str) -> Vec<(String, i64)> {
    let c = fleetmig::pg::connect_str(url).await.unwrap();
    c.query(
        "SELECT revision::text, count(*) FROM fleetmig_history WHERE direction = 'upgrade' GROUP BY revision ORDER BY revision",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Advisory locks held in these databases, by anyone.
async fn advisory_locks(admin: &tokio_postgres::Client, dbs: &[String]) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database WHERE l.locktype = 'advisory' AND d.datname = ANY($1)",
            &[&dbs],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_fleet_upgrades_through_pgbouncer_in_transaction_and_session_mode() {
    let (Some(pg), Some(etcd), Some(b)) = (
        harness::postgres(),
        harness::etcd(),
        tls_services::bouncers(),
    ) else {
        return;
    };
    let prefix = etcd.prefix("pgbouncer");
    let daemon = dh::start(dh::config(
        &etcd.endpoint,
        &prefix,
        &harness::repo_migrations(),
    ))
    .await;
    let mut tenants = daemon.tenants().await;
    let mut dbs = vec![];
    for i in 0..25 {
        let (_, db) = pg.database(&format!("bouncer{i}")).await;
        // 20 behind the transaction-mode pool (the IVFFlat build goes around it, to the
        // session-mode pool), 5 behind the session-mode pool.
        let transaction = i < 20;
        let mut t = dh::tenant(
            &format!("pgb-{i}"),
            "aletheia",
            &db,
            &[],
            &[("EMBEDDING_DIM", "32")],
        );
        let c = t.connection.as_mut().unwrap();
        c.port = u32::from(if transaction {
            b.transaction
        } else {
            b.session
        });
        c.sslmode = "verify-full".into();
        c.sslrootcert = b.pki.ca.display().to_string();
        c.pooler = if transaction {
            "transaction"
        } else {
            "session"
        }
        .into();
        if transaction {
            c.session_host = "127.0.0.1".into();
            c.session_port = u32::from(b.session);
        }
        dh::register(&mut tenants, t).await;
        dbs.push(db);
    }
    let mut m = daemon.migrations().await;
    let events = dh::collect(
        m.upgrade(dh::all("aletheia", "", 8))
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    let s = dh::summary(&events);
    assert_eq!((s.done, s.failed), (25, 0), "{events:?}");
    let want: Vec<(String, i64)> = ["0001", "0002", "0003"]
        .iter()
        .map(|r| (r.to_string(), 1))
        .collect();
    for db in &dbs {
        assert_eq!(upgrades(&pg.url(db)).await, want, "{db}");
    }
    let admin = fleetmig::pg::connect_str(&pg.url("postgres"))
        .await
        .unwrap();
    assert_eq!(advisory_locks(&admin, &dbs).await, 0);
    // A second upgrade finds every tenant at head, through the same pools.
    let events = dh::collect(
        m.upgrade(dh::all("aletheia", "", 0))
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    assert_eq!(dh::summary(&events).up_to_date, 25, "{events:?}");
    daemon.shutdown().await.unwrap();
}

fn cli(dir: &Path, url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleetmig"))
        .current_dir(dir)
        .args(args)
        .env("DATABASE_URL", url)
        .env("HOME", dir)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test]
async fn a_transaction_pooler_is_left_without_session_state() {
    let (Some(pg), Some(b)) = (harness::postgres(), tls_services::bouncers()) else {
        return;
    };
    // A revision that sets session-level settings (as some do), then a concurrent index build.
    let (tmp, root) = harness::scratch_app(
        "leaky",
        "",
        &[
            (
                "l1.sql",
                "-- revision: l1\n-- down_revision:\n-- +upgrade\nCREATE TABLE items (id int, name text);\nSET statement_timeout = '123s';\nSET search_path = pg_catalog, public;\nSET lock_timeout = '77s';\n-- +downgrade\nDROP TABLE items;\n",
            ),
            (
                "l2.sql",
                "-- revision: l2\n-- down_revision: l1\n-- transaction: none\n-- +upgrade\nCREATE INDEX CONCURRENTLY IF NOT EXISTS items_name ON items (name);\n-- +downgrade\nDROP INDEX CONCURRENTLY IF EXISTS items_name;\n",
            ),
        ],
    );
    let (direct, db) = pg.database("leaky").await;
    let pooled = through(b, b.transaction, &db);
    let dir = tmp.path();
    let migrations = root.display().to_string();
    let base = [
        "--migrations-dir",
        migrations.as_str(),
        "--pooler",
        "transaction",
    ];
    let args = |more: &[&'static str]| -> Vec<&str> {
        base.iter().copied().chain(more.iter().copied()).collect()
    };

    // The first revision alone, through the transaction-mode pool.
    let out = cli(dir, &pooled, &args(&["upgrade", "l1"]));
    assert!(out.status.success(), "{}", text(&out));
    // The pool's single server connection for this database is the one the run used: the
    // next client sees the defaults, not the revision's settings, and no lock.
    let next = fleetmig::pg::connect_str(&pooled.replace("verify-full", "require"))
        .await
        .unwrap();
    let rows = next
        .simple_query("SHOW statement_timeout; SHOW lock_timeout; SHOW search_path; SHOW idle_in_transaction_session_timeout; SELECT current_user::text")
        .await
        .unwrap();
    let values: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    assert_eq!(
        values,
        ["0", "0", "\"$user\", public", "0", "postgres"],
        "session state left on the pooled server connection"
    );
    drop(next);
    let admin = fleetmig::pg::connect_str(&pg.url("postgres"))
        .await
        .unwrap();
    assert_eq!(advisory_locks(&admin, std::slice::from_ref(&db)).await, 0);

    // The concurrent build cannot run there: refused before anything, with what to do.
    let out = cli(dir, &pooled, &args(&["upgrade", "head"]));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("revision l2 is non-transactional"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("--session-url"), "{}", text(&out));
    assert_eq!(upgrades(&direct).await, [("l1".to_string(), 1)]);
    // With a session connection named, it goes there.
    let session = through(b, b.session, &db);
    let mut with_session = args(&["upgrade", "head"]);
    with_session.extend(["--session-url", session.as_str()]);
    let out = cli(dir, &pooled, &with_session);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        upgrades(&direct).await,
        [("l1".to_string(), 1), ("l2".to_string(), 1)]
    );
    let c = fleetmig::pg::connect_str(&direct).await.unwrap();
    let index_valid: bool = c
        .query_one(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'items_name'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(index_valid);
    assert_eq!(advisory_locks(&admin, std::slice::from_ref(&db)).await, 0);
}
