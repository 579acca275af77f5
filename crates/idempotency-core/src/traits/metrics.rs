//! The metrics trait and its no-op implementation.

use std::fmt::Debug;

/// Error types the kit itself reports through [`IdempotencyMetrics::record_error`]: a
/// fixed set, so label cardinality stays bounded.
pub mod error_type {
    /// Stored bytes that are not a record (corrupted or of the wrong shape).
    pub const VALIDATION: &str = "validation_error";
    /// A result that could not be serialized for storage.
    pub const SERIALIZATION: &str = "serialization_error";
    /// A connection to the store failed or was refused.
    pub const CONNECTION: &str = "connection_error";
    /// A command to the store timed out.
    pub const TIMEOUT: &str = "timeout_error";
    /// The store answered with an error (WRONGTYPE, NOSCRIPT, …).
    pub const RESPONSE: &str = "response_error";
    /// Any other failure of the store.
    pub const STORAGE: &str = "storage_error";
    /// The coordinator could not read the key.
    pub const STORAGE_GET: &str = "storage_get_error";
    /// The coordinator could not reserve the key.
    pub const STORAGE_RESERVE: &str = "storage_reserve_error";
    /// The coordinator could not store the result.
    pub const STORAGE_SAVE: &str = "storage_save_error";
    /// The coordinator could not renew its reservation.
    pub const STORAGE_RENEW: &str = "storage_renew_error";
    /// The coordinator could not release its reservation.
    pub const STORAGE_RELEASE: &str = "storage_release_error";
    /// The coordinator could not make a record of a result (adapter or TTL trouble).
    pub const RECORD_VALIDATION: &str = "record_validation_error";
    /// A key was reused for a different request.
    pub const KEY_REUSE: &str = "key_reuse";
    /// Our reservation was taken over before we completed.
    pub const LEASE_LOST: &str = "lease_lost";
    /// A stored result the adapter could not decode.
    pub const DECODE: &str = "decode_error";

    /// Every error type above.
    pub const ALL: &[&str] = &[
        VALIDATION,
        SERIALIZATION,
        CONNECTION,
        TIMEOUT,
        RESPONSE,
        STORAGE,
        STORAGE_GET,
        STORAGE_RESERVE,
        STORAGE_SAVE,
        STORAGE_RENEW,
        STORAGE_RELEASE,
        RECORD_VALIDATION,
        KEY_REUSE,
        LEASE_LOST,
        DECODE,
    ];
}

/// Receives counts and latencies. Synchronous and object-safe: held as
/// `Arc<dyn IdempotencyMetrics>`, called on the hot path, so implementations must be
/// cheap and must not block or panic.
///
/// Who records what (so a collector shared by the repository and the coordinator counts
/// each thing once): the coordinator records hit, miss, collision and the `get`/`save`/
/// `reserve` latencies; the repository records errors by type, bulk hit and miss counts,
/// and the latency of `delete`, `get_many`, `save_many` and `delete_many`.
///
/// # Examples
/// ```
/// use idempotency_core::{IdempotencyMetrics, NoopMetrics};
/// let m: std::sync::Arc<dyn IdempotencyMetrics> = std::sync::Arc::new(NoopMetrics);
/// m.record_hit("order.create");
/// ```
pub trait IdempotencyMetrics: Send + Sync + Debug + 'static {
    /// A stored result was replayed.
    fn record_hit(&self, operation: &str);
    /// No usable result was stored; the action runs.
    fn record_miss(&self, operation: &str);
    /// The key was taken by a concurrent caller.
    fn record_collision(&self, operation: &str);
    /// Something failed; `error_type` is one of [`error_type`].
    fn record_error(&self, operation: &str, error_type: &str);
    /// How long a storage call took.
    fn record_latency(&self, operation: &str, method: &str, seconds: f64);
    /// `count` keys of a bulk read were found.
    fn record_bulk_hit(&self, operation: &str, count: u64);
    /// `count` keys of a bulk read were not found.
    fn record_bulk_miss(&self, operation: &str, count: u64);
}

/// Metrics that go nowhere: the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopMetrics;

impl IdempotencyMetrics for NoopMetrics {
    fn record_hit(&self, _: &str) {}
    fn record_miss(&self, _: &str) {}
    fn record_collision(&self, _: &str) {}
    fn record_error(&self, _: &str, _: &str) {}
    fn record_latency(&self, _: &str, _: &str, _: f64) {}
    fn record_bulk_hit(&self, _: &str, _: u64) {}
    fn record_bulk_miss(&self, _: &str, _: u64) {}
}
