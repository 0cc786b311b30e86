//! The SQL splitter on arbitrary text: never panics, every statement is non-empty and starts
//! on a line of the input, a statement split again is that one statement, and the classifiers
//! run on every statement.

#![no_main]

use fleetmig_fuzz::revision::sql;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.matches('\n').count();
    match sql::split(text) {
        Ok(statements) => {
            for s in &statements {
                assert!(s.line <= lines, "line {} of {lines}", s.line);
                assert!(!s.text.trim().is_empty());
                let _ = sql::needs_autocommit(&s.text);
                let _ = sql::is_transaction_control(&s.text);
                let _ = sql::concurrent_index_build(&s.text);
                let _ = sql::leading_keywords(&s.text, 3);
                let again = sql::split(&s.text).expect("a split statement splits again");
                assert_eq!(again.len(), 1, "{:?} split into {again:?}", s.text);
            }
        }
        Err(e) => assert!(e.line <= lines, "line {} of {lines}", e.line),
    }
    let _ = sql::placeholder_in_quotes(text);
});
