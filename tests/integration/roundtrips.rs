//! What a tenant costs on the wire, counted by a proxy between the client and Postgres: round
//! trips (the client waiting for the server), requests (simple queries and syncs) and the
//! statements the server ran (CommandComplete), for the daemon, the CLI and the floor (the
//! offline SQL applied with `psql -f`), on the example apps, up and down. The figures are
//! printed (`cargo test --test integration roundtrips -- --nocapture`); the assertions hold the
//! protocol to what it is built to be: every statement the daemon adds to the floor's is
//! pipelined, so its round trips stay below the floor's and do not grow with the revisions.
//! `WIRE_LOG=1` prints every simple query with its database.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::daemon_harness as dh;
use crate::harness;
use fleetmig::grpc::proto;

/// Per database: what crossed the wire.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Wire {
    connections: u32,
    round_trips: u32,
    requests: u32,
    statements: u32,
}

type Counts = Arc<Mutex<BTreeMap<String, Wire>>>;

/// Frontend/backend messages split from a byte stream (`type`, then a length that counts
/// itself); `startup` for the client's first messages, which have no type byte.
struct Frames {
    buf: Vec<u8>,
    startup: bool,
}

impl Frames {
    fn push(&mut self, data: &[u8]) -> Vec<(u8, Vec<u8>)> {
        self.buf.extend_from_slice(data);
        let mut out = vec![];
        loop {
            if self.startup {
                if self.buf.len() < 8 {
                    break;
                }
                let len = u32::from_be_bytes(self.buf[0..4].try_into().unwrap()) as usize;
                if self.buf.len() < len {
                    break;
                }
                let body: Vec<u8> = self.buf.drain(..len).skip(4).collect();
                let code = u32::from_be_bytes(body[0..4].try_into().unwrap());
                // SSLRequest/GSSENCRequest: another startup message follows.
                self.startup = code == 80877103 || code == 80877104;
                out.push((0, body));
                continue;
            }
            if self.buf.len() < 5 {
                break;
            }
            let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
            if self.buf.len() < 1 + len {
                break;
            }
            let msg: Vec<u8> = self.buf.drain(..1 + len).collect();
            out.push((msg[0], msg[5..].to_vec()));
        }
        out
    }
}

/// The `database` parameter of a startup message.
fn database_of(body: &[u8]) -> Option<String> {
    let fields: Vec<&[u8]> = body[4..].split(|b| *b == 0).collect();
    fields
        .windows(2)
        .find(|w| w[0] == b"database")
        .map(|w| String::from_utf8_lossy(w[1]).to_string())
}

/// How long the proxy holds each answer: a network's latency, long enough that requests the
/// client pipelines arrive while the answers to earlier ones are still held, so only real
/// waits count as round trips.
const LATENCY: std::time::Duration = std::time::Duration::from_millis(10);

