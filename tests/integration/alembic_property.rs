//! The graph property test of issue 27: random graphs (several bases, branches, merges,
//! labels, one or two depends_on across branches, now and then a shape Alembic itself cannot
//! book-keep) and random sequences of upgrade / downgrade / stamp targets, run by Alembic and
//! by fleetmig on two databases; after every command both refused, or both succeeded with the
//! same `alembic_version` rows and tables.
//!
//! Alembic runs in one long-lived Python process (`tests/alembic_driver.py`), fleetmig in this
//! process through the library, so hundreds of cases fit in CI time. Knobs:
//! `FLEETMIG_GRAPH_CASES` (default 150; `make test-graph GRAPH_CASES=2000` for a longer run)
//! and `FLEETMIG_GRAPH_SEED` (printed on failure, to replay a run).
//!
//! The one deliberate difference met here: a bare `downgrade -N` from several rows, which
//! Alembic walks from the table's first row and fleetmig refuses; it is run by fleetmig only
//! and must be refused.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use fleetmig::engine::{Engine, Event, RunOptions, Settings};
use fleetmig::model::Direction;
use fleetmig::revision::App;

use crate::alembic_project::{self as ap, Rev, Sql, State, alembic_bin, sa_url};
use crate::harness;

/// A small deterministic generator (xorshift*), seeded per run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A random graph: 3 to 9 revisions with 4-character hex ids (so prefixes and their
/// ambiguity are exercised), bases, branches, merges, labels and dependencies.
fn random_graph(rng: &mut Rng) -> Vec<Rev> {
    let n = 3 + rng.below(7);
    let mut ids: Vec<String> = Vec::new();
    while ids.len() < n {
        let id = format!("{:04x}", rng.below(0x10000));
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    let mut revs: Vec<Rev> = Vec::new();
    for i in 0..n {
        let mut down: Vec<String> = Vec::new();
        if i > 0 && !rng.chance(20) {
            down.push(ids[rng.below(i)].clone());
            if i > 1 && rng.chance(20) {
                let other = ids[rng.below(i)].clone();
                if !down.contains(&other) {
                    down.push(other);
                }
            }
        }
        let labels = if rng.chance(25) {
            vec![format!("l{i}")]
        } else {
            vec![]
        };
        let mut deps: Vec<String> = vec![];
        for chance in [30, 10] {
            if i > 0 && rng.chance(chance) {
                let d = ids[rng.below(i)].clone();
                if !down.contains(&d) && !deps.contains(&d) {
                    deps.push(d);
                }
            }
        }
        revs.push(Rev {
            id: ids[i].clone(),
            down,
            labels,
            deps,
        });
    }
    revs
}

#[derive(Debug, Clone)]
enum Cmd {
    Upgrade(String),
    Downgrade(String),
    Stamp(Vec<String>, bool),
}

impl std::fmt::Display for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cmd::Upgrade(t) => write!(f, "upgrade {t}"),
            Cmd::Downgrade(t) => write!(f, "downgrade {t}"),
            Cmd::Stamp(t, purge) => {
                write!(
                    f,
                    "stamp {}{}",
                    t.join(" "),
                    if *purge { " --purge" } else { "" }
                )
            }
        }
    }
}

fn random_command(rng: &mut Rng, revs: &[Rev]) -> Cmd {
    let id = rng.pick(revs).id.clone();
    // Mostly a label the graph has; now and then one it does not (both must refuse).
    let labels: Vec<&String> = revs.iter().flat_map(|r| &r.labels).collect();
    let label = if labels.is_empty() || rng.chance(5) {
        "nolabel".to_string()
    } else {
        (*rng.pick(&labels)).clone()
    };
    let n = 1 + rng.below(2);
    let target = |rng: &mut Rng, forms: &[&str]| -> String {
        rng.pick(forms)
            .replace("ID", &id)
            .replace("PRE", &id[..2 + rng.below(2)])
            .replace("LAB", &label)
            .replace('N', &n.to_string())
    };
    match rng.below(20) {
        0..=8 => Cmd::Upgrade(target(
            rng,
            &[
                "heads",
                "heads",
                "head",
                "ID",
                "ID",
                "PRE",
                "LAB",
                "LAB@head",
                "+N",
                "ID+N",
                "LAB@+N",
                "LAB@ID",
                "base",
                "LAB@heads",
            ],
        )),
        9..=15 => Cmd::Downgrade(target(
            rng,
            &[
                "base", "-N", "-N", "ID", "ID", "PRE", "ID-N", "LAB@base", "LAB@-N", "LAB@ID",
                "LAB", "head",
            ],
        )),
        _ => {
            let forms = [
                "ID", "ID", "heads", "head", "base", "LAB", "LAB@head", "LAB@base",
            ];
            let mut targets = vec![target(rng, &forms)];
            if rng.chance(20) {
                let other = rng.pick(revs).id.clone();
                targets.push(other);
            }
            Cmd::Stamp(targets, rng.chance(10))
        }
    }
}

