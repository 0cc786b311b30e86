//! A hostile tenant database: shadows of the functions and operators fleetmig's own SQL uses,
//! planted in `public` and in a schema that the role's and the database's search_path put
//! before `pg_catalog`, each logging when called. Every CLI command and every daemon call
//! that touches a tenant runs against it; the log must stay empty (CVE-2018-1058's class).

use std::path::Path;
use std::process::{Command, Output};

use fleetmig::grpc::proto;

use crate::daemon_harness as dh;
use crate::harness;

/// Operators fleetmig compares with, by (operator, left type, right type, result type).
const OPERATORS: &[(&str, &str, &str, &str)] = &[
    ("=", "varchar", "varchar", "boolean"),
    ("=", "text", "text", "boolean"),
    ("=", "name", "name", "boolean"),
    ("=", "name", "text", "boolean"),
    ("=", "bigint", "bigint", "boolean"),
    ("=", "integer", "integer", "boolean"),
    ("=", "smallint", "integer", "boolean"),
    ("=", "oid", "oid", "boolean"),
    ("=", "regclass", "regclass", "boolean"),
    ("<>", "text", "text", "boolean"),
    ("<>", "name", "name", "boolean"),
    ("<=", "bigint", "bigint", "boolean"),
    ("<", "bigint", "bigint", "boolean"),
    (">", "integer", "integer", "boolean"),
    ("~~", "name", "text", "boolean"),
    ("-", "timestamptz", "timestamptz", "interval"),
    ("*", "numeric", "integer", "numeric"),
    ("||", "text", "text", "text"),
];

/// Functions fleetmig calls, by (name, argument types, result type, the built-in call).
const FUNCTIONS: &[(&str, &str, &str, &str)] = &[
    ("now", "", "timestamptz", "pg_catalog.now()"),
    (
        "clock_timestamp",
        "",
        "timestamptz",
        "pg_catalog.clock_timestamp()",
    ),
    (
        "to_regclass",
        "a text",
        "regclass",
        "pg_catalog.to_regclass(a)",
    ),
    (
        "current_setting",
        "a text",
        "text",
        "pg_catalog.current_setting(a)",
    ),
    (
        "set_config",
        "a text, b text, c boolean",
        "text",
        "pg_catalog.set_config(a, b, c)",
    ),
    (
        "pg_try_advisory_lock",
        "a bigint",
        "boolean",
        "pg_catalog.pg_try_advisory_lock(a)",
    ),
    (
        "pg_try_advisory_xact_lock",
        "a bigint",
        "boolean",
        "pg_catalog.pg_try_advisory_xact_lock(a)",
    ),
    (
        "pg_advisory_unlock",
        "a bigint",
        "boolean",
        "pg_catalog.pg_advisory_unlock(a)",
    ),
    (
        "to_char",
        "a timestamptz, b text",
        "text",
        "pg_catalog.to_char(a, b)",
    ),
    ("left", "a text, b integer", "text", "pg_catalog.left(a, b)"),
    (
        "format_type",
        "a oid, b integer",
        "text",
        "pg_catalog.format_type(a, b)",
    ),
    (
        "pg_get_indexdef",
        "a oid",
        "text",
        "pg_catalog.pg_get_indexdef(a)",
    ),
    (
        "pg_get_constraintdef",
        "a oid",
        "text",
        "pg_catalog.pg_get_constraintdef(a)",
    ),
    (
        "format",
        "a text, VARIADIC b text[]",
        "text",
        "pg_catalog.format(a, VARIADIC b)",
    ),
];

fn plants(schema: &str) -> String {
    let mut sql = String::new();
    for (i, (op, l, r, ret)) in OPERATORS.iter().enumerate() {
        let f = format!("{schema}.op_{i}");
        sql += &format!(
            "CREATE FUNCTION {f}(a {l}, b {r}) RETURNS {ret} LANGUAGE plpgsql AS $$ BEGIN INSERT INTO evil.calls VALUES ('{schema}.{op}({l},{r})'); RETURN a OPERATOR(pg_catalog.{op}) b; END $$;\n\
             CREATE OPERATOR {schema}.{op} (LEFTARG = {l}, RIGHTARG = {r}, FUNCTION = {f});\n"
        );
    }
    for (name, args, ret, call) in FUNCTIONS {
        sql += &format!(
            "CREATE FUNCTION {schema}.{name}({args}) RETURNS {ret} LANGUAGE plpgsql AS $$ BEGIN INSERT INTO evil.calls VALUES ('{schema}.{name}'); RETURN {call}; END $$;\n"
        );
    }
    // count(*) too: an aggregate whose step function logs.
    sql += &format!(
        "CREATE FUNCTION {schema}.count_step(s bigint) RETURNS bigint LANGUAGE plpgsql AS $$ BEGIN INSERT INTO evil.calls VALUES ('{schema}.count'); RETURN s OPERATOR(pg_catalog.+) 1; END $$;\n\
         CREATE AGGREGATE {schema}.count(*) (SFUNC = {schema}.count_step, STYPE = bigint, INITCOND = '0');\n"
    );
    sql
}

