//! Lint findings for people (annotated statements) and for machines: JSON, GitHub Actions
//! workflow commands (annotations on a pull request's diff), and SARIF 2.1.0 (code
//! scanning; ignored findings carry their reason as an in-source suppression).

use std::fmt::Write as _;

use serde_json::json;

use super::{Counts, Finding, Severity};

/// The apps a report covers: name, target PostgreSQL version, revisions linted.
pub struct Scope {
    pub app: String,
    pub pg_version: String,
    pub revisions: usize,
}

/// The output formats of `fleetmig lint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Human,
    Json,
    Github,
    Sarif,
}

pub fn render(format: Format, scope: &[Scope], findings: &[&Finding]) -> String {
    match format {
        Format::Human => human(scope, findings),
        Format::Json => json(scope, findings),
        Format::Github => github(findings),
        Format::Sarif => sarif(findings),
    }
}

/// How many lines of a statement the human report shows.
const SNIPPET_LINES: usize = 8;

fn human(scope: &[Scope], findings: &[&Finding]) -> String {
    let mut out = String::new();
    for f in findings.iter().filter(|f| f.ignored.is_none()) {
        let _ = writeln!(
            out,
            "{}[{}]: {}\n  --> {} ({} of revision {})",
            f.severity.as_str(),
            f.rule,
            f.message,
            f.location(),
            f.direction.map_or("header", |d| d.as_str()),
            f.revision
        );
        snippet(&mut out, f);
        if let Some(help) = &f.help {
            let _ = writeln!(out, "   = help: {help}");
        }
        if let Some(docs) = &f.docs {
            let _ = writeln!(out, "   = docs: {docs}");
        }
        out.push('\n');
    }
    for f in findings.iter().filter(|f| f.ignored.is_some()) {
        let _ = writeln!(
            out,
            "ignored[{}] {} ({}): {}",
            f.rule,
            f.location(),
            f.revision,
            f.ignored.as_deref().unwrap_or_default()
        );
    }
    let c = Counts::of(findings.iter().copied());
    for s in scope {
        let _ = writeln!(
            out,
            "{}: {} revision(s) linted (pg_version {})",
            s.app, s.revisions, s.pg_version
        );
    }
    let _ = writeln!(
        out,
        "{} error(s), {} warning(s), {} ignored",
        c.errors, c.warnings, c.ignored
    );
    out
}

/// The statement's lines with the finding's first line underlined.
fn snippet(out: &mut String, f: &Finding) {
    if f.statement.is_empty() {
        return;
    }
    let width = (f.statement_line + SNIPPET_LINES).to_string().len();
    let lines: Vec<&str> = f.statement.split('\n').collect();
    // Around the finding: a few lines before it, the rest after.
    let first = f.line.saturating_sub(f.statement_line).saturating_sub(2);
    for (i, text) in lines.iter().enumerate().skip(first).take(SNIPPET_LINES) {
        let line = f.statement_line + i;
        // The statement's first line starts where it starts in the file.
        let indent = if i == 0 { f.statement_column - 1 } else { 0 };
        let _ = writeln!(out, "{line:>width$} | {}{text}", " ".repeat(indent));
        if line == f.line {
            let from = f.column.max(1) - 1;
            let to = if f.end_line == f.line {
                f.end_column.max(f.column + 1) - 1
            } else {
                indent + text.chars().count()
            };
            let _ = writeln!(
                out,
                "{:>width$} | {}{}",
                "",
                " ".repeat(from),
                "^".repeat(to.saturating_sub(from).max(1))
            );
        }
    }
    if lines.len() > first + SNIPPET_LINES {
        let _ = writeln!(
            out,
            "{:>width$} | ... ({} more line(s))",
            "",
            lines.len() - first - SNIPPET_LINES
        );
    }
}