/// A counting proxy in front of Postgres on `target`, adding [`LATENCY`] to its answers
/// (plaintext: an SSLRequest is answered `N` by the test server).
async fn counting_proxy(target: u16) -> (u16, Counts) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let counts: Counts = Arc::default();
    let all = counts.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let counts = all.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                    return;
                };
                // Requests sent and not yet answered by ReadyForQuery, the database, and
                // answers (ReadyForQuery) not yet delivered to the client.
                let state = Arc::new(Mutex::new((0u32, String::new(), 0u32)));
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let (up_state, up_counts) = (state.clone(), counts.clone());
                let up = tokio::spawn(async move {
                    let mut frames = Frames {
                        buf: vec![],
                        startup: true,
                    };
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        {
                            let mut s = up_state.lock().unwrap();
                            let mut counts = up_counts.lock().unwrap();
                            for (kind, body) in frames.push(&buf[..n]) {
                                if kind == 0 {
                                    if let Some(db) = database_of(&body) {
                                        s.1 = db;
                                        counts.entry(s.1.clone()).or_default().connections += 1;
                                    }
                                    continue;
                                }
                                if kind == b'Q' && std::env::var_os("WIRE_LOG").is_some() {
                                    eprintln!("[{}] {}", s.1, String::from_utf8_lossy(&body));
                                }
                                if kind == b'Q' || kind == b'S' {
                                    let w = counts.entry(s.1.clone()).or_default();
                                    // A wait: everything sent before was answered, and the
                                    // client has the answers. (Pipelined requests arrive while
                                    // the answers are still on their way.)
                                    if s.0 == 0 && s.2 == 0 {
                                        w.round_trips += 1;
                                    }
                                    w.requests += 1;
                                    s.0 += 1;
                                }
                            }
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                let mut frames = Frames {
                    buf: vec![],
                    startup: false,
                };
                // Answers reach the client LATENCY later, in order.
                let (deliver, mut deliveries) =
                    tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>, u32)>();
                let delivered = state.clone();
                let down = tokio::spawn(async move {
                    while let Some((at, data, answers)) = deliveries.recv().await {
                        tokio::time::sleep_until(at).await;
                        if cw.write_all(&data).await.is_err() {
                            break;
                        }
                        delivered.lock().unwrap().2 -= answers;
                    }
                });
                let mut buf = vec![0u8; 64 * 1024];
                let mut answered_ssl = false;
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let mut data = &buf[..n];
                    // The answer to an SSLRequest is one byte, unframed.
                    if !answered_ssl && data.first() == Some(&b'N') {
                        data = &data[1..];
                    }
                    answered_ssl = true;
                    let mut answers = 0;
                    {
                        let mut s = state.lock().unwrap();
                        let mut counts = counts.lock().unwrap();
                        for (kind, _) in frames.push(data) {
                            match kind {
                                b'C' | b'I' => {
                                    counts.entry(s.1.clone()).or_default().statements += 1
                                }
                                b'Z' => {
                                    s.0 = s.0.saturating_sub(1);
                                    answers += 1;
                                }
                                _ => {}
                            }
                        }
                        s.2 += answers;
                    }
                    let at = tokio::time::Instant::now() + LATENCY;
                    if deliver.send((at, buf[..n].to_vec(), answers)).is_err() {
                        break;
                    }
                }
                drop(deliver);
                let _ = down.await;
                up.abort();
            });
        }
    });
    (port, counts)
}

fn cli(root: &std::path::Path, url: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fleetmig"))
        .arg("--migrations-dir")
        .arg(root)
        .args(args)
        .env("DATABASE_URL", url)
        .env_remove("FLEETMIG_CONFIG")
        .output()
        .unwrap()
}

// Multi-threaded: the CLI and psql block a thread while the proxy forwards their traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_round_trips_stay_below_the_floor() {
    let (Some(pg), Some(etcd)) = (harness::postgres(), harness::etcd()) else {
        return;
    };
    let (port, counts) = counting_proxy(pg.port).await;
    let root = harness::repo_migrations();
    let prefix = etcd.prefix("wire");
    let daemon = dh::start(dh::config(&etcd.endpoint, &prefix, &root)).await;
    let mut tenants = daemon.tenants().await;
    let mut m = daemon.migrations().await;
    let mut table = String::from(
        "| app | direction | revisions | side | connections | round trips | requests | statements |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for app in ["aletheia", "truthgraph"] {
        let placeholders: &[(&str, &str)] = if app == "aletheia" {
            &[("EMBEDDING_DIM", "64")]
        } else {
            &[]
        };
        let sets: Vec<String> = placeholders
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let revisions = fleetmig::revision::App::load(&root, app)
            .unwrap()
            .graph
            .len();
        let (_, daemon_db) = pg.database(&format!("wire_{app}_d")).await;
        let (_, cli_db) = pg.database(&format!("wire_{app}_c")).await;
        let (_, floor_db) = pg.database(&format!("wire_{app}_f")).await;
        let mut t = dh::tenant(&format!("wire-{app}"), app, &daemon_db, &[], placeholders);
        t.connection.as_mut().unwrap().port = u32::from(port);
        dh::register(&mut tenants, t).await;
        let via_proxy =
            |db: &str| format!("postgres://postgres@127.0.0.1:{port}/{db}?sslmode=disable");
        for (direction, target) in [("up", "head"), ("down", "base")] {
            counts.lock().unwrap().clear();
            let request = proto::MigrateRequest {
                app: app.into(),
                target: target.into(),
                selector: Some(proto::Selector {
                    tenant_ids: vec![format!("wire-{app}")],
                    ..Default::default()
                }),
                ..Default::default()
            };
            let stream = if direction == "up" {
                m.upgrade(request).await
            } else {
                m.downgrade(request).await
            };
            let events = dh::collect(stream.unwrap().into_inner()).await;
            let s = dh::summary(&events);
            assert_eq!((s.done, s.failed), (1, 0), "{events:?}");
            let mut args: Vec<String> = vec!["--app".into(), app.into()];
            for set in &sets {
                args.extend(["--set".into(), set.clone()]);
            }
            let verb = if direction == "up" {
                "upgrade"
            } else {
                "downgrade"
            };
            let mut run = args.clone();
            run.extend([verb.into(), target.into()]);
            let run: Vec<&str> = run.iter().map(String::as_str).collect();
            let out = tokio::task::block_in_place(|| cli(&root, &via_proxy(&cli_db), &run));
            assert!(out.status.success(), "{out:?}");
            let mut offline = args.clone();
            offline.extend([
                verb.into(),
                "--sql".into(),
                if direction == "up" {
                    "base:head"
                } else {
                    "head:base"
                }
                .into(),
            ]);
            let offline: Vec<&str> = offline.iter().map(String::as_str).collect();
            let sql = cli(&root, &via_proxy(&floor_db), &offline);
            assert!(sql.status.success(), "{sql:?}");
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), &sql.stdout).unwrap();
            let (ok, err) =
                tokio::task::block_in_place(|| pg.psql_file(&via_proxy(&floor_db), file.path()));
            assert!(ok, "{err}");
            let counts = counts.lock().unwrap().clone();
            let of = |db: &str| counts.get(db).copied().unwrap_or_default();
            let (d, c, f) = (of(&daemon_db), of(&cli_db), of(&floor_db));
            for (side, w) in [("daemon", d), ("CLI", c), ("floor (psql -f)", f)] {
                table.push_str(&format!(
                    "| {app} | {direction} | {revisions} | {side} | {} | {} | {} | {} |\n",
                    w.connections, w.round_trips, w.requests, w.statements
                ));
            }
            // The floor sends one statement per round trip; the daemon pipelines its own
            // statements with the revisions', so it waits less often than psql does.
            assert!(f.statements >= f.round_trips, "{f:?}");
            assert!(
                d.round_trips < f.round_trips,
                "{app} {direction}: daemon {d:?} floor {f:?}"
            );
            assert!(
                c.round_trips < f.round_trips,
                "{app} {direction}: CLI {c:?} floor {f:?}"
            );
        }
    }
    println!("\n{table}");
    daemon.shutdown().await.unwrap();
}

