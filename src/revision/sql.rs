//! Splits a revision section into statements with a real PostgreSQL lexer (squawk-lexer):
//! semicolons inside strings, quoted identifiers, dollar-quoted bodies and comments do not
//! split. Also recognises the statements that cannot run inside a transaction block.

use squawk_lexer::{LiteralKind, TokenKind, tokenize};

/// One statement of a section, with the 0-based line (within the section) and the 0-based
/// column (in characters, within that line) where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub text: String,
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unterminated {what} starting here")]
pub struct SplitError {
    pub what: &'static str,
    /// 0-based line within the section.
    pub line: usize,
}

fn unterminated(kind: TokenKind) -> Option<&'static str> {
    match kind {
        TokenKind::BlockComment { terminated: false } => Some("block comment"),
        TokenKind::QuotedIdent {
            terminated: false, ..
        } => Some("quoted identifier"),
        TokenKind::Literal { kind } => match kind {
            LiteralKind::DollarQuotedString { terminated: false } => Some("dollar-quoted string"),
            LiteralKind::Str { terminated: false }
            | LiteralKind::NationalStr { terminated: false }
            | LiteralKind::ByteStr { terminated: false }
            | LiteralKind::BitStr { terminated: false }
            | LiteralKind::UnicodeEscStr { terminated: false }
            | LiteralKind::EscStr { terminated: false } => Some("string literal"),
            _ => None,
        },
        _ => None,
    }
}

fn is_trivia(kind: TokenKind) -> bool {
    matches!(
        kind,
        TokenKind::Whitespace | TokenKind::LineComment | TokenKind::BlockComment { .. }
    )
}

/// Split `sql` into statements. Empty statements (only comments/whitespace) are dropped.
///
/// `BEGIN ATOMIC ... END` bodies (SQL-standard function bodies) are kept whole.
pub fn split(sql: &str) -> Result<Vec<Statement>, SplitError> {
    let mut out = Vec::new();
    let mut offset = 0usize;
    let mut start: Option<usize> = None; // byte offset of the first significant token
    let mut atomic_depth = 0usize;
    let mut prev_word: Option<String> = None;
    let line_at = |pos: usize| sql[..pos].matches('\n').count();
    let column_at = |pos: usize| {
        sql[..pos]
            .rsplit('\n')
            .next()
            .map_or(0, |l| l.chars().count())
    };
    // A byte-order mark (an editor's, pasted mid-file) is not SQL: lexed as the three spaces
    // it is as long as, so that it never joins the token after it (`\u{feff}$$` would lex as
    // one identifier here, and as a dollar quote once the statement starts with it).
    let lexed = sql.replace('\u{feff}', "   ");

    for token in tokenize(&lexed) {
        let len = token.len as usize;
        let text = &lexed[offset..offset + len];
        if let Some(what) = unterminated(token.kind) {
            return Err(SplitError {
                what,
                line: line_at(offset),
            });
        }
        match token.kind {
            TokenKind::Eof => break,
            k if is_trivia(k) => {}
            TokenKind::Semi if atomic_depth == 0 => {
                if let Some(s) = start.take() {
                    out.push(Statement {
                        text: sql[s..offset].trim_end().to_string(),
                        line: line_at(s),
                        column: column_at(s),
                    });
                }
                prev_word = None;
            }
            kind => {
                start.get_or_insert(offset);
                if kind == TokenKind::Ident {
                    let word = text.to_ascii_lowercase();
                    match word.as_str() {
                        "atomic" if prev_word.as_deref() == Some("begin") => atomic_depth += 1,
                        "case" if atomic_depth > 0 => atomic_depth += 1,
                        "end" if atomic_depth > 0 => atomic_depth -= 1,
                        _ => {}
                    }
                    prev_word = Some(word);
                } else {
                    prev_word = None;
                }
            }
        }
        offset += len;
    }
    if let Some(s) = start {
        out.push(Statement {
            text: sql[s..].trim_end().to_string(),
            line: line_at(s),
            column: column_at(s),
        });
    }
    Ok(out)
}

/// Whether the statement's last token is a `--` comment: a `;` put after it on the same line
/// would be part of the comment (psql would then merge the statement with the next one).
pub fn ends_in_line_comment(stmt: &str) -> bool {
    let mut last = None;
    for token in tokenize(stmt) {
        match token.kind {
            TokenKind::Eof => break,
            TokenKind::Whitespace => {}
            kind => last = Some(kind),
        }
    }
    last == Some(TokenKind::LineComment)
}

