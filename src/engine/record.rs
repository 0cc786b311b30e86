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
    /// Measured by the database: from the transaction's start to the history insert.
    SinceTransactionStart,
}

impl Duration {
    fn sql(&self) -> String {
        match self {
            Duration::Millis(ms) => ms.to_string(),
            Duration::SinceTransactionStart => {
                "(EXTRACT(epoch FROM pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) pg_catalog.now()) OPERATOR(pg_catalog.*) 1000)::pg_catalog.int8".into()
            }
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
    format!(
        "INSERT INTO {} (revision, direction, checksum, placeholders, skipped, duration_ms, applied_by, fence_token) VALUES ({}, {}, {}, {}::pg_catalog.jsonb, {}, {}, {}, {});\n",
        tables.history.sql(),
        quote_literal(row.revision),
        quote_literal(row.direction),
        row.checksum.map_or("NULL".to_string(), quote_literal),
        quote_literal(&row.placeholders.to_string()),
        row.skipped,
        row.duration.sql(),
        quote_literal(row.applied_by),
        row.fence.map_or("NULL".to_string(), |t| t.0.to_string()),
    )
}
