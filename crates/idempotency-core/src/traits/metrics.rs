//! The metrics trait: where the kit reports hits, misses, collisions, errors and
//! latencies.

use std::fmt::Debug;

use crate::metric_labels::{ErrorType, LatencyMethod};

/// Receives counts and latencies. Synchronous and object-safe: held as
/// `Arc<dyn IdempotencyMetrics>`, called on the hot path, so implementations must be
/// cheap and must not block or panic.
///
/// Who records what (so a collector shared by the repository and the coordinator counts
/// each thing once): the coordinator records hit, miss, collision and the `get`/`save`/
/// `reserve` latencies and the errors of its own steps (key reuse, decode, reserve/save/
/// renew/release failures, lease losses); the repository records storage and record
/// errors by type, bulk hit and miss counts, and the latency of `delete`, `get_many`,
/// `save_many` and `delete_many`.
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
    /// Something failed.
    fn record_error(&self, operation: &str, error: ErrorType);
    /// How long a storage call took.
    fn record_latency(&self, operation: &str, method: LatencyMethod, seconds: f64);
    /// `count` keys of a bulk read were found.
    fn record_bulk_hit(&self, operation: &str, count: u64);
    /// `count` keys of a bulk read were not found.
    fn record_bulk_miss(&self, operation: &str, count: u64);
}
