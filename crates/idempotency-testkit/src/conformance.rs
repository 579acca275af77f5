//! The conformance vectors written by the Python idempotency-kit 0.5.0: one copy, here,
//! for every crate's tests (`crates/idempotency-testkit/conformance/`, copied from the
//! shared conformance set; see its README for what each file holds).

use std::path::PathBuf;

/// The path of a vector file (`decode_cases.json`, `fingerprints.json`, `records.json`,
/// `metrics.txt`).
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("conformance")
        .join(name)
}

/// The text of a vector file.
///
/// # Panics
/// When the file cannot be read.
pub fn text(name: &str) -> String {
    let path = path(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}
