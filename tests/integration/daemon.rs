//! The daemon against real etcd and Postgres: parallel jobs, two daemons racing, lease loss,
//! bad input, grpcurl, and secrets.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fleetmig::grpc::proto::{self, migration_event::Event, tenant_event::Kind};
use tokio_postgres::Client;
use tonic::Code;

use crate::daemon_harness::{self as dh, InProcess};
use crate::harness;

struct Fleet {
    daemon: InProcess,
    prefix: String,
    urls: BTreeMap<String, String>,
}

/// `n` empty databases registered as tenants `<hint>-<i>` of `app`, and a daemon.
async fn fleet(hint: &str, app: &str, n: usize, migrations: &std::path::Path) -> Option<Fleet> {
    let pg = harness::postgres()?;
    let etcd = harness::etcd()?;
    let prefix = etcd.prefix(hint);
    let daemon = dh::start(dh::config(&etcd.endpoint, &prefix, migrations)).await;
    let mut tenants = daemon.tenants().await;
    let mut urls = BTreeMap::new();
    for i in 0..n {
        let (url, db) = pg.database(&format!("{hint}{i}")).await;
        let id = format!("{hint}-{i}");
        let dim = (64 * (1 + i % 4)).to_string();
        let placeholders: Vec<(&str, &str)> = if app == "aletheia" {
            vec![("EMBEDDING_DIM", dim.as_str())]
        } else {
            vec![]
        };
        let t = dh::tenant(
            &id,
            app,
            &db,
            &[("tier", if i % 2 == 0 { "free" } else { "paid" })],
            &placeholders,
        );
        dh::register(&mut tenants, t).await;
        urls.insert(id, url);
    }
    Some(Fleet {
        daemon,
        prefix,
        urls,
    })
}

async fn history(url: &str) -> Vec<(String, String, Option<i64>)> {
    let c = fleetmig::pg::connect_str(url).await.unwrap();
    if !c
        .query_one("SELECT to_regclass('fleetmig_history') IS NOT NULL", &[])
        .await
        .unwrap()
        .get::<_, bool>(0)
    {
        return vec![];
    }
    c.query(
        "SELECT direction, revision::text, fence_token FROM fleetmig_history ORDER BY id",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

fn tenant_events(events: &[proto::MigrationEvent]) -> Vec<(String, Kind)> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Some(Event::Tenant(t)) => Some((t.tenant_id.clone(), t.kind.clone().unwrap())),
            _ => None,
        })
        .collect()
}

type Migrations = proto::migrations_client::MigrationsClient<tonic::transport::Channel>;

/// An Upgrade, read to the end of its stream.
async fn upgrade(m: &mut Migrations, request: proto::MigrateRequest) -> Vec<proto::MigrationEvent> {
    dh::collect(m.upgrade(request).await.unwrap().into_inner()).await
}

/// A Downgrade, read to the end of its stream.
async fn downgrade(
    m: &mut Migrations,
    request: proto::MigrateRequest,
) -> Vec<proto::MigrationEvent> {
    dh::collect(m.downgrade(request).await.unwrap().into_inner()).await
}

