//! A schema fingerprint from pg_catalog: extensions, relations, columns (type, nullability,
//! default, position), constraints and indexes (with validity), as sorted lines and a hash.
//! Used to prove round trips, compare offline with online runs, and detect drift.

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use super::EngineError;
use super::tables::Tables;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub lines: Vec<String>,
}

impl Fingerprint {
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        for l in &self.lines {
            h.update(l.as_bytes());
            h.update(b"\n");
        }
        hex::encode(h.finalize())
    }

    /// Lines only in `self` (`-`) and only in `other` (`+`).
    pub fn diff(&self, other: &Fingerprint) -> Vec<String> {
        let a: std::collections::BTreeSet<&String> = self.lines.iter().collect();
        let b: std::collections::BTreeSet<&String> = other.lines.iter().collect();
        a.difference(&b)
            .map(|l| format!("- {l}"))
            .chain(b.difference(&a).map(|l| format!("+ {l}")))
            .collect()
    }
}

const USER_SCHEMAS: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'";

/// The fingerprint of every user schema, leaving out fleetmig's own bookkeeping tables.
pub async fn fingerprint(client: &Client, tables: &Tables) -> Result<Fingerprint, EngineError> {
    let mut excluded: Vec<String> = [&tables.version, &tables.history, &tables.fence]
        .iter()
        .map(|t| t.name.clone())
        .collect();
    excluded.push(format!("{}_id_seq", tables.history.name));
    let excluded = format!(
        "ARRAY[{}]::pg_catalog.name[]",
        excluded
            .iter()
            .map(|n| crate::revision::placeholder::quote_literal(n))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // Read with search_path = pg_catalog, pg_temp: nothing a tenant planted can run here.
    let query = format!(
        "SELECT 'extension ' || extname || ' ' || extversion FROM pg_extension WHERE extname <> 'plpgsql'
         UNION ALL
         SELECT format('relation %I.%I kind=%s', n.nspname, c.relname, c.relkind)
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE {USER_SCHEMAS} AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND NOT (c.relname = ANY({excluded}))
            AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
         UNION ALL
         SELECT format('column %I.%I #%s %I %s%s%s', n.nspname, c.relname,
                       row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum), a.attname,
                       format_type(a.atttypid, a.atttypmod),
                       CASE WHEN a.attnotnull THEN ' not null' ELSE '' END,
                       coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), ''))
           FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
           LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
          WHERE {USER_SCHEMAS} AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND a.attnum > 0 AND NOT a.attisdropped
            AND NOT (c.relname = ANY({excluded}))
            AND NOT EXISTS (SELECT 1 FROM pg_depend dd WHERE dd.objid = c.oid AND dd.deptype = 'e')
         UNION ALL
         SELECT format('constraint %I.%I %I %s', n.nspname, c.relname, con.conname, pg_get_constraintdef(con.oid))
           FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE {USER_SCHEMAS} AND NOT (c.relname = ANY({excluded}))
         UNION ALL
         SELECT format('index %s%s', pg_get_indexdef(i.indexrelid), CASE WHEN i.indisvalid THEN '' ELSE ' INVALID' END)
           FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE {USER_SCHEMAS} AND NOT (c.relname = ANY({excluded}))
         ORDER BY 1"
    );
    let messages = client
        .simple_query(&super::pinned(&query))
        .await
        .map_err(EngineError::db("reading the schema fingerprint"))?;
    Ok(Fingerprint {
        lines: super::rows_of(&messages)
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect(),
    })
}
