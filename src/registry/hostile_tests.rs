//! Property tests with hostile identifiers (quotes, `;`, `--`, NUL, backslashes, dollar
//! quotes, over-long, unicode look-alikes): every identifier that reaches SQL is either
//! rejected by its allowlist or, once quoted, stays one token of one statement.

use proptest::prelude::*;

use super::{ConnectionSpec, SslMode, TenantId};
use crate::revision::placeholder::{is_safe_identifier, quote_ident, quote_literal};
use crate::revision::sql::split;

/// Characters that break naive SQL building, plus look-alikes of quotes and semicolons.
const HOSTILE: &[char] = &[
    '\'', '"', ';', '-', '\0', '\\', '$', ' ', '\n', '(', ')', '/', '*', 'ʼ', '＂', '；', 'а',
    '\u{2028}', '\u{200b}', 'a', 'Z', '0', '_',
];

fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::collection::vec(proptest::sample::select(HOSTILE), 0..80)
            .prop_map(|c| c.into_iter().collect::<String>()),
        // Plausible names with one hostile tail, and names just over the length limit.
        (
            "[a-z][a-z0-9_]{0,20}",
            proptest::sample::select(HOSTILE),
            "[a-z;'\"-]{0,10}"
        )
            .prop_map(|(a, c, b)| format!("{a}{c}{b}")),
        "[a-z]{62,70}",
    ]
}

fn plain(s: &str, extra: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || extra.contains(&c))
}

fn spec() -> ConnectionSpec {
    ConnectionSpec {
        host: "db-1.internal".into(),
        port: 5432,
        dbname: "tenant".into(),
        user: "app".into(),
        sslmode: SslMode::Disable,
        schema: None,
        password: None,
        options: Default::default(),
    }
}

proptest! {
    #[test]
    fn tenant_ids_accept_only_the_allowlist(s in hostile()) {
        if TenantId::parse("tenant.id", &s).is_ok() {
            prop_assert!(plain(&s, b"-") && !s.bytes().any(|c| c.is_ascii_uppercase()), "{s:?}");
        }
    }

    #[test]
    fn connection_names_accept_only_the_allowlist(s in hostile()) {
        let mut c = spec();
        c.dbname = s.clone();
        if c.validate("c").is_ok() {
            prop_assert!(plain(&s, b"-"), "dbname {s:?}");
        }
        let mut c = spec();
        c.user = s.clone();
        if c.validate("c").is_ok() {
            prop_assert!(plain(&s, b"-"), "user {s:?}");
        }
        let mut c = spec();
        c.schema = Some(s.clone());
        if c.validate("c").is_ok() {
            prop_assert!(plain(&s, b"$") && is_safe_identifier(&s), "schema {s:?}");
        }
    }

    /// Even a value no allowlist would pass cannot leave its quotes: the statement stays
    /// one statement (what the splitter sees is what Postgres' lexer sees).
    #[test]
    fn quoted_values_stay_inside_their_statement(s in hostile()) {
        prop_assume!(!s.contains('\0')); // Postgres rejects NUL in any query text
        let sql = format!(
            "CREATE TABLE {} (v text DEFAULT {}); SELECT 1;",
            quote_ident(&s),
            quote_literal(&s)
        );
        let statements = split(&sql).expect("quoted values are terminated");
        prop_assert_eq!(statements.len(), 2, "{}", sql);
        prop_assert!(statements[1].text.trim_end_matches(';').trim() == "SELECT 1", "{}", sql);
    }
}
