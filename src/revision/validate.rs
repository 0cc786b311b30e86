//! An app checked whole, before it reaches any database: every revision's SQL in both
//! directions (lexed, placeholders declared and outside quotes, one statement each, no
//! transaction control, CONCURRENTLY only in `transaction: none` revisions), conditions naming
//! declared bool placeholders, and declared defaults of their type. `fleetmig check` runs it
//! with the values it resolves; the daemon runs it at start with a sample value of each
//! declared type (a tenant's values are checked against the same declarations when it is
//! registered). Parsing and graph checks happen before, in [`App::load`].

use std::collections::BTreeMap;

use super::placeholder::{PlaceholderType, Resolved};
use super::{App, render};
use crate::model::Direction;

/// Every problem of `app` with `values`, each starting with `file:line` where it has one.
pub fn problems(app: &App, values: &Resolved) -> Vec<String> {
    let mut problems = Vec::new();
    for (_, rev) in app.graph.revisions() {
        // A revision its condition skips today may run tomorrow: check its SQL regardless.
        let mut unconditional = rev.clone();
        unconditional.condition = None;
        for direction in [Direction::Upgrade, Direction::Downgrade] {
            if direction == Direction::Downgrade && rev.irreversible {
                continue;
            }
            if let Err(e) = render::render(&unconditional, direction, values, None) {
                problems.push(e.to_string());
            }
        }
        if let Some(c) = &rev.condition
            && app
                .declarations
                .0
                .get(c)
                .is_none_or(|d| d.ty != PlaceholderType::Bool)
        {
            problems.push(format!(
                "{}: condition {c} is not a declared bool placeholder",
                rev.location(1)
            ));
        }
    }
    problems
}

/// A value of each declared placeholder's type, for checking an app without a tenant. The
/// declared defaults must parse as their type.
pub fn sample_values(app: &App) -> Result<Resolved, String> {
    let samples: BTreeMap<String, String> = app
        .declarations
        .0
        .iter()
        .map(|(name, d)| {
            let v = match d.ty {
                PlaceholderType::Int => "1",
                PlaceholderType::Bool => "true",
                PlaceholderType::Identifier | PlaceholderType::String => "sample",
            };
            (name.clone(), v.to_string())
        })
        .collect();
    let manifest = app.dir.join(super::MANIFEST);
    app.declarations
        .resolve(&|_| None, &BTreeMap::new())
        .map_err(|e| format!("{}: {e}", manifest.display()))?;
    app.declarations
        .resolve(&|_| None, &samples)
        .map_err(|e| format!("{}: {e}", manifest.display()))
}

/// [`problems`] with [`sample_values`]: what the daemon refuses to start with.
pub fn without_values(app: &App) -> Vec<String> {
    match sample_values(app) {
        Ok(values) => problems(app, &values),
        Err(e) => vec![e],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(files: &[(&str, &str)], manifest: &str) -> (tempfile::TempDir, App) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(super::super::MANIFEST), manifest).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let app = App::load(tmp.path(), "a").unwrap();
        (tmp, app)
    }

    const DIM: &str =
        "[placeholders.DIM]\ntype = \"int\"\n[placeholders.ON]\ntype = \"bool\"\ndefault = false\n";

    #[test]
    fn every_revision_is_checked_without_tenant_values() {
        let good = "-- revision: r1\n-- down_revision:\n-- +upgrade\nCREATE TABLE t (e vector(${DIM}));\n-- +downgrade\nDROP TABLE t;\n";
        let unterminated = "-- revision: r2\n-- down_revision: r1\n-- +upgrade\nSELECT 1;\nDO $$ BEGIN PERFORM 1;\n-- +downgrade\nSELECT 1;\n";
        let undeclared = "-- revision: r3\n-- down_revision: r2\n-- condition: ON\n-- +upgrade\nSELECT 1;\n-- +downgrade\nSELECT ${NOPE};\n";
        let (_tmp, a) = app(
            &[
                ("r1.sql", good),
                ("r2.sql", unterminated),
                ("r3.sql", undeclared),
            ],
            DIM,
        );
        let p = without_values(&a);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p.iter()
                .any(|m| m.ends_with("r2.sql:5: unterminated dollar-quoted string starting here")),
            "{p:?}"
        );
        // Skipped today (ON defaults to false), checked anyway.
        assert!(
            p.iter()
                .any(|m| m.contains("r3.sql:7: placeholder NOPE is not declared")),
            "{p:?}"
        );
    }

    #[test]
    fn defaults_must_have_their_type() {
        let (_tmp, a) = app(
            &[],
            "[placeholders.DIM]\ntype = \"int\"\ndefault = \"many\"\n",
        );
        let p = without_values(&a);
        assert!(
            p[0].contains("fleetmig.toml: placeholder DIM: expected int"),
            "{p:?}"
        );
    }
}
