//! A revision's `-- lint-ignore: rule-a, rule-b -- reason` headers applied to its findings.
//! An ignore needs a reason (reviewers read it; without one it ignores nothing and is an
//! error itself) and known rule names; one that ignores nothing is reported as unused.
//! Ignore comments anywhere else (in a section, or squawk's own `squawk-ignore`) are errors:
//! fleetmig reads ignores only from the header, where they come with a reason.

use super::config::{LintConfig, canonical, own};
use super::{Finding, Severity};
use crate::model::Direction;
use crate::revision::Revision;
use crate::revision::file::lint_ignore_value;

/// A finding on a line of the file that is not a statement (a header line, a comment).
fn on_line(
    rev: &Revision,
    line: usize,
    text: &str,
    rule: &str,
    severity: Severity,
    message: String,
    help: &str,
) -> Finding {
    Finding {
        rule: rule.into(),
        severity,
        revision: rev.id.clone(),
        direction: None,
        file: rev.path.display().to_string(),
        line,
        column: 1,
        end_line: line,
        end_column: text.chars().count() + 1,
        statement: text.to_string(),
        statement_line: line,
        statement_column: 1,
        message,
        help: Some(help.into()),
        docs: None,
        ignored: None,
    }
}

/// Comments that would silence squawk without fleetmig seeing them.
fn squawk_directive(line: &str) -> bool {
    let t = line.trim_start();
    (t.starts_with("--") || t.starts_with("/*"))
        && (t.contains("squawk-ignore") || t.contains("squawk-disable-assume-in-transaction"))
}

/// `whole`: both directions were linted, so an ignore no finding used is unused.
pub(super) fn apply(rev: &Revision, findings: &mut Vec<Finding>, config: &LintConfig, whole: bool) {
    let header_line = |line: usize| format!("-- {}", header_text(rev, line));
    let mut extra = Vec::new();
    // (rule, reason, line) of every well-formed ignore.
    let mut valid: Vec<(String, String, usize)> = Vec::new();
    for ignore in &rev.lint_ignores {
        let text = header_line(ignore.line);
        if ignore.rules.is_empty() {
            extra.push(on_line(
                rev,
                ignore.line,
                &text,
                own::IGNORE_UNKNOWN_RULE,
                Severity::Error,
                "this lint-ignore names no rule".into(),
                "write `-- lint-ignore: rule-a, rule-b -- why they do not apply here`",
            ));
        }
        for name in &ignore.rules {
            let Some(rule) = canonical(name) else {
                extra.push(on_line(
                    rev,
                    ignore.line,
                    &text,
                    own::IGNORE_UNKNOWN_RULE,
                    Severity::Error,
                    format!("lint-ignore names {name:?}, which is no rule"),
                    "squawk's rules are listed at https://squawkhq.com/docs/rules (a misspelt ignore ignores nothing)",
                ));
                continue;
            };
            match &ignore.reason {
                Some(reason) => valid.push((rule, reason.clone(), ignore.line)),
                None => extra.push(on_line(
                    rev,
                    ignore.line,
                    &text,
                    own::IGNORE_WITHOUT_REASON,
                    Severity::Error,
                    format!("lint-ignore of {rule} without a reason: it ignores nothing"),
                    "give the reason after ` -- `: `-- lint-ignore: rule -- why it does not apply here`",
                )),
            }
        }
    }
    for f in findings.iter_mut() {
        if let Some((_, reason, _)) = valid.iter().find(|(rule, _, _)| *rule == f.rule) {
            f.ignored = Some(reason.clone());
        }
    }
    if let (true, true, Some(severity)) = (
        whole,
        config.runs(own::UNUSED_IGNORE),
        config.severity(own::UNUSED_IGNORE, Direction::Upgrade),
    ) {
        for (rule, _, line) in &valid {
            if !findings.iter().any(|f| f.rule == *rule) {
                extra.push(on_line(
                    rev,
                    *line,
                    &header_line(*line),
                    own::UNUSED_IGNORE,
                    severity,
                    format!("lint-ignore of {rule}, which reports nothing in this revision"),
                    "remove it: an ignore nobody needs hides the next real finding",
                ));
            }
        }
    }
    for (direction, section) in [
        (Direction::Upgrade, Some(&rev.upgrade)),
        (Direction::Downgrade, rev.downgrade.as_ref()),
    ] {
        let Some(section) = section else { continue };
        for (i, line) in section.text.split('\n').enumerate() {
            let misplaced = if lint_ignore_value(line).is_some() {
                "a lint-ignore in a section is a plain comment: fleetmig reads ignores only from the header"
            } else if squawk_directive(line) {
                "squawk's ignore comments are not read by fleetmig: ignores go in the header, with a reason"
            } else {
                continue;
            };
            let mut f = on_line(
                rev,
                section.first_line + i,
                line.trim(),
                own::MISPLACED_IGNORE,
                Severity::Error,
                misplaced.into(),
                "move it to the header as `-- lint-ignore: rule -- why` (it covers the whole revision)",
            );
            f.direction = Some(direction);
            extra.push(f);
        }
    }
    findings.extend(extra);
    findings.sort_by_key(|f| (f.direction.is_some(), f.line, f.column));
}

/// The header line `line` (1-based) as written, without its `--`.
fn header_text(rev: &Revision, line: usize) -> String {
    let ignore = rev.lint_ignores.iter().find(|i| i.line == line);
    match ignore {
        Some(i) => format!(
            "lint-ignore: {}{}",
            i.rules.join(", "),
            i.reason
                .as_deref()
                .map(|r| format!(" -- {r}"))
                .unwrap_or_default()
        ),
        None => String::new(),
    }
}
