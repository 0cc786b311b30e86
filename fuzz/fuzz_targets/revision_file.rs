//! The revision-file parser on arbitrary text: never panics; a parsed file has a 64-hex
//! checksum and statements in its upgrade section's lines; an error names a line of the file.

#![no_main]

use std::path::Path;

use fleetmig_fuzz::revision::file::Revision;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.lines().count();
    match Revision::parse(Path::new("migrations/fuzz/0001_fuzz.sql"), text) {
        Ok(r) => {
            assert_eq!(r.checksum.len(), 64);
            assert!(!r.id.as_str().is_empty());
        }
        Err(e) => assert!(e.line <= lines + 1, "line {} of {lines}: {e}", e.line),
    }
});