/// The 0-based line of a backslash outside quotes and comments: never SQL (the server refuses
/// it), and in offline SQL psql would run what follows as one of its own commands (`\!` runs
/// a shell command).
pub fn backslash_outside_quotes(stmt: &str) -> Option<usize> {
    let mut offset = 0usize;
    for token in tokenize(stmt) {
        let len = token.len as usize;
        if token.kind == TokenKind::Eof {
            break;
        }
        if token.kind == TokenKind::Unknown && stmt[offset..offset + len].starts_with('\\') {
            return Some(stmt[..offset].matches('\n').count());
        }
        offset += len;
    }
    None
}

/// Where a `${` sits inside a string, quoted identifier, dollar-quoted body or comment: a
/// placeholder there would be spliced into text the lexer no longer sees, so a value could
/// close the quote and inject SQL. Placeholders must be bare tokens; rendering quotes them.
pub fn placeholder_in_quotes(sql: &str) -> Option<(usize, &'static str)> {
    let mut offset = 0usize;
    for token in tokenize(sql) {
        let len = token.len as usize;
        let what = match token.kind {
            TokenKind::Eof => break,
            TokenKind::LineComment | TokenKind::BlockComment { .. } => Some("a comment"),
            TokenKind::QuotedIdent { .. } => Some("a quoted identifier"),
            TokenKind::Literal { kind } => match kind {
                LiteralKind::DollarQuotedString { .. } => Some("a dollar-quoted body"),
                LiteralKind::Str { .. }
                | LiteralKind::NationalStr { .. }
                | LiteralKind::ByteStr { .. }
                | LiteralKind::BitStr { .. }
                | LiteralKind::UnicodeEscStr { .. }
                | LiteralKind::EscStr { .. } => Some("a string literal"),
                _ => None,
            },
            _ => None,
        };
        if let Some(what) = what
            && sql[offset..offset + len].contains("${")
        {
            return Some((sql[..offset].matches('\n').count(), what));
        }
        offset += len;
    }
    None
}

/// A significant token of a statement: a keyword or identifier (quotes stripped), or punctuation.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Word {
    text: String,
    quoted: bool,
}

impl Word {
    /// Is this the (unquoted) keyword `kw` (given in upper case)?
    fn is(&self, kw: &str) -> bool {
        !self.quoted && self.text.eq_ignore_ascii_case(kw)
    }

    /// The identifier as Postgres resolves it: unquoted names fold to lower case.
    fn ident(&self) -> String {
        if self.quoted {
            self.text.clone()
        } else {
            self.text.to_ascii_lowercase()
        }
    }
}

/// The first `n` significant tokens of a statement (trivia skipped).
fn words(stmt: &str, n: usize) -> Vec<Word> {
    let mut words = Vec::with_capacity(n);
    let mut offset = 0usize;
    for token in tokenize(stmt) {
        let len = token.len as usize;
        let text = &stmt[offset..offset + len];
        match token.kind {
            TokenKind::Eof => break,
            TokenKind::QuotedIdent { .. } if len >= 2 => words.push(Word {
                text: text[1..len - 1].replace("\"\"", "\""),
                quoted: true,
            }),
            k if is_trivia(k) => {}
            _ => words.push(Word {
                text: text.to_string(),
                quoted: false,
            }),
        }
        offset += len;
        if words.len() >= n {
            break;
        }
    }
    words
}

/// The first `n` keywords of a statement, upper-cased, for classification.
pub fn leading_keywords(stmt: &str, n: usize) -> Vec<String> {
    words(stmt, n)
        .into_iter()
        .map(|w| {
            if w.quoted {
                w.text
            } else {
                w.text.to_ascii_uppercase()
            }
        })
        .collect()
}

/// Why a statement cannot run inside a transaction block, if it cannot.
pub fn needs_autocommit(stmt: &str) -> Option<&'static str> {
    let w = leading_keywords(stmt, 6);
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    let upper = || stmt.to_ascii_uppercase();
    match w.as_slice() {
        ["CREATE", "INDEX", "CONCURRENTLY", ..]
        | ["CREATE", "UNIQUE", "INDEX", "CONCURRENTLY", ..] => Some("CREATE INDEX CONCURRENTLY"),
        ["DROP", "INDEX", "CONCURRENTLY", ..] => Some("DROP INDEX CONCURRENTLY"),
        ["REINDEX", ..] if upper().contains("CONCURRENTLY") => Some("REINDEX CONCURRENTLY"),
        ["VACUUM", ..] => Some("VACUUM"),
        ["CREATE" | "DROP", "DATABASE", ..] => Some("CREATE/DROP DATABASE"),
        ["CREATE" | "DROP", "TABLESPACE", ..] => Some("CREATE/DROP TABLESPACE"),
        ["ALTER", "SYSTEM", ..] => Some("ALTER SYSTEM"),
        ["ALTER", "TABLE", ..]
            if upper().contains("DETACH PARTITION") && upper().contains("CONCURRENTLY") =>
        {
            Some("ALTER TABLE ... DETACH PARTITION CONCURRENTLY")
        }
        _ => None,
    }
}

