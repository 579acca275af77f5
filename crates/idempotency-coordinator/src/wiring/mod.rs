//! One call that wires the whole stack from settings and a connection: the role the
//! Python library's Dishka providers play. One file per backend, each behind its feature.

use std::sync::Arc;

use idempotency_core::{IdempotencyError, IdempotencyMetrics, NoopMetrics, Result};

use crate::settings::IdempotencySettings;

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;

#[cfg(feature = "postgres")]
pub use postgres::postgres_coordinator;
#[cfg(feature = "redis")]
pub use redis::redis_coordinator;

/// The collector the settings ask for: `metrics` when `metrics_enabled`, else none.
fn chosen_metrics(
    settings: &IdempotencySettings,
    metrics: Option<Arc<dyn IdempotencyMetrics>>,
) -> Result<Arc<dyn IdempotencyMetrics>> {
    match (settings.metrics_enabled, metrics) {
        (true, Some(metrics)) => Ok(metrics),
        (true, None) => Err(IdempotencyError::configuration(
            "metrics_enabled is set but no metrics collector was given",
            None,
        )),
        (false, _) => Ok(Arc::new(NoopMetrics)),
    }
}
