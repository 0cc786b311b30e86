//! An app's `[lint]` section (in `migrations/<app>/fleetmig.toml`): the PostgreSQL version its
//! tenants run, squawk's opt-in rules turned on, rules turned off, and severities changed.
//! Every rule name is checked here, against squawk's rules and fleetmig's own; a bad name is
//! an error naming the manifest and the key, reported when the app is loaded.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};
use squawk_linter::{Linter, LinterSettings, Rule, Version};

use super::LintError;
use crate::model::Direction;

/// How much a finding weighs: an error holds a rollout (unless the revision ignores it with a
/// reason); a warning is reported only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// fleetmig's own rules: about the ignores and about what squawk could not read.
pub mod own {
    /// A `-- lint-ignore:` header without ` -- reason`.
    pub const IGNORE_WITHOUT_REASON: &str = "lint-ignore-without-reason";
    /// A `-- lint-ignore:` header naming a rule that does not exist.
    pub const IGNORE_UNKNOWN_RULE: &str = "lint-ignore-unknown-rule";
    /// An ignore comment where fleetmig does not read it (in a section, or squawk's own).
    pub const MISPLACED_IGNORE: &str = "misplaced-lint-ignore";
    /// A `-- lint-ignore:` header naming a rule that reports nothing in this revision.
    pub const UNUSED_IGNORE: &str = "unused-lint-ignore";
    /// squawk's parser could not read (part of) a statement: its rules may have missed it.
    pub const PARSE_ERROR: &str = "squawk-parse-error";
    /// The section cannot be rendered (lexing, placeholders): nothing could be checked.
    pub const UNRENDERABLE: &str = "unrenderable-revision";