/// Statements that manage transactions themselves, which fleetmig does for the revision.
pub fn is_transaction_control(stmt: &str) -> bool {
    let w = leading_keywords(stmt, 2);
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    match w.as_slice() {
        ["BEGIN", "ATOMIC", ..] => false,
        [first, ..] => matches!(
            *first,
            "BEGIN" | "COMMIT" | "ROLLBACK" | "START" | "END" | "SAVEPOINT" | "RELEASE" | "ABORT"
        ),
        [] => false,
    }
}

/// A `CREATE [UNIQUE] INDEX CONCURRENTLY [IF NOT EXISTS] name ON [ONLY] table` statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConcurrentIndexBuild {
    /// The index name as Postgres resolves it (unquoted names folded to lower case).
    pub index: String,
    /// The table as written (possibly schema-qualified, quoted), usable in a `::regclass` cast.
    pub table: String,
}

pub fn concurrent_index_build(stmt: &str) -> Option<ConcurrentIndexBuild> {
    let w = words(stmt, 14);
    let mut i = 0;
    let mut eat = |kw: &str| {
        if w.get(i).is_some_and(|x| x.is(kw)) {
            i += 1;
            true
        } else {
            false
        }
    };
    if !eat("CREATE") {
        return None;
    }
    eat("UNIQUE");
    if !(eat("INDEX") && eat("CONCURRENTLY")) {
        return None;
    }
    if eat("IF") && !(eat("NOT") && eat("EXISTS")) {
        return None;
    }
    // An unnamed build ("CREATE INDEX CONCURRENTLY ON t ...") has no name to check.
    if eat("ON") {
        return None;
    }
    let index = w.get(i)?.ident();
    i += 1;
    if !w.get(i)?.is("ON") {
        return None;
    }
    i += 1;
    if w.get(i)?.is("ONLY") {
        i += 1;
    }
    let quote = |x: &Word| crate::revision::placeholder::quote_ident(&x.ident());
    let mut table = quote(w.get(i)?);
    if w.get(i + 1).is_some_and(|d| d.text == ".") {
        table = format!("{}.{}", table, quote(w.get(i + 2)?));
    }
    Some(ConcurrentIndexBuild { index, table })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(sql: &str) -> Vec<String> {
        split(sql).unwrap().into_iter().map(|s| s.text).collect()
    }

    #[test]
    fn a_byte_order_mark_is_not_a_statement() {
        // Found by the sql_split fuzzer: a lone BOM became a statement of its own.
        assert_eq!(texts("SELECT 1;\u{feff}"), vec!["SELECT 1"]);
        assert_eq!(
            texts("\u{feff}SELECT 1;\u{feff};SELECT 2"),
            vec!["SELECT 1", "SELECT 2"]
        );
        // Also found by it: a BOM joined the `$$` after it into one identifier, and the
        // statement, split again, began a dollar quote it never closed.
        let e = split("SELECT 1;\u{feff}$$a${; SELECT 2").unwrap_err();
        assert_eq!(e.what, "dollar-quoted string");
        let statements = texts("SELECT\u{feff}$$a$$;\u{feff}SELECT 2");
        assert_eq!(statements, vec!["SELECT\u{feff}$$a$$", "SELECT 2"]);
        for s in &statements {
            assert_eq!(
                split(s).map(|v| v.len()).ok(),
                Some(1),
                "{s:?} splits again"
            );
        }
    }

    #[test]
    fn splits_on_top_level_semicolons_only() {
        let sql = "CREATE TABLE a (x text default 'a;b');\n-- comment; here\nCREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;\n/* block ; */ SELECT \"we;ird\" FROM t";
        assert_eq!(
            texts(sql),
            vec![
                "CREATE TABLE a (x text default 'a;b')",
                "CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql",
                "SELECT \"we;ird\" FROM t",
            ]
        );
        let starts: Vec<(usize, usize)> = split(sql)
            .unwrap()
            .iter()
            .map(|s| (s.line, s.column))
            .collect();
        assert_eq!(starts, vec![(0, 0), (2, 0), (3, 14)]);
    }

    #[test]
    fn do_blocks_and_atomic_bodies_stay_whole() {
        let sql = "DO $$ BEGIN PERFORM 1; PERFORM 2; END $$;\nCREATE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN true THEN 1 END; SELECT 2; END;\nSELECT 3;";
        let t = texts(sql);
        assert_eq!(t.len(), 3, "{t:?}");
        assert!(t[1].ends_with("SELECT 2; END"));
    }

    #[test]
    fn placeholders_in_quotes_and_comments_are_found() {
        assert_eq!(placeholder_in_quotes("SELECT ${A}"), None);
        assert_eq!(
            placeholder_in_quotes("SELECT 1,\n '${B}'"),
            Some((1, "a string literal"))
        );
        assert_eq!(
            placeholder_in_quotes("DO $$ BEGIN ${X}; END $$"),
            Some((0, "a dollar-quoted body"))
        );
        assert_eq!(
            placeholder_in_quotes("SELECT 1 -- ${C}\n"),
            Some((0, "a comment"))
        );
        assert_eq!(
            placeholder_in_quotes("SELECT \"${D}\""),
            Some((0, "a quoted identifier"))
        );
    }

    #[test]
    fn placeholders_do_not_confuse_the_lexer() {
        assert_eq!(
            texts("SELECT ${A}; SELECT '${B};'"),
            vec!["SELECT ${A}", "SELECT '${B};'"]
        );
    }

    #[test]
    fn unterminated_input_is_an_error_with_a_line() {
        assert_eq!(
            split("SELECT 1;\nSELECT $$ never closed").unwrap_err().line,
            1
        );
        assert!(split("SELECT 'open").is_err());
        assert!(split("/* open").is_err());
    }

    #[test]
    fn trailing_line_comments_are_recognised() {
        assert!(ends_in_line_comment("SELECT 1 -- why"));
        assert!(ends_in_line_comment("SELECT 1 -- why\n  "));
        assert!(!ends_in_line_comment("SELECT 1 -- why\n+ 2"));
        assert!(!ends_in_line_comment("SELECT '-- not a comment'"));
        assert!(!ends_in_line_comment("SELECT 1 /* block */"));
        // A split statement keeps the comment that precedes its `;`.
        assert_eq!(
            texts("SELECT 1 -- why\n;\nSELECT 2;"),
            vec!["SELECT 1 -- why", "SELECT 2"]
        );
    }

    #[test]
    fn backslashes_outside_quotes_are_found() {
        assert_eq!(backslash_outside_quotes("SELECT 1\n\\! rm -rf ~"), Some(1));
        assert_eq!(backslash_outside_quotes("SELECT 1 \\gexec"), Some(0));
        assert_eq!(
            backslash_outside_quotes("SELECT E'a\\nb', '\\', $$\\$$ -- \\!"),
            None
        );
    }

    #[test]
    fn empty_statements_are_dropped() {
        assert!(texts(" ;; -- only a comment\n").is_empty());
    }

    #[test]
    fn recognises_autocommit_statements() {
        assert!(needs_autocommit("create index concurrently if not exists i on t (x)").is_some());
        assert!(needs_autocommit("CREATE UNIQUE INDEX CONCURRENTLY i ON t (x)").is_some());
        assert!(needs_autocommit("DROP INDEX CONCURRENTLY IF EXISTS i").is_some());
        assert!(needs_autocommit("REINDEX INDEX CONCURRENTLY i").is_some());
        assert!(needs_autocommit("VACUUM ANALYZE t").is_some());
        assert!(needs_autocommit("CREATE INDEX i ON t (x)").is_none());
        assert!(needs_autocommit("SELECT 'CREATE INDEX CONCURRENTLY'").is_none());
        assert!(is_transaction_control("commit"));
        assert!(!is_transaction_control("CREATE TABLE t (x int)"));
    }

    #[test]
    fn finds_the_index_and_table_of_a_concurrent_build() {
        let b = concurrent_index_build(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_e ON public.memory_shards USING ivfflat (embedding vector_cosine_ops) WITH (lists = 100)",
        )
        .unwrap();
        assert_eq!(
            b,
            ConcurrentIndexBuild {
                index: "ix_e".into(),
                table: "\"public\".\"memory_shards\"".into()
            }
        );
        let b = concurrent_index_build("create unique index concurrently \"IxQ\" on only t (x)")
            .unwrap();
        assert_eq!(b.index, "IxQ");
        assert_eq!(b.table, "\"t\"");
        assert!(concurrent_index_build("CREATE INDEX CONCURRENTLY ON t (x)").is_none());
        assert!(concurrent_index_build("CREATE INDEX i ON t (x)").is_none());
    }
}
