//! Reads an Alembic version file's graph without running Python: the module-level
//! assignments `revision`, `down_revision`, `branch_labels`, `depends_on` (a string, a tuple
//! or list of strings, or None; type annotations allowed, as Alembic's templates write them)
//! and the first line of the module docstring (Alembic's `doc`). Anything else on the right
//! of those names is an error naming file:line and the field.

use std::path::{Path, PathBuf};

/// The graph fields of one Alembic version file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlembicRevision {
    pub path: PathBuf,
    pub revision: String,
    pub down_revision: Vec<String>,
    pub branch_labels: Vec<String>,
    pub depends_on: Vec<String>,
    /// First line of the module docstring, if any.
    pub doc: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{}:{line}: {message}", path.display())]
pub struct PyError {
    pub path: PathBuf,
    pub line: usize,
    pub message: String,
}

const FIELDS: [&str; 4] = ["revision", "down_revision", "branch_labels", "depends_on"];

/// A Python literal we accept.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    None,
    Str(String),
    Seq(Vec<String>),
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
    line: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        if c == b'\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn starts_with(&self, p: &str) -> bool {
        self.s[self.i..].starts_with(p.as_bytes())
    }

    /// Skip spaces and comments; newlines too when inside brackets (or a `\` continuation).
    fn skip_blank(&mut self, newlines: bool) {
        while let Some(c) = self.peek() {
            match c {
                b' ' | b'\t' | b'\r' | b'\x0c' => {
                    self.bump();
                }
                b'\n' if newlines => {
                    self.bump();
                }
                b'\\' if self.s.get(self.i + 1) == Some(&b'\n') => {
                    self.bump();
                    self.bump();
                }
                b'#' => {
                    while self.peek().is_some_and(|c| c != b'\n') {
                        self.bump();
                    }
                }
                _ => break,
            }
        }
    }

    /// A string literal at the cursor (prefixes r/u/b, single or triple quotes).
    fn string(&mut self) -> Result<Option<String>, String> {
        let start = self.i;
        while self
            .peek()
            .is_some_and(|c| matches!(c, b'r' | b'R' | b'u' | b'U' | b'b' | b'B'))
        {
            self.bump();
        }
        let raw = self.s[start..self.i]
            .iter()
            .any(|c| matches!(c, b'r' | b'R'));
        let Some(q) = self.peek().filter(|c| matches!(c, b'\'' | b'"')) else {
            self.i = start;
            return Ok(None);
        };
        let triple = self.s[self.i..].starts_with(&[q, q, q]);
        let close: Vec<u8> = if triple { vec![q; 3] } else { vec![q] };
        self.i += close.len();
        let mut out = Vec::new();
        loop {
            if self.s[self.i..].starts_with(&close) {
                self.i += close.len();
                return String::from_utf8(out)
                    .map(Some)
                    .map_err(|_| "a string that is not UTF-8".into());
            }
            match self.bump() {
                None => return Err("a string literal that never ends".into()),
                Some(b'\n') if !triple => return Err("a string literal that never ends".into()),
                Some(b'\\') if !raw => match self.bump() {
                    Some(b'n') => out.push(b'\n'),
                    Some(b't') => out.push(b'\t'),
                    Some(b'\n') => {}
                    Some(c) => out.push(c),
                    None => return Err("a string literal that never ends".into()),
                },
                Some(c) => out.push(c),
            }
        }
    }

    /// `None`, a string, a tuple or list of strings, or bare comma-separated strings.
    fn value(&mut self) -> Result<Value, String> {
        self.skip_blank(false);
        if self.starts_with("None") && !self.ident_at(self.i + 4) {
            self.i += 4;
            return Ok(Value::None);
        }
        if let Some(open) = self.peek().filter(|c| matches!(c, b'(' | b'[')) {
            self.bump();
            let close = if open == b'(' { b')' } else { b']' };
            let mut items = Vec::new();
            loop {
                self.skip_blank(true);
                if self.peek() == Some(close) {
                    self.bump();
                    return Ok(Value::Seq(items));
                }
                items.push(self.string()?.ok_or_else(|| self.unexpected())?);
                self.skip_blank(true);
                match self.bump() {
                    Some(b',') => {}
                    Some(c) if c == close => return Ok(Value::Seq(items)),
                    _ => return Err(self.unexpected_before(1)),
                }
            }
        }
        let first = self.string()?.ok_or_else(|| self.unexpected())?;
        let mut items = vec![first];
        let mut tuple = false;
        loop {
            self.skip_blank(false);
            if self.peek() != Some(b',') {
                break;
            }
            self.bump();
            tuple = true;
            self.skip_blank(false);
            match self.string()? {
                Some(s) => items.push(s),
                None => break,
            }
        }
        Ok(if tuple {
            Value::Seq(items)
        } else {
            Value::Str(items.remove(0))
        })
    }

    fn ident_at(&self, i: usize) -> bool {
        self.s
            .get(i)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
    }

    fn unexpected(&self) -> String {
        self.unexpected_before(0)
    }

    fn unexpected_before(&self, back: usize) -> String {
        let at = self.i.saturating_sub(back);
        let rest: String = String::from_utf8_lossy(&self.s[at..])
            .chars()
            .take_while(|&c| c != '\n')
            .take(40)
            .collect();
        format!(
            "must be a string, a tuple or list of strings, or None (found {:?})",
            rest.trim()
        )
    }
}

