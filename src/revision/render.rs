//! Turns a revision section into executable statements: split by the lexer, placeholders
//! rendered, each statement tagged with its file line and whether it needs autocommit.

use crate::model::{Direction, TransactionMode};
use crate::revision::file::Revision;
use crate::revision::placeholder::{PlaceholderError, Resolved};
use crate::revision::sql::{self, ConcurrentIndexBuild, SplitError};

/// One statement ready to run.
#[derive(Debug, Clone)]
pub struct RenderedStatement {
    pub sql: String,
    /// 1-based line in the revision file.
    pub line: usize,
    /// 0-based column (characters) of its first character on that line.
    pub column: usize,
    /// Set for `CREATE INDEX CONCURRENTLY name ON table`: checked for INVALID leftovers.
    pub index_build: Option<ConcurrentIndexBuild>,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{location}: {source}")]
    Split {
        location: String,
        source: SplitError,
    },
    #[error("{location}: {source}")]
    Placeholder {
        location: String,
        source: PlaceholderError,
    },
    #[error(
        "{location}: {what} cannot run inside a transaction; set `-- transaction: none` in this revision's header"
    )]
    NeedsAutocommit {
        location: String,
        what: &'static str,
    },
    #[error(
        "{location}: transaction control ({stmt}) in a revision; fleetmig manages transactions itself (use `-- transaction: none` for statements that must run outside one)"
    )]
    TransactionControl { location: String, stmt: String },
    #[error(
        "{location}: placeholder inside {what}: write ${{NAME}} as a bare token (fleetmig quotes the value itself), never inside quotes or comments"
    )]
    PlaceholderInQuotes {
        location: String,
        what: &'static str,
    },
    #[error(
        "{location}: the rendered statement is no longer one statement; a placeholder value changed its structure"
    )]
    NotOneStatement { location: String },
    #[error(
        "{location}: a backslash outside quotes is not SQL (the server refuses it, and in offline SQL psql would run it as one of its own commands)"
    )]
    Backslash { location: String },
    #[error("{location}: revision {id} has no downgrade (irreversible)")]
    NoDowngrade { location: String, id: String },
}

impl RenderedStatement {
    /// `file:line:column` of the server's error `position` (1-based, in characters of the
    /// statement as sent), or `file:line` of the statement without one. Columns count the
    /// rendered statement: a placeholder earlier on the line shifts them by its value's length.
    pub fn location(&self, rev: &Revision, position: Option<usize>) -> String {
        let Some(position) = position.filter(|&p| p >= 1) else {
            return rev.location(self.line);
        };
        let (line, column) = self.line_column(position);
        format!("{}:{column}", rev.location(line))
    }

    /// The 1-based file line and column of the statement's 1-based character `position`.
    pub fn line_column(&self, position: usize) -> (usize, usize) {
        let before: String = self.sql.chars().take(position.max(1) - 1).collect();
        let lines = before.matches('\n').count();
        let column = match before.rfind('\n') {
            Some(i) => before[i + 1..].chars().count() + 1,
            None => self.column + before.chars().count() + 1,
        };
        (self.line + lines, column)
    }
}

/// What a revision does for one direction: its statements, or nothing when its condition is false.
#[derive(Debug, Clone)]
pub struct RenderedRevision {
    pub statements: Vec<RenderedStatement>,
    /// `Some(name)` when the revision's condition placeholder is false: nothing runs.
    pub skipped_by: Option<String>,
    /// `ANALYZE` statements to run after an upgrade.
    pub analyze: Vec<String>,
}

/// Render `rev` for `direction` with `values`.
///
/// A conditional revision runs when its condition is true. For a downgrade, `recorded_skip`
/// (from the history of the upgrade) wins over the current value: a revision whose upgrade
/// ran is undone even if the flag has since been turned off, and vice versa.
pub fn render(
    rev: &Revision,
    direction: Direction,
    values: &Resolved,
    recorded_skip: Option<bool>,
) -> Result<RenderedRevision, RenderError> {
    render_with(rev, direction, values, recorded_skip, true)
}

/// The statements of `rev` for `direction` as the linter sees them: its condition disregarded
/// (a revision skipped today may run tomorrow), and a statement that cannot run in a
/// transaction left in a transactional revision (the linter reports it, with the rule's
/// help, instead of failing the rendering).
pub fn render_for_lint(
    rev: &Revision,
    direction: Direction,
    values: &Resolved,
) -> Result<RenderedRevision, RenderError> {
    let mut unconditional = rev.clone();
    unconditional.condition = None;
    render_with(&unconditional, direction, values, None, false)
}

