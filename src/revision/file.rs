//! Parses one revision file: the `-- key: value` header and the `-- +upgrade` /
//! `-- +downgrade` sections. See docs/revision-format.md.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::model::{RevisionId, TransactionMode};

/// A section of SQL and the 1-based file line of its first line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub text: String,
    pub first_line: usize,
}

/// One parsed revision file.
#[derive(Debug, Clone)]
pub struct Revision {
    pub id: RevisionId,
    pub parents: Vec<RevisionId>,
    pub branch_labels: Vec<String>,
    pub depends_on: Vec<RevisionId>,
    pub message: String,
    pub transaction: TransactionMode,
    /// A bool placeholder gating the revision's SQL.
    pub condition: Option<String>,
    /// Tables to ANALYZE after the upgrade section.
    pub analyze: Vec<String>,
    pub irreversible: bool,
    pub upgrade: Section,
    pub downgrade: Option<Section>,
    /// `-- lint-ignore: rule, rule -- reason` header lines, as written (checked by the linter).
    pub lint_ignores: Vec<LintIgnore>,
    pub path: PathBuf,
    /// sha256 of the file, line endings normalised, `lint-ignore` header lines left out.
    pub checksum: String,
}

/// One `-- lint-ignore: rule-a, rule-b -- reason` header line: lint rules this revision
/// ignores, and why. Rule names and the reason are checked by the linter (`crate::lint`),
/// which knows the rules; here they are only read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LintIgnore {
    /// 1-based line in the file.
    pub line: usize,
    pub rules: Vec<String>,
    /// The text after ` -- `; `None` when there is none (an error the linter reports).
    pub reason: Option<String>,
}

/// The header key of lint ignores (with a hyphen, as squawk spells its rules).
pub const LINT_IGNORE_KEY: &str = "lint-ignore";

/// The value of a `-- lint-ignore: ...` line (trimmed), if `line` is one.
pub fn lint_ignore_value(line: &str) -> Option<&str> {
    let (key, value) = line.trim().strip_prefix("--")?.split_once(':')?;
    (key.trim() == LINT_IGNORE_KEY).then(|| value.trim())
}

