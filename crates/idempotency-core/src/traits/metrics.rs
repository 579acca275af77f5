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

/// Metrics that remember every call (latencies separately), for tests and debugging.
///
/// # Examples
/// ```
/// use idempotency_core::{IdempotencyMetrics, RecordingMetrics};
/// let m = RecordingMetrics::default();
/// m.record_error("op", "storage_get_error");
/// assert_eq!(m.calls(), vec![("error".to_owned(), "op".to_owned(), "storage_get_error".to_owned())]);
/// assert_eq!(m.count("error", "storage_get_error"), 1);
/// ```
#[derive(Debug, Default)]
pub struct RecordingMetrics {
    calls: std::sync::Mutex<Vec<(String, String, String)>>,
    latencies: std::sync::Mutex<Vec<(String, String)>>,
}

impl RecordingMetrics {
    fn push(&self, kind: &str, operation: &str, detail: String) {
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((kind.to_owned(), operation.to_owned(), detail));
    }

    /// Every call but latencies, as `(kind, operation, detail)`; `detail` is the error
    /// type or the bulk count.
    pub fn calls(&self) -> Vec<(String, String, String)> {
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// How many calls of `kind` with `detail` were made (`""` for hit, miss, collision).
    pub fn count(&self, kind: &str, detail: &str) -> usize {
        self.calls()
            .iter()
            .filter(|(k, _, d)| k == kind && d == detail)
            .count()
    }

    /// The `method` of every latency recorded.
    pub fn methods(&self) -> Vec<String> {
        self.latencies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// Forgets everything.
    pub fn clear(&self) {
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        self.latencies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }
}

impl IdempotencyMetrics for RecordingMetrics {
    fn record_hit(&self, operation: &str) {
        self.push("hit", operation, String::new());
    }
    fn record_miss(&self, operation: &str) {
        self.push("miss", operation, String::new());
    }
    fn record_collision(&self, operation: &str) {
        self.push("collision", operation, String::new());
    }
    fn record_error(&self, operation: &str, error_type: &str) {
        self.push("error", operation, error_type.to_owned());
    }
    fn record_latency(&self, operation: &str, method: &str, _seconds: f64) {
        self.latencies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((operation.to_owned(), method.to_owned()));
    }
    fn record_bulk_hit(&self, operation: &str, count: u64) {
        self.push("bulk_hit", operation, count.to_string());
    }
    fn record_bulk_miss(&self, operation: &str, count: u64) {
        self.push("bulk_miss", operation, count.to_string());
    }
}
