//! Offline SQL is read by psql, whose lexer is not fleetmig's: the statements psql sends must
//! be the statements fleetmig would run online. Checked on a revision with trailing comments
//! (applied both ways, schemas compared) and over the SQL splitter's fuzz corpus: psql's own
//! log (`-L`) of the queries it sent is compared statement by statement.

use std::path::Path;
use std::process::Command;

use fleetmig::engine::offline::terminated;
use fleetmig::revision::sql;

use crate::engine::fp;
use crate::harness;

const TRAILING: &str = "-- revision: t1\n-- down_revision:\n-- +upgrade\nCREATE TABLE a (id int) -- the first table\n;\nCREATE TABLE b (id int); -- after the semicolon\nINSERT INTO a VALUES (1) -- one row\n;\nINSERT INTO a VALUES (2)\n-- a comment on a line of its own\n;\nCOMMENT ON TABLE a IS 'a -- not a comment' -- but this is\n;\n-- +downgrade\nDROP TABLE b -- second\n;\nDROP TABLE a;\n";

fn fleetmig(root: &Path, url: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetmig"));
    cmd.current_dir(root)
        .arg("--migrations-dir")
        .arg(root)
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("FLEETMIG_CONFIG");
    if let Some(url) = url {
        cmd.env("DATABASE_URL", url);
    }
    cmd.output().unwrap()
}

#[tokio::test]
async fn offline_sql_with_trailing_comments_runs_in_psql_as_online() {
    let Some(pg) = harness::postgres() else {
        return;
    };
    let (_tmp, root) = harness::scratch_app("comments", "", &[("t1.sql", TRAILING)]);
    let (online, _) = pg.database("trailing_online").await;
    let (offline, _) = pg.database("trailing_offline").await;
    let up = fleetmig(&root, Some(&online), &["upgrade", "head"]);
    assert!(up.status.success(), "{up:?}");
    let sql = fleetmig(&root, None, &["upgrade", "--sql"]);
    assert!(sql.status.success(), "{sql:?}");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &sql.stdout).unwrap();
    let (ok, err) = pg.psql_file(&offline, file.path());
    assert!(
        ok,
        "psql -f failed: {err}\n{}",
        String::from_utf8_lossy(&sql.stdout)
    );
    let (a, b) = (
        fleetmig::pg::connect_str(&online).await.unwrap(),
        fleetmig::pg::connect_str(&offline).await.unwrap(),
    );
    let (fa, fb) = (fp(&a).await, fp(&b).await);
    assert_eq!(fa, fb, "{:?}", fa.diff(&fb));
    let rows = "SELECT count(*) FROM a";
    let (ra, rb): (i64, i64) = (
        a.query_one(rows, &[]).await.unwrap().get(0),
        b.query_one(rows, &[]).await.unwrap().get(0),
    );
    assert_eq!((ra, rb), (2, 2));
    let down = fleetmig(&root, None, &["downgrade", "--sql", "head:base"]);
    std::fs::write(file.path(), &down.stdout).unwrap();
    let (ok, err) = pg.psql_file(&offline, file.path());
    assert!(ok, "psql -f downgrade failed: {err}");
}

