//! Metrics for tests: a collector that remembers every call, and the error types'
//! label texts to look them up by. Test scaffolding, kept out of the library's API.

use idempotency_core::{ErrorType, IdempotencyMetrics, LatencyMethod};

/// The error types' label texts, for reading recorded metrics (tests, dashboards).
pub mod error_type {
    use idempotency_core::ErrorType;
    /// [`ErrorType::Validation`].
    pub const VALIDATION: &str = ErrorType::Validation.as_str();
    /// [`ErrorType::Deserialization`].
    pub const DESERIALIZATION: &str = ErrorType::Deserialization.as_str();
    /// [`ErrorType::Serialization`].
    pub const SERIALIZATION: &str = ErrorType::Serialization.as_str();
    /// [`ErrorType::Connection`].
    pub const CONNECTION: &str = ErrorType::Connection.as_str();
    /// [`ErrorType::Timeout`].
    pub const TIMEOUT: &str = ErrorType::Timeout.as_str();
    /// [`ErrorType::Response`].
    pub const RESPONSE: &str = ErrorType::Response.as_str();
    /// [`ErrorType::Storage`].
    pub const STORAGE: &str = ErrorType::Storage.as_str();
    /// [`ErrorType::StorageGet`].
    pub const STORAGE_GET: &str = ErrorType::StorageGet.as_str();
    /// [`ErrorType::StorageReserve`].
    pub const STORAGE_RESERVE: &str = ErrorType::StorageReserve.as_str();
    /// [`ErrorType::StorageSave`].
    pub const STORAGE_SAVE: &str = ErrorType::StorageSave.as_str();
    /// [`ErrorType::StorageRenew`].
    pub const STORAGE_RENEW: &str = ErrorType::StorageRenew.as_str();
    /// [`ErrorType::StorageRelease`].
    pub const STORAGE_RELEASE: &str = ErrorType::StorageRelease.as_str();
    /// [`ErrorType::RecordValidation`].
    pub const RECORD_VALIDATION: &str = ErrorType::RecordValidation.as_str();
    /// [`ErrorType::KeyReuse`].
    pub const KEY_REUSE: &str = ErrorType::KeyReuse.as_str();
    /// [`ErrorType::LeaseLost`].
    pub const LEASE_LOST: &str = ErrorType::LeaseLost.as_str();
    /// [`ErrorType::Decode`].
    pub const DECODE: &str = ErrorType::Decode.as_str();
}

/// Metrics that remember every call (latencies separately), for tests and debugging.
///
/// # Examples
/// ```
/// use idempotency_core::{ErrorType, IdempotencyMetrics};
/// use idempotency_testkit::RecordingMetrics;
/// let m = RecordingMetrics::default();
/// m.record_error("op", ErrorType::StorageGet);
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
    fn record_error(&self, operation: &str, error: ErrorType) {
        self.push("error", operation, error.as_str().to_owned());
    }
    fn record_latency(&self, operation: &str, method: LatencyMethod, _seconds: f64) {
        self.latencies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((operation.to_owned(), method.as_str().to_owned()));
    }
    fn record_bulk_hit(&self, operation: &str, count: u64) {
        self.push("bulk_hit", operation, count.to_string());
    }
    fn record_bulk_miss(&self, operation: &str, count: u64) {
        self.push("bulk_miss", operation, count.to_string());
    }
}