/// Alembic in one Python process (see tests/alembic_driver.py), started through the
/// Alembic under test: a launcher project's env.py re-executes the driver with that
/// Alembic's interpreter and sys.path.
struct Driver {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    _launcher: tempfile::TempDir,
}

const LAUNCHER_ENV: &str = r#"import os, sys
env = dict(os.environ)
env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
sys.stdout.flush()
os.execve(sys.executable, [sys.executable, env["FLEETMIG_ALEMBIC_DRIVER"]], env)
"#;

impl Driver {
    fn start(bin: &Path) -> Driver {
        let launcher = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(launcher.path().join("launch")).unwrap();
        std::fs::write(
            launcher.path().join("alembic.ini"),
            "[alembic]\nscript_location = %(here)s/launch\n",
        )
        .unwrap();
        std::fs::write(launcher.path().join("launch/env.py"), LAUNCHER_ENV).unwrap();
        let driver = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/alembic_driver.py");
        let mut child = Command::new(bin)
            .arg("-c")
            .arg(launcher.path().join("alembic.ini"))
            .arg("current")
            .env("FLEETMIG_ALEMBIC_DRIVER", driver)
            .env("PYTHONHASHSEED", "0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Driver {
            child,
            stdin,
            stdout,
            _launcher: launcher,
        }
    }

