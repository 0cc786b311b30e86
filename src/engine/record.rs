//! The SQL that records a step: version-table rows and the history row. Built from validated
//! values as literals, so the same text serves online application (one round trip) and
//! offline `--sql` output.

use std::collections::BTreeSet;

use crate::model::FenceToken;
use crate::revision::placeholder::quote_literal;

use super::tables::Tables;

/// How long a step took, as the history row records it.
pub enum Duration {
    Millis(i64),
    /// Measured by the database, between two [`mark_sql`] marks of the same transaction.
    BetweenMarks(usize, usize),
}

/// The statement setting mark `k` of a transaction: the server's clock now, kept for the
/// transaction only. A group's history rows take their time and duration from the marks
/// around each revision's statements, so one insert records them all.
pub fn mark_sql(k: usize) -> String {
    format!(
        "SELECT FROM pg_catalog.set_config('fleetmig.mark{k}', pg_catalog.clock_timestamp()::pg_catalog.text, true)"
    )
}

/// Mark `k` as a timestamp.
fn mark(k: usize) -> String {
    format!("pg_catalog.current_setting('fleetmig.mark{k}')::pg_catalog.timestamptz")
}

impl Duration {
    fn sql(&self) -> String {
        match self {
            Duration::Millis(ms) => ms.to_string(),
            Duration::BetweenMarks(a, b) => format!(
                "(EXTRACT(epoch FROM {} OPERATOR(pg_catalog.-) {}) OPERATOR(pg_catalog.*) 1000)::pg_catalog.int8",
                mark(*b),
                mark(*a)
            ),
        }
    }

    /// When the step ended: the later mark, or the transaction's start.
    fn ended_sql(&self) -> String {
        match self {
            Duration::BetweenMarks(_, b) => mark(*b),
            Duration::Millis(_) => "pg_catalog.now()".into(),
        }
    }
}

/// What one history row says.
pub struct HistoryRow<'a> {
    pub revision: &'a str,
    /// `upgrade`, `downgrade` or `stamp`.
    pub direction: &'a str,
    pub checksum: Option<&'a str>,
    pub placeholders: &'a serde_json::Value,
    pub skipped: bool,
    pub duration: Duration,
    pub applied_by: &'a str,
    pub fence: Option<FenceToken>,
}

/// Statements moving `alembic_version` from `before` to `after`.
pub fn version_change_sql(
    tables: &Tables,
    before: &BTreeSet<String>,
    after: &BTreeSet<String>,
) -> String {
    let vt = tables.version.sql();
    let mut sql = String::new();
    for gone in before.difference(after) {
        sql.push_str(&format!(
            "DELETE FROM {vt} WHERE version_num OPERATOR(pg_catalog.=) {};\n",
            quote_literal(gone)
        ));
    }
    for new in after.difference(before) {
        sql.push_str(&format!(
            "INSERT INTO {vt} (version_num) VALUES ({});\n",
            quote_literal(new)
        ));
    }
    sql
}

pub fn history_sql(tables: &Tables, row: &HistoryRow<'_>) -> String {
    history_rows_sql(tables, std::slice::from_ref(row))
}

/// One INSERT for all `rows` (a group's revisions).
pub fn history_rows_sql(tables: &Tables, rows: &[HistoryRow<'_>]) -> String {
    let values: Vec<String> = rows
        .iter()
        .map(|row| {
            format!(
                "({}, {}, {}, {}::pg_catalog.jsonb, {}, {}, {}, {}, {})",
                quote_literal(row.revision),
                quote_literal(row.direction),
                row.checksum.map_or("NULL".to_string(), quote_literal),
                quote_literal(&row.placeholders.to_string()),
                row.skipped,
                row.duration.ended_sql(),
                row.duration.sql(),
                quote_literal(row.applied_by),
                row.fence.map_or("NULL".to_string(), |t| t.0.to_string()),
            )
        })
        .collect();
    format!(
        "INSERT INTO {} (revision, direction, checksum, placeholders, skipped, applied_at, duration_ms, applied_by, fence_token) VALUES {};\n",
        tables.history.sql(),
        values.join(",\n  ")
    )
}
