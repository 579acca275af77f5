//! The metrics that go nowhere: the default sink.

use crate::metric_labels::{ErrorType, LatencyMethod};
use crate::traits::metrics::IdempotencyMetrics;

/// Metrics that go nowhere: the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopMetrics;

impl IdempotencyMetrics for NoopMetrics {
    fn record_hit(&self, _: &str) {}
    fn record_miss(&self, _: &str) {}
    fn record_collision(&self, _: &str) {}
    fn record_error(&self, _: &str, _: ErrorType) {}
    fn record_latency(&self, _: &str, _: LatencyMethod, _: f64) {}
    fn record_bulk_hit(&self, _: &str, _: u64) {}
    fn record_bulk_miss(&self, _: &str, _: u64) {}
}
