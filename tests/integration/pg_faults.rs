//! Postgres-side faults against real processes: a paused holder's session still holding the
//! migration lock (the next holder ends it after a grace period, never a CLI run's), no
//! statement after the lease's deadline, a COMMIT cut in flight (resolved by reading the
//! database again), and a server restarted mid-rollout.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fleetmig::engine::{Engine, EngineError, Event, RunOptions, Settings};
use fleetmig::grpc::proto::{self, migration_event::Event as Streamed, tenant_event::Kind};
use fleetmig::model::{Direction, FenceToken};
use fleetmig::revision::{App, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::daemon_harness as dh;
use crate::harness;

fn small_app(sleep: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    harness::scratch_app(
        "small",
        "",
        &[
            (
                "s1.sql",
                &format!(
                    "-- revision: s1\n-- down_revision:\n-- +upgrade\nCREATE TABLE a (id int);\nSELECT pg_sleep({sleep});\n-- +downgrade\nDROP TABLE a;\n"
                ),
            ),
            (
                "s2.sql",
                "-- revision: s2\n-- down_revision: s1\n-- +upgrade\nCREATE TABLE b (id int);\n-- +downgrade\nDROP TABLE b;\n",
            ),
            (
                "s3.sql",
                "-- revision: s3\n-- down_revision: s2\n-- +upgrade\nCREATE TABLE c (id int);\n-- +downgrade\nDROP TABLE c;\n",
            ),
        ],
    )
}

/// Per revision, the upgrade rows of the history (revision, count, fence tokens).
async fn history(url: &str) -> Vec<(String, i64)> {
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

fn once_each(revisions: &[&str]) -> Vec<(String, i64)> {
    revisions.iter().map(|r| (r.to_string(), 1)).collect()
}

async fn run_fenced(
    app: &App,
    client: &mut tokio_postgres::Client,
    fence: i64,
    live: &(dyn Fn() -> bool + Send + Sync),
) -> Result<fleetmig::engine::Migrated, EngineError> {
    let values = app
        .declarations
        .resolve(&|_| None, &Default::default())
        .unwrap();
    let settings = Settings::default();
    let events = |_: Event| {};
    let opts = RunOptions {
        fence: Some(FenceToken(fence)),
        allow_changed: false,
        applied_by: "test",
        events: &events,
        stop: &|| false,
        live,
        blockers: None,
    };
    Engine::new(app, &values, &settings)
        .migrate(
            client,
            Direction::Upgrade,
            &"head".parse::<Target>().unwrap(),
            &opts,
        )
        .await
}

/// A session holding the migration lock under `application_name`.
async fn holder(url: &str, app: &App, application_name: &str) -> tokio_postgres::Client {
    let values = app
        .declarations
        .resolve(&|_| None, &Default::default())
        .unwrap();
    let key = Engine::new(app, &values, &Settings::default()).migration_lock_key();
    let c = fleetmig::pg::connect_str(url).await.unwrap();
    c.batch_execute(&format!(
        "SET application_name = '{application_name}'; SELECT pg_advisory_lock({key})"
    ))
    .await
    .unwrap();
    c
}

#[tokio::test]
async fn a_newer_holder_ends_a_stale_holders_session_but_never_a_cli_run() {
    let Some(pg) = harness::postgres() else {
        return;
    };
    let (_tmp, root) = small_app("0");
    let app = App::load(&root, "small").unwrap();
    // A developer's CLI run holds it: refused at once, the CLI's session untouched.
    let (url, _) = pg.database("stale_cli").await;
    let cli = holder(&url, &app, "fleetmig").await;
    let mut client = fleetmig::pg::connect_str(&url).await.unwrap();
    let started = Instant::now();
    let e = run_fenced(&app, &mut client, 7, &|| true)
        .await
        .unwrap_err();
    assert!(matches!(e, EngineError::LockHeld), "{e}");
    assert!(started.elapsed() < Duration::from_secs(2));
    cli.simple_query("SELECT 1")
        .await
        .expect("the CLI's session lives");
    // A holder with a newer token is not stale: refused.
    let (url, _) = pg.database("stale_newer").await;
    let newer = holder(&url, &app, "fleetmig fence=99").await;
    let mut client = fleetmig::pg::connect_str(&url).await.unwrap();
    let e = run_fenced(&app, &mut client, 7, &|| true)
        .await
        .unwrap_err();
    assert!(matches!(e, EngineError::LockHeld), "{e}");
    newer.simple_query("SELECT 1").await.unwrap();
    // A holder whose token is older: its lease has ended. After the grace period its
    // session is ended and the run proceeds.
    let (url, _) = pg.database("stale_older").await;
    let stale = holder(&url, &app, "fleetmig fence=5").await;
    let mut client = fleetmig::pg::connect_str(&url).await.unwrap();
    let started = Instant::now();
    let run = run_fenced(&app, &mut client, 7, &|| true).await.unwrap();
    assert_eq!(run.applied.len(), 3);
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "the grace period was given"
    );
    assert!(
        stale.simple_query("SELECT 1").await.is_err(),
        "the stale session was ended"
    );
}

#[tokio::test]
async fn nothing_is_sent_after_the_lease_deadline() {
    let Some(pg) = harness::postgres() else {
        return;
    };
    let (_tmp, root) = small_app("0");
    let app = App::load(&root, "small").unwrap();
    let (url, _) = pg.database("deadline").await;
    // Live for the first checks only: the run stops where the deadline passed. The three
    // revisions form one transaction, so what it had sent is rolled back with what it had not.
    for allowed in [0, 1, 2, 3] {
        let mut client = fleetmig::pg::connect_str(&url).await.unwrap();
        let checks = AtomicUsize::new(0);
        let live = || checks.fetch_add(1, Ordering::SeqCst) < allowed;
        let e = run_fenced(&app, &mut client, 7 + allowed as i64, &live)
            .await
            .unwrap_err();
        assert!(matches!(e, EngineError::LeaseExpired), "{e}");
        let applied: bool = client
            .query_one("SELECT to_regclass('public.a') IS NOT NULL", &[])
            .await
            .unwrap()
            .get(0);
        assert!(!applied, "nothing of the group is kept (allowed {allowed})");
    }
    let mut client = fleetmig::pg::connect_str(&url).await.unwrap();
    let run = run_fenced(&app, &mut client, 20, &|| true).await.unwrap();
    assert_eq!(
        run.applied.len(),
        3,
        "the earlier runs left nothing applied"
    );
    assert_eq!(history(&url).await, once_each(&["s1", "s2", "s3"]));
}

/// A TCP proxy that forwards to `target` and, `cuts` times, closes a connection right after
/// forwarding a COMMIT (the server commits; the client cannot know).
async fn commit_cutter(target: u16, cuts: usize) -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let left = Arc::new(AtomicUsize::new(cuts));
    let cut = Arc::new(AtomicUsize::new(0));
    let done = cut.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (left, done) = (left.clone(), done.clone());
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let back = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let commit = buf[..n].windows(6).any(|w| w == b"COMMIT");
                    if commit
                        && left
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| l.checked_sub(1))
                            .is_ok()
                    {
                        // Stop the answers first, then let the server run it, then cut: the
                        // server commits, the client never hears.
                        back.abort();
                        let _ = back.await;
                        let _ = sw.write_all(&buf[..n]).await;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        done.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    if sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                back.abort();
            });
        }
    });
    (port, cut)
}

