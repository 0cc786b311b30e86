//! The `crate::revision` modules the parser and the splitter use.

#[path = "../../src/revision/file.rs"]
pub mod file;
#[path = "../../src/revision/placeholder.rs"]
pub mod placeholder;
#[path = "../../src/revision/sql.rs"]
pub mod sql;
