//! A Prometheus collector for idempotency-kit's metrics trait, with exactly the series of
//! the Python idempotency-kit, so Python and Rust services share one dashboard.
//!
//! - counter `idempotency_operations_total{operation, status}`: status `hit`, `miss`,
//!   `collision` or `error_<error_type>`; bulk hits and misses add to `hit` and `miss`;
//! - histogram `idempotency_operation_duration_seconds{operation, method}` with buckets
//!   0.001 … 5 s.
//!
//! Beside them, [`LocalCacheCollector`] exports a local cache's counters (local hits,
//! misses, fills, invalidations, flushes, entries, bytes) as
//! `idempotency_local_cache_…`, read at scrape time.
//!
//! With a prefix the names become `{prefix}_idempotency_…`. See `docs/metrics.md` for
//! every label value and example queries. The collector keeps no process-wide state: it
//! registers into the `Registry` it is given (or one of its own), as
//! `opentelemetry-prometheus` does.
//!
//! # Example
//! ```
//! # fn main() -> Result<(), prometheus::Error> {
//! use idempotency_core::IdempotencyMetrics;
//! use idempotency_metrics::PrometheusMetrics;
//!
//! let registry = prometheus::Registry::new();
//! let metrics = PrometheusMetrics::register(&registry, None)?;
//! metrics.record_hit("order.create");
//! let shared = metrics.clone(); // the same series: clone, never register twice
//! shared.record_hit("order.create");
//! assert!(PrometheusMetrics::register(&registry, None).is_err());
//! let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather())?;
//! assert!(text.contains(r#"idempotency_operations_total{operation="order.create",status="hit"} 2"#));
//! # Ok(()) }
//! ```
//!
//! # Features
//! None.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod collector;
mod local_cache;

pub use collector::{DURATION_BUCKETS, PrometheusMetrics};
pub use local_cache::LocalCacheCollector;