/// A chain of `n` transactional revisions, one small table each.
fn chain(n: usize) -> Vec<(String, String)> {
    (1..=n)
        .map(|i| {
            let down = if i == 1 { String::new() } else { format!("c{}", i - 1) };
            (
                format!("c{i}.sql"),
                format!("-- revision: c{i}\n-- down_revision: {down}\n-- +upgrade\nCREATE TABLE t{i} (id int PRIMARY KEY, note text);\n-- +downgrade\nDROP TABLE t{i};\n"),
            )
        })
        .collect()
}

/// Long histories cost no more round trips than short ones: 3 and 60 revisions, up and down,
/// wait for the server the same number of times; the requests (all pipelined) and statements
/// differ by the revisions' own and one timing mark each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_do_not_grow_with_the_revisions_of_a_run() {
    let Some(pg) = harness::postgres() else {
        return;
    };
    let (port, counts) = counting_proxy(pg.port).await;
    let mut seen = vec![];
    for n in [3, 60] {
        let files = chain(n);
        let files: Vec<(&str, &str)> = files
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let (_tmp, root) = harness::scratch_app("chain", "", &files);
        let (_, db) = pg.database(&format!("wire_chain{n}")).await;
        let url = format!("postgres://postgres@127.0.0.1:{port}/{db}?sslmode=disable");
        for (verb, target) in [("upgrade", "head"), ("downgrade", "base")] {
            counts.lock().unwrap().clear();
            let out = tokio::task::block_in_place(|| cli(&root, &url, &[verb, target]));
            assert!(out.status.success(), "{out:?}");
            let w = counts.lock().unwrap().get(&db).copied().unwrap_or_default();
            seen.push((n, verb, w));
        }
    }
    println!("{seen:?}");
    for verb in ["upgrade", "downgrade"] {
        let of = |n| seen.iter().find(|s| s.0 == n && s.1 == verb).unwrap().2;
        let (short, long) = (of(3), of(60));
        assert_eq!(
            short.round_trips, long.round_trips,
            "{verb}: {short:?} {long:?}"
        );
        assert_eq!(
            long.requests - short.requests,
            2 * (60 - 3),
            "{verb}: pipelined, a statement and a mark per revision more: {short:?} {long:?}"
        );
        assert_eq!(
            long.statements - short.statements,
            2 * (60 - 3),
            "{verb}: one statement and one mark per revision more: {short:?} {long:?}"
        );
    }
}