    /// One command; Ok(stdout) or Err(Alembic's exception).
    fn call(&mut self, req: serde_json::Value) -> Result<String, String> {
        writeln!(self.stdin, "{req}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "the Alembic driver exited");
        let resp: serde_json::Value = serde_json::from_str(&line).unwrap();
        if resp["ok"].as_bool() == Some(true) {
            Ok(resp["stdout"].as_str().unwrap_or_default().to_string())
        } else {
            Err(resp["error"].as_str().unwrap_or_default().to_string())
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn reset(client: &tokio_postgres::Client) {
    client
        .batch_execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
        .await
        .unwrap();
}

/// Run `cmd` with fleetmig's engine; Err(message) when it refuses.
async fn fleetmig_run(
    app: &App,
    client: &mut tokio_postgres::Client,
    cmd: &Cmd,
) -> Result<(), String> {
    let values = app
        .declarations
        .resolve(&|_| None, &BTreeMap::new())
        .unwrap();
    let settings = Settings::default();
    let engine = Engine::new(app, &values, &settings);
    let events = |_: Event| {};
    let opts = RunOptions {
        fence: None,
        allow_changed: false,
        applied_by: "property test",
        events: &events,
        stop: &|| false,
        live: &|| true,
        blockers: None,
    };
    let r = match cmd {
        Cmd::Upgrade(t) => engine
            .migrate(client, Direction::Upgrade, &t.parse().unwrap(), &opts)
            .await
            .map(|_| ()),
        Cmd::Downgrade(t) => engine
            .migrate(client, Direction::Downgrade, &t.parse().unwrap(), &opts)
            .await
            .map(|_| ()),
        Cmd::Stamp(t, purge) => engine.stamp(client, t, *purge, &opts).await.map(|_| ()),
    };
    r.map_err(|e| e.to_string())
}

fn alembic_request(ini: &Path, url: &str, cmd: &Cmd) -> serde_json::Value {
    let (name, args, purge) = match cmd {
        Cmd::Upgrade(t) => ("upgrade", vec![t.clone()], false),
        Cmd::Downgrade(t) => ("downgrade", vec![t.clone()], false),
        Cmd::Stamp(t, purge) => ("stamp", t.clone(), *purge),
    };
    serde_json::json!({"ini": ini, "url": url, "cmd": name, "args": args, "purge": purge})
}

fn is_bare_relative_down(cmd: &Cmd) -> bool {
    matches!(cmd, Cmd::Downgrade(t) if t.strip_prefix('-').is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
}

#[derive(Default)]
struct Tally {
    cases: usize,
    commands: usize,
    both_ok: usize,
    both_refused: usize,
    deliberate: usize,
}

#[tokio::test]
async fn random_graphs_and_commands_agree_with_alembic() {
    let Some(pg) = harness::postgres() else {
        return;
    };
    let Some(bin) = alembic_bin() else { return };
    let cases: usize = std::env::var("FLEETMIG_GRAPH_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let seed: u64 = std::env::var("FLEETMIG_GRAPH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let started = Instant::now();
    let mut rng = Rng(seed);
    let mut driver = Driver::start(&bin);
    let (a_url, a_db) = pg.database("prop_alembic").await;
    let (f_url, _) = pg.database("prop_fleetmig").await;
    let a_sa = sa_url(&a_db);
    let a_client = fleetmig::pg::connect_str(&a_url).await.unwrap();
    let mut f_client = fleetmig::pg::connect_str(&f_url).await.unwrap();
    let mut tally = Tally::default();
    for case in 0..cases {
        let graph = random_graph(&mut rng);
        let dir = tempfile::tempdir().unwrap();
        let ini = ap::write_alembic(&dir.path().join("alembic"), &graph, Sql::Idempotent);
        ap::write_fleetmig(&dir.path().join("migrations"), &graph, Sql::Idempotent);
        reset(&a_client).await;
        reset(&f_client).await;
        let report = |log: &[String], what: String| -> String {
            format!(
                "FLEETMIG_GRAPH_SEED={seed} case {case}: {what}\ngraph:\n{}\ncommands:\n{}",
                graph
                    .iter()
                    .map(|r| format!("  {r:?}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                log.join("\n")
            )
        };
        // A graph Alembic cannot load (e.g. a label clash) must not load in fleetmig either.
        let app = App::load(&dir.path().join("migrations"), "app");
        let heads = driver.call(serde_json::json!({"ini": ini, "url": a_sa, "cmd": "heads"}));
        let app = match (app, heads) {
            (Ok(app), Ok(_)) => app,
            (Err(_), Err(_)) => {
                tally.cases += 1;
                continue;
            }
            (f, a) => panic!(
                "{}",
                report(
                    &[],
                    format!("loading differs: fleetmig {:?} / alembic {a:?}", f.err())
                )
            ),
        };
        let mut log: Vec<String> = Vec::new();
        for _ in 0..4 + rng.below(5) {
            let cmd = random_command(&mut rng, &graph);
            tally.commands += 1;
            let before = ap::state(&f_client).await;
            if is_bare_relative_down(&cmd) && before.rows.len() > 1 {
                let f = fleetmig_run(&app, &mut f_client, &cmd).await;
                assert!(
                    f.as_ref().is_err_and(|e| e.contains("is ambiguous")),
                    "{}",
                    report(
                        &log,
                        format!("{cmd}: fleetmig should refuse a bare -N from several rows: {f:?}")
                    )
                );
                tally.deliberate += 1;
                log.push(format!("  {cmd}: fleetmig refuses (deliberate)"));
                continue;
            }
            let a = driver.call(alembic_request(&ini, &a_sa, &cmd));
            let f = fleetmig_run(&app, &mut f_client, &cmd).await;
            let (sa, sf): (State, State) = (ap::state(&a_client).await, ap::state(&f_client).await);
            log.push(format!(
                "  {cmd}: alembic {} / fleetmig {} -> rows {:?} tables {:?}",
                a.as_ref()
                    .map_or_else(|e| format!("refused ({e})"), |_| "ok".into()),
                f.as_ref()
                    .map_or_else(|e| format!("refused ({e})"), |_| "ok".into()),
                sf.rows,
                sf.tables
            ));
            if a.is_ok() != f.is_ok() || sa != sf {
                panic!(
                    "{}",
                    report(
                        &log,
                        format!("{cmd}: alembic ended at {sa:?}, fleetmig at {sf:?}")
                    )
                );
            }
            match a {
                Ok(_) => tally.both_ok += 1,
                Err(_) => tally.both_refused += 1,
            }
        }
        tally.cases += 1;
    }
    eprintln!(
        "graph property: seed {seed}, {} cases, {} commands ({} both ran, {} both refused, {} deliberate differences) in {:.1?}",
        tally.cases,
        tally.commands,
        tally.both_ok,
        tally.both_refused,
        tally.deliberate,
        started.elapsed()
    );
    assert!(
        tally.both_ok > tally.commands / 3,
        "most commands should run, not be refused: the generator is off"
    );
}