/// Parse one version file's graph fields.
pub fn parse(path: &Path, text: &str) -> Result<AlembicRevision, PyError> {
    let err = |line: usize, message: String| PyError {
        path: path.to_path_buf(),
        line,
        message,
    };
    let mut c = Cursor {
        s: text.as_bytes(),
        i: 0,
        line: 1,
    };
    let mut found: [Option<(usize, Value)>; 4] = Default::default();
    let mut doc: Option<String> = None;
    let mut first_statement = true;
    let mut depth = 0usize;
    let mut line_start = true;
    while let Some(ch) = c.peek() {
        if line_start && depth == 0 {
            line_start = false;
            let field = FIELDS.iter().position(|f| {
                c.starts_with(f) && !c.ident_at(c.i + f.len()) && !(c.i > 0 && c.ident_at(c.i - 1))
            });
            if let Some(k) = field {
                let line = c.line;
                let name = FIELDS[k];
                c.i += name.len();
                c.skip_blank(false);
                if c.peek() == Some(b':') {
                    // A type annotation: up to the `=` outside brackets.
                    let mut d = 0i32;
                    while let Some(a) = c.peek() {
                        match a {
                            b'[' | b'(' => d += 1,
                            b']' | b')' => d -= 1,
                            b'=' if d == 0 => break,
                            b'\n' if d == 0 => break,
                            _ => {}
                        }
                        c.bump();
                    }
                }
                if c.peek() == Some(b'=') && c.s.get(c.i + 1) != Some(&b'=') {
                    c.bump();
                    let v = c.value().map_err(|m| err(line, format!("{name} {m}")))?;
                    c.skip_blank(false);
                    if !matches!(c.peek(), None | Some(b'\n') | Some(b';')) {
                        return Err(err(line, format!("{name} {}", c.unexpected())));
                    }
                    found[k] = Some((line, v));
                    first_statement = false;
                    continue;
                }
                first_statement = false;
                continue;
            }
            if first_statement && !matches!(ch, b' ' | b'\t' | b'\r' | b'\n' | b'#') {
                first_statement = false;
                if let Ok(Some(s)) = c.string() {
                    doc = s
                        .lines()
                        .map(str::trim)
                        .find(|l| !l.is_empty())
                        .map(str::to_string);
                    continue;
                }
            }
        }
        match ch {
            b'\'' | b'"' => {
                c.string().map_err(|m| err(c.line, m))?;
            }
            b'#' => c.skip_blank(false),
            b'(' | b'[' | b'{' => {
                depth += 1;
                c.bump();
            }
            b')' | b']' | b'}' => {
                depth = depth.saturating_sub(1);
                c.bump();
            }
            b'\n' => {
                c.bump();
                line_start = true;
            }
            b'\\' if c.s.get(c.i + 1) == Some(&b'\n') => {
                c.bump();
                c.bump();
            }
            _ => {
                c.bump();
            }
        }
    }
    let take = |k: usize| found[k].clone();
    let list = |k: usize| -> Vec<String> {
        match take(k) {
            None | Some((_, Value::None)) => vec![],
            Some((_, Value::Str(s))) => vec![s],
            Some((_, Value::Seq(v))) => v,
        }
    };
    let revision = match take(0) {
        Some((_, Value::Str(s))) if !s.is_empty() => s,
        Some((line, _)) => return Err(err(line, "revision must be a non-empty string".into())),
        None => {
            return Err(err(
                1,
                "no module-level `revision = '...'`: not an Alembic version file?".into(),
            ));
        }
    };
    if take(1).is_none() {
        return Err(err(
            1,
            "no module-level `down_revision = ...` (None for a base revision)".into(),
        ));
    }
    Ok(AlembicRevision {
        path: path.to_path_buf(),
        revision,
        down_revision: list(1),
        branch_labels: list(2),
        depends_on: list(3),
        doc,
    })
}