#[tokio::test]
async fn fifty_tenants_up_to_head_and_back_to_base() {
    let Some(f) = fleet("fifty", "aletheia", 50, &harness::repo_migrations()).await else {
        return;
    };
    // The registry pages through a label filter.
    let mut tenants = f.daemon.tenants().await;
    let (mut seen, mut token) = (vec![], String::new());
    loop {
        let page = tenants
            .list(proto::ListTenantsRequest {
                app: "aletheia".into(),
                labels: [("tier".to_string(), "free".to_string())].into(),
                page_size: 10,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.tenants.len() <= 10);
        seen.extend(page.tenants.into_iter().map(|t| t.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 25, "every other tenant is tier=free");
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "in id order, no repeats"
    );
    let mut m = f.daemon.migrations().await;
    let events = upgrade(&mut m, dh::all("aletheia", "head", 8)).await;
    let Some(Event::Accepted(accepted)) = &events[0].event else {
        panic!("the first event is accepted: {:?}", events[0])
    };
    assert_eq!(accepted.tenant_ids.len(), 50);
    let s = dh::summary(&events);
    assert_eq!((s.tenants, s.done, s.failed), (50, 50, 0), "{s:?}");
    let current = m
        .current(proto::CurrentRequest {
            app: "aletheia".into(),
            selector: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(current.at_head, 50);
    assert_eq!(current.tenants_by_version.get("0003"), Some(&50));
    let events = downgrade(&mut m, dh::all("aletheia", "base", 8)).await;
    assert_eq!(dh::summary(&events).done, 50);
    let plan = [
        "upgrade 0001",
        "upgrade 0002",
        "upgrade 0003",
        "downgrade 0003",
        "downgrade 0002",
        "downgrade 0001",
    ];
    for (id, url) in &f.urls {
        let h = history(url).await;
        let got: Vec<String> = h.iter().map(|(d, r, _)| format!("{d} {r}")).collect();
        assert_eq!(got, plan, "{id}: history is exactly its plan");
        assert!(
            h.iter().all(|(_, _, t)| t.is_some()),
            "{id}: every row carries a fence token"
        );
    }
    // Per-tenant placeholder values reached the schema.
    let c = fleetmig::pg::connect_str(&f.urls["fifty-1"]).await.unwrap();
    c.batch_execute("SELECT 1").await.unwrap();
    let dims: String = c.query_one("SELECT placeholders->>'EMBEDDING_DIM' FROM fleetmig_history WHERE revision = '0001' LIMIT 1", &[]).await.unwrap().get(0);
    assert_eq!(dims, "128");
    f.daemon.shutdown().await.unwrap();
}

// Multi-threaded, as the daemon runs: the order of tasks between workers is what is tested.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_etcd_write_per_tenant_a_release_rides_on_the_next_acquire() {
    const N: usize = 8;
    let Some(f) = fleet("ride", "aletheia", N, &harness::repo_migrations()).await else {
        return;
    };
    let mut m = f.daemon.migrations().await;
    let events = upgrade(&mut m, dh::all("aletheia", "head", 2)).await;
    assert_eq!(dh::summary(&events).done, N as u32);
    // Every lock key's creation and deletion, from etcd's history.
    let mut from = i64::MAX;
    for url in f.urls.values() {
        from = from.min(history(url).await[0].2.expect("fenced"));
    }
    let mut etcd = harness::etcd().unwrap().client().await;
    let mut stream = etcd
        .watch(
            format!("{}locks/", f.prefix),
            Some(
                etcd_client::WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(from),
            ),
        )
        .await
        .unwrap();
    let (mut created, mut deleted) = (vec![], vec![]);
    while deleted.len() < N {
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("every lock released")
            .unwrap()
            .unwrap();
        for e in msg.events() {
            let revision = e.kv().unwrap().mod_revision();
            match e.event_type() {
                etcd_client::EventType::Put => created.push(revision),
                etcd_client::EventType::Delete => deleted.push(revision),
            }
        }
    }
    assert_eq!(created.len(), N);
    // A release that rode went in the transaction of another tenant's acquire: same revision.
    // The last two (one per job slot) have nothing to ride on.
    let rode = deleted.iter().filter(|d| created.contains(d)).count();
    // A release waits 20 ms for an acquire: a stall of the test machine may send one alone.
    assert!(
        rode >= N - 3,
        "{rode} of {} releases rode on an acquire",
        N - 2
    );
    f.daemon.shutdown().await.unwrap();
}

#[tokio::test]
async fn two_daemons_racing_apply_each_revision_once() {
    let Some(f) = fleet("race", "aletheia", 10, &harness::repo_migrations()).await else {
        return;
    };
    let etcd = harness::etcd().unwrap();
    let other = dh::start(dh::config(
        &etcd.endpoint,
        &f.prefix,
        &harness::repo_migrations(),
    ))
    .await;
    let (mut a, mut b) = (f.daemon.migrations().await, other.migrations().await);
    let (ra, rb) = tokio::join!(
        a.upgrade(dh::all("aletheia", "head", 10)),
        b.upgrade(dh::all("aletheia", "head", 10))
    );
    let (ea, eb) = tokio::join!(
        dh::collect(ra.unwrap().into_inner()),
        dh::collect(rb.unwrap().into_inner())
    );
    let (sa, sb) = (dh::summary(&ea), dh::summary(&eb));
    assert_eq!(sa.failed + sb.failed, 0, "{sa:?} {sb:?}");
    assert_eq!(
        sa.done + sb.done,
        10,
        "each tenant migrated by exactly one daemon: {sa:?} {sb:?}"
    );
    assert_eq!(sa.up_to_date + sb.up_to_date, 10);
    for (id, url) in &f.urls {
        let h = history(url).await;
        let revs: Vec<&str> = h.iter().map(|(_, r, _)| r.as_str()).collect();
        assert_eq!(
            revs,
            ["0001", "0002", "0003"],
            "{id}: each revision applied once"
        );
        let tokens: Vec<i64> = h.iter().map(|(_, _, t)| t.unwrap()).collect();
        assert!(
            tokens.windows(2).all(|w| w[0] <= w[1]),
            "{id}: fence tokens non-decreasing: {tokens:?}"
        );
    }
    other.shutdown().await.unwrap();
    f.daemon.shutdown().await.unwrap();
}

/// Four slow revisions (${SLEEP} seconds each) that log (fence token, clock time) of every write.
fn slow_app() -> (tempfile::TempDir, std::path::PathBuf) {
    let rev = |id: &str, parent: &str| {
        format!(
            "-- revision: {id}\n-- down_revision: {parent}\n-- +upgrade\nCREATE TABLE IF NOT EXISTS writes (token bigint, revision text, at timestamptz);\nSELECT pg_sleep(${{SLEEP}});\nCREATE TABLE t_{id} (x int);\nINSERT INTO writes SELECT token, '{id}', clock_timestamp() FROM fleetmig_fence;\n-- +downgrade\nDROP TABLE t_{id};\n"
        )
    };
    let (a, b, c, d) = (
        rev("s1", ""),
        rev("s2", "s1"),
        rev("s3", "s2"),
        rev("s4", "s3"),
    );
    harness::scratch_app(
        "slow",
        "[placeholders.SLEEP]\ntype = \"string\"\ndefault = \"0.3\"\n",
        &[
            ("s1.sql", &a),
            ("s2.sql", &b),
            ("s3.sql", &c),
            ("s4.sql", &d),
        ],
    )
}

#[tokio::test]
async fn a_daemon_that_loses_its_lease_stops_writing_and_another_finishes() {
    let (Some(pg), Some(etcd)) = (harness::postgres(), harness::etcd()) else {
        return;
    };
    let (_tmp, root) = slow_app();
    let prefix = etcd.prefix("leaseloss");
    let proxy = dh::Proxy::start(&etcd.endpoint).await;
    let doomed = dh::start(dh::config(&proxy.endpoint, &prefix, &root)).await;
    let mut reg = doomed.tenants().await;
    let mut urls = vec![];
    for i in 0..4 {
        let (url, db) = pg.database(&format!("leaseloss{i}")).await;
        reg.register(proto::RegisterTenantRequest {
            tenant: Some(dh::tenant(
                &format!("ll-{i}"),
                "slow",
                &db,
                &[],
                &[("SLEEP", "1")],
            )),
        })
        .await
        .unwrap();
        urls.push(url);
    }
    let mut m = doomed.migrations().await;
    let mut stream = m
        .upgrade(dh::all("slow", "head", 4))
        .await
        .unwrap()
        .into_inner();
    // The four revisions of a tenant share one transaction (4 x 1 s): once they are under
    // way everywhere, cut the daemon off etcd, in the middle of every tenant's transaction.
    let mut doomed_tokens = vec![];
    let mut started = std::collections::BTreeSet::new();
    while started.len() < 4 {
        let e = stream.message().await.unwrap().unwrap();
        if let Some(Event::Tenant(t)) = &e.event {
            match &t.kind {
                Some(Kind::Locked(l)) => doomed_tokens.push(l.fence_token),
                Some(Kind::RevisionStarted(_)) => {
                    started.insert(t.tenant_id.clone());
                }
                _ => {}
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cut_at = chrono::Utc::now();
    proxy.cut();
    // Its deadline is at most one lease TTL (2 s) after the last acknowledged keep-alive.
    let deadline = cut_at + chrono::Duration::milliseconds(2000);
    // It keeps serving (it takes a new lease once etcd answers again, which it never does
    // here): read its stream until the tenants in flight are reported interrupted.
    let mut rest = vec![];
    let seen_interrupted = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(e)) = stream.message().await {
            let interrupted = matches!(&e.event, Some(Event::Tenant(t)) if matches!(t.kind, Some(Kind::Interrupted(_))));
            rest.push(e);
            if interrupted {
                return;
            }
        }
    })
    .await;
    assert!(
        seen_interrupted.is_ok(),
        "tenants in flight are reported interrupted: {rest:?}"
    );
    doomed
        .shutdown()
        .await
        .expect("a daemon cut off etcd still shuts down cleanly");
    // No write of the doomed daemon after its deadline; and a group it did not commit left
    // nothing at all (no version row, no history row).
    for url in &urls {
        let c = fleetmig::pg::connect_str(url).await.unwrap();
        if c.query_one("SELECT to_regclass('writes') IS NOT NULL", &[])
            .await
            .unwrap()
            .get::<_, bool>(0)
        {
            for r in c.query("SELECT token, at FROM writes", &[]).await.unwrap() {
                let (token, at): (i64, chrono::DateTime<chrono::Utc>) = (r.get(0), r.get(1));
                if doomed_tokens.contains(&token) {
                    assert!(
                        at <= deadline,
                        "write with token {token} at {at}, after the deadline {deadline}"
                    );
                }
            }
        }
        let recorded = history(url).await;
        assert!(
            recorded.is_empty() || recorded.len() == 4,
            "a group commits all of its revisions or none: {recorded:?}"
        );
    }
    // Another daemon completes every tenant (after the old lease expires); nothing twice, nothing half.
    let rescuer = dh::start(dh::config(&etcd.endpoint, &prefix, &root)).await;
    let events = upgrade(&mut rescuer.migrations().await, dh::all("slow", "head", 4)).await;
    let s = dh::summary(&events);
    assert_eq!(s.failed + s.interrupted, 0, "{s:?}");
    for url in &urls {
        let h = history(url).await;
        assert_eq!(
            h.iter().map(|(_, r, _)| r.as_str()).collect::<Vec<_>>(),
            ["s1", "s2", "s3", "s4"]
        );
        let c: Client = fleetmig::pg::connect_str(url).await.unwrap();
        let writes: Vec<String> = c
            .query("SELECT revision FROM writes ORDER BY at", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(
            writes,
            ["s1", "s2", "s3", "s4"],
            "every revision's writes happened exactly once"
        );
        let tables: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_tables WHERE tablename LIKE 't\\_s%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(tables, 4);
    }
    rescuer.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_input_gets_the_right_code_and_names_the_field() {
    let Some(f) = fleet("badinput", "aletheia", 1, &harness::repo_migrations()).await else {
        return;
    };
    let mut t = f.daemon.tenants().await;
    let mut m = f.daemon.migrations().await;
    let reg = |tenant: proto::Tenant| proto::RegisterTenantRequest {
        tenant: Some(tenant),
    };
    let base = || dh::tenant("ok-tenant", "aletheia", "postgres", &[], &[]);
    let cases: Vec<(proto::Tenant, &str)> = vec![
        (
            proto::Tenant {
                id: "Bad Id".into(),
                ..base()
            },
            "tenant.id",
        ),
        (
            proto::Tenant {
                id: "x".repeat(300),
                ..base()
            },
            "tenant.id",
        ),
        (
            proto::Tenant {
                id: "a'; DROP TABLE t; --".into(),
                ..base()
            },
            "tenant.id",
        ),
        (
            proto::Tenant {
                app: "nope".into(),
                ..base()
            },
            "tenant.app",
        ),
        (
            proto::Tenant {
                connection: None,
                ..base()
            },
            "tenant.connection",
        ),
        (
            proto::Tenant {
                connection: Some(proto::Connection {
                    port: 70000,
                    ..base().connection.unwrap()
                }),
                ..base()
            },
            "tenant.connection.port",
        ),
        (
            proto::Tenant {
                connection: Some(proto::Connection {
                    dbname: "db\"; --".into(),
                    ..base().connection.unwrap()
                }),
                ..base()
            },
            "tenant.connection.dbname",
        ),
        (
            proto::Tenant {
                connection: Some(proto::Connection {
                    host: "".into(),
                    ..base().connection.unwrap()
                }),
                ..base()
            },
            "tenant.connection.host",
        ),
        (
            proto::Tenant {
                connection: Some(proto::Connection {
                    sslmode: "verify_full".into(),
                    ..base().connection.unwrap()
                }),
                ..base()
            },
            "tenant.connection.sslmode",
        ),
        // verify-full checks the certificate: against which CA must be said.
        (
            proto::Tenant {
                connection: Some(proto::Connection {
                    sslmode: "verify-full".into(),
                    ..base().connection.unwrap()
                }),
                ..base()
            },
            "tenant.connection.sslrootcert",
        ),
        // A private key is a secret: only from where password files may come.
        (
            proto::Tenant {
                connection: Some(proto::Connection {
                    sslmode: "require".into(),
                    sslcert: "/etc/client.crt".into(),
                    sslkey: "/etc/ssl/private/daemon.key".into(),
                    ..base().connection.unwrap()
                }),
                ..base()
            },
            "tenant.connection.sslkey",
        ),
        (
            proto::Tenant {
                connection: Some(proto::Connection {
                    require_auth: "scram-sha-256,!md5".into(),
                    ..base().connection.unwrap()
                }),
                ..base()
            },
            "tenant.connection.require_auth",
        ),
        (
            proto::Tenant {
                connection: Some(proto::Connection {
                    session_host: "db-direct".into(),
                    ..base().connection.unwrap()
                }),
                ..base()
            },
            "tenant.connection.session_host",
        ),
        (
            proto::Tenant {
                labels: [("tier".to_string(), "a b".to_string())].into(),
                ..base()
            },
            "tenant.labels[\"tier\"]",
        ),
        (
            proto::Tenant {
                placeholders: [("EMBEDDING_DIM".to_string(), "big".to_string())].into(),
                ..base()
            },
            "tenant.placeholders[\"EMBEDDING_DIM\"]",
        ),
        (
            proto::Tenant {
                placeholders: [("NOT_DECLARED".to_string(), "1".to_string())].into(),
                ..base()
            },
            "tenant.placeholders[\"NOT_DECLARED\"]",
        ),
        // Password references the daemon must not follow: its own secrets, any file.
        (
            proto::Tenant {
                connection: Some(proto::Connection {
                    password: Some(proto::PasswordRef {
                        source: Some(proto::password_ref::Source::Env(
                            "AWS_SECRET_ACCESS_KEY".into(),
                        )),
                    }),
                    ..base().connection.unwrap()
                }),
                ..base()
            },
            "tenant.connection.password.env",
        ),
        (
            proto::Tenant {
                connection: Some(proto::Connection {
                    password: Some(proto::PasswordRef {
                        source: Some(proto::password_ref::Source::File(
                            "/run/secrets/../../etc/shadow".into(),
                        )),
                    }),
                    ..base().connection.unwrap()
                }),
                ..base()
            },
            "tenant.connection.password.file",
        ),
    ];
    for (tenant, field) in cases {
        let e = t.register(reg(tenant)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
        assert!(
            e.message().starts_with(field),
            "message names {field}: {}",
            e.message()
        );
    }
    let dup = t
        .register(reg(dh::tenant(
            "badinput-0",
            "aletheia",
            "postgres",
            &[],
            &[],
        )))
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    let missing = t
        .get(proto::GetTenantRequest {
            id: "nobody".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let bad_page = t
        .list(proto::ListTenantsRequest {
            page_size: 5000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(bad_page.message().starts_with("page_size"), "{bad_page:?}");
    // Jobs
    let e = m.upgrade(dh::all("nope", "head", 0)).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message().starts_with("app")),
        (Code::InvalidArgument, true),
        "{e:?}"
    );
    let e = m.upgrade(dh::all("aletheia", "zz99", 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("target")
            && e.message()
                .contains("Can't locate revision identified by 'zz99'"),
        "{e:?}"
    );
    let e = m.downgrade(dh::all("aletheia", "", 0)).await.unwrap_err();
    assert!(e.message().starts_with("target"), "{e:?}");
    let e = m
        .upgrade(proto::MigrateRequest {
            app: "aletheia".into(),
            selector: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("selector"), "{e:?}");
    let both = proto::Selector {
        all: true,
        tenant_ids: vec!["badinput-0".into()],
        ..Default::default()
    };
    let e = m
        .upgrade(proto::MigrateRequest {
            app: "aletheia".into(),
            selector: Some(both),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("selector"), "{e:?}");
    let ids = proto::Selector {
        tenant_ids: vec!["nobody".into()],
        ..Default::default()
    };
    let e = m
        .upgrade(proto::MigrateRequest {
            app: "aletheia".into(),
            selector: Some(ids),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = m
        .cancel(proto::CancelRequest {
            job_id: "feedfacefeedface".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // ... and the daemon keeps serving.
    let events = upgrade(&mut m, dh::all("aletheia", "head", 0)).await;
    assert_eq!(dh::summary(&events).done, 1);
    f.daemon.shutdown().await.unwrap();
}

#[tokio::test]
async fn dry_run_plans_and_cancel_stops_a_job() {
    let (_tmp, root) = slow_app();
    let Some(f) = fleet("dryrun", "slow", 6, &root).await else {
        return;
    };
    let mut m = f.daemon.migrations().await;
    let events = upgrade(
        &mut m,
        proto::MigrateRequest {
            dry_run: true,
            ..dh::all("slow", "head", 2)
        },
    )
    .await;
    let planned: Vec<_> = tenant_events(&events)
        .into_iter()
        .filter_map(|(_, k)| {
            if let Kind::Planned(p) = k {
                Some(p)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(planned.len(), 6);
    assert_eq!(planned[0].revisions, ["s1", "s2", "s3", "s4"]);
    assert!(planned[0].sql.contains("pg_sleep('0.3')"));
    assert!(
        history(&f.urls["dryrun-0"]).await.is_empty(),
        "a dry run applies nothing"
    );
    // A job at concurrency 1 over 6 slow tenants, cancelled early: later tenants are skipped.
    let mut stream = m
        .upgrade(dh::all("slow", "head", 1))
        .await
        .unwrap()
        .into_inner();
    let Some(Event::Accepted(a)) = stream.message().await.unwrap().unwrap().event else {
        panic!()
    };
    let started = Instant::now();
    assert!(
        m.cancel(proto::CancelRequest {
            job_id: a.job_id.clone()
        })
        .await
        .unwrap()
        .into_inner()
        .cancelled
    );
    let rest = dh::collect(stream).await;
    let s = dh::summary(&rest);
    assert!(s.cancelled && s.skipped >= 4, "{s:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        !m.cancel(proto::CancelRequest { job_id: a.job_id })
            .await
            .unwrap()
            .into_inner()
            .cancelled,
        "already finished"
    );
    // Nothing half-applied: every tenant is at a whole revision.
    for url in f.urls.values() {
        let h = history(url).await;
        let c = fleetmig::pg::connect_str(url).await.unwrap();
        let tables: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_tables WHERE tablename LIKE 't\\_s%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(tables as usize, h.len());
    }
    f.daemon.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_job_outlives_its_stream_and_unary_queries_answer() {
    let Some(f) = fleet("outlive", "aletheia", 3, &harness::repo_migrations()).await else {
        return;
    };
    let mut m = f.daemon.migrations().await;
    // The client goes away right after `accepted`: the job carries on to the end.
    let mut stream = m
        .upgrade(dh::all("aletheia", "head", 1))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        stream.message().await.unwrap().unwrap().event,
        Some(Event::Accepted(_))
    ));
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = m
            .current(proto::CurrentRequest {
                app: "aletheia".into(),
                selector: None,
            })
            .await
            .unwrap()
            .into_inner();
        if c.at_head == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the job did not finish without its client: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let heads = m
        .heads(proto::HeadsRequest {
            app: "aletheia".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        heads
            .heads
            .iter()
            .map(|h| h.revision.as_str())
            .collect::<Vec<_>>(),
        ["0003"]
    );
    let h = m
        .history(proto::HistoryRequest {
            tenant_id: "outlive-0".into(),
            limit: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        h.entries
            .iter()
            .map(|e| e.revision.as_str())
            .collect::<Vec<_>>(),
        ["0002", "0003"],
        "the newest two, oldest first"
    );
    assert!(
        h.entries
            .iter()
            .all(|e| e.fence_token > 0 && e.applied_by.contains("fleetmig"))
    );
    let plan = m
        .plan(proto::PlanRequest {
            tenant_id: "outlive-0".into(),
            target: "-1".into(),
            direction: "downgrade".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (plan.current, plan.revisions),
        (vec!["0003".to_string()], vec!["0003".to_string()])
    );
    assert!(plan.sql.contains("DROP INDEX CONCURRENTLY"), "{}", plan.sql);
    let stamped = m
        .stamp(proto::StampRequest {
            tenant_id: "outlive-0".into(),
            revision: "0002".into(),
            purge: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stamped.revisions, ["0002"]);
    let c = m
        .current(proto::CurrentRequest {
            app: "aletheia".into(),
            selector: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (c.at_head, c.behind, c.tenants_by_version.get("0002")),
        (2, 1, Some(&1))
    );
    let h = history(&f.urls["outlive-0"]).await;
    assert_eq!(
        h.last().map(|(d, r, _)| (d.as_str(), r.as_str())),
        Some(("stamp", "0002"))
    );
    let e = m
        .stamp(proto::StampRequest {
            tenant_id: "outlive-0".into(),
            revision: "nope".into(),
            purge: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    f.daemon.shutdown().await.unwrap();
}

#[tokio::test]
async fn verify_flags_a_column_added_by_hand_on_one_tenant_of_ten() {
    let Some(f) = fleet("drift", "aletheia", 10, &harness::repo_migrations()).await else {
        return;
    };
    let mut m = f.daemon.migrations().await;
    assert_eq!(
        dh::summary(&upgrade(&mut m, dh::all("aletheia", "head", 4)).await).done,
        10
    );
    let c = fleetmig::pg::connect_str(&f.urls["drift-6"]).await.unwrap();
    c.batch_execute("ALTER TABLE memory_shards ADD COLUMN added_by_hand text")
        .await
        .unwrap();
    let r = m
        .verify(proto::VerifyRequest {
            app: "aletheia".into(),
            selector: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.drifted, r.unreachable), (1, 0), "{r:?}");
    let drifted: Vec<&proto::TenantDrift> = r.tenants.iter().filter(|t| t.drifted).collect();
    assert_eq!(drifted[0].tenant_id, "drift-6");
    assert!(
        drifted[0]
            .differences
            .iter()
            .any(|d| d.starts_with("+ column public.memory_shards") && d.contains("added_by_hand")),
        "{:?}",
        drifted[0].differences
    );
    assert_eq!(r.tenants_by_version.get("0003"), Some(&10));
    f.daemon.shutdown().await.unwrap();
}

#[tokio::test]
async fn plans_follow_what_a_conditional_upgrade_recorded() {
    let Some(f) = fleet("plancond", "aletheia", 1, &harness::repo_migrations()).await else {
        return;
    };
    let (mut t, mut m) = (f.daemon.tenants().await, f.daemon.migrations().await);
    let set_flag = |on: &str| proto::UpdateTenantRequest {
        tenant: Some(proto::Tenant {
            id: "plancond-0".into(),
            placeholders: [("PGVECTOR_ENABLE_IVFFLAT".to_string(), on.to_string())].into(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["placeholders".into()],
        }),
    };
    let updated = t.update(set_flag("false")).await.unwrap().into_inner();
    assert_eq!(
        updated
            .placeholders
            .get("PGVECTOR_ENABLE_IVFFLAT")
            .map(String::as_str),
        Some("false")
    );
    assert_eq!(
        dh::summary(&upgrade(&mut m, dh::all("aletheia", "head", 1)).await).done,
        1
    );
    // The flag is turned on afterwards: the index was never built, so undoing 0003 must not drop it.
    t.update(set_flag("true")).await.unwrap();
    let plan = m
        .plan(proto::PlanRequest {
            tenant_id: "plancond-0".into(),
            target: "-1".into(),
            direction: "downgrade".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plan.revisions, ["0003"]);
    assert!(
        plan.sql
            .contains("-- skipped: condition PGVECTOR_ENABLE_IVFFLAT")
            && !plan.sql.contains("DROP INDEX"),
        "{}",
        plan.sql
    );
    let bad = t
        .update(proto::UpdateTenantRequest {
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["app".into()],
            }),
            ..set_flag("true")
        })
        .await
        .unwrap_err();
    assert!(bad.message().starts_with("update_mask.paths[0]"), "{bad:?}");
    f.daemon.shutdown().await.unwrap();
}

/// A fleet bigger than one etcd response (gRPC's 4 MiB limit, found by the 1000-tenant
/// benchmark next to 10,000 registry entries): List pages and job selection read in chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_reads_a_fleet_bigger_than_one_etcd_response() {
    use fleetmig::registry::{ConnectionSpec, Registry, SslMode, Tenant, TenantId};
    let Some(etcd) = harness::etcd() else {
        return;
    };
    let client = etcd.client().await;
    let registry = Registry::new(client, &etcd.prefix("bigfleet"));
    let n = 2600;
    let tenant = |i: usize| Tenant {
        id: TenantId::parse("id", &format!("t{i:05}")).unwrap(),
        app: "aletheia".into(),
        connection: ConnectionSpec {
            host: "db.internal".into(),
            port: 5432,
            dbname: format!("tenant_{i}"),
            user: "migrator".into(),
            sslmode: SslMode::Disable,
            schema: None,
            password: None,
            options: Default::default(),
        },
        // ~2 KB of labels a tenant: the whole registry (over 5 MB) exceeds one response.
        labels: (0..30)
            .map(|k| (format!("team-{k:02}"), "x".repeat(60)))
            .chain([(
                "tier".to_string(),
                if i.is_multiple_of(2) { "free" } else { "pro" }.to_string(),
            )])
            .collect(),
        placeholders: [("EMBEDDING_DIM".to_string(), "768".to_string())].into(),
        created_at: chrono::Utc::now(),
        updated_at: chrono::Utc::now(),
    };
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        futures::future::join_all(chunk.iter().map(|&i| registry.register(tenant(i))))
            .await
            .into_iter()
            .for_each(|r| {
                r.unwrap();
            });
    }
    let all = registry.select("aletheia", &BTreeMap::new()).await.unwrap();
    assert_eq!(all.len(), n);
    assert!(
        all.windows(2).all(|w| w[0].id < w[1].id),
        "in id order, no duplicates"
    );
    let free = BTreeMap::from([("tier".to_string(), "free".to_string())]);
    let (mut seen, mut after) = (0, None);
    loop {
        let (page, more) = registry
            .list(Some("aletheia"), &free, 500, after.as_ref())
            .await
            .unwrap();
        seen += page.len();
        after = page.last().map(|t| t.id.clone());
        if !more {
            break;
        }
    }
    assert_eq!(seen, n / 2);
    // By ids (a rollout's wave): in the order asked, over several etcd transactions.
    let ids: Vec<TenantId> = (0..250).rev().map(|i| tenant(i * 7).id).collect();
    let got = registry.get_many(&ids).await.unwrap();
    assert_eq!(
        got.iter().map(|t| &t.id).collect::<Vec<_>>(),
        ids.iter().collect::<Vec<_>>()
    );
    let missing = TenantId::parse("id", "t99999").unwrap();
    let with_missing = [ids[0].clone(), missing.clone(), ids[1].clone()];
    match registry.get_many(&with_missing).await {
        Err(fleetmig::registry::RegistryError::NotFound(id)) => assert_eq!(id, missing),
        other => panic!("{other:?}"),
    }
}
