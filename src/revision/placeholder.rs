//! Typed placeholders: declarations from an app's `fleetmig.toml`, resolution
//! (defaults < environment < explicit values) and safe rendering of `${NAME}` into SQL.
//!
//! Rendering is the only way a tenant-supplied value reaches SQL, so every value is
//! validated for its type and written as a literal or quoted identifier, never spliced raw.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The declared type of a placeholder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlaceholderType {
    Int,
    Bool,
    Identifier,
    String,
}

impl fmt::Display for PlaceholderType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PlaceholderType::Int => "int",
            PlaceholderType::Bool => "bool",
            PlaceholderType::Identifier => "identifier",
            PlaceholderType::String => "string",
        })
    }
}

/// A typed, validated placeholder value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Int(i64),
    Bool(bool),
    /// Identifiers and strings are both text; the declaration says how to render them.
    Text(String),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Text(s) => f.write_str(s),
        }
    }
}

/// One placeholder as declared in `migrations/<app>/fleetmig.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Declaration {
    #[serde(rename = "type")]
    pub ty: PlaceholderType,
    #[serde(default)]
    pub default: Option<toml::Value>,
    #[serde(default)]
    pub description: String,
}

/// Where a resolved value came from (reported in `check` and recorded in history).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Default,
    Environment,
    Explicit,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlaceholderError {
    #[error("placeholder {name}: expected {ty}, got {raw:?} (from {source_name}){hint}")]
    IllTyped {
        name: String,
        ty: PlaceholderType,
        raw: String,
        source_name: &'static str,
        hint: &'static str,
    },
    #[error(
        "placeholder {name} is not declared for this app (declared: {declared}); add it to the app's fleetmig.toml"
    )]
    Undeclared { name: String, declared: String },
    #[error(
        "placeholder {name} has no value: declare a default or set it (environment or -x {name}=VALUE)"
    )]
    Unresolved { name: String },
    #[error("placeholder {name} is a {ty}, but a condition needs a bool")]
    NotBool { name: String, ty: PlaceholderType },
    #[error("unterminated placeholder: `${{` without a closing `}}`")]
    Unterminated,
    #[error("invalid placeholder name {0:?}: use A-Z, a-z, 0-9 and _")]
    BadName(String),
}

/// The declarations of one app, keyed by name.
#[derive(Debug, Clone, Default)]
pub struct Declarations(pub BTreeMap<String, Declaration>);

/// Values resolved for one rendering (one tenant, or one CLI run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    values: BTreeMap<String, (Value, Source)>,
    types: BTreeMap<String, PlaceholderType>,
}

const IDENT_HINT: &str =
    "; identifiers are 1-63 characters from a-z A-Z 0-9 _ $, not starting with a digit or $";

fn parse_value(
    ty: PlaceholderType,
    name: &str,
    raw: &str,
    source: Source,
) -> Result<Value, PlaceholderError> {
    let bad = |hint: &'static str| PlaceholderError::IllTyped {
        name: name.to_string(),
        ty,
        raw: raw.to_string(),
        source_name: source_name(source),
        hint,
    };
    match ty {
        PlaceholderType::Int => raw
            .trim()
            .parse::<i64>()
            .map(Value::Int)
            .map_err(|_| bad("")),
        PlaceholderType::Bool => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Value::Bool(true)),
            "false" | "0" | "no" | "off" => Ok(Value::Bool(false)),
            _ => Err(bad("; use true or false")),
        },
        PlaceholderType::Identifier => {
            if is_safe_identifier(raw) {
                Ok(Value::Text(raw.to_string()))
            } else {
                Err(bad(IDENT_HINT))
            }
        }
        PlaceholderType::String => {
            if raw.contains('\0') {
                Err(bad("; NUL bytes are not allowed"))
            } else {
                Ok(Value::Text(raw.to_string()))
            }
        }
    }
}

fn source_name(source: Source) -> &'static str {
    match source {
        Source::Default => "the declared default",
        Source::Environment => "the environment",
        Source::Explicit => "an explicit value",
    }
}

