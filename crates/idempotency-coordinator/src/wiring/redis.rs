//! The stack on Redis: a fred client or pool.

use std::sync::Arc;

use idempotency_core::{IdempotencyMetrics, Result};
use idempotency_redis::{Connection, RedisStore};

use super::chosen_metrics;
use crate::coordinator::Coordinator;
use crate::settings::IdempotencySettings;

/// Builds repository, domain service and coordinator from `settings` on an initialized
/// fred client or pool. With `metrics_enabled`, `metrics` is the collector the store and
/// the coordinator share (for Prometheus: `PrometheusMetrics::register(&registry, None)?`
/// on the registry your service exposes); nothing is ever registered behind your back, and
/// no process-wide registry is used.
///
/// # Errors
/// [`IdempotencyError::Validation`](crate::IdempotencyError::Validation) for invalid
/// settings; [`IdempotencyError::Configuration`](crate::IdempotencyError::Configuration)
/// when `metrics_enabled` is set and no collector is given.
///
/// # Examples
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use idempotency_coordinator::{
///     IdempotencySettings, PrometheusMetrics, connect_client, redis_coordinator,
/// };
/// let client = connect_client("redis://127.0.0.1:6379", &Default::default()).await?;
/// let registry = prometheus::Registry::new();
/// let metrics = PrometheusMetrics::register(&registry, None)?.shared();
/// let settings = IdempotencySettings { metrics_enabled: true, ..Default::default() };
/// let coordinator = redis_coordinator(&settings, client, Some(metrics))?;
/// # Ok(()) }
/// ```
pub fn redis_coordinator(
    settings: &IdempotencySettings,
    connection: impl Into<Connection>,
    metrics: Option<Arc<dyn IdempotencyMetrics>>,
) -> Result<Coordinator<RedisStore>> {
    settings.validate()?;
    let metrics = chosen_metrics(settings, metrics)?;
    let store = RedisStore::builder(connection)
        .key_prefix(settings.key_prefix.clone())
        .metrics(Arc::clone(&metrics))
        .build()?;
    Coordinator::builder(store)
        .settings(settings)
        .metrics(metrics)
        .build()
}
