//! fleetmig's bookkeeping tables in each database: Alembic's version table (one row per
//! applied head, so `alembic current` keeps working), fleetmig's history table and the
//! one-row fence table used by the daemon's lock.

use serde::{Deserialize, Serialize};

use crate::revision::placeholder::{is_safe_identifier, quote_ident, quote_literal};

/// An optionally schema-qualified table name, validated and always quoted in SQL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TableName {
    pub schema: Option<String>,
    pub name: String,
}

impl TryFrom<String> for TableName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<TableName> for String {
    fn from(t: TableName) -> String {
        match t.schema {
            Some(s) => format!("{s}.{}", t.name),
            None => t.name,
        }
    }
}

impl std::str::FromStr for TableName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (schema, name) = match s.split_once('.') {
            Some((a, b)) => (Some(a.to_string()), b.to_string()),
            None => (None, s.to_string()),
        };
        if !is_safe_identifier(&name) || schema.as_deref().is_some_and(|s| !is_safe_identifier(s)) {
            return Err(format!(
                "{s:?} is not a table name (identifiers of a-z A-Z 0-9 _ $, optionally schema.table)"
            ));
        }
        Ok(TableName { schema, name })
    }
}

impl TableName {
    pub fn new(name: &str) -> TableName {
        name.parse().expect("built-in table names are valid")
    }

    /// `"schema"."name"`, or `"name"`.
    pub fn sql(&self) -> String {
        match &self.schema {
            Some(s) => format!("{}.{}", quote_ident(s), quote_ident(&self.name)),
            None => quote_ident(&self.name),
        }
    }

    /// A string literal for `to_regclass(...)`.
    pub fn regclass_literal(&self) -> String {
        quote_literal(&self.sql())
    }
}

/// The three bookkeeping tables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tables {
    pub version: TableName,
    pub history: TableName,
    pub fence: TableName,
}

impl Default for Tables {
    fn default() -> Self {
        Tables {
            version: TableName::new("alembic_version"),
            history: TableName::new("fleetmig_history"),
            fence: TableName::new("fleetmig_fence"),
        }
    }
}

impl Tables {
    /// The same tables inside `schema` (a tenant that lives in one schema of a shared database).
    pub fn in_schema(&self, schema: &str) -> Tables {
        let q = |t: &TableName| TableName {
            schema: Some(schema.to_string()),
            name: t.name.clone(),
        };
        Tables {
            version: q(&self.version),
            history: q(&self.history),
            fence: q(&self.fence),
        }
    }

    /// The tables that name no schema, placed in `schema` (the first of the pinned
    /// search_path): fleetmig's statements then find them whatever a revision did to the
    /// search_path.
    pub fn qualified(&self, schema: &str) -> Tables {
        let q = |t: &TableName| TableName {
            schema: Some(t.schema.clone().unwrap_or_else(|| schema.to_string())),
            name: t.name.clone(),
        };
        Tables {
            version: q(&self.version),
            history: q(&self.history),
            fence: q(&self.fence),
        }
    }

