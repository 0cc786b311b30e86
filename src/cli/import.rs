//! `import-alembic`: an Alembic project into a new app. The graph comes from the project's
//! version files (read, never executed), the SQL from its offline output; the new app is loaded
//! whole before the command says it worked.

use std::path::PathBuf;

use clap::Args;

use super::{Context, Failure};
use crate::revision::{App, alembic_py, import};

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The Alembic project's versions directory (repeatable for several version locations).
    #[arg(long, required = true)]
    pub versions: Vec<PathBuf>,
    /// Output of `alembic upgrade base:heads --sql`.
    #[arg(long)]
    pub upgrade_sql: PathBuf,
    /// Output of `alembic downgrade HEAD:base --sql`, one file per head `alembic heads` lists
    /// (repeatable; without any, revisions are irreversible).
    #[arg(long)]
    pub downgrade_sql: Vec<PathBuf>,
    /// The app to create under the migrations directory (must not exist yet).
    #[arg(long = "into")]
    pub into: String,
}

pub fn import_alembic(ctx: &Context, args: ImportArgs) -> Result<(), Failure> {
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).map_err(|e| Failure::input(format!("{}: {e}", p.display())))
    };
    if !crate::revision::is_valid_app_name(&args.into) {
        return Err(Failure::input(format!(
            "--into {:?}: use a-z A-Z 0-9 _ -",
            args.into
        )));
    }
    let dir = ctx.config.migrations_dir.join(&args.into);
    if dir.exists() {
        return Err(Failure::input(format!(
            "{} already exists: import into a new app",
            dir.display()
        )));
    }
    let mut files = Vec::new();
    for v in &args.versions {
        files.extend(alembic_py::read_dir(v).map_err(Failure::input)?);
    }
    let up = read(&args.upgrade_sql)?;
    let downs = args
        .downgrade_sql
        .iter()
        .map(read)
        .collect::<Result<Vec<_>, _>>()?;
    let down_refs: Vec<&str> = downs.iter().map(String::as_str).collect();
    let version_table = ctx.config.engine.version_table.name.clone();
    let revisions = import::import(
        &files,
        &up,
        (!down_refs.is_empty()).then_some(&down_refs[..]),
        &version_table,
    )
    .map_err(Failure::input)?;
    std::fs::create_dir_all(&dir).map_err(|e| Failure {
        code: 1,
        message: format!("{}: {e}", dir.display()),
    })?;
    for r in &revisions {
        let path = dir.join(format!("{}.sql", r.id));
        std::fs::write(&path, import::render_file(r)).map_err(|e| Failure {
            code: 1,
            message: format!("{}: {e}", path.display()),
        })?;
    }
    // Prove the result loads as one graph before saying it worked.
    let app = match App::load(&ctx.config.migrations_dir, &args.into) {
        Ok(app) => app,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(Failure::input(format!(
                "the imported app does not load ({e}); nothing kept"
            )));
        }
    };
    let heads: Vec<&str> = app
        .graph
        .heads()
        .into_iter()
        .map(|h| app.graph.id(h))
        .collect();
    println!(
        "Imported {} revision(s) into {} (heads: {})",
        revisions.len(),
        dir.display(),
        heads.join(", ")
    );
    Ok(())
}
