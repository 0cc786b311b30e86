//! Import an Alembic project: the graph from its version files (`alembic_py.rs`: revision,
//! down_revision, branch_labels, depends_on, exactly as written), the SQL from its offline
//! output (`alembic upgrade base:heads --sql`, and `alembic downgrade HEAD:base --sql` once per
//! head, since Alembic refuses `heads:base` when there are several). Alembic marks each step
//! with `-- Running upgrade A -> B`; each revision becomes a fleetmig revision file with the
//! same id, parents, labels and dependencies, so a fleet under Alembic is taken over without
//! re-stamping. Alembic's own version-table statements and transaction control are dropped:
//! fleetmig writes its own.

use std::collections::BTreeMap;

use crate::model::RevisionId;
use crate::revision::alembic_py::AlembicRevision;
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
        "no `-- Running upgrade` steps found: pass the output of `alembic upgrade base:heads --sql`"
    )]
    NoSteps,
    #[error("revision {0} appears twice in the upgrade SQL")]
    Duplicate(String),
    #[error(
        "revision {id} ({path}) has no `-- Running upgrade` step in the upgrade SQL: pass the output of `alembic upgrade base:heads --sql` for the same project"
    )]
    NoUpgrade { id: String, path: String },
    #[error(
        "the upgrade SQL runs revision {0}, which no version file declares: pass the versions directory of the same project"
    )]
    NoFile(String),
    #[error(
        "the upgrade SQL says {id} comes after [{sql}] but its version file says down_revision [{file}]"
    )]
    ParentMismatch {
        id: String,
        sql: String,
        file: String,
    },
    #[error(
        "revision {id} has no `-- Running downgrade` step in the downgrade SQL: run `alembic downgrade HEAD:base --sql` for every head `alembic heads` lists, and pass each file"
    )]
    NoDowngrade { id: String },
    #[error("revision {0} has different downgrade SQL in two of the downgrade files")]
    DowngradeConflict(String),
    #[error("revision {0} is declared by two version files")]
    DuplicateFile(String),
}

/// One imported revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub id: RevisionId,
    pub parents: Vec<RevisionId>,
    pub branch_labels: Vec<String>,
    pub depends_on: Vec<RevisionId>,
    pub message: String,
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

fn parse_id(s: &str) -> Result<RevisionId, ImportError> {
    s.parse::<RevisionId>()
        .map_err(|_| ImportError::Id(s.to_string()))
}

/// Each revision's downgrade statements, from one or more `alembic downgrade X:base --sql`
/// outputs (`-- Running downgrade C -> A, B` is C's downgrade).
fn downgrades(
    downgrade_sql: &[&str],
    version_table: &str,
) -> Result<BTreeMap<String, Vec<String>>, ImportError> {
    let mut downs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for d in downgrade_sql {
        for step in steps(d, "downgrade", version_table)? {
            for id in step.from {
                match downs.get(&id) {
                    Some(prev) if *prev != step.statements => {
                        return Err(ImportError::DowngradeConflict(id));
                    }
                    _ => {
                        downs.insert(id, step.statements.clone());
                    }
                }
            }
        }
    }
    Ok(downs)
}

/// Turn an Alembic project (its version files, its offline upgrade SQL and, optionally, its
/// offline downgrade SQL files) into revisions.
pub fn import(
    files: &[AlembicRevision],
    upgrade_sql: &str,
    downgrade_sql: Option<&[&str]>,
    version_table: &str,
) -> Result<Vec<Imported>, ImportError> {
    let ups = steps(upgrade_sql, "upgrade", version_table)?;
    if ups.is_empty() {
        return Err(ImportError::NoSteps);
    }
    let downs = downgrade_sql
        .map(|d| downgrades(d, version_table))
        .transpose()?;
    let mut by_id: BTreeMap<&str, &AlembicRevision> = BTreeMap::new();
    for f in files {
        if by_id.insert(f.revision.as_str(), f).is_some() {
            return Err(ImportError::DuplicateFile(f.revision.clone()));
        }
    }
    let mut upgrades: BTreeMap<String, Step> = BTreeMap::new();
    for step in ups {
        let [id] = step.to.as_slice() else {
            return Err(ImportError::Marker {
                line: 0,
                text: format!("{} -> {}", step.from.join(", "), step.to.join(", ")),
            });
        };
        let id = id.clone();
        let Some(file) = by_id.get(id.as_str()) else {
            return Err(ImportError::NoFile(id));
        };
        if step.from != file.down_revision {
            return Err(ImportError::ParentMismatch {
                id,
                sql: step.from.join(", "),
                file: file.down_revision.join(", "),
            });
        }
        if upgrades.insert(id.clone(), step).is_some() {
            return Err(ImportError::Duplicate(id));
        }
    }
    let mut out = Vec::with_capacity(files.len());
    for file in files {
        let id = &file.revision;
        let Some(step) = upgrades.remove(id) else {
            return Err(ImportError::NoUpgrade {
                id: id.clone(),
                path: file.path.display().to_string(),
            });
        };
        let downgrade = match &downs {
            None => None,
            Some(d) => Some(
                d.get(id)
                    .cloned()
                    .ok_or_else(|| ImportError::NoDowngrade { id: id.clone() })?,
            ),
        };
        let non_transactional = step
            .statements
            .iter()
            .chain(downgrade.iter().flatten())
            .any(|s| sql::needs_autocommit(s).is_some());
        out.push(Imported {
            id: parse_id(id)?,
            parents: file
                .down_revision
                .iter()
                .map(|p| parse_id(p))
                .collect::<Result<_, _>>()?,
            branch_labels: file.branch_labels.clone(),
            depends_on: file
                .depends_on
                .iter()
                .map(|p| parse_id(p))
                .collect::<Result<_, _>>()?,
            message: file
                .doc
                .clone()
                .unwrap_or_else(|| "imported from Alembic".into()),
            downgrade,
            upgrade: step.statements,
            non_transactional,
        });
    }
    Ok(out)
}