/// Every version file in `dir` (`*.py`, not `__init__` or editor leftovers), sorted.
pub fn read_dir(dir: &Path) -> Result<Vec<AlembicRevision>, PyError> {
    let io = |e: std::io::Error| PyError {
        path: dir.to_path_buf(),
        line: 0,
        message: e.to_string(),
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if !p.is_file()
            || !name.ends_with(".py")
            || name.starts_with("__init__")
            || name.starts_with(".#")
        {
            continue;
        }
        let text = std::fs::read_to_string(&p).map_err(|e| PyError {
            path: p.clone(),
            line: 0,
            message: e.to_string(),
        })?;
        out.push(parse(&p, &text)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<AlembicRevision, PyError> {
        parse(Path::new("v/x.py"), text)
    }

    #[test]
    fn reads_the_template_alembic_writes() {
        let r = p("\"\"\"add account\n\nRevision ID: ae1027a6acf\nRevises: 1975ea83b712\n\"\"\"\nfrom typing import Sequence, Union\n\nfrom alembic import op\n\n# revision identifiers, used by Alembic.\nrevision: str = 'ae1027a6acf'\ndown_revision: Union[str, Sequence[str], None] = '1975ea83b712'\nbranch_labels: Union[str, Sequence[str], None] = None\ndepends_on: Union[str, Sequence[str], None] = None\n\n\ndef upgrade() -> None:\n    revision = 'not me'\n    op.execute(\"\"\"\nrevision = 'nor me'\n\"\"\")\n").unwrap();
        assert_eq!(r.revision, "ae1027a6acf");
        assert_eq!(r.down_revision, ["1975ea83b712"]);
        assert!(r.branch_labels.is_empty() && r.depends_on.is_empty());
        assert_eq!(r.doc.as_deref(), Some("add account"));
    }

    #[test]
    fn tuples_lists_and_multi_line_values() {
        let r = p("revision = \"m1\"\ndown_revision = (\n    'b1',  # left\n    \"c1\",\n)\nbranch_labels = ['feat']\ndepends_on = 'x1', 'y1'\n").unwrap();
        assert_eq!(r.down_revision, ["b1", "c1"]);
        assert_eq!(r.branch_labels, ["feat"]);
        assert_eq!(r.depends_on, ["x1", "y1"]);
        let base = p("revision = 'a'\ndown_revision = None\ndepends_on = ()\n").unwrap();
        assert!(base.down_revision.is_empty() && base.depends_on.is_empty());
        assert_eq!(base.doc, None);
    }

    #[test]
    fn anything_else_names_the_line_and_field() {
        let e = p("revision = 'a'\ndown_revision = get_parent()\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(
            e.to_string()
                .starts_with("v/x.py:2: down_revision must be a string"),
            "{e}"
        );
        let e = p("down_revision = None\n").unwrap_err();
        assert!(e.message.contains("no module-level `revision"), "{e}");
        let e = p("revision = 'a'\n").unwrap_err();
        assert!(e.message.contains("down_revision"), "{e}");
        let e = p("revision = 'a'\ndown_revision = ('b' 'c')\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
    }
}
