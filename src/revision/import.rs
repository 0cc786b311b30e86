//! Import an Alembic project from its offline SQL: `alembic upgrade base:head --sql` (and
//! optionally `alembic downgrade head:base --sql`). Alembic marks each step with
//! `-- Running upgrade A -> B` (merges: `A, B -> M`); each step becomes a fleetmig revision
//! file with the same id and parents, so a fleet under Alembic is taken over without
//! re-stamping. Alembic's own version-table statements and transaction control are dropped:
//! fleetmig writes its own.

use std::collections::BTreeMap;

use crate::model::RevisionId;
use crate::revision::sql::{self, leading_keywords};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImportError {
    #[error(
        "line {line}: cannot read the step marker {text:?} (expected `-- Running upgrade A -> B`)"
    )]
    Marker { line: usize, text: String },
    #[error("line {line}: {message}")]
    Sql { line: usize, message: String },
    #[error("{0}: invalid revision id in the Alembic output")]
    Id(String),
    #[error(
        "no `-- Running upgrade` steps found: pass the output of `alembic upgrade base:head --sql`"
    )]
    NoSteps,
    #[error("revision {0} appears twice in the upgrade SQL")]
    Duplicate(String),
}

/// One imported revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub id: RevisionId,
    pub parents: Vec<RevisionId>,
    pub upgrade: Vec<String>,
    /// None when no downgrade SQL was given for it (the revision becomes irreversible).
    pub downgrade: Option<Vec<String>>,
    /// Some statement cannot run in a transaction (Alembic's autocommit_block).
    pub non_transactional: bool,
}

struct Step {
    from: Vec<String>,
    to: Vec<String>,
    statements: Vec<String>,
}