/// Revisions 1–2 and 4–5 are transactional, 3 builds an index CONCURRENTLY between them.
fn grouped_files() -> Vec<(String, String)> {
    let mut files = vec![];
    for (i, (up, down, header)) in [
        (
            "CREATE TABLE a (id int);\nINSERT INTO a VALUES (1);",
            "DROP TABLE a;",
            "",
        ),
        ("CREATE TABLE b (id int, a_id int);", "DROP TABLE b;", ""),
        (
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_b_a ON b (a_id);",
            "DROP INDEX CONCURRENTLY IF EXISTS ix_b_a;",
            "-- transaction: none\n",
        ),
        (
            "ALTER TABLE a ADD COLUMN name text;",
            "ALTER TABLE a DROP COLUMN name;",
            "",
        ),
        (
            "CREATE VIEW v AS SELECT id, name FROM a;",
            "DROP VIEW v;",
            "",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let (rev, down_rev) = (
            format!("g{}", i + 1),
            if i == 0 {
                String::new()
            } else {
                format!("g{i}")
            },
        );
        files.push((
            format!("{rev}.sql"),
            format!("-- revision: {rev}\n-- down_revision: {down_rev}\n{header}-- +upgrade\n{up}\n-- +downgrade\n{down}\n"),
        ));
    }
    files
}

/// In both transaction modes, the offline SQL applied with psql builds what the online run
/// builds (schema fingerprint, version row, history), with one BEGIN/COMMIT per group (or per
/// revision), and the CONCURRENTLY revision between two groups outside any.
#[tokio::test]
async fn offline_sql_of_both_transaction_modes_equals_online() {
    let Some(pg) = harness::postgres() else {
        return;
    };
    let files = grouped_files();
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_str()))
        .collect();
    // Transactions: the groups (or revisions), and the index's bookkeeping after it.
    for (per_revision, begins) in [(false, 3), (true, 5)] {
        let manifest = format!("transaction_per_revision = {per_revision}\n");
        let (_tmp, root) = harness::scratch_app("grouped", &manifest, &files);
        let (online, _) = pg.database(&format!("grouped_online_{per_revision}")).await;
        let (offline, _) = pg
            .database(&format!("grouped_offline_{per_revision}"))
            .await;
        let up = fleetmig(&root, Some(&online), &["upgrade", "head"]);
        assert!(up.status.success(), "{up:?}");
        let sql = fleetmig(&root, None, &["upgrade", "--sql"]);
        assert!(sql.status.success(), "{sql:?}");
        let text = String::from_utf8_lossy(&sql.stdout).to_string();
        let count = |word: &str| text.lines().filter(|l| l.trim() == word).count();
        assert_eq!(
            (count("BEGIN;"), count("COMMIT;")),
            (begins, begins),
            "per_revision={per_revision}:\n{text}"
        );
        let mut open = false;
        for line in text.lines().map(str::trim) {
            match line {
                "BEGIN;" => open = true,
                "COMMIT;" => open = false,
                l if l.contains("CONCURRENTLY") => assert!(!open, "inside a transaction:\n{text}"),
                _ => {}
            }
        }
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &sql.stdout).unwrap();
        let (ok, err) = pg.psql_file(&offline, file.path());
        assert!(ok, "psql -f failed: {err}\n{text}");
        let (a, b) = (
            fleetmig::pg::connect_str(&online).await.unwrap(),
            fleetmig::pg::connect_str(&offline).await.unwrap(),
        );
        let (fa, fb) = (fp(&a).await, fp(&b).await);
        assert_eq!(fa, fb, "per_revision={per_revision}: {:?}", fa.diff(&fb));
        let bookkeeping = "SELECT (SELECT string_agg(version_num, ',') FROM alembic_version), \
             (SELECT string_agg(revision, ',' ORDER BY id) FROM fleetmig_history), \
             (SELECT indisvalid FROM pg_index WHERE indexrelid = 'ix_b_a'::regclass)";
        let read =
            |c: tokio_postgres::Row| -> (String, String, bool) { (c.get(0), c.get(1), c.get(2)) };
        let (ra, rb) = (
            read(a.query_one(bookkeeping, &[]).await.unwrap()),
            read(b.query_one(bookkeeping, &[]).await.unwrap()),
        );
        assert_eq!(ra, ("g5".into(), "g1,g2,g3,g4,g5".into(), true), "online");
        assert_eq!(ra, rb, "offline equals online");
    }
}

/// The queries psql sent, from its `-L` log (psql 18's format).
fn psql_queries(log: &str) -> Vec<String> {
    const START: &str = "/******** QUERY *********/\n";
    const END: &str = "\n/************************/\n";
    let mut out = Vec::new();
    let mut rest = log;
    while let Some(i) = rest.find(START) {
        let body = &rest[i + START.len()..];
        let j = body.find(END).expect("a logged query ends");
        out.push(body[..j].to_string());
        rest = &body[j + END.len()..];
    }
    out
}

