//! The collector.

use std::sync::{Arc, Mutex, PoisonError};

use idempotency_core::IdempotencyMetrics;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{CounterVec, HistogramOpts, HistogramVec, Opts, Registry};

use crate::labels::error_status;

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

/// Collectors registered so far, with the registry they went into, so a second
/// registration hands back the first instead of failing.
static REGISTERED: Mutex<Vec<(Registry, Option<String>, PrometheusMetrics)>> =
    Mutex::new(Vec::new());

/// A collector that owns one unique, never gathered descriptor: registering it into a
/// registry tells whether a registry is the same as another one (the `prometheus` crate
/// has no identity comparison for registries).
#[derive(Clone)]
struct Probe(Desc);

impl Collector for Probe {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.0]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        Vec::new()
    }
}

fn same_registry(a: &Registry, b: &Registry) -> bool {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let Ok(desc) = Desc::new(
        format!("idempotency_registry_probe_{n}"),
        "probe".into(),
        Vec::new(),
        std::collections::HashMap::default(),
    ) else {
        return false;
    };
    let probe = Probe(desc);
    if a.register(Box::new(probe.clone())).is_err() {
        return false;
    }
    let same = matches!(
        b.register(Box::new(probe.clone())),
        Err(prometheus::Error::AlreadyReg)
    );
    if !same {
        let _ = b.unregister(Box::new(probe.clone()));
    }
    let _ = a.unregister(Box::new(probe));
    same
}

impl PrometheusMetrics {
    /// Registers the series on `registry`, with an optional name prefix; if a collector
    /// with the same prefix is already registered there, returns that one.
    ///
    /// # Errors
    /// The registry's error when other metrics with these names are registered there.
    pub fn register(registry: &Registry, prefix: Option<&str>) -> prometheus::Result<Self> {
        let prefix = prefix.filter(|p| !p.is_empty()).map(str::to_owned);
        let mut registered = REGISTERED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, _, existing)) = registered
            .iter()
            .find(|(r, p, _)| *p == prefix && same_registry(r, registry))
        {
            return Ok(existing.clone());
        }
        let name = |base: &str| match &prefix {
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
        registry.register(Box::new(operations.clone()))?;
        if let Err(e) = registry.register(Box::new(durations.clone())) {
            let _ = registry.unregister(Box::new(operations));
            return Err(e);
        }
        let metrics = Self {
            operations,
            durations,
        };
        registered.push((registry.clone(), prefix, metrics.clone()));
        Ok(metrics)
    }

    /// Registers on the process-wide default registry.
    ///
    /// # Errors
    /// As [`PrometheusMetrics::register`].
    pub fn register_default(prefix: Option<&str>) -> prometheus::Result<Self> {
        Self::register(prometheus::default_registry(), prefix)
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

    fn record_error(&self, operation: &str, error_type: &str) {
        self.count(operation, &error_status(error_type), 1.0);
    }

    fn record_latency(&self, operation: &str, method: &str, seconds: f64) {
        // A negative or NaN duration (a clock oddity) is not a latency; it is dropped.
        if seconds.is_finite() && seconds >= 0.0 {
            self.durations
                .with_label_values(&[operation, method])
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