fn ids(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

/// Statements of Alembic's bookkeeping or transaction control: not part of the revision.
fn is_alembic_noise(stmt: &str, version_table: &str) -> bool {
    let w = leading_keywords(stmt, 4);
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    let vt = version_table.to_ascii_uppercase();
    let is_vt = |x: &str| x.eq_ignore_ascii_case(&vt);
    sql::is_transaction_control(stmt)
        || matches!(w.as_slice(), ["INSERT", "INTO", t, ..] if is_vt(t))
        || matches!(w.as_slice(), ["UPDATE", t, ..] if is_vt(t))
        || matches!(w.as_slice(), ["DELETE", "FROM", t, ..] if is_vt(t))
        || matches!(w.as_slice(), ["CREATE", "TABLE", t, ..] if is_vt(t))
        || matches!(w.as_slice(), ["DROP", "TABLE", t, ..] if is_vt(t))
}

fn steps(text: &str, verb: &str, version_table: &str) -> Result<Vec<Step>, ImportError> {
    let marker = format!("-- Running {verb} ");
    let mut out: Vec<Step> = Vec::new();
    let mut current: Option<(Step, String, usize)> = None;
    let flush =
        |cur: Option<(Step, String, usize)>, out: &mut Vec<Step>| -> Result<(), ImportError> {
            if let Some((mut step, body, first_line)) = cur {
                let split = sql::split(&body).map_err(|e| ImportError::Sql {
                    line: first_line + e.line,
                    message: e.to_string(),
                })?;
                step.statements = split
                    .into_iter()
                    .map(|s| s.text)
                    .filter(|s| !is_alembic_noise(s, version_table))
                    .collect();
                out.push(step);
            }
            Ok(())
        };
    for (i, line) in text.lines().enumerate() {
        if let Some(rest) = line.trim().strip_prefix(marker.trim_end()) {
            let rest = rest.trim();
            let Some((from, to)) = rest.split_once("->") else {
                return Err(ImportError::Marker {
                    line: i + 1,
                    text: line.to_string(),
                });
            };
            flush(current.take(), &mut out)?;
            current = Some((
                Step {
                    from: ids(from),
                    to: ids(to),
                    statements: vec![],
                },
                String::new(),
                i + 2,
            ));
        } else if let Some((_, body, _)) = current.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    flush(current, &mut out)?;
    Ok(out)
}

/// Turn Alembic's offline upgrade (and optional downgrade) SQL into revisions.
pub fn import(
    upgrade_sql: &str,
    downgrade_sql: Option<&str>,
    version_table: &str,
) -> Result<Vec<Imported>, ImportError> {
    let ups = steps(upgrade_sql, "upgrade", version_table)?;
    if ups.is_empty() {
        return Err(ImportError::NoSteps);
    }
    let mut downs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Some(d) = downgrade_sql {
        for step in steps(d, "downgrade", version_table)? {
            // `-- Running downgrade C -> A, B`: C's downgrade.
            for id in step.from {
                downs.insert(id, step.statements.clone());
            }
        }
    }
    let mut seen = BTreeMap::new();
    let mut out = Vec::with_capacity(ups.len());
    for step in ups {
        let [id] = step.to.as_slice() else {
            return Err(ImportError::Marker {
                line: 0,
                text: format!("{} -> {}", step.from.join(", "), step.to.join(", ")),
            });
        };
        if seen.insert(id.clone(), ()).is_some() {
            return Err(ImportError::Duplicate(id.clone()));
        }
        let parse = |s: &str| {
            s.parse::<RevisionId>()
                .map_err(|_| ImportError::Id(s.to_string()))
        };
        let non_transactional = step
            .statements
            .iter()
            .any(|s| sql::needs_autocommit(s).is_some());
        out.push(Imported {
            id: parse(id)?,
            parents: step
                .from
                .iter()
                .map(|p| parse(p))
                .collect::<Result<_, _>>()?,
            downgrade: downgrade_sql.map(|_| downs.get(id).cloned().unwrap_or_default()),
            upgrade: step.statements,
            non_transactional,
        });
    }
    Ok(out)
}

/// The fleetmig revision file for an imported revision.
pub fn render_file(r: &Imported) -> String {
    let mut s = format!(
        "-- revision: {}\n-- down_revision: {}\n-- message: imported from Alembic\n",
        r.id,
        r.parents
            .iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if r.non_transactional {
        s.push_str("-- transaction: none\n");
    }
    if r.downgrade.is_none() {
        s.push_str("-- irreversible: true\n");
    }
    s.push_str("\n-- +upgrade\n");
    for stmt in &r.upgrade {
        s.push_str(stmt);
        s.push_str(";\n\n");
    }
    if let Some(down) = &r.downgrade {
        s.push_str("-- +downgrade\n");
        for stmt in down {
            s.push_str(stmt);
            s.push_str(";\n\n");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const UP: &str = "BEGIN;\n\nCREATE TABLE alembic_version (\n    version_num VARCHAR(32) NOT NULL, \n    CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)\n);\n\n-- Running upgrade  -> a1\n\nCREATE TABLE account (id SERIAL NOT NULL, name VARCHAR(50) NOT NULL, PRIMARY KEY (id));\n\nINSERT INTO alembic_version (version_num) VALUES ('a1') RETURNING alembic_version.version_num;\n\n-- Running upgrade a1 -> b1\n\nALTER TABLE account ADD COLUMN note TEXT DEFAULT 'x;y';\n\nUPDATE alembic_version SET version_num='b1' WHERE alembic_version.version_num = 'a1';\n\n-- Running upgrade a1 -> c1\n\nCREATE INDEX ix_account_name ON account (name);\n\nINSERT INTO alembic_version (version_num) VALUES ('c1') RETURNING alembic_version.version_num;\n\n-- Running upgrade b1, c1 -> m1\n\nDELETE FROM alembic_version WHERE alembic_version.version_num = 'c1';\n\nUPDATE alembic_version SET version_num='m1' WHERE alembic_version.version_num = 'b1';\n\nCOMMIT;\n";
    const DOWN: &str = "BEGIN;\n\n-- Running downgrade m1 -> b1, c1\n\nUPDATE alembic_version SET version_num='b1' WHERE alembic_version.version_num = 'm1';\n\n-- Running downgrade c1 -> a1\n\nDROP INDEX ix_account_name;\n\n-- Running downgrade b1 -> a1\n\nALTER TABLE account DROP COLUMN note;\n\n-- Running downgrade a1 -> \n\nDROP TABLE account;\n\nDELETE FROM alembic_version WHERE alembic_version.version_num = 'a1';\n\nDROP TABLE alembic_version;\n\nCOMMIT;\n";

    #[test]
    fn steps_become_revisions_with_their_parents() {
        let revs = import(UP, Some(DOWN), "alembic_version").unwrap();
        let shape: Vec<(String, Vec<String>)> = revs
            .iter()
            .map(|r| {
                (
                    r.id.to_string(),
                    r.parents.iter().map(|p| p.to_string()).collect(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                ("a1".into(), vec![]),
                ("b1".into(), vec!["a1".into()]),
                ("c1".into(), vec!["a1".into()]),
                ("m1".into(), vec!["b1".into(), "c1".into()])
            ]
        );
        assert_eq!(
            revs[0].upgrade,
            [
                "CREATE TABLE account (id SERIAL NOT NULL, name VARCHAR(50) NOT NULL, PRIMARY KEY (id))"
            ]
        );
        assert_eq!(
            revs[1].upgrade,
            ["ALTER TABLE account ADD COLUMN note TEXT DEFAULT 'x;y'"]
        );
        assert!(
            revs[3].upgrade.is_empty(),
            "the merge's version-table statements are dropped"
        );
        assert_eq!(
            revs[0].downgrade.as_deref(),
            Some(&["DROP TABLE account".to_string()][..])
        );
        assert_eq!(revs[3].downgrade.as_deref(), Some(&[][..]));
        let file = render_file(&revs[3]);
        assert!(file.contains("-- down_revision: b1, c1"), "{file}");
        let parsed =
            crate::revision::Revision::parse(std::path::Path::new("m1.sql"), &file).unwrap();
        assert_eq!(parsed.parents.len(), 2);
    }

    #[test]
    fn without_downgrade_sql_revisions_are_irreversible() {
        let revs = import(UP, None, "alembic_version").unwrap();
        assert!(render_file(&revs[0]).contains("-- irreversible: true"));
    }

    #[test]
    fn bad_input_is_reported() {
        assert_eq!(
            import("SELECT 1;", None, "alembic_version").unwrap_err(),
            ImportError::NoSteps
        );
        assert!(matches!(
            import("-- Running upgrade a1 b1\n", None, "alembic_version"),
            Err(ImportError::Marker { line: 1, .. })
        ));
    }
}
