//! The SQL of the blocking diagnosis and of the policy's signals, their rows, and the
//! normalised query text (literals replaced by `$n`, comments dropped, by the lexer). Every
//! statement is read-only except the signal, runs pinned to `pg_catalog` (see
//! [`crate::engine::pinned`]) and names its functions and operators there as well.

use std::time::Duration;

use squawk_lexer::{TokenKind, tokenize};

use super::Blocker;
use crate::model::BlockerAction;
use crate::revision::placeholder::quote_literal;

/// The halves of the run's advisory lock key, as pg_locks shows a bigint key: the high 32
/// bits in `classid`, the low 32 in `objid`, `objsubid` 1.
pub(crate) fn key_halves(key: i64) -> (u32, u32) {
    let k = key as u64;
    ((k >> 32) as u32, k as u32)
}

/// Who blocks the session holding the run's advisory lock (`key`) in this database.
pub(super) fn diagnosis_sql(key: i64) -> String {
    let (hi, lo) = key_halves(key);
    let ms = |from: &str| {
        format!(
            "(pg_catalog.date_part('epoch', pg_catalog.now() OPERATOR(pg_catalog.-) {from}) OPERATOR(pg_catalog.*) 1000)::pg_catalog.int8"
        )
    };
    crate::engine::pinned(&format!(
        "WITH me AS (\
           SELECT l.pid FROM pg_catalog.pg_locks l \
           WHERE l.locktype OPERATOR(pg_catalog.=) 'advisory' \
             AND l.database OPERATOR(pg_catalog.=) (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database()) \
             AND l.classid OPERATOR(pg_catalog.=) '{hi}'::pg_catalog.oid AND l.objid OPERATOR(pg_catalog.=) '{lo}'::pg_catalog.oid \
             AND l.objsubid OPERATOR(pg_catalog.=) 1 AND l.granted LIMIT 1), \
         wanted AS (\
           SELECT w.locktype, w.mode, w.relation, w.transactionid, w.virtualxid FROM pg_catalog.pg_locks w, me \
           WHERE w.pid OPERATOR(pg_catalog.=) me.pid AND NOT w.granted LIMIT 1) \
         SELECT b.pid, a.application_name, a.usename::pg_catalog.text, pg_catalog.host(a.client_addr), a.state, \
           {xact}, {state}, a.wait_event_type, a.wait_event, a.query, a.backend_start::pg_catalog.text, \
           (SELECT pg_catalog.string_agg(DISTINCT h.mode, ', ') FROM pg_catalog.pg_locks h, wanted w \
              WHERE h.pid OPERATOR(pg_catalog.=) b.pid AND h.granted AND h.locktype OPERATOR(pg_catalog.=) w.locktype \
                AND h.relation IS NOT DISTINCT FROM w.relation AND h.transactionid IS NOT DISTINCT FROM w.transactionid \
                AND h.virtualxid IS NOT DISTINCT FROM w.virtualxid), \
           (SELECT w.mode OPERATOR(pg_catalog.||) ' on ' OPERATOR(pg_catalog.||) COALESCE(w.relation::pg_catalog.regclass::pg_catalog.text, w.locktype) FROM wanted w), \
           a.backend_type \
         FROM me CROSS JOIN LATERAL pg_catalog.unnest(pg_catalog.pg_blocking_pids(me.pid)) AS b(pid) \
         LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid OPERATOR(pg_catalog.=) b.pid \
         ORDER BY a.xact_start NULLS LAST, b.pid",
        xact = ms("a.xact_start"),
        state = ms("a.state_change"),
    ))
}

/// A signal to `b`, only if its pid is still the same session (a pid is reused after a
/// session ends: never signal a stranger).
pub(super) fn signal_sql(action: BlockerAction, b: &Blocker) -> String {
    let function = match action {
        BlockerAction::Terminate => "pg_terminate_backend",
        BlockerAction::Cancel | BlockerAction::Report => "pg_cancel_backend",
    };
    crate::engine::pinned(&format!(
        "SELECT pg_catalog.{function}(a.pid) FROM pg_catalog.pg_stat_activity a \
         WHERE a.pid OPERATOR(pg_catalog.=) {pid} \
           AND a.backend_start OPERATOR(pg_catalog.=) {start}::pg_catalog.timestamptz",
        pid = b.pid,
        start = quote_literal(&b.backend_start),
    ))
}