/// The fleetmig revision file for an imported revision.
pub fn render_file(r: &Imported) -> String {
    let join = |v: &[RevisionId]| v.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ");
    let mut s = format!(
        "-- revision: {}\n-- down_revision: {}\n",
        r.id,
        join(&r.parents)
    );
    if !r.branch_labels.is_empty() {
        s.push_str(&format!(
            "-- branch_labels: {}\n",
            r.branch_labels.join(", ")
        ));
    }
    if !r.depends_on.is_empty() {
        s.push_str(&format!("-- depends_on: {}\n", join(&r.depends_on)));
    }
    // One line: a docstring's first line, or the default.
    s.push_str(&format!(
        "-- message: {}\n",
        r.message.lines().next().unwrap_or_default()
    ));
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

    fn file(id: &str, down: &[&str], labels: &[&str], deps: &[&str]) -> AlembicRevision {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        AlembicRevision {
            path: format!("versions/{id}.py").into(),
            revision: id.into(),
            down_revision: v(down),
            branch_labels: v(labels),
            depends_on: v(deps),
            doc: Some(format!("rev {id}")),
        }
    }

    fn files() -> Vec<AlembicRevision> {
        vec![
            file("a1", &[], &[], &[]),
            file("b1", &["a1"], &[], &[]),
            file("c1", &["a1"], &["feat"], &[]),
            file("m1", &["b1", "c1"], &[], &[]),
        ]
    }

    #[test]
    fn steps_become_revisions_with_their_parents() {
        let revs = import(&files(), UP, Some(&[DOWN]), "alembic_version").unwrap();
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
        assert!(file.contains("-- message: rev m1"), "{file}");
        let parsed =
            crate::revision::Revision::parse(std::path::Path::new("m1.sql"), &file).unwrap();
        assert_eq!(parsed.parents.len(), 2);
        let c1 = render_file(&revs[2]);
        assert!(c1.contains("-- branch_labels: feat"), "{c1}");
    }

    #[test]
    fn labels_and_dependencies_come_from_the_files() {
        let files = vec![file("a", &[], &[], &[]), file("x", &[], &["other"], &["a"])];
        let up = "-- Running upgrade  -> a\nCREATE TABLE ta (id int);\n-- Running upgrade  -> x\nCREATE TABLE tx (id int);\n";
        let down_x = "-- Running downgrade x -> \nDROP TABLE tx;\n";
        let down_a = "-- Running downgrade a -> \nDROP TABLE ta;\n";
        let revs = import(
            &files,
            up,
            Some(&[down_x, down_a, down_x]),
            "alembic_version",
        )
        .unwrap();
        let x = render_file(&revs[1]);
        assert!(x.contains("-- depends_on: a\n"), "{x}");
        assert!(x.contains("-- branch_labels: other\n"), "{x}");
        assert_eq!(
            revs[1].downgrade.as_deref(),
            Some(&["DROP TABLE tx".to_string()][..])
        );
        // A head's downgrade file left out: refused, naming what to run.
        let e = import(&files, up, Some(&[down_x]), "alembic_version").unwrap_err();
        assert_eq!(e, ImportError::NoDowngrade { id: "a".into() });
        let conflict = "-- Running downgrade x -> \nDROP TABLE other;\n";
        assert_eq!(
            import(&files, up, Some(&[down_x, conflict]), "alembic_version").unwrap_err(),
            ImportError::DowngradeConflict("x".into())
        );
    }

    #[test]
    fn files_and_sql_must_describe_the_same_project() {
        let mut f = files();
        f.pop();
        assert_eq!(
            import(&f, UP, None, "alembic_version").unwrap_err(),
            ImportError::NoFile("m1".into())
        );
        let mut f = files();
        f.push(file("z9", &["m1"], &[], &[]));
        assert!(matches!(
            import(&f, UP, None, "alembic_version").unwrap_err(),
            ImportError::NoUpgrade { .. }
        ));
        let mut f = files();
        f[3] = file("m1", &["c1", "b1"], &[], &[]);
        assert!(matches!(
            import(&f, UP, None, "alembic_version").unwrap_err(),
            ImportError::ParentMismatch { .. }
        ));
    }

    #[test]
    fn without_downgrade_sql_revisions_are_irreversible() {
        let revs = import(&files(), UP, None, "alembic_version").unwrap();
        assert!(render_file(&revs[0]).contains("-- irreversible: true"));
    }

    #[test]
    fn bad_input_is_reported() {
        assert_eq!(
            import(&files(), "SELECT 1;", None, "alembic_version").unwrap_err(),
            ImportError::NoSteps
        );
        assert!(matches!(
            import(
                &files(),
                "-- Running upgrade a1 b1\n",
                None,
                "alembic_version"
            ),
            Err(ImportError::Marker { line: 1, .. })
        ));
    }
}