/// A statement's tokens without the whitespace between them: psql drops blank lines outside
/// quotes, which changes no statement.
fn tokens(stmt: &str) -> Vec<&str> {
    let mut offset = 0;
    let mut out = Vec::new();
    for t in squawk_lexer::tokenize(stmt) {
        let len = t.len as usize;
        match t.kind {
            squawk_lexer::TokenKind::Eof => break,
            squawk_lexer::TokenKind::Whitespace => {}
            _ => out.push(&stmt[offset..offset + len]),
        }
        offset += len;
    }
    out
}

/// Parsed by the server without running: inside a failed transaction, a statement that
/// parses is refused with 25P02, one that does not with its syntax error.
async fn parses(client: &tokio_postgres::Client, stmt: &str) -> bool {
    if stmt.contains('\0') || sql::is_transaction_control(stmt) {
        return false;
    }
    let accepted = match client.simple_query(stmt).await {
        Err(e) => e.code().map(|c| c.code()) == Some("25P02"),
        Ok(_) => false,
    };
    if !accepted {
        // Whatever happened, be back in a failed transaction before the next statement.
        let _ = client.batch_execute("ROLLBACK").await;
        let _ = client.batch_execute("BEGIN; SELECT 1/0").await;
    }
    accepted
}

#[tokio::test]
async fn psql_sends_the_statements_fleetmig_splits_over_the_fuzz_corpus() {
    let Some(pg) = harness::postgres() else {
        return;
    };
    let (url, _) = pg.database("offline_corpus").await;
    let client = fleetmig::pg::connect_str(&url).await.unwrap();
    let _ = client.batch_execute("BEGIN; SELECT 1/0").await;
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/sql_split");
    let mut entries: Vec<_> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    let dir = tempfile::tempdir().unwrap();
    let (mut inputs, mut statements, mut trailing) = (0, 0, 0);
    let mut mismatches = Vec::new();
    for path in entries {
        let Ok(text) = String::from_utf8(std::fs::read(&path).unwrap()) else {
            continue;
        };
        let Ok(split) = sql::split(&text) else {
            continue;
        };
        let mut accepted = Vec::new();
        for s in split {
            if parses(&client, &s.text).await {
                accepted.push(s.text);
            }
        }
        if accepted.is_empty() {
            continue;
        }
        inputs += 1;
        statements += accepted.len();
        trailing += accepted
            .iter()
            .filter(|s| sql::ends_in_line_comment(s))
            .count();
        // Offline SQL as fleetmig renders it, run inside a failed transaction: psql sends
        // every statement, the server runs none.
        let script = dir.path().join("script.sql");
        let log = dir.path().join("psql.log");
        let _ = std::fs::remove_file(&log);
        let body: String = accepted.iter().map(|s| terminated(s)).collect();
        std::fs::write(&script, format!("BEGIN;\nSELECT 1/0;\n{body}")).unwrap();
        let out = Command::new(pg.bin.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=0", "-d", &url, "-L"])
            .arg(&log)
            .arg("-f")
            .arg(&script)
            .output()
            .unwrap();
        let sent = psql_queries(&std::fs::read_to_string(&log).unwrap_or_default());
        let sent: Vec<String> = sent.into_iter().skip(2).collect();
        let same = sent.len() == accepted.len()
            && sent
                .iter()
                .zip(&accepted)
                .all(|(q, s)| tokens(q.strip_suffix(';').unwrap_or(q)) == tokens(s));
        if !same {
            mismatches.push(format!(
                "{}: fleetmig {accepted:?}\npsql {sent:?}\n{}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    eprintln!(
        "{inputs} corpus inputs, {statements} statements the server parses ({trailing} ending in a -- comment)"
    );
    assert!(
        statements > 100,
        "the corpus exercised little: {statements}"
    );
    assert!(trailing > 0, "no statement ends in a -- comment");
    assert!(
        mismatches.is_empty(),
        "{} input(s) where psql sends other statements:\n{}",
        mismatches.len(),
        mismatches.join("\n\n")
    );
}
