//! The adapter to squawk: one revision's rendered statements, for one direction, become one
//! text for squawk's parser and linter, preceded by the settings fleetmig itself sends before
//! them (so squawk sees what runs: `SET LOCAL` timeouts inside the transaction, or `SET` on
//! the session for statements run one by one); each violation's range is mapped back to the
//! revision file's line and column through the statement it falls in.

use squawk_syntax::SourceFile;

use super::Finding;
use super::config::{LintConfig, own};
use crate::model::Direction;
use crate::revision::Revision;
use crate::revision::render::RenderedStatement;

/// What fleetmig sends before a revision's statements (its values do not matter to the rules).
fn preamble(in_transaction: bool) -> &'static str {
    if in_transaction {
        "SET LOCAL lock_timeout = '5s';\nSET LOCAL statement_timeout = 0;\n"
    } else {
        "SET lock_timeout = '5s';\nSET statement_timeout = 0;\n"
    }
}

/// The squawk documentation page of a rule.
pub fn docs(rule: &str) -> Option<String> {
    squawk_linter::Rule::try_from(rule)
        .ok()
        .map(|r| format!("https://squawkhq.com/docs/{r}"))
}

/// The text squawk reads, and where each statement sits in it (byte ranges).
struct Source {
    text: String,
    spans: Vec<(usize, usize)>,
}

impl Source {
    fn new(statements: &[RenderedStatement], in_transaction: bool) -> Source {
        let mut text = preamble(in_transaction).to_string();
        let mut spans = Vec::with_capacity(statements.len());
        for s in statements {
            let start = text.len();
            text.push_str(&s.sql);
            spans.push((start, text.len()));
            text.push_str(";\n");
        }
        Source { text, spans }
    }

    /// The statement holding byte `offset` of the text, and the 1-based character position
    /// in it. Offsets between statements belong to the one before; before the first, to none.
    fn locate(&self, statements: &[RenderedStatement], offset: usize) -> Option<(usize, usize)> {
        let i = self.spans.iter().rposition(|(start, _)| *start <= offset)?;
        let (start, end) = self.spans[i];
        let within = offset.min(end) - start;
        let sql = &statements[i].sql;
        let within = (0..=within).rev().find(|b| sql.is_char_boundary(*b))?;
        Some((i, sql[..within].chars().count() + 1))
    }
}

/// squawk's findings on `statements` of `rev` in `direction`, weighed by `config`.
pub(super) fn lint(
    rev: &Revision,
    direction: Direction,
    statements: &[RenderedStatement],
    in_transaction: bool,
    config: &LintConfig,
) -> Vec<Finding> {
    if statements.is_empty() {
        return vec![];
    }
    let source = Source::new(statements, in_transaction);
    let parse = SourceFile::parse(&source.text);
    let mut found = Vec::new();
    let mut finding = |rule: String, range: (usize, usize), message: String, help| {
        let Some(severity) = config.severity(&rule, direction) else {
            return;
        };
        let Some((i, start)) = source.locate(statements, range.0) else {
            // In fleetmig's own preamble: not the revision's doing.
            return;
        };
        let stmt = &statements[i];
        let (line, column) = stmt.line_column(start);
        let (end_line, end_column) = match source.locate(statements, range.1) {
            Some((j, end)) if j == i => stmt.line_column(end),
            _ => stmt.line_column(stmt.sql.chars().count() + 1),
        };
        found.push(Finding {
            severity,
            docs: docs(&rule),
            rule,
            revision: rev.id.clone(),
            direction: Some(direction),
            file: rev.path.display().to_string(),
            line,
            column,
            end_line,
            end_column,
            statement: stmt.sql.clone(),
            statement_line: stmt.line,
            statement_column: stmt.column + 1,
            message,
            help,
            ignored: None,
        });
    };
    if config.runs(own::PARSE_ERROR) {
        for e in parse.errors() {
            let r = e.range();
            found_parse_error(
                &mut finding,
                (r.start().into(), r.end().into()),
                e.message(),
            );
        }
    }
    for v in config.linter(in_transaction).lint(&parse, &source.text) {
        let r = v.text_range;
        finding(
            v.code.to_string(),
            (u32::from(r.start()) as usize, u32::from(r.end()) as usize),
            v.message,
            v.help,
        );
    }
    found.sort_by_key(|f| (f.line, f.column));
    found
}

fn found_parse_error(
    finding: &mut impl FnMut(String, (usize, usize), String, Option<String>),
    range: (u32, u32),
    message: &str,
) {
    finding(
        own::PARSE_ERROR.to_string(),
        (range.0 as usize, range.1 as usize),
        format!("squawk's parser could not read this ({message}): its rules may have missed the statement"),
        Some("PostgreSQL decides whether the statement is valid; if it is, ignore this finding with `-- lint-ignore: squawk-parse-error -- why`".into()),
    );
}
