//! Alembic, the peer a user would pick instead: the projects under `benches/alembic/<app>`
//! (generated from the fleetmig apps by `benches/alembic/generate.py`, checked up to date
//! here; the `long` app's is generated with it, [`crate::apps`]), the interpreter that runs them, and the in-process driver
//! (`benches/alembic/driver.py`: one Python process, as many forked workers as the cell's
//! concurrency, `alembic.command.upgrade` per tenant URL).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use crate::harness;
use crate::tools::Direction;

/// `benches/alembic/`: the committed projects, the driver and the generator.
pub fn benches_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/alembic")
}

/// The Alembic under test: its interpreter and the sys.path it runs with.
pub struct Alembic {
    pub python: PathBuf,
    pub pythonpath: String,
}

impl Alembic {
    /// The Alembic `make setup` installs (FLEETMIG_ALEMBIC), or None: skipped locally, a
    /// failure under CI=true (like Postgres and etcd in the test harness). Found through the
    /// wrapper once; the benchmark then runs its interpreter directly, so no wrapper script
    /// or pyenv shim is timed with Alembic. Also checks that the projects are up to date.
    pub fn find() -> Option<Alembic> {
        let bin = [
            std::env::var("FLEETMIG_ALEMBIC").ok().map(PathBuf::from),
            Some(PathBuf::from("/opt/fleetmig-tools/bin/alembic")),
        ]
        .into_iter()
        .flatten()
        .find(|p| p.exists());
        let Some(bin) = bin else {
            harness::missing(
                "alembic",
                "no FLEETMIG_ALEMBIC and no /opt/fleetmig-tools/bin/alembic".into(),
            )?;
            unreachable!()
        };
        let out = Command::new(&bin)
            .arg("-c")
            .arg(benches_dir().join("launch/alembic.ini"))
            .arg("current")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} could not start: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let probe: serde_json::Value = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| serde_json::from_str(l).ok())
            .expect("the launcher prints the interpreter as JSON");
        let alembic = Alembic {
            python: PathBuf::from(probe["executable"].as_str().unwrap()),
            pythonpath: probe["path"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(":"),
        };
        alembic.check_projects();
        Some(alembic)
    }

    /// The committed projects match what the generator makes of `migrations/` today.
    fn check_projects(&self) {
        let out = Command::new(&self.python)
            .arg(benches_dir().join("generate.py"))
            .arg("--check")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `python -m alembic`, as an installed `alembic` console script runs it: the program
    /// and the arguments before Alembic's own, and the environment it needs.
    pub fn cli(&self) -> (PathBuf, Vec<String>, Vec<(String, String)>) {
        (
            self.python.clone(),
            vec!["-m".into(), "alembic".into()],
            vec![("PYTHONPATH".into(), self.pythonpath.clone())],
        )
    }

    /// Start the in-process driver for `app` with `workers` workers; returns once they are up.
    pub fn driver(&self, app: &str, workers: u32) -> Driver {
        let mut child = Command::new(&self.python)
            .arg(benches_dir().join("driver.py"))
            .arg(crate::apps::alembic_ini(app))
            .arg(workers.to_string())
            .env("PYTHONPATH", &self.pythonpath)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the Alembic driver did not start");
        Driver {
            child,
            stdin,
            stdout,
        }
    }
}

/// The in-process driver of one cell, kept between its phases.
pub struct Driver {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Driver {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One phase: every URL to head (or base); (ms, failures).
    pub fn run(&mut self, direction: Direction, urls: &[String]) -> (f64, u32) {
        let command = match direction {
            Direction::Up => "upgrade",
            Direction::Down => "downgrade",
        };
        let job = serde_json::json!({ "command": command, "urls": urls });
        let started = Instant::now();
        writeln!(self.stdin, "{job}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let answer: serde_json::Value =
            serde_json::from_str(&line).expect("the Alembic driver answered");
        let failed = answer["failed"].as_array().cloned().unwrap_or_default();
        for f in failed.iter().take(3) {
            eprintln!("alembic in-process failed: {f}");
        }
        (ms, failed.len() as u32)
    }

    /// Close its input and wait for it (outside any measured phase: the workers' CPU lands
    /// in this process's reaped children, never in a phase).
    pub fn finish(self) {
        let Driver {
            mut child, stdin, ..
        } = self;
        drop(stdin);
        child.wait().unwrap();
    }
}
