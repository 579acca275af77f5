//! The domain core of idempotency-kit for Rust.
//!
//! It holds what every other crate of the kit builds on, and depends on none of them:
//!
//! - [`IdempotencyRecord`]: a stored result or in-flight reservation, whose JSON is
//!   byte-compatible with the Python idempotency-kit 0.5.0;
//! - [`RecordId`]: the validated `(operation, key)` identity every layer carries;
//!   [`validate_identifiers`] for the bare check;
//! - [`Clock`]: the wall clock records are stamped with;
//! - [`IdempotencyError`]: the one error enum, with [`ErrorClass`] to tell an outage from
//!   a client mistake;
//! - [`IdempotencyDomainService`]: the record factory and TTL policy;
//! - [`fingerprint_of`]: request fingerprints equal to the Python library's;
//! - the traits: [`IdempotencyRepository`] (storage), [`ReservationStore`] (fenced
//!   reservations), [`IdempotencyMetrics`], [`ResultAdapter`];
//! - [`MemoryStore`]: the embedded in-memory store, and [`Unfenced`], the fallback that
//!   lets any repository serve a coordinator.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), idempotency_core::IdempotencyError> {
//! use idempotency_core::{IdempotencyDomainService, IdempotencyRepository, MemoryStore, RecordId};
//!
//! let store = MemoryStore::new();
//! let service = IdempotencyDomainService::default();
//! let record = service.create_record("order.create", "key-1", &serde_json::json!({"order_id": 42}))?;
//! store.save(&record).await?;
//! let cached = store.get(&RecordId::new("order.create", "key-1")?).await?;
//! assert_eq!(cached.map(|r| r.result().get().to_owned()).as_deref(), Some(r#"{"order_id":42}"#));
//! # Ok(()) }
//! ```
//!
//! # Features
//! None: the crate is small and always whole.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod adapters;
mod batch;
mod cache_stats;
mod claim;
mod clock;
pub mod constants;
mod error;
mod fencing;
mod fingerprint;
mod identity;
mod lease;
mod memory;
mod metric_labels;
mod noop_metrics;
mod policy;
mod record;
mod sync;
pub mod traits;
mod unfenced;
pub mod wire;

pub use adapters::{JsonAdapter, SerdeAdapter, VoidAdapter};
pub use batch::{Batch, SaveManyOptions, bulk_outcome, validate_all};
pub use cache_stats::LocalCacheStats;
pub use claim::{Claim, Fence, Finished};
pub use clock::Clock;
pub use error::{BoxError, ErrorClass, FieldProblem, FieldProblems, IdempotencyError, Result};
pub use fencing::FencingToken;
pub use fingerprint::{canonical_json, fingerprint_of};
pub use identity::{Identifiers, RecordId, validate_identifiers, validate_key_prefix};
pub use lease::{Lease, holds_lease, is_abandoned, new_owner_token};
pub use memory::{MemoryLimits, MemoryStore, MemoryWatch};
pub use metric_labels::{ErrorType, LatencyMethod};
pub use noop_metrics::NoopMetrics;
pub use policy::{IdempotencyDomainService, RecordOptions};
pub use record::{IdempotencyRecord, RecordParts, RecordStatus};
pub use serde_json::value::RawValue;
pub use traits::adapter::ResultAdapter;
pub use traits::bulk::BulkRepository;
pub use traits::metrics::IdempotencyMetrics;
pub use traits::reservation::{KeyWatch, ReservationStore};
pub use traits::storage::IdempotencyRepository;
pub use unfenced::{PollWatch, UNFENCED_POLL_INTERVAL, Unfenced};
pub use wire::{
    DecodeError, check_storable, looks_finished, storable_form, to_result_json, unstorable_marker,
    unstorable_reason,
};
