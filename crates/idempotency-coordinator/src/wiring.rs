//! One call that wires the whole stack from settings and a fred client: the role the
//! Python library's Dishka providers play.

use std::sync::Arc;

use idempotency_core::{IdempotencyError, IdempotencyMetrics, NoopMetrics, Result};
use idempotency_redis::{Connection, RedisStore};

use crate::coordinator::Coordinator;
use crate::settings::IdempotencySettings;

/// Builds repository, domain service and coordinator from `settings` on an initialized
/// fred client or pool. With `metrics_enabled`, `metrics` is the collector the store and
/// the coordinator share (for Prometheus: `PrometheusMetrics::register(&registry, None)?`
/// on the registry your service exposes); nothing is ever registered behind your back, and
/// no process-wide registry is used.
///
/// # Errors
/// [`IdempotencyError::Validation`] for invalid settings;
/// [`IdempotencyError::Configuration`] when `metrics_enabled` is set and no collector is
/// given.
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
    let metrics: Arc<dyn IdempotencyMetrics> = match (settings.metrics_enabled, metrics) {
        (true, Some(metrics)) => metrics,
        (true, None) => {
            return Err(IdempotencyError::configuration(
                "metrics_enabled is set but no metrics collector was given",
                None,
            ));
        }
        (false, _) => Arc::new(NoopMetrics),
    };
    let store = RedisStore::builder(connection)
        .key_prefix(settings.key_prefix.clone())
        .metrics(Arc::clone(&metrics))
        .build()?;
    Coordinator::builder(store)
        .settings(settings)
        .metrics(metrics)
        .build()
}
