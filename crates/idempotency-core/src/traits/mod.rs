//! The traits other crates implement: storage, reservations, metrics, result adapters.

pub mod adapter;
pub mod metrics;
pub mod reservation;
pub mod storage;