    /// The ones an app may switch off, downgrade or ignore.
    pub const CONFIGURABLE: &[&str] = &[UNUSED_IGNORE, PARSE_ERROR];
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Raw {
    pg_version: Option<toml::Value>,
    include: Vec<String>,
    exclude: Vec<String>,
    warning: Vec<String>,
    error: Vec<String>,
}

/// The checked `[lint]` section.
#[derive(Debug, Clone)]
pub struct LintConfig {
    /// As written (default: squawk's, "15").
    pub pg_version: String,
    version: Version,
    include: Vec<Rule>,
    exclude: Vec<Rule>,
    /// fleetmig's own configurable rules switched off.
    own_excluded: BTreeSet<&'static str>,
    warning: BTreeSet<String>,
    error: BTreeSet<String>,
}

impl Default for LintConfig {
    fn default() -> Self {
        LintConfig {
            pg_version: DEFAULT_PG_VERSION.into(),
            version: Version::default(),
            include: vec![],
            exclude: vec![],
            own_excluded: BTreeSet::new(),
            warning: BTreeSet::new(),
            error: BTreeSet::new(),
        }
    }
}

/// squawk's own default target version.
const DEFAULT_PG_VERSION: &str = "15";

/// A rule's canonical name (squawk accepts a few aliases), if it is a known one.
pub fn canonical(name: &str) -> Option<String> {
    if let Some(own) = own::CONFIGURABLE.iter().find(|r| **r == name) {
        return Some(own.to_string());
    }
    Rule::try_from(name).ok().map(|r| r.to_string())
}

fn unknown(name: &str) -> String {
    format!(
        "unknown rule {name:?}: squawk's rules are listed at https://squawkhq.com/docs/rules; fleetmig's own that can be configured: {}",
        own::CONFIGURABLE.join(", ")
    )
}

/// The default weight of what `rule` reports in `direction`; `None`: not reported.
fn default_severity(rule: &str, direction: Direction) -> Option<Severity> {
    match rule {
        // Type and style choices: worth a look, no reason to hold a rollout.
        "prefer-bigint-over-int"
        | "prefer-bigint-over-smallint"
        | "prefer-identity"
        | "prefer-text-field"
        | "prefer-timestamp-tz"
        | "ban-char-field"
        | own::UNUSED_IGNORE
        | own::PARSE_ERROR => Some(Severity::Warning),
        // Dropping what the upgrade created is what a downgrade is for (in an upgrade, a drop
        // breaks the code still running). Listed under warning or error, they report there too.
        r if r.starts_with("ban-drop-")
            && r != "ban-drop-database"
            && direction == Direction::Downgrade =>
        {
            None
        }
        _ => Some(Severity::Error),
    }
}

impl LintConfig {
    /// The `[lint]` table of the manifest at `manifest`.
    pub fn parse(table: &toml::Table, manifest: &Path) -> Result<LintConfig, LintError> {
        let err = |message: String| LintError::Config {
            path: manifest.to_path_buf(),
            message,
        };
        let raw: Raw = toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| err(e.message().to_string()))?;
        let mut config = LintConfig::default();
        if let Some(v) = raw.pg_version {
            let text = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                other => {
                    return Err(err(format!(
                        "pg_version: expected a version such as \"15\" or \"16.2\", not {other}"
                    )));
                }
            };
            config.version = text.parse().map_err(|e| {
                err(format!(
                    "pg_version: {e} (expected a version such as \"15\" or \"16.2\")"
                ))
            })?;
            config.pg_version = text;
        }
        let squawk = |key: &str, names: &[String]| -> Result<Vec<Rule>, LintError> {
            names
                .iter()
                .map(|n| {
                    Rule::try_from(n.as_str()).map_err(|_| err(format!("{key}: {}", unknown(n))))
                })
                .collect()
        };
        config.include = squawk("include", &raw.include)?;
        for name in &raw.exclude {
            match own::CONFIGURABLE.iter().find(|r| **r == name) {
                Some(own) => {
                    config.own_excluded.insert(own);
                }
                None => config
                    .exclude
                    .extend(squawk("exclude", std::slice::from_ref(name))?),
            }
        }
        for (key, names, into) in [
            ("warning", &raw.warning, &mut config.warning),
            ("error", &raw.error, &mut config.error),
        ] {
            for n in names {
                into.insert(canonical(n).ok_or_else(|| err(format!("{key}: {}", unknown(n))))?);
            }
        }
        if let Some(both) = config.warning.intersection(&config.error).next() {
            return Err(err(format!(
                "{both} is listed both under warning and under error: keep one"
            )));
        }
        Ok(config)
    }

    /// What a finding of `rule` weighs in `direction`, after this configuration; `None`: it
    /// is not reported there.
    pub fn severity(&self, rule: &str, direction: Direction) -> Option<Severity> {
        if self.error.contains(rule) {
            Some(Severity::Error)
        } else if self.warning.contains(rule) {
            Some(Severity::Warning)
        } else {
            default_severity(rule, direction)
        }
    }

    /// Whether fleetmig's own configurable `rule` runs.
    pub fn runs(&self, rule: &str) -> bool {
        !self.own_excluded.contains(rule)
    }

    /// A squawk linter with these rules, for statements run inside a transaction block or not.
    pub fn linter(&self, in_transaction: bool) -> Linter {
        let mut linter = Linter::with_rules(&self.include, &self.exclude);
        linter.settings = LinterSettings {
            pg_version: self.version,
            assume_in_transaction: in_transaction,
        };
        linter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<LintConfig, String> {
        LintConfig::parse(
            &toml::from_str(text).unwrap(),
            Path::new("m/a/fleetmig.toml"),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn rules_are_named_and_checked() {
        let c = parse(
            "pg_version = 16\ninclude = [\"require-table-schema\"]\nexclude = [\"prefer-robust-stmts\", \"unused-lint-ignore\"]\nwarning = [\"renaming-column\"]\nerror = [\"prefer-timestamptz\"]\n",
        )
        .unwrap();
        assert_eq!(c.pg_version, "16");
        assert_eq!(
            c.severity("renaming-column", Direction::Upgrade),
            Some(Severity::Warning)
        );
        // An alias counts as its rule.
        assert_eq!(
            c.severity("prefer-timestamp-tz", Direction::Upgrade),
            Some(Severity::Error)
        );
        assert!(!c.runs(own::UNUSED_IGNORE));
        let e = parse("exclude = [\"no-such-rule\"]\n").unwrap_err();
        assert!(
            e.starts_with("m/a/fleetmig.toml: [lint] exclude: unknown rule \"no-such-rule\""),
            "{e}"
        );
        let e = parse("excluded = []\n").unwrap_err();
        assert!(e.contains("unknown field `excluded`"), "{e}");
        let e = parse("pg_version = \"fifteen\"\n").unwrap_err();
        assert!(e.contains("pg_version"), "{e}");
        let e =
            parse("warning = [\"ban-drop-table\"]\nerror = [\"ban-drop-table\"]\n").unwrap_err();
        assert!(e.contains("both under warning and under error"), "{e}");
    }

    #[test]
    fn drops_count_in_upgrades_only() {
        let c = LintConfig::default();
        assert_eq!(
            c.severity("ban-drop-column", Direction::Upgrade),
            Some(Severity::Error)
        );
        assert_eq!(c.severity("ban-drop-column", Direction::Downgrade), None);
        assert_eq!(
            c.severity("ban-drop-database", Direction::Downgrade),
            Some(Severity::Error)
        );
        assert_eq!(
            c.severity("prefer-bigint-over-int", Direction::Upgrade),
            Some(Severity::Warning)
        );
        let listed = parse("warning = [\"ban-drop-table\"]\n").unwrap();
        assert_eq!(
            listed.severity("ban-drop-table", Direction::Downgrade),
            Some(Severity::Warning)
        );
    }
}
