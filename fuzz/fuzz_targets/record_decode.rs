//! Any bytes found under a key decode to a record or a typed error, never a panic; a
//! decoded record encodes and decodes to itself.
//!
//! `cargo +nightly fuzz run record_decode` (from the repository root).

#![no_main]

use idempotency_core::{IdempotencyError, IdempotencyRecord};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    match IdempotencyRecord::from_json(bytes, "op", "k") {
        Ok(record) => {
            let again = IdempotencyRecord::from_json(record.to_json().as_bytes(), "op", "k");
            assert_eq!(again.ok(), Some(record));
        }
        Err(IdempotencyError::CorruptedRecord { .. } | IdempotencyError::InvalidRecord { .. }) => {}
        Err(other) => panic!("untyped decode failure: {other:?}"),
    }
});