    /// DDL creating whatever is missing. Alembic's own table definition, byte for byte in spirit:
    /// `version_num VARCHAR(32) NOT NULL` with a primary key constraint named `<table>_pkc`.
    pub fn create_sql(&self) -> String {
        let pkc = quote_ident(&format!("{}_pkc", self.version.name));
        let mut schemas: Vec<&String> = [&self.version, &self.history, &self.fence]
            .iter()
            .filter_map(|t| t.schema.as_ref())
            .collect();
        schemas.dedup();
        let create_schemas: String = schemas
            .iter()
            .map(|s| format!("CREATE SCHEMA IF NOT EXISTS {};\n", quote_ident(s)))
            .collect();
        // Every function, operator and type that could be shadowed is named in pg_catalog:
        // this runs in the tenant's database, where anything may be planted (see `exists_sql`).
        create_schemas
            + &format!(
                "CREATE TABLE IF NOT EXISTS {v} (version_num VARCHAR(32) NOT NULL, CONSTRAINT {pkc} PRIMARY KEY (version_num));\n\
             CREATE TABLE IF NOT EXISTS {h} (\n\
             \x20   id bigserial PRIMARY KEY,\n\
             \x20   revision varchar(32) NOT NULL,\n\
             \x20   direction pg_catalog.text NOT NULL CHECK (direction OPERATOR(pg_catalog.=) ANY (ARRAY['upgrade', 'downgrade', 'stamp']::pg_catalog.text[])),\n\
             \x20   checksum pg_catalog.text,\n\
             \x20   placeholders pg_catalog.jsonb NOT NULL DEFAULT '{{}}',\n\
             \x20   skipped boolean NOT NULL DEFAULT false,\n\
             \x20   applied_at pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now(),\n\
             \x20   duration_ms bigint NOT NULL DEFAULT 0,\n\
             \x20   applied_by pg_catalog.text NOT NULL,\n\
             \x20   fence_token bigint\n\
             );\n\
             CREATE TABLE IF NOT EXISTS {f} (id smallint PRIMARY KEY DEFAULT 1 CHECK (id OPERATOR(pg_catalog.=) 1), token bigint NOT NULL, updated_at pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now());\n",
                v = self.version.sql(),
                h = self.history.sql(),
                f = self.fence.sql(),
            )
    }

    /// One row: does each table exist?
    ///
    /// fleetmig's own statements resolve only to `pg_catalog` and its own (schema-qualified)
    /// tables, whatever the session's search_path and whatever a tenant planted in `public`
    /// or elsewhere: functions are schema-qualified, operators written `OPERATOR(pg_catalog.=)`
    /// (an exact-match operator in another schema would beat a built-in one that needs a cast),
    /// types and casts name `pg_catalog`. `tests/integration/hostile.rs` checks it.
    pub fn exists_sql(&self) -> String {
        format!(
            "SELECT pg_catalog.to_regclass({}) IS NOT NULL, pg_catalog.to_regclass({}) IS NOT NULL, pg_catalog.to_regclass({}) IS NOT NULL",
            self.version.regclass_literal(),
            self.history.regclass_literal(),
            self.fence.regclass_literal()
        )
    }

    /// Fence: one row `('fence', n)`: n = 1 when our token was recorded, 0 when a newer
    /// token is already there (we are stale).
    pub fn fence_check_sql(&self, token: i64) -> String {
        let f = self.fence.sql();
        format!(
            "WITH f AS (INSERT INTO {f} AS f (id, token) VALUES (1, {token}) ON CONFLICT (id) DO UPDATE SET token = EXCLUDED.token, updated_at = pg_catalog.now() WHERE f.token OPERATOR(pg_catalog.<=) EXCLUDED.token RETURNING 1) SELECT 'fence', pg_catalog.count(*)::pg_catalog.text FROM f"
        )
    }

    pub fn fence_token_sql(&self) -> String {
        format!(
            "SELECT token FROM {} WHERE id OPERATOR(pg_catalog.=) 1",
            self.fence.sql()
        )
    }

    /// Rows `('version', version_num)`, in no order: readers sort them. A fresh backend's
    /// first sort looks up operators and collations in cold catalog caches, which costs more
    /// than the query itself (about 0.4 ms of server CPU per session, measured).
    pub fn tagged_versions_sql(&self) -> String {
        format!("SELECT 'version', version_num FROM {}", self.version.sql())
    }

    /// Rows `('recorded', revision, checksum, skipped, direction, id)`: every history row, in
    /// no order; the engine keeps what each revision was last upgraded with. No
    /// filter, sort or DISTINCT ON on the server, for the same reason as the version rows
    /// (together about 0.6 ms of server CPU per session, measured); a history is a few rows
    /// per revision.
    pub fn applied_checksums_sql(&self) -> String {
        format!(
            "SELECT 'recorded', revision, checksum, skipped, direction, id FROM {}",
            self.history.sql()
        )
    }
}
