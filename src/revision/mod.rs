//! Revision files and the graph they form: parsing, placeholders, statement splitting,
//! rendering, graph checks and pure planning. No database access here.

pub mod alembic_py;
mod collect;
pub mod file;
pub mod graph;
pub mod heads;
pub mod import;
pub mod placeholder;
pub mod plan;
pub mod render;
pub mod resolve;
pub mod scratch;
pub mod sql;
pub mod validate;

#[cfg(test)]
mod plan_tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use file::Revision;
pub use graph::{Graph, GraphError, Node};
pub use placeholder::{Declarations, Resolved};
pub use plan::Target;

/// The file in each app directory that declares its placeholders.
pub const MANIFEST: &str = "fleetmig.toml";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Manifest { path: PathBuf, message: String },
    #[error(transparent)]
    Parse(#[from] file::ParseError),
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error("no app named '{name}' under {} (apps there: {})", dir.display(), if available.is_empty() { "none".to_string() } else { available.join(", ") })]
    NoSuchApp {
        name: String,
        dir: PathBuf,
        available: Vec<String>,
    },
    #[error("invalid app name '{0}': use a-z A-Z 0-9 _ -")]
    BadName(String),
    #[error("app {app} has {} problem(s); `fleetmig --app {app} check` shows the same:\n  {}", problems.len(), problems.join("\n  "))]
    Invalid { app: String, problems: Vec<String> },
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Several(Vec<LoadError>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    #[serde(default)]
    placeholders: BTreeMap<String, placeholder::Declaration>,
    #[serde(default)]
    scratch: scratch::ScratchManifest,
    /// Read and checked by `crate::lint` (which knows the rules).
    #[serde(default)]
    lint: toml::Table,
    #[serde(default)]
    blockers: crate::model::BlockerPolicy,
    /// One transaction per revision instead of one per run of transactional revisions.
    #[serde(default)]
    transaction_per_revision: bool,
}

/// One migration graph: `migrations/<name>/`.
#[derive(Debug)]
pub struct App {
    pub name: String,
    pub dir: PathBuf,
    pub graph: Graph,
    pub declarations: Declarations,
    /// What its scratch databases need first (`[scratch]` in the manifest).
    pub scratch: scratch::ScratchSetup,
    /// The manifest's `[lint]` section as written; `crate::lint` reads and checks it.
    pub lint: toml::Table,
    /// What to do about sessions blocking a revision (`[blockers]`; report only by default).
    pub blockers: crate::model::BlockerPolicy,
    /// `transaction_per_revision = true`: each transactional revision commits alone. By
    /// default consecutive transactional revisions of a run share one transaction (Alembic's
    /// PostgreSQL default): a tenant is at its old revision or its target, never in between.
    pub transaction_per_revision: bool,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LoadError + '_ {
    move |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub fn is_valid_app_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl App {
    /// The app directories under `migrations_dir`, sorted.
    pub fn list(migrations_dir: &Path) -> Vec<String> {
        let mut apps: Vec<String> = std::fs::read_dir(migrations_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| is_valid_app_name(n))
            .collect();
        apps.sort();
        apps
    }

    /// [`App::load`], then every revision checked as `fleetmig check` does, with a sample
    /// value of each placeholder's type ([`validate::without_values`]): what the daemon serves.
    pub fn load_checked(migrations_dir: &Path, name: &str) -> Result<App, LoadError> {
        let app = App::load(migrations_dir, name)?;
        let problems = validate::without_values(&app);
        if problems.is_empty() {
            Ok(app)
        } else {
            Err(LoadError::Invalid {
                app: name.to_string(),
                problems,
            })
        }
    }

    pub fn load(migrations_dir: &Path, name: &str) -> Result<App, LoadError> {
        if !is_valid_app_name(name) {
            return Err(LoadError::BadName(name.to_string()));
        }
        let dir = migrations_dir.join(name);
        if !dir.is_dir() {
            return Err(LoadError::NoSuchApp {
                name: name.to_string(),
                dir: migrations_dir.to_path_buf(),
                available: App::list(migrations_dir),
            });
        }
        let manifest_path = dir.join(MANIFEST);
        let manifest: Manifest = if manifest_path.exists() {
            let text = std::fs::read_to_string(&manifest_path).map_err(io_err(&manifest_path))?;
            toml::from_str(&text).map_err(|e| LoadError::Manifest {
                path: manifest_path.clone(),
                message: e.to_string(),
            })?
        } else {
            Manifest::default()
        };
        if let Some(bad) = manifest
            .placeholders
            .keys()
            .find(|k| !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        {
            return Err(LoadError::Manifest {
                path: manifest_path,
                message: format!("invalid placeholder name {bad:?}"),
            });
        }
        let scratch = scratch::ScratchSetup::load(manifest.scratch, &dir).map_err(|message| {
            LoadError::Manifest {
                path: manifest_path.clone(),
                message,
            }
        })?;
        manifest
            .blockers
            .validate()
            .map_err(|message| LoadError::Manifest {
                path: manifest_path.clone(),
                message: format!("[blockers] {message}"),
            })?;
        let prelude = scratch.prelude.as_ref().map(|p| p.path.clone());
        let mut revisions = Vec::new();
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(io_err(&dir))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(io_err(&dir))?;
        entries.sort();
        for path in entries
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "sql"))
            // The scratch prelude may sit beside the revisions; it is not one.
            .filter(|p| prelude.as_ref() != Some(p))
        {
            let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
            revisions.push(Revision::parse(&path, &text)?);
        }
        let graph = Graph::new(revisions)?;
        Ok(App {
            name: name.to_string(),
            dir,
            graph,
            declarations: Declarations(manifest.placeholders),
            scratch,
            lint: manifest.lint,
            blockers: manifest.blockers,
            transaction_per_revision: manifest.transaction_per_revision,
        })
    }
}
