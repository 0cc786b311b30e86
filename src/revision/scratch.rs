//! What an app's scratch databases need before its revisions replay on them (`adopt`,
//! `verify`, the daemon's drift report): real histories assume objects made outside their
//! migrations (an extension, a table another system owns). Declared in the app's
//! `fleetmig.toml`:
//!
//! ```toml
//! [scratch]
//! template = "legacy_template"   # CREATE DATABASE ... TEMPLATE this (default: template1)
//! prelude = "scratch_prelude.sql" # run on each scratch database first (path in the app dir)
//! ```
//!
//! Read and checked when the app is loaded; no database access here.

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use super::sql::{self, Statement};

/// `[scratch]` as written in the manifest.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ScratchManifest {
    template: Option<String>,
    prelude: Option<PathBuf>,
}

/// The prelude file, split into statements when the app is loaded.
#[derive(Debug, Clone)]
pub struct Prelude {
    pub path: PathBuf,
    pub statements: Vec<Statement>,
}

impl Prelude {
    /// `path:line` of a statement's line (0-based within the file).
    pub fn location(&self, line: usize) -> String {
        format!("{}:{}", self.path.display(), line + 1)
    }
}

/// How the app's scratch databases are made.
#[derive(Debug, Clone, Default)]
pub struct ScratchSetup {
    /// The database scratch databases are copied from; None: the server's default (template1).
    pub template: Option<String>,
    pub prelude: Option<Prelude>,
}

impl ScratchSetup {
    /// The template's name for messages.
    pub fn template_name(&self) -> &str {
        self.template.as_deref().unwrap_or("template1")
    }

    pub(super) fn load(m: ScratchManifest, app_dir: &Path) -> Result<ScratchSetup, String> {
        if let Some(t) = &m.template
            && (t.is_empty() || t.len() > 63 || t.contains('\0'))
        {
            return Err("scratch.template: 1-63 characters, the name of a database".into());
        }
        let prelude = match m.prelude {
            None => None,
            Some(rel) => {
                let plain = rel
                    .components()
                    .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
                if !plain {
                    return Err(format!(
                        "scratch.prelude: {}: a path inside the app's directory, without `..`",
                        rel.display()
                    ));
                }
                let path = rel
                    .components()
                    .filter(|c| matches!(c, Component::Normal(_)))
                    .fold(app_dir.to_path_buf(), |p, c| p.join(c));
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("scratch.prelude: {}: {e}", path.display()))?;
                let statements = sql::split(&text).map_err(|e| {
                    format!("scratch.prelude: {}:{}: {e}", path.display(), e.line + 1)
                })?;
                Some(Prelude { path, statements })
            }
        };
        Ok(ScratchSetup {
            template: m.template,
            prelude,
        })
    }
}
