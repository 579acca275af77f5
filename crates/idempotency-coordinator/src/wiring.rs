//! One call that wires the whole stack from settings and a fred client: the role the
//! Python library's Dishka providers play.

use std::sync::Arc;

use idempotency_core::{IdempotencyMetrics, NoopMetrics, Result};
use idempotency_redis::{Connection, RedisStore};

use crate::coordinator::Coordinator;
use crate::settings::IdempotencySettings;

/// Builds repository, domain service, metrics and coordinator from `settings` on an
/// initialized fred client or pool. With `metrics_enabled`, the Prometheus collector is
/// registered on `registry` (the default registry when `None`; needs the `prometheus`
/// feature) and shared by the store and the coordinator.
///
/// # Errors
/// [`idempotency_core::IdempotencyError::Validation`] for invalid settings, or when the
/// metrics cannot be registered.
///
/// # Examples
/// ```no_run
/// # async fn run() -> Result<(), idempotency_core::IdempotencyError> {
/// use idempotency_coordinator::{IdempotencySettings, redis_coordinator};
/// let client = idempotency_redis::connect_client("redis://127.0.0.1:6379", &Default::default()).await?;
/// let settings = IdempotencySettings { metrics_enabled: true, ..Default::default() };
/// let coordinator = redis_coordinator(&settings, client, None)?;
/// # Ok(()) }
/// ```
pub fn redis_coordinator(
    settings: &IdempotencySettings,
    connection: impl Into<Connection>,
    #[cfg(feature = "prometheus")] registry: Option<&prometheus::Registry>,
    #[cfg(not(feature = "prometheus"))] _registry: Option<()>,
) -> Result<Coordinator<RedisStore>> {
    settings.validate()?;
    let metrics: Arc<dyn IdempotencyMetrics> = if settings.metrics_enabled {
        metrics_for(
            #[cfg(feature = "prometheus")]
            registry,
        )?
    } else {
        Arc::new(NoopMetrics)
    };
    let store = RedisStore::builder(connection)
        .key_prefix(settings.key_prefix.clone())
        .metrics(Arc::clone(&metrics))
        .build();
    Coordinator::builder(store)
        .settings(settings)
        .metrics(metrics)
        .build()
}

#[cfg(feature = "prometheus")]
fn metrics_for(registry: Option<&prometheus::Registry>) -> Result<Arc<dyn IdempotencyMetrics>> {
    let registry = registry.unwrap_or_else(|| prometheus::default_registry());
    idempotency_metrics::PrometheusMetrics::register(registry, None)
        .map(idempotency_metrics::PrometheusMetrics::shared)
        .map_err(|e| {
            idempotency_core::IdempotencyError::invalid_field(
                "metrics_enabled",
                "registration",
                e.to_string(),
            )
        })
}

#[cfg(not(feature = "prometheus"))]
fn metrics_for() -> Result<Arc<dyn IdempotencyMetrics>> {
    Err(idempotency_core::IdempotencyError::invalid_field(
        "metrics_enabled",
        "feature",
        "metrics need the `prometheus` feature",
    ))
}
