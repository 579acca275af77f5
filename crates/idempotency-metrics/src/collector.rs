//! The collector.

use std::sync::Arc;

use idempotency_core::{ErrorType, IdempotencyMetrics, LatencyMethod};
use prometheus::{CounterVec, HistogramOpts, HistogramVec, Opts, Registry};

/// The histogram buckets, in seconds (the Python library's).
pub const DURATION_BUCKETS: [f64; 11] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Prometheus metrics for idempotency operations. Cheap to clone; clones record into the
/// same series.
#[derive(Debug, Clone)]
pub struct PrometheusMetrics {
    operations: CounterVec,
    durations: HistogramVec,
}

impl PrometheusMetrics {
    /// The two series, named with an optional prefix (`{prefix}_idempotency_…`), not yet
    /// registered anywhere. The collector holds no global state: it goes only into the
    /// registries it is given (see [`PrometheusMetrics::register_into`]).
    ///
    /// # Errors
    /// The `prometheus` crate's error for a prefix that makes an invalid metric name.
    pub fn new(prefix: Option<&str>) -> prometheus::Result<Self> {
        let prefix = prefix.filter(|p| !p.is_empty());
        let name = |base: &str| match prefix {
            Some(p) => format!("{p}_{base}"),
            None => base.to_owned(),
        };
        let operations = CounterVec::new(
            Opts::new(
                name("idempotency_operations_total"),
                "Total number of idempotent operations",
            ),
            &["operation", "status"],
        )?;
        let durations = HistogramVec::new(
            HistogramOpts::new(
                name("idempotency_operation_duration_seconds"),
                "Latency of idempotency operations",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["operation", "method"],
        )?;
        Ok(Self {
            operations,
            durations,
        })
    }

    /// Registers these series into `registry` (all or nothing). To record into the same
    /// series from several places, clone the collector rather than registering again: a
    /// second registration of the same names fails with `AlreadyReg`.
    ///
    /// # Errors
    /// The registry's error, e.g. when series with these names are registered there.
    pub fn register_into(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.operations.clone()))?;
        if let Err(e) = registry.register(Box::new(self.durations.clone())) {
            let _ = registry.unregister(Box::new(self.operations.clone()));
            return Err(e);
        }
        Ok(())
    }

    /// [`PrometheusMetrics::new`], then [`PrometheusMetrics::register_into`] `registry`.
    ///
    /// # Errors
    /// As those two.
    pub fn register(registry: &Registry, prefix: Option<&str>) -> prometheus::Result<Self> {
        let metrics = Self::new(prefix)?;
        metrics.register_into(registry)?;
        Ok(metrics)
    }

    /// A collector registered into a registry of its own, for a service that exposes
    /// only these series.
    ///
    /// # Errors
    /// As [`PrometheusMetrics::new`].
    pub fn with_own_registry(prefix: Option<&str>) -> prometheus::Result<(Self, Registry)> {
        let registry = Registry::new();
        let metrics = Self::register(&registry, prefix)?;
        Ok((metrics, registry))
    }

    /// As an `Arc<dyn IdempotencyMetrics>`, the form stores and coordinators take.
    pub fn shared(self) -> Arc<dyn IdempotencyMetrics> {
        Arc::new(self)
    }

    fn count(&self, operation: &str, status: &str, by: f64) {
        self.operations
            .with_label_values(&[operation, status])
            .inc_by(by);
    }
}

impl IdempotencyMetrics for PrometheusMetrics {
    fn record_hit(&self, operation: &str) {
        self.count(operation, "hit", 1.0);
    }

    fn record_miss(&self, operation: &str) {
        self.count(operation, "miss", 1.0);
    }

    fn record_collision(&self, operation: &str) {
        self.count(operation, "collision", 1.0);
    }

    fn record_error(&self, operation: &str, error: ErrorType) {
        self.count(operation, error.status(), 1.0);
    }

    fn record_latency(&self, operation: &str, method: LatencyMethod, seconds: f64) {
        // A negative or NaN duration (a clock oddity) is not a latency; it is dropped.
        if seconds.is_finite() && seconds >= 0.0 {
            self.durations
                .with_label_values(&[operation, method.as_str()])
                .observe(seconds);
        }
    }

    fn record_bulk_hit(&self, operation: &str, count: u64) {
        self.count(operation, "hit", count as f64);
    }

    fn record_bulk_miss(&self, operation: &str, count: u64) {
        self.count(operation, "miss", count as f64);
    }
}
