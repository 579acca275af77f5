//! The stack on Postgres: a sqlx pool.

use std::sync::Arc;

use idempotency_core::{IdempotencyMetrics, Result};
use idempotency_postgres::{PostgresStore, StoreConfig};
use sqlx::PgPool;

use super::chosen_metrics;
use crate::coordinator::Coordinator;
use crate::settings::IdempotencySettings;

/// Builds the store and the coordinator from `settings` on a sqlx pool: the store under
/// the settings' key prefix (its rows carry it in `key_prefix`, so services with other
/// prefixes share one table), the coordinator with the settings' TTLs, lease, in-flight
/// and storage-error modes. With `metrics_enabled`, `metrics` is the coordinator's
/// collector (the Postgres store reports none of its own); nothing is registered behind
/// your back.
///
/// The schema is not created here: run [`migrate`](crate::migrate) once at start-up
/// (it is idempotent and safe to run from many instances at once). The store keeps one
/// connection of the pool for `LISTEN` (wake-ups of waiting duplicates): size the pool
/// one larger.
///
/// # Errors
/// [`IdempotencyError::Validation`](crate::IdempotencyError::Validation) for invalid
/// settings; [`IdempotencyError::Configuration`](crate::IdempotencyError::Configuration)
/// when `metrics_enabled` is set and no collector is given.
///
/// # Examples
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use idempotency_coordinator::{IdempotencyError, IdempotencySettings, migrate, postgres_coordinator};
///
/// let pool = sqlx::PgPool::connect("postgres://app@127.0.0.1/app").await?;
/// migrate(&pool).await?;
/// let settings = IdempotencySettings { key_prefix: "billing:".to_owned(), ..Default::default() };
/// let coordinator = postgres_coordinator(&settings, pool, None)?;
/// let charged: u64 = coordinator
///     .call("payment.capture", Some("k-7"))
///     .run(|| async { Ok::<_, IdempotencyError>(42) })
///     .await?;
/// # Ok(()) }
/// ```
pub fn postgres_coordinator(
    settings: &IdempotencySettings,
    pool: PgPool,
    metrics: Option<Arc<dyn IdempotencyMetrics>>,
) -> Result<Coordinator<PostgresStore>> {
    settings.validate()?;
    let metrics = chosen_metrics(settings, metrics)?;
    let config = StoreConfig::new().with_key_prefix(&settings.key_prefix)?;
    let store = PostgresStore::with_config(pool, config);
    Coordinator::builder(store)
        .settings(settings)
        .metrics(metrics)
        .build()
}