impl LintIgnore {
    fn parse(line: usize, value: &str) -> LintIgnore {
        // ESLint's convention for a reason on a directive: ` -- why`.
        let (rules, reason) = match value.split_once("--") {
            Some((rules, reason)) => (rules, Some(reason.trim()).filter(|r| !r.is_empty())),
            None => (value, None),
        };
        LintIgnore {
            line,
            rules: rules
                .split(',')
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(str::to_string)
                .collect(),
            reason: reason.map(str::to_string),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{}:{line}: {message}", path.display())]
pub struct ParseError {
    pub path: PathBuf,
    pub line: usize,
    pub message: String,
}

const KEYS: &[&str] = &[
    "revision",
    "down_revision",
    "branch_labels",
    "depends_on",
    "message",
    "transaction",
    "condition",
    "analyze",
    "irreversible",
];

const UPGRADE_MARKER: &str = "-- +upgrade";
const DOWNGRADE_MARKER: &str = "-- +downgrade";

/// A byte-order mark some editors put at the start of a file; not part of the revision.
const BOM: char = '\u{feff}';

/// sha256 of the file, ignoring what editors change without changing the SQL: CRLF line
/// endings and a leading byte-order mark. `-- lint-ignore:` header lines are left out too:
/// they change no SQL, so a justification added to an applied revision does not make it a
/// "changed file" (a file without them hashes as it always did).
pub fn checksum(content: &str) -> String {
    let content = content.strip_prefix(BOM).unwrap_or(content);
    let normalised = content.replace("\r\n", "\n");
    let mut in_header = true;
    let kept: Vec<&str> = normalised
        .split('\n')
        .filter(|line| {
            let t = line.trim();
            if t == UPGRADE_MARKER || t == DOWNGRADE_MARKER {
                in_header = false;
            }
            !(in_header && lint_ignore_value(line).is_some())
        })
        .collect();
    hex::encode(Sha256::digest(kept.join("\n").as_bytes()))
}

fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != "base" && *s != "None")
        .map(str::to_string)
        .collect()
}

/// A label or table name: letters, digits, `_`, and `.` for schema qualification.
fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 127
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

impl Revision {
    pub fn parse(path: &Path, content: &str) -> Result<Revision, ParseError> {
        let err = |line: usize, message: String| ParseError {
            path: path.to_path_buf(),
            line,
            message,
        };
        let content_n = content
            .strip_prefix(BOM)
            .unwrap_or(content)
            .replace("\r\n", "\n");
        let lines: Vec<&str> = content_n.split('\n').collect();

        let mut fields: Vec<(usize, &str, &str)> = Vec::new();
        let mut lint_ignores = Vec::new();
        let mut upgrade_at = None;
        let mut downgrade_at = None;
        for (i, raw) in lines.iter().enumerate() {
            let line_no = i + 1;
            let t = raw.trim();
            if t == UPGRADE_MARKER {
                if upgrade_at.replace(i).is_some() {
                    return Err(err(line_no, "a second `-- +upgrade` section".into()));
                }
            } else if t == DOWNGRADE_MARKER {
                if downgrade_at.replace(i).is_some() {
                    return Err(err(line_no, "a second `-- +downgrade` section".into()));
                }
            } else if upgrade_at.is_none() && downgrade_at.is_none() {
                if t.is_empty() {
                    continue;
                }
                let Some(comment) = t.strip_prefix("--") else {
                    return Err(err(
                        line_no,
                        format!(
                            "SQL before `{UPGRADE_MARKER}`: the header holds only `-- key: value` lines"
                        ),
                    ));
                };
                let comment = comment.trim();
                if let Some(value) = lint_ignore_value(t) {
                    lint_ignores.push(LintIgnore::parse(line_no, value));
                    continue;
                }
                if let Some((key, value)) = comment.split_once(':') {
                    let key = key.trim();
                    if key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') && !key.is_empty() {
                        if !KEYS.contains(&key) {
                            return Err(err(
                                line_no,
                                format!("unknown header key `{key}` (known: {})", KEYS.join(", ")),
                            ));
                        }
                        if fields.iter().any(|(_, k, _)| *k == key) {
                            return Err(err(line_no, format!("header key `{key}` given twice")));
                        }
                        fields.push((line_no, key, value.trim()));
                    }
                }
            }
        }
        let Some(upgrade_at) = upgrade_at else {
            return Err(err(lines.len(), format!("no `{UPGRADE_MARKER}` section")));
        };
        let field = |k: &str| {
            fields
                .iter()
                .find(|(_, key, _)| *key == k)
                .map(|(l, _, v)| (*l, *v))
        };