#[tokio::test]
async fn a_commit_cut_in_flight_is_resolved_from_the_database() {
    let (Some(pg), Some(etcd)) = (harness::postgres(), harness::etcd()) else {
        return;
    };
    let (port, cut) = commit_cutter(pg.port, 4).await;
    let (_tmp, root) = small_app("0");
    let prefix = etcd.prefix("commitcut");
    let daemon = dh::start(dh::config(&etcd.endpoint, &prefix, &root)).await;
    let mut tenants = daemon.tenants().await;
    let mut urls = vec![];
    for i in 0..4 {
        let (url, db) = pg.database(&format!("commitcut{i}")).await;
        let mut t = dh::tenant(&format!("cut-{i}"), "small", &db, &[], &[]);
        t.connection.as_mut().unwrap().port = u32::from(port);
        dh::register(&mut tenants, t).await;
        urls.push(url);
    }
    let mut m = daemon.migrations().await;
    let events = dh::collect(
        m.upgrade(dh::all("small", "", 2))
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    let s = dh::summary(&events);
    assert_eq!((s.done, s.failed), (4, 0), "{events:?}");
    // One group per tenant, one COMMIT each; the rerun finds it committed and commits nothing.
    let cuts = cut.load(Ordering::SeqCst);
    assert_eq!(cuts, 4, "each tenant's COMMIT was cut");
    let reconnects = events
        .iter()
        .filter(|e| matches!(&e.event, Some(Streamed::Tenant(t)) if matches!(t.kind, Some(Kind::Reconnected(_)))))
        .count();
    assert!(
        reconnects >= cuts,
        "each cut was told in the stream ({cuts} cuts): {events:?}"
    );
    // What landed is told as applied by this job, once: not "up to date".
    for i in 0..4 {
        let id = format!("cut-{i}");
        let of_tenant = |e: &&proto::MigrationEvent| matches!(&e.event, Some(Streamed::Tenant(t)) if t.tenant_id == id);
        let told: Vec<_> = events
            .iter()
            .filter(of_tenant)
            .filter_map(|e| match &e.event {
                Some(Streamed::Tenant(t)) => match &t.kind {
                    Some(Kind::RevisionApplied(a)) => Some(a.revision.clone()),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        assert_eq!(told, ["s1", "s2", "s3"], "{id}: {events:?}");
        let done = events
            .iter()
            .filter(of_tenant)
            .find_map(|e| match &e.event {
                Some(Streamed::Tenant(t)) => match &t.kind {
                    Some(Kind::Done(d)) => Some(d.applied),
                    _ => None,
                },
                _ => None,
            });
        assert_eq!(done, Some(3), "{id}: {events:?}");
    }
    for url in &urls {
        assert_eq!(history(url).await, once_each(&["s1", "s2", "s3"]), "{url}");
    }
    daemon.shutdown().await.unwrap();
}

/// A replica paused (SIGSTOP) while it holds a tenant: its lease ends, another replica takes
/// the lock, ends the paused replica's lingering session after the grace period, and finishes
/// the tenant; the paused one, resumed, sends nothing more and stops. (Multi-threaded: the
/// blocking waits on the child process must not stall the in-process replica's keep-alive.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holder_is_taken_over_without_failing_the_tenant() {
    let (Some(pg), Some(etcd)) = (harness::postgres(), harness::etcd()) else {
        return;
    };
    let (_tmp, root) = small_app("3");
    let prefix = etcd.prefix("paused");
    let (url, db) = pg.database("paused").await;
    let mut a = dh::Process::start(&etcd.endpoint, &prefix, &root, &[]);
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", a.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    proto::tenants_client::TenantsClient::new(channel.clone())
        .register(proto::RegisterTenantRequest {
            tenant: Some(dh::tenant("paused", "small", &db, &[], &[])),
        })
        .await
        .unwrap();
    let upgrade = || proto::MigrateRequest {
        app: "small".into(),
        selector: Some(proto::Selector {
            tenant_ids: vec!["paused".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut on_a = proto::migrations_client::MigrationsClient::new(channel);
    let _stream_a = on_a.upgrade(upgrade()).await.unwrap();
    // A is inside s1 (pg_sleep(3)), holding the migration lock: pause it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pid = a.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    // Its 2 s lease ends; B takes over.
    let b = dh::start(dh::config(&etcd.endpoint, &prefix, &root)).await;
    let mut on_b = b.migrations().await;
    let started = Instant::now();
    let events = dh::collect(on_b.upgrade(upgrade()).await.unwrap().into_inner()).await;
    let s = dh::summary(&events);
    assert_eq!((s.done + s.up_to_date, s.failed), (1, 0), "{events:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        std::process::Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    // Resumed, A learns its lease is gone and stops that work (it then serves again under a
    // new lease): nothing it sends after that can land, the fence and the deadline see to it.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !a.logs().contains("etcd lease lost") {
        assert!(
            Instant::now() < deadline,
            "A noticed its lost lease: {}",
            a.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.terminate();
    assert_eq!(history(&url).await, once_each(&["s1", "s2", "s3"]));
    let c = fleetmig::pg::connect_str(&url).await.unwrap();
    let tokens: Vec<i64> = c
        .query("SELECT fence_token FROM fleetmig_history ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        tokens.windows(2).all(|w| w[0] <= w[1]),
        "fence tokens never decrease: {tokens:?}"
    );
    b.shutdown().await.unwrap();
}

/// A PostgreSQL of one test's own, run by pg_ctl so it can be restarted (the shared one
/// cannot be). Stopped when dropped.
struct PrivatePostgres {
    port: u16,
    data: std::path::PathBuf,
    bin: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl PrivatePostgres {
    fn as_user() -> &'static str {
        if harness::is_root() {
            "setpriv --reuid=nobody --regid=nogroup --clear-groups "
        } else {
            ""
        }
    }

    /// pg_ctl with the server's output to its log file (a restarted server must not inherit
    /// our pipes, or reading them would never end).
    fn pg_ctl(&self, args: &str) {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{}'{}' -D '{}' -w -t 30 -l '{}/log' {args}",
                Self::as_user(),
                self.bin.join("pg_ctl").display(),
                self.data.display(),
                self.data.display()
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl {args}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start() -> Option<PrivatePostgres> {
        let shared = harness::postgres()?;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        if harness::is_root() {
            std::process::Command::new("chown")
                .args(["-R", "nobody:nogroup"])
                .arg(dir.path())
                .status()
                .unwrap();
            // Let nobody traverse to it.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{}'{}' -D '{}' -U postgres -A trust -E UTF8 --no-locale",
                Self::as_user(),
                shared.bin.join("initdb").display(),
                data.display()
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pg = PrivatePostgres {
            port: harness::free_port(),
            data,
            bin: shared.bin.clone(),
            _dir: dir,
        };
        pg.pg_ctl(&format!(
            "-o \"-p {} -k '{}' -c listen_addresses=127.0.0.1 -c fsync=off\" start",
            pg.port,
            pg.data.display()
        ));
        Some(pg)
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{}'{}' -D '{}' -m immediate stop",
                Self::as_user(),
                self.bin.join("pg_ctl").display(),
                self.data.display()
            ))
            .output();
    }
}

/// The tenants' server restarts (fast shutdown, then immediate) in the middle of a rollout:
/// the connections it ends are replaced and the runs resume; no tenant fails, nothing is
/// applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restarted_mid_rollout_fails_no_tenant() {
    let Some(etcd) = harness::etcd() else {
        return;
    };
    let Some(pg) = PrivatePostgres::start() else {
        return;
    };
    let (_tmp, root) = small_app("0.4");
    let prefix = etcd.prefix("restart");
    let daemon = dh::start(dh::config(&etcd.endpoint, &prefix, &root)).await;
    let mut tenants = daemon.tenants().await;
    let admin = fleetmig::pg::connect_str(&pg.url("postgres"))
        .await
        .unwrap();
    for i in 0..12 {
        let db = format!("restart{i}");
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .unwrap();
        let mut t = dh::tenant(&format!("rs-{i}"), "small", &db, &[], &[]);
        t.connection.as_mut().unwrap().port = u32::from(pg.port);
        dh::register(&mut tenants, t).await;
    }
    drop(admin);
    let mut m = daemon.migrations().await;
    let stream = m
        .upgrade(dh::all("small", "", 3))
        .await
        .unwrap()
        .into_inner();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let collecting = tokio::spawn(async move {
        let mut stream = stream;
        while let Ok(Some(e)) = stream.message().await {
            log.lock().unwrap().push(e);
        }
        log.lock().unwrap().clone()
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let ctl = |args: &'static str| {
        let pg = &pg;
        move || pg.pg_ctl(args)
    };
    tokio::task::block_in_place(ctl("-m fast restart"));
    tokio::time::sleep(Duration::from_millis(700)).await;
    tokio::task::block_in_place(ctl("-m immediate restart"));
    let events = match tokio::time::timeout(Duration::from_secs(60), collecting).await {
        Ok(events) => events.unwrap(),
        Err(_) => panic!("the rollout did not end: {:#?}", seen.lock().unwrap()),
    };
    let s = dh::summary(&events);
    assert_eq!((s.done, s.failed), (12, 0), "{events:?}");
    assert!(
        events.iter().any(|e| matches!(&e.event, Some(Streamed::Tenant(t)) if matches!(t.kind, Some(Kind::Reconnected(_))))),
        "the restarts were noticed and told: {events:?}"
    );
    for i in 0..12 {
        assert_eq!(
            history(&pg.url(&format!("restart{i}"))).await,
            once_each(&["s1", "s2", "s3"])
        );
    }
    daemon.shutdown().await.unwrap();
}

/// Traffic to 127.0.0.77 silently dropped by the kernel (an `ip rule` of type blackhole ahead
/// of the local table): a host that vanished without a reset. Removed when dropped.
struct Blackhole;

const VANISHING: &str = "127.0.0.77";

impl Blackhole {
    /// None (skipped locally, failing under CI) without root and `ip`.
    fn available() -> Option<()> {
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let ip = std::process::Command::new("ip")
            .args(["rule", "show"])
            .output()
            .is_ok_and(|o| o.status.success());
        if root && ip {
            Some(())
        } else {
            harness::missing(
                "root with iproute2",
                format!("a blackhole route needs root ({root}) and `ip` ({ip})"),
            )
        }
    }

    fn ip(args: &str) {
        let _ = std::process::Command::new("ip")
            .args(args.split(' '))
            .output();
    }

    fn start() -> Blackhole {
        Self::ip(&format!("rule del pref 10 to {VANISHING} blackhole"));
        // The local table must come after the blackhole: move it from 0 to 100 (both are
        // there for a moment, never neither).
        Self::ip("rule add pref 100 lookup local");
        Self::ip("rule del pref 0 lookup local");
        Self::ip(&format!("rule add pref 10 to {VANISHING} blackhole"));
        Blackhole
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        Self::ip(&format!("rule del pref 10 to {VANISHING} blackhole"));
        Self::ip("rule add pref 0 lookup local");
        Self::ip("rule del pref 100 lookup local");
    }
}

/// A TCP forwarder on 127.0.0.77 to Postgres; `freeze` stops it forwarding either way on the
/// connections it has, without closing them (no FIN, no reset: the host is just gone).
async fn freezable_forwarder(target: u16) -> (u16, Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::AtomicBool;
    let listener = tokio::net::TcpListener::bind((VANISHING, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let frozen = Arc::new(AtomicBool::new(false));
    let freeze = frozen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let frozen = freeze.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let f = frozen.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = sr.read(&mut buf).await {
                        if n == 0 || f.load(Ordering::SeqCst) {
                            break;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                    // Frozen: hold the socket open, forever silent.
                    std::future::pending::<()>().await;
                    drop(cw);
                });
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 || frozen.load(Ordering::SeqCst) {
                        break;
                    }
                    if sw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
                std::future::pending::<()>().await;
                drop((cr, sw));
            });
        }
    });
    (port, frozen)
}

/// The tenant's database host vanishes without a reset in the middle of its run: the daemon
/// notices within `pools.dead_server_after`, tries to reconnect (about 15 s), fails the tenant
/// and releases its lock, while another tenant finishes; once the host is back, a retry takes
/// the lock at once and finds what the database committed, nothing applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_host_releases_its_tenant_within_a_bounded_time() {
    let (Some(pg), Some(etcd)) = (harness::postgres(), harness::etcd()) else {
        return;
    };
    let Some(()) = Blackhole::available() else {
        return;
    };
    let (port, frozen) = freezable_forwarder(pg.port).await;
    let (_tmp, root) = small_app("3");
    let prefix = etcd.prefix("vanish");
    let mut config = dh::config(&etcd.endpoint, &prefix, &root);
    config.pools.dead_server_after = Duration::from_secs(6);
    config.pools.connect_timeout = Duration::from_secs(1);
    let daemon = dh::start(config).await;
    let mut tenants = daemon.tenants().await;
    let (vanishing_url, db) = pg.database("vanish").await;
    let mut t = dh::tenant("vanish", "small", &db, &[], &[]);
    let c = t.connection.as_mut().unwrap();
    (c.host, c.port) = (VANISHING.to_string(), u32::from(port));
    dh::register(&mut tenants, t).await;
    let (healthy_url, db) = pg.database("vanish_healthy").await;
    dh::register(&mut tenants, dh::tenant("healthy", "small", &db, &[], &[])).await;
    let upgrade = |ids: &[&str]| proto::MigrateRequest {
        app: "small".into(),
        selector: Some(proto::Selector {
            tenant_ids: ids.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }),
        concurrency: 2,
        ..Default::default()
    };
    let mut m = daemon.migrations().await;
    let stream = m
        .upgrade(upgrade(&["vanish", "healthy"]))
        .await
        .unwrap()
        .into_inner();
    let collecting = tokio::spawn(dh::collect(stream));
    // Inside s1 (pg_sleep(3)) on both: the host goes.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let blackhole = Blackhole::start();
    frozen.store(true, Ordering::SeqCst);
    let gone = Instant::now();
    let events = tokio::time::timeout(Duration::from_secs(60), collecting)
        .await
        .expect("the job ends")
        .unwrap();
    let ended = gone.elapsed();
    println!("vanished host: the tenant was failed and its lock released {ended:.1?} after");
    let s = dh::summary(&events);
    assert_eq!((s.done, s.failed), (1, 1), "{events:?}");
    let failure = events
        .iter()
        .find_map(|e| match &e.event {
            Some(Streamed::Tenant(t)) if t.tenant_id == "vanish" => match &t.kind {
                Some(Kind::Failed(f)) => Some(f.message.clone()),
                _ => None,
            },
            _ => None,
        })
        .expect("the vanished tenant failed");
    assert!(failure.contains("reconnecting failed"), "{failure}");
    // dead_server_after (6 s), then about 15.5 s of reconnect pauses, with room for a busy
    // machine; without the keep-alives it would wait for the kernel's two hours.
    assert!(
        ended < Duration::from_secs(35),
        "the tenant was let go after {ended:?}"
    );
    assert_eq!(history(&healthy_url).await, once_each(&["s1", "s2", "s3"]));
    // The host is back: the lock was released, so the retry does not wait for it, and the
    // database's own record decides what is left (here: the group had committed).
    drop(blackhole);
    frozen.store(false, Ordering::SeqCst);
    let started = Instant::now();
    let events = dh::collect(m.upgrade(upgrade(&["vanish"])).await.unwrap().into_inner()).await;
    let s = dh::summary(&events);
    println!(
        "vanished host back: the retry ended in {:.1?}",
        started.elapsed()
    );
    assert_eq!(s.failed, 0, "{events:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the retry waited {:?}: was the lock left held?",
        started.elapsed()
    );
    assert_eq!(
        history(&vanishing_url).await,
        once_each(&["s1", "s2", "s3"])
    );
    daemon.shutdown().await.unwrap();
}