async fn calls(admin_db: &tokio_postgres::Client) -> Vec<(String, i64)> {
    admin_db
        .query(
            "SELECT what, pg_catalog.count(*) FROM evil.calls GROUP BY what ORDER BY what",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn cli(dir: &Path, url: &str, args: &[&str]) -> Output {
    cli_with(dir, url, args, &[])
}

fn cli_with(dir: &Path, url: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleetmig"))
        .current_dir(dir)
        .args(args)
        .env("DATABASE_URL", url)
        .env("HOME", dir)
        .envs(env.iter().copied())
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
async fn nothing_a_tenant_planted_runs_inside_fleetmig() {
    let (Some(pg), Some(etcd)) = (harness::postgres(), harness::etcd()) else {
        return;
    };
    let admin = fleetmig::pg::connect_str(&pg.url("postgres"))
        .await
        .unwrap();
    admin
        .batch_execute(
            "DO $$ BEGIN CREATE ROLE hostile_app LOGIN CREATEDB; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        )
        .await
        .unwrap();
    admin
        .batch_execute("CREATE DATABASE hostile OWNER hostile_app")
        .await
        .unwrap();
    let admin_db = fleetmig::pg::connect_str(&pg.url("hostile")).await.unwrap();
    admin_db
        .batch_execute(&format!(
            "CREATE SCHEMA evil;
             CREATE TABLE evil.calls (what text, at timestamptz DEFAULT pg_catalog.now());
             GRANT USAGE ON SCHEMA evil TO PUBLIC;
             GRANT INSERT, SELECT ON evil.calls TO PUBLIC;
             {}{}
             ALTER DATABASE hostile SET search_path = evil, pg_catalog, public;
             ALTER ROLE hostile_app IN DATABASE hostile SET search_path = evil, pg_catalog, public;",
            plants("public"),
            plants("evil")
        ))
        .await
        .unwrap();
    let url = format!("postgres://hostile_app@127.0.0.1:{}/hostile", pg.port);

    // The control: an ordinary session of the tenant's role runs the plants.
    let ordinary = fleetmig::pg::connect_str(&url).await.unwrap();
    ordinary
        .batch_execute(
            "SELECT 'a'::varchar = 'a'::varchar, now(), to_regclass('evil.calls'), count(*) FROM (VALUES (1)) v",
        )
        .await
        .unwrap();
    let fired = calls(&admin_db).await;
    for plant in [
        "evil.=(varchar,varchar)",
        "evil.now",
        "evil.to_regclass",
        "evil.count",
    ] {
        assert!(
            fired.iter().any(|(w, _)| w == plant),
            "control: {plant} fires in an ordinary session: {fired:?}"
        );
    }
    drop(ordinary);
    admin_db.batch_execute("TRUNCATE evil.calls").await.unwrap();

    // An app of plain SQL (the role cannot create pgvector): a table, an index built
    // concurrently, a column.
    let (tmp, root) = harness::scratch_app(
        "plain",
        "",
        &[
            (
                "p1.sql",
                "-- revision: p1\n-- down_revision:\n-- +upgrade\nCREATE TABLE items (id bigint PRIMARY KEY, name text);\n-- +downgrade\nDROP TABLE items;\n",
            ),
            (
                "p2.sql",
                "-- revision: p2\n-- down_revision: p1\n-- transaction: none\n-- analyze: items\n-- +upgrade\nCREATE INDEX CONCURRENTLY IF NOT EXISTS items_name ON items (name);\n-- +downgrade\nDROP INDEX CONCURRENTLY IF EXISTS items_name;\n",
            ),
            (
                "p3.sql",
                "-- revision: p3\n-- down_revision: p2\n-- +upgrade\nALTER TABLE items ADD COLUMN note text;\n-- +downgrade\nALTER TABLE items DROP COLUMN note;\n",
            ),
        ],
    );
    let dir = tmp.path();
    let m = root.display().to_string();
    let mut outputs = vec![];
    for args in [
        vec!["upgrade", "head"],
        vec!["current"],
        vec!["current", "--verbose"],
        vec!["history", "--applied"],
        vec!["downgrade", "-1"],
        vec!["stamp", "p2"],
        vec!["upgrade", "head"],
        vec!["downgrade", "p1"],
        vec!["upgrade", "head"],
        vec!["check"],
        vec!["fingerprint"],
        vec!["verify"],
        vec!["adopt"],
        vec!["downgrade", "base"],
        vec!["upgrade", "head"],
    ] {
        let mut full = vec!["--migrations-dir", m.as_str(), "--app", "plain"];
        full.extend(args.iter().copied());
        let out = cli(dir, &url, &full);
        // verify ran to its end: it reports the plants themselves as drift (exit 3).
        let ok = out.status.success()
            || (args == ["verify"]
                && out.status.code() == Some(3)
                && text(&out).contains("evil.calls"));
        assert!(ok, "{args:?}: {}", text(&out));
        outputs.push(text(&out));
    }
    assert_eq!(calls(&admin_db).await, [], "CLI: {outputs:?}");

    // Blocked: a session of the tenant's role holds `items` while a downgrade waits for it.
    // Who blocks it is asked, and the policy cancels it, with the plants all around.
    let holder = fleetmig::pg::connect_str(&format!("{url}?application_name=holder"))
        .await
        .unwrap();
    let hold = tokio::spawn(async move {
        holder
            .batch_execute(
                "BEGIN; LOCK TABLE items IN ACCESS SHARE MODE; SELECT pg_catalog.pg_sleep(20)",
            )
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let out = cli_with(
        dir,
        &url,
        &[
            "--migrations-dir",
            m.as_str(),
            "--app",
            "plain",
            "downgrade",
            "-1",
            "--blockers",
            "cancel",
            "--blockers-older-than",
            "1s",
        ],
        &[
            ("FLEETMIG_ENGINE__LOCK_TIMEOUT", "300ms"),
            ("FLEETMIG_ENGINE__RETRY_MIN_DELAY", "50ms"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("(app holder, user hostile_app")
            && text(&out).contains("[cancelled by fleetmig: transaction open "),
        "{}",
        text(&out)
    );
    assert!(hold.await.unwrap().is_err());
    assert_eq!(calls(&admin_db).await, [], "blocked CLI: {}", text(&out));

    // The daemon: every call that touches the tenant.
    let prefix = etcd.prefix("hostile");
    let daemon = dh::start(dh::config(&etcd.endpoint, &prefix, &root)).await;
    let mut tenants = daemon.tenants().await;
    let mut t = dh::tenant("hostile", "plain", "hostile", &[], &[]);
    t.connection.as_mut().unwrap().user = "hostile_app".into();
    dh::register(&mut tenants, t).await;
    let mut mig = daemon.migrations().await;
    let one = || proto::Selector {
        tenant_ids: vec!["hostile".into()],
        ..Default::default()
    };
    let migrate = |target: &str, dry_run: bool| proto::MigrateRequest {
        app: "plain".into(),
        target: target.into(),
        selector: Some(one()),
        dry_run,
        ..Default::default()
    };
    for (down, target, dry_run) in [
        (true, "base", false),
        (false, "head", true),
        (false, "head", false),
        (true, "-1", false),
        (false, "head", false),
    ] {
        let stream = if down {
            mig.downgrade(migrate(target, dry_run)).await
        } else {
            mig.upgrade(migrate(target, dry_run)).await
        };
        let events = dh::collect(stream.unwrap().into_inner()).await;
        assert_eq!(dh::summary(&events).failed, 0, "{events:?}");
    }
    mig.plan(proto::PlanRequest {
        tenant_id: "hostile".into(),
        target: "base".into(),
        direction: "downgrade".into(),
        allow_changed: false,
    })
    .await
    .unwrap();
    mig.current(proto::CurrentRequest {
        app: "plain".into(),
        selector: Some(one()),
    })
    .await
    .unwrap();
    mig.history(proto::HistoryRequest {
        tenant_id: "hostile".into(),
        limit: 0,
    })
    .await
    .unwrap();
    mig.stamp(proto::StampRequest {
        tenant_id: "hostile".into(),
        revision: "head".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    mig.verify(proto::VerifyRequest {
        app: "plain".into(),
        selector: Some(one()),
    })
    .await
    .unwrap();
    assert_eq!(calls(&admin_db).await, [], "daemon");
    daemon.shutdown().await.unwrap();
}
