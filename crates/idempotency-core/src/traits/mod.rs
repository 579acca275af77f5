//! The traits other crates implement, and nothing else: storage (one key at a time and
//! in bulk), fenced reservations, metrics and result adapters. The types they speak in
//! live beside the concepts they belong to (the record, the lease, a claim's outcome, a
//! batch, the metric labels) and are re-exported at the crate root.

pub mod adapter;
pub mod bulk;
pub mod metrics;
pub mod reservation;
pub mod storage;