/// An SQL identifier fleetmig accepts from configuration: the unquoted-identifier alphabet,
/// at most 63 bytes (Postgres' NAMEDATALEN - 1). It is still always double-quoted when rendered.
pub fn is_safe_identifier(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'$')
}

/// Double-quote an identifier, doubling embedded quotes.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A standard-conforming string literal: quotes doubled. Sessions pin
/// `standard_conforming_strings = on`, so backslashes are literal.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn toml_to_raw(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Declarations {
    /// Resolve every declared placeholder: default < `env` < `explicit`.
    /// `env` is consulted only for declared names. Explicit names must be declared.
    pub fn resolve(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
        explicit: &BTreeMap<String, String>,
    ) -> Result<Resolved, PlaceholderError> {
        if let Some(name) = explicit.keys().find(|n| !self.0.contains_key(*n)) {
            return Err(PlaceholderError::Undeclared {
                name: name.clone(),
                declared: self.0.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        }
        let mut resolved = Resolved::default();
        for (name, decl) in &self.0 {
            resolved.types.insert(name.clone(), decl.ty);
            let candidate = if let Some(raw) = explicit.get(name) {
                Some((raw.clone(), Source::Explicit))
            } else if let Some(raw) = env(name) {
                Some((raw, Source::Environment))
            } else {
                decl.default
                    .as_ref()
                    .map(|d| (toml_to_raw(d), Source::Default))
            };
            if let Some((raw, source)) = candidate {
                let value = parse_value(decl.ty, name, &raw, source)?;
                resolved.values.insert(name.clone(), (value, source));
            }
        }
        Ok(resolved)
    }
}

impl Resolved {
    /// The value of a bool placeholder (for a revision's `condition`).
    pub fn bool(&self, name: &str) -> Result<bool, PlaceholderError> {
        match self.values.get(name) {
            Some((Value::Bool(b), _)) => Ok(*b),
            Some(_) => Err(PlaceholderError::NotBool {
                name: name.to_string(),
                ty: self.types[name],
            }),
            None if self.types.contains_key(name) => Err(PlaceholderError::Unresolved {
                name: name.to_string(),
            }),
            None => Err(PlaceholderError::Undeclared {
                name: name.to_string(),
                declared: self.types.keys().cloned().collect::<Vec<_>>().join(", "),
            }),
        }
    }

    /// The values as JSON, as recorded in the history table.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.values
                .iter()
                .map(|(k, (v, _))| {
                    (
                        k.clone(),
                        serde_json::to_value(v).expect("plain values serialize"),
                    )
                })
                .collect(),
        )
    }

    /// (name, value, source) for display.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value, Source)> {
        self.values.iter().map(|(k, (v, s))| (k.as_str(), v, *s))
    }

    fn render_one(&self, name: &str) -> Result<String, PlaceholderError> {
        let Some(ty) = self.types.get(name) else {
            return Err(PlaceholderError::Undeclared {
                name: name.to_string(),
                declared: self.types.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        };
        let Some((value, _)) = self.values.get(name) else {
            return Err(PlaceholderError::Unresolved {
                name: name.to_string(),
            });
        };
        Ok(match (ty, value) {
            (PlaceholderType::Int, Value::Int(i)) => i.to_string(),
            (PlaceholderType::Bool, Value::Bool(b)) => b.to_string(),
            (PlaceholderType::Identifier, Value::Text(s)) => quote_ident(s),
            (PlaceholderType::String, Value::Text(s)) => quote_literal(s),
            _ => unreachable!("values are parsed with their declared type"),
        })
    }

    /// Replace every `${NAME}` in `text`. On error, returns the 0-based line offset within
    /// `text` where the bad placeholder starts, so callers can report file:line.
    pub fn render(&self, text: &str) -> Result<String, (usize, PlaceholderError)> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        let mut consumed = 0usize;
        while let Some(pos) = rest.find("${") {
            let line_of = |p: usize| text[..consumed + p].matches('\n').count();
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 2..];
            let Some(end) = after.find('}') else {
                return Err((line_of(pos), PlaceholderError::Unterminated));
            };
            let name = &after[..end];
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err((line_of(pos), PlaceholderError::BadName(name.to_string())));
            }
            out.push_str(&self.render_one(name).map_err(|e| (line_of(pos), e))?);
            consumed += pos + 2 + end + 1;
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decls() -> Declarations {
        let t: BTreeMap<String, Declaration> = toml::from_str(
            r#"
            [DIM]
            type = "int"
            default = 384
            [ON]
            type = "bool"
            default = true
            [SCHEMA]
            type = "identifier"
            [LABEL]
            type = "string"
            default = "it's"
            "#,
        )
        .unwrap();
        Declarations(t)
    }

    fn none(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_env_explicit_layering() {
        let d = decls();
        let r = d.resolve(&none, &BTreeMap::new()).unwrap();
        assert_eq!(r.render("vector(${DIM})").unwrap(), "vector(384)");
        let env = |n: &str| (n == "DIM").then(|| "768".to_string());
        let r = d.resolve(&env, &BTreeMap::new()).unwrap();
        assert_eq!(r.render("${DIM}").unwrap(), "768");
        let explicit = BTreeMap::from([("DIM".to_string(), "1024".to_string())]);
        let r = d.resolve(&env, &explicit).unwrap();
        assert_eq!(r.render("${DIM}").unwrap(), "1024");
    }

    #[test]
    fn values_are_rendered_safely() {
        let d = decls();
        let explicit = BTreeMap::from([
            ("SCHEMA".to_string(), "tenant_42".to_string()),
            ("LABEL".to_string(), "a'); DROP TABLE x; --".to_string()),
        ]);
        let r = d.resolve(&none, &explicit).unwrap();
        assert_eq!(r.render("${SCHEMA}.t").unwrap(), "\"tenant_42\".t");
        assert_eq!(r.render("${LABEL}").unwrap(), "'a''); DROP TABLE x; --'");
        let hostile = BTreeMap::from([("SCHEMA".to_string(), "x\"; drop".to_string())]);
        assert!(matches!(
            d.resolve(&none, &hostile),
            Err(PlaceholderError::IllTyped { .. })
        ));
        let bad_int = BTreeMap::from([("DIM".to_string(), "384; drop".to_string())]);
        assert!(matches!(
            d.resolve(&none, &bad_int),
            Err(PlaceholderError::IllTyped { .. })
        ));
    }

    #[test]
    fn errors_carry_line_offsets() {
        let r = decls().resolve(&none, &BTreeMap::new()).unwrap();
        assert_eq!(
            r.render("a\nb ${SCHEMA}").unwrap_err(),
            (
                1,
                PlaceholderError::Unresolved {
                    name: "SCHEMA".into()
                }
            )
        );
        assert!(matches!(
            r.render("\n\n${NOPE}").unwrap_err(),
            (2, PlaceholderError::Undeclared { .. })
        ));
        assert_eq!(
            r.render("x ${DIM").unwrap_err(),
            (0, PlaceholderError::Unterminated)
        );
        assert_eq!(r.render("$$ body $$ $1").unwrap(), "$$ body $$ $1");
    }

    #[test]
    fn undeclared_explicit_values_are_refused() {
        let explicit = BTreeMap::from([("NOPE".to_string(), "1".to_string())]);
        assert!(matches!(
            decls().resolve(&none, &explicit),
            Err(PlaceholderError::Undeclared { .. })
        ));
    }

    #[test]
    fn conditions_need_bools() {
        let r = decls().resolve(&none, &BTreeMap::new()).unwrap();
        assert!(r.bool("ON").unwrap());
        assert!(matches!(
            r.bool("DIM"),
            Err(PlaceholderError::NotBool { .. })
        ));
    }
}
