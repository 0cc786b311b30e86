//! fleetmig's revision-file parser and SQL splitter, compiled from the crate's own source
//! files (not copies) with only the dependencies they need, for the fuzz targets.

#![allow(dead_code)]

#[path = "../../src/model.rs"]
pub mod model;
pub mod revision;