        let (id_line, id) =
            field("revision").ok_or_else(|| err(1, "missing `-- revision:` header".into()))?;
        let id: RevisionId = id.parse().map_err(|e| err(id_line, format!("{e}")))?;
        let (parents_line, parents_raw) = field("down_revision").ok_or_else(|| {
            err(
                1,
                "missing `-- down_revision:` header (leave it empty for a base revision)".into(),
            )
        })?;
        let parse_ids = |line: usize, raw: &str| -> Result<Vec<RevisionId>, ParseError> {
            list(raw)
                .into_iter()
                .map(|s| s.parse().map_err(|e| err(line, format!("{e}"))))
                .collect()
        };
        let parents = parse_ids(parents_line, parents_raw)?;
        let depends_on = match field("depends_on") {
            Some((l, v)) => parse_ids(l, v)?,
            None => vec![],
        };
        let branch_labels = match field("branch_labels") {
            Some((l, v)) => {
                let labels = list(v);
                if let Some(bad) = labels.iter().find(|s| !is_plain_name(s) || s.contains('.')) {
                    return Err(err(
                        l,
                        format!("invalid branch label {bad:?}: use A-Z a-z 0-9 _"),
                    ));
                }
                labels
            }
            None => vec![],
        };
        let transaction = match field("transaction") {
            None | Some((_, "" | "revision")) => TransactionMode::Revision,
            Some((_, "none")) => TransactionMode::None,
            Some((l, other)) => {
                return Err(err(
                    l,
                    format!("transaction must be `revision` or `none`, not {other:?}"),
                ));
            }
        };
        let condition = match field("condition") {
            None | Some((_, "")) => None,
            Some((l, c)) => {
                if !c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    return Err(err(
                        l,
                        format!("condition must name a bool placeholder, not {c:?}"),
                    ));
                }
                Some(c.to_string())
            }
        };
        let analyze = match field("analyze") {
            Some((l, v)) => {
                let tables = list(v);
                if let Some(bad) = tables.iter().find(|s| !is_plain_name(s)) {
                    return Err(err(l, format!("invalid table name {bad:?} in analyze")));
                }
                tables
            }
            None => vec![],
        };
        let irreversible = match field("irreversible") {
            None | Some((_, "" | "false")) => false,
            Some((_, "true")) => true,
            Some((l, other)) => {
                return Err(err(
                    l,
                    format!("irreversible must be true or false, not {other:?}"),
                ));
            }
        };

        let section = |start: usize| -> Section {
            let end = [upgrade_at, downgrade_at.unwrap_or(usize::MAX)]
                .into_iter()
                .filter(|&m| m > start)
                .min()
                .unwrap_or(lines.len())
                .min(lines.len());
            Section {
                text: lines[start + 1..end].join("\n"),
                first_line: start + 2,
            }
        };
        let upgrade = section(upgrade_at);
        let downgrade = downgrade_at.map(section);
        let has_sql = |s: &Section| {
            crate::revision::sql::split(&s.text)
                .map(|v| !v.is_empty())
                .unwrap_or(true)
        };
        // An empty `-- +downgrade` section is an explicit "nothing to undo"; a missing one is an error.
        if !irreversible && downgrade.is_none() && has_sql(&upgrade) {
            return Err(err(
                lines.len(),
                "no `-- +downgrade` section: write one, or mark the revision `-- irreversible: true`".into(),
            ));
        }

