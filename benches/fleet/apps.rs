//! The apps a run migrates, from one migrations directory of the run's own
//! (`target/bench/apps/migrations`, which every tool is given): the example apps copied from
//! `migrations/`, and `long`, a generated history of BENCH_LONG revisions with little work in
//! each (`benches/alembic/generate.py --long`), so that per-revision overhead shows, with its
//! Alembic project beside it (`target/bench/apps/alembic/long`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The generated app's name.
pub const LONG: &str = "long";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench/apps")
}

/// The migrations directory every tool of the run reads.
pub fn migrations() -> PathBuf {
    root().join("migrations")
}

/// The Alembic project of `app`: committed under `benches/alembic/`, or generated for `long`.
pub fn alembic_ini(app: &str) -> PathBuf {
    if app == LONG {
        root().join("alembic").join(LONG).join("alembic.ini")
    } else {
        crate::alembic::benches_dir().join(app).join("alembic.ini")
    }
}

/// Lay out the run's migrations directory: `apps` copied from the repository's, `long` (if
/// named) generated with `long_revisions` revisions.
pub fn prepare(apps: &[String], long_revisions: usize) {
    let into = migrations();
    if into.exists() {
        std::fs::remove_dir_all(&into).unwrap();
    }
    for app in apps.iter().filter(|a| *a != LONG) {
        copy_app(
            &crate::harness::repo_migrations().join(app),
            &into.join(app),
        );
    }
    if apps.iter().any(|a| a == LONG) {
        let out = Command::new("python3")
            .arg(crate::alembic::benches_dir().join("generate.py"))
            .args(["--long", &long_revisions.to_string()])
            .arg(root())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .expect("python3 runs benches/alembic/generate.py");
        assert!(
            out.status.success(),
            "generate.py --long: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn copy_app(from: &Path, to: &Path) {
    assert!(from.is_dir(), "BENCH_APPS: no app {}", from.display());
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}