fn ms(s: Option<&str>) -> Option<Duration> {
    s?.parse::<i64>()
        .ok()
        .map(|v| Duration::from_millis(v.max(0) as u64))
}

/// The blockers of a diagnosis' rows.
pub(super) fn blockers(rows: &[Vec<Option<String>>]) -> Vec<Blocker> {
    rows.iter()
        .filter_map(|r| {
            let col = |i: usize| r.get(i).cloned().flatten();
            let text = |i: usize| col(i).unwrap_or_default();
            // An idle session "waits" for its client (Client:ClientRead): not worth saying.
            let (wait_type, wait) = match text(4).as_str() {
                "active" => (text(7), text(8)),
                _ => (String::new(), String::new()),
            };
            Some(Blocker {
                pid: col(0)?.parse().ok()?,
                application_name: text(1),
                user: text(2),
                client_addr: text(3),
                state: text(4),
                transaction_age: ms(col(5).as_deref()),
                state_age: ms(col(6).as_deref()),
                wait_event: match (wait_type.is_empty(), wait.is_empty()) {
                    (true, true) => String::new(),
                    _ => format!("{wait_type}:{wait}"),
                },
                query: match col(9) {
                    // Another role's session, to a role without pg_read_all_stats.
                    Some(q) if q == "<insufficient privilege>" => q,
                    Some(q) => normalise(&q),
                    None => String::new(),
                },
                backend_start: text(10),
                holds: text(11),
                wants: text(12),
                backend_type: text(13),
                action: String::new(),
            })
        })
        .collect()
}

/// `sql` without literal values: each string, number, bit string and dollar-quoted body
/// becomes `$n` (numbered after the query's own parameters), comments go, whitespace runs
/// become one space. What a blocker's query tells about the data is its shape, never values.
pub fn normalise(sql: &str) -> String {
    let mut max_param = 0u32;
    let mut offset = 0usize;
    let tokens: Vec<(TokenKind, &str)> = tokenize(sql)
        .map(|t| {
            let text = sql.get(offset..offset + t.len as usize).unwrap_or_default();
            offset += t.len as usize;
            (t.kind, text)
        })
        .collect();
    for (kind, text) in &tokens {
        if let TokenKind::PositionalParam { .. } = kind {
            max_param = max_param.max(text[1..].parse().unwrap_or(0));
        }
    }
    let mut out = String::with_capacity(sql.len());
    let mut space = false;
    for (kind, text) in tokens {
        match kind {
            TokenKind::Eof => break,
            TokenKind::Whitespace | TokenKind::LineComment | TokenKind::BlockComment { .. } => {
                space = true
            }
            kind => {
                if space && !out.is_empty() {
                    out.push(' ');
                }
                space = false;
                match kind {
                    TokenKind::Literal { .. } | TokenKind::Unknown => {
                        max_param += 1;
                        out.push_str(&format!("${max_param}"));
                    }
                    _ => out.push_str(text),
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_comments_never_leave() {
        assert_eq!(
            normalise(
                "UPDATE accounts /* tenant 42 */ SET balance = balance - 10.50,\n  note = E'it''s ' || $$secret$$ WHERE id = $1 AND email = 'x@y.z' -- pin 1234\n"
            ),
            "UPDATE accounts SET balance = balance - $2, note = $3 || $4 WHERE id = $1 AND email = $5"
        );
        // A query cut at track_activity_query_size: the open literal goes too.
        assert_eq!(
            normalise("SELECT * FROM t WHERE s = 'sensit"),
            "SELECT * FROM t WHERE s = $1"
        );
        assert_eq!(
            normalise("SELECT \"Odd\".x FROM \"Odd\""),
            "SELECT \"Odd\".x FROM \"Odd\""
        );
        assert_eq!(
            normalise("x IN (1, B'101', X'ff', 2e3)"),
            "x IN ($1, $2, $3, $4)"
        );
    }

    #[test]
    fn the_key_is_split_as_pg_locks_shows_it() {
        assert_eq!(key_halves(1), (0, 1));
        assert_eq!(key_halves(-1), (u32::MAX, u32::MAX));
        assert_eq!(key_halves(0x0000_0002_0000_0003), (2, 3));
    }
}