        Ok(Revision {
            id,
            parents,
            branch_labels,
            depends_on,
            message: field("message")
                .map(|(_, m)| m.to_string())
                .unwrap_or_default(),
            transaction,
            condition,
            analyze,
            irreversible,
            upgrade,
            downgrade,
            lint_ignores,
            path: path.to_path_buf(),
            checksum: checksum(content),
        })
    }

    /// `path:line` for a 1-based file line, for error messages.
    pub fn location(&self, line: usize) -> String {
        format!("{}:{line}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "-- revision: 0003\n-- down_revision: 0002\n-- message: ivfflat\n-- transaction: none\n-- condition: PGVECTOR_ENABLE_IVFFLAT\n-- analyze: memory_shards\n-- a free comment without a key\n\n-- +upgrade\nCREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t USING ivfflat (e) WITH (lists = ${L});\n\n-- +downgrade\nDROP INDEX CONCURRENTLY IF EXISTS i;\n";

    fn parse(s: &str) -> Result<Revision, ParseError> {
        Revision::parse(Path::new("m/0003_x.sql"), s)
    }

    #[test]
    fn a_leading_byte_order_mark_is_ignored() {
        let with_bom = format!("\u{feff}{GOOD}");
        let r = parse(&with_bom).unwrap();
        assert_eq!(r.id.as_str(), "0003");
        assert_eq!(r.checksum, parse(GOOD).unwrap().checksum);
    }

    #[test]
    fn parses_a_full_header() {
        let r = parse(GOOD).unwrap();
        assert_eq!(r.id.as_str(), "0003");
        assert_eq!(r.parents, vec!["0002".parse().unwrap()]);
        assert_eq!(r.transaction, TransactionMode::None);
        assert_eq!(r.condition.as_deref(), Some("PGVECTOR_ENABLE_IVFFLAT"));
        assert_eq!(r.analyze, vec!["memory_shards"]);
        assert_eq!(r.upgrade.first_line, 10);
        assert!(r.upgrade.text.starts_with("CREATE INDEX"));
        assert_eq!(r.downgrade.as_ref().unwrap().first_line, 13);
        assert_eq!(r.checksum.len(), 64);
    }

    #[test]
    fn merge_points_and_bases() {
        let r =
            parse("-- revision: m\n-- down_revision: a, b\n-- +upgrade\n-- +downgrade\n").unwrap();
        assert_eq!(r.parents.len(), 2);
        let r = parse(
            "-- revision: a\n-- down_revision:\n-- +upgrade\nSELECT 1;\n-- +downgrade\nSELECT 1;\n",
        )
        .unwrap();
        assert!(r.parents.is_empty());
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("-- revision: a\n-- down_revison: b\n-- +upgrade\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(
            e.to_string()
                .starts_with("m/0003_x.sql:2: unknown header key `down_revison`")
        );
        let e = parse("-- revision: a\n-- down_revision:\n-- +upgrade\nCREATE TABLE t (x int);\n")
            .unwrap_err();
        assert!(e.message.contains("no `-- +downgrade` section"), "{e}");
        let e = parse("-- revision: a'; --\n-- down_revision:\n-- +upgrade\n").unwrap_err();
        assert_eq!(e.line, 1);
        let e = parse("SELECT 1;\n-- +upgrade\n").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(
            parse("-- revision: a\n-- down_revision:\n-- transaction: maybe\n-- +upgrade\n")
                .is_err()
        );
    }

    #[test]
    fn irreversible_needs_no_downgrade() {
        let r = parse("-- revision: a\n-- down_revision:\n-- irreversible: true\n-- +upgrade\nDROP TABLE t;\n").unwrap();
        assert!(r.irreversible && r.downgrade.is_none());
    }

    #[test]
    fn lint_ignores_are_read_with_their_reason_and_left_out_of_the_checksum() {
        let plain = "-- revision: a\n-- down_revision:\n-- +upgrade\nCREATE INDEX i ON t (x);\n-- +downgrade\nDROP INDEX i;\n";
        let ignored = "-- revision: a\n-- down_revision:\n-- lint-ignore: require-concurrent-index-creation, ban-drop-table -- t is empty here\n--lint-ignore:prefer-robust-stmts\n-- +upgrade\nCREATE INDEX i ON t (x);\n-- +downgrade\nDROP INDEX i;\n";
        let r = parse(ignored).unwrap();
        assert_eq!(
            r.lint_ignores,
            vec![
                LintIgnore {
                    line: 3,
                    rules: vec![
                        "require-concurrent-index-creation".into(),
                        "ban-drop-table".into()
                    ],
                    reason: Some("t is empty here".into()),
                },
                LintIgnore {
                    line: 4,
                    rules: vec!["prefer-robust-stmts".into()],
                    reason: None,
                },
            ]
        );
        assert_eq!(r.checksum, parse(plain).unwrap().checksum);
        // In a section it is SQL's business (a comment), and it counts.
        let in_section = plain.replace("-- +downgrade", "-- lint-ignore: x -- y\n-- +downgrade");
        assert_ne!(checksum(&in_section), checksum(plain));
        assert!(parse(&in_section).unwrap().lint_ignores.is_empty());
    }

    #[test]
    fn checksum_ignores_line_endings_only() {
        assert_eq!(checksum("a\r\nb"), checksum("a\nb"));
        assert_eq!(checksum("\u{feff}a\nb"), checksum("a\nb"));
        assert_ne!(checksum("a\nb"), checksum("a\nc"));
    }
}