fn json(scope: &[Scope], findings: &[&Finding]) -> String {
    let c = Counts::of(findings.iter().copied());
    let value = json!({
        "apps": scope.iter().map(|s| json!({
            "app": s.app, "pg_version": s.pg_version, "revisions": s.revisions,
        })).collect::<Vec<_>>(),
        "findings": findings,
        "errors": c.errors,
        "warnings": c.warnings,
        "ignored": c.ignored,
    });
    serde_json::to_string_pretty(&value).expect("findings serialize") + "\n"
}

/// A workflow command's data: `%`, CR and LF escaped.
fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// A workflow command's property: also `:` and `,`.
fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

fn github(findings: &[&Finding]) -> String {
    let mut out = String::new();
    for f in findings.iter().filter(|f| f.ignored.is_none()) {
        let level = match f.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let mut message = format!("{} (revision {})", f.message, f.revision);
        if let Some(help) = &f.help {
            message.push_str(&format!("\nhelp: {help}"));
        }
        if let Some(docs) = &f.docs {
            message.push_str(&format!("\n{docs}"));
        }
        let _ = writeln!(
            out,
            "::{level} file={},line={},col={},endLine={},endColumn={},title={}::{}",
            escape_property(&f.file),
            f.line,
            f.column,
            f.end_line,
            f.end_column,
            escape_property(&format!("fleetmig lint: {}", f.rule)),
            escape_data(&message)
        );
    }
    out
}

/// A file path as a SARIF artifact URI (relative paths stay relative to the checkout).
fn uri(path: &str) -> String {
    let p = path.replace('\\', "/");
    if p.starts_with('/') {
        format!("file://{p}")
    } else {
        p.trim_start_matches("./").to_string()
    }
}

fn sarif(findings: &[&Finding]) -> String {
    let mut rules: Vec<&str> = findings.iter().map(|f| f.rule.as_str()).collect();
    rules.sort_unstable();
    rules.dedup();
    let rule_objects: Vec<_> = rules
        .iter()
        .map(|r| {
            let mut o = json!({ "id": r, "name": r, "shortDescription": { "text": r } });
            if let Some(docs) = super::squawk::docs(r) {
                o["helpUri"] = json!(docs);
            }
            o
        })
        .collect();
    let results: Vec<_> = findings
        .iter()
        .map(|f| {
            let mut text = f.message.clone();
            if let Some(help) = &f.help {
                text.push_str(&format!(" Help: {help}"));
            }
            let mut r = json!({
                "ruleId": f.rule,
                "ruleIndex": rules.iter().position(|r| *r == f.rule),
                "level": match f.severity { Severity::Error => "error", Severity::Warning => "warning" },
                "message": { "text": text },
                "locations": [{ "physicalLocation": {
                    "artifactLocation": { "uri": uri(&f.file) },
                    "region": {
                        "startLine": f.line, "startColumn": f.column,
                        "endLine": f.end_line, "endColumn": f.end_column.max(f.column + usize::from(f.end_line == f.line)),
                    },
                }}],
                "properties": {
                    "revision": f.revision,
                    "direction": f.direction.map(|d| d.as_str()),
                },
            });
            if let Some(reason) = &f.ignored {
                r["suppressions"] = json!([{ "kind": "inSource", "justification": reason }]);
            }
            r
        })
        .collect();
    let value = json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": {
                "name": "fleetmig lint",
                "version": env!("CARGO_PKG_VERSION"),
                "informationUri": "https://squawkhq.com/docs/rules",
                "rules": rule_objects,
            }},
            "results": results,
        }],
    });
    serde_json::to_string_pretty(&value).expect("SARIF serializes") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workflow_commands_are_escaped() {
        assert_eq!(escape_data("a%b\nc"), "a%25b%0Ac");
        assert_eq!(escape_property("x:y,z"), "x%3Ay%2Cz");
        assert_eq!(uri("./migrations/a/1.sql"), "migrations/a/1.sql");
        assert_eq!(uri("/tmp/a.sql"), "file:///tmp/a.sql");
    }
}