fn render_with(
    rev: &Revision,
    direction: Direction,
    values: &Resolved,
    recorded_skip: Option<bool>,
    refuse_autocommit_in_transaction: bool,
) -> Result<RenderedRevision, RenderError> {
    let loc = |line: usize| rev.location(line);
    if let Some(cond) = &rev.condition {
        let on = match (direction, recorded_skip) {
            (Direction::Downgrade, Some(skipped)) => !skipped,
            _ => values
                .bool(cond)
                .map_err(|source| RenderError::Placeholder {
                    location: loc(1),
                    source,
                })?,
        };
        if !on {
            return Ok(RenderedRevision {
                statements: vec![],
                skipped_by: Some(cond.clone()),
                analyze: vec![],
            });
        }
    }
    let section = match direction {
        Direction::Upgrade => &rev.upgrade,
        Direction::Downgrade => match &rev.downgrade {
            Some(d) => d,
            None => {
                return Err(RenderError::NoDowngrade {
                    location: loc(1),
                    id: rev.id.to_string(),
                });
            }
        },
    };
    let split = sql::split(&section.text).map_err(|source| RenderError::Split {
        location: loc(section.first_line + source.line),
        source,
    })?;
    let mut statements = Vec::with_capacity(split.len());
    for s in split {
        let line = section.first_line + s.line;
        if let Some((offset, what)) = sql::placeholder_in_quotes(&s.text) {
            return Err(RenderError::PlaceholderInQuotes {
                location: loc(line + offset),
                what,
            });
        }
        if let Some(offset) = sql::backslash_outside_quotes(&s.text) {
            return Err(RenderError::Backslash {
                location: loc(line + offset),
            });
        }
        let text = values
            .render(&s.text)
            .map_err(|(offset, source)| RenderError::Placeholder {
                location: loc(line + offset),
                source,
            })?;
        // Defence in depth: values are quoted, so the statement must still be one statement.
        if text != s.text && !matches!(sql::split(&text).as_deref(), Ok([_])) {
            return Err(RenderError::NotOneStatement {
                location: loc(line),
            });
        }
        if sql::is_transaction_control(&text) {
            let stmt = text
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            return Err(RenderError::TransactionControl {
                location: loc(line),
                stmt,
            });
        }
        if refuse_autocommit_in_transaction
            && rev.transaction == TransactionMode::Revision
            && let Some(what) = sql::needs_autocommit(&text)
        {
            return Err(RenderError::NeedsAutocommit {
                location: loc(line),
                what,
            });
        }
        let index_build = sql::concurrent_index_build(&text);
        statements.push(RenderedStatement {
            sql: text,
            line,
            column: s.column,
            index_build,
        });
    }
    let analyze = match direction {
        Direction::Upgrade => rev
            .analyze
            .iter()
            .map(|t| {
                format!(
                    "ANALYZE {}",
                    t.split('.')
                        .map(crate::revision::placeholder::quote_ident)
                        .collect::<Vec<_>>()
                        .join(".")
                )
            })
            .collect(),
        Direction::Downgrade => vec![],
    };
    Ok(RenderedRevision {
        statements,
        skipped_by: None,
        analyze,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::*;
    use crate::revision::placeholder::{Declaration, Declarations};

    fn values(v: &str) -> Resolved {
        let decls: BTreeMap<String, Declaration> =
            toml::from_str("[S]\ntype = \"string\"\n[I]\ntype = \"identifier\"\n").unwrap();
        Declarations(decls)
            .resolve(
                &|_| None,
                &BTreeMap::from([
                    ("S".to_string(), v.to_string()),
                    ("I".to_string(), "ok".to_string()),
                ]),
            )
            .unwrap()
    }

    fn rev(up: &str) -> Revision {
        Revision::parse(
            Path::new("r.sql"),
            &format!(
                "-- revision: r\n-- down_revision:\n-- +upgrade\n{up}\n-- +downgrade\nSELECT 1;\n"
            ),
        )
        .unwrap()
    }

    #[test]
    fn hostile_values_cannot_change_a_statement() {
        let hostile = "x'); DROP TABLE accounts; --";
        let ok = render(
            &rev("INSERT INTO t VALUES (${S});"),
            Direction::Upgrade,
            &values(hostile),
            None,
        )
        .unwrap();
        assert_eq!(ok.statements.len(), 1);
        assert_eq!(
            ok.statements[0].sql,
            "INSERT INTO t VALUES ('x''); DROP TABLE accounts; --')"
        );
        for quoted in [
            "SELECT '${S}';",
            "DO $$ BEGIN PERFORM ${S}; END $$;",
            "SELECT 1 -- ${S}\n;",
            "SELECT \"${I}\";",
        ] {
            let e = render(&rev(quoted), Direction::Upgrade, &values(hostile), None).unwrap_err();
            assert!(
                matches!(e, RenderError::PlaceholderInQuotes { .. }),
                "{quoted}: {e}"
            );
            assert!(e.to_string().starts_with("r.sql:4:"), "{e}");
        }
    }

    #[test]
    fn server_error_positions_map_to_file_line_column() {
        let r = rev("SELECT 1; SELECT\n  nope,\n  2;");
        let out = render(&r, Direction::Upgrade, &values("x"), None).unwrap();
        let second = &out.statements[1];
        // "SELECT\n  nope": the server points at `nope`, character 10.
        assert_eq!(second.location(&r, Some(10)), "r.sql:5:3");
        // On the statement's first line, its column in the file counts.
        assert_eq!(second.location(&r, Some(1)), "r.sql:4:11");
        assert_eq!(second.location(&r, None), "r.sql:4");
    }

    #[test]
    fn a_psql_meta_command_is_refused() {
        let e = render(
            &rev("SELECT 1;\n\\! touch /tmp/pwned\nSELECT 2;"),
            Direction::Upgrade,
            &values("x"),
            None,
        )
        .unwrap_err();
        assert!(matches!(e, RenderError::Backslash { .. }), "{e}");
        assert!(e.to_string().starts_with("r.sql:5:"), "{e}");
    }
}
