//! The traits other crates implement: storage, reservations, metrics, result adapters,
//! and the helpers bulk operations share.

pub mod adapter;
pub mod bulk;
mod fence;
pub mod local_cache;
pub mod metrics;
pub mod reservation;
pub mod storage;
