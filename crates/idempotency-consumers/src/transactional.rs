//! The transactional form of [`Process`] on PostgreSQL: the handler's writes and the
//! idempotency record commit in one transaction, so a message's effect happens exactly
//! once however often it is delivered and wherever a consumer dies.
//!
//! Invariant (enforced by `PostgresStore::run_in_transaction`): the record becomes
//! visible only in the commit that makes the handler's writes visible. The consumer
//! acknowledges after that commit returned, so a crash before the commit leaves neither
//! (the redelivery runs the handler), a crash between commit and ack leaves both (the
//! redelivery replays and acknowledges).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use idempotency_coordinator::{IdempotencyMetrics, RecordId};
use idempotency_postgres::{InFlight, PostgresStore, RunError, TransactionOptions};
use sqlx::PgConnection;

use crate::constants::DEFAULT_RECORD_TTL;
use crate::delivery::Delivery;
use crate::outcome::DeliveryOutcome;
use crate::process::{Process, outcome_of_error};

/// The future a transactional handler returns, borrowing the open connection.
pub type TxHandlerFuture<'c, E> = Pin<Box<dyn Future<Output = Result<(), E>> + Send + 'c>>;

/// A handler whose writes commit with the record: it gets the open transaction's
/// connection and the [`Delivery`] (with the claim's fencing token in
/// [`Delivery::fence`]).
///
/// An in-flight duplicate (another consumer's transaction holds the key) is not waited
/// for: it is sent back ([`DeliveryOutcome::RequeuedInFlight`]). A handler error rolls
/// everything back and sends the delivery back. A consumer killed mid-transaction
/// leaves nothing: the server rolls back when its connection drops.
///
/// The existing series of [`IdempotencyMetrics`] are fed when a collector is given: a
/// replay is a hit, a run a miss, an in-flight duplicate a collision.
///
/// # Examples
/// ```no_run
/// # async fn run(store: idempotency_postgres::PostgresStore) {
/// use idempotency_consumers::{Delivery, Transactional};
/// use idempotency_coordinator::FencingToken;
///
/// let process = Transactional::new(store, "orders.record", |conn: &mut sqlx::PgConnection, d: Delivery| {
///     Box::pin(async move {
///         sqlx::query("INSERT INTO shipments (order_key, fence) VALUES ($1, $2)")
///             .bind(d.key().unwrap_or_default())
///             .bind(d.fence().map(FencingToken::as_i64))
///             .execute(&mut *conn)
///             .await?;
///         Ok::<_, sqlx::Error>(())
///     })
/// });
/// # let _ = process;
/// # }
/// ```
pub struct Transactional<H> {
    store: PostgresStore,
    operation: String,
    ttl: Duration,
    handler: H,
    metrics: Option<Arc<dyn IdempotencyMetrics>>,
}

impl<H> fmt::Debug for Transactional<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transactional")
            .field("operation", &self.operation)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl<H> Transactional<H> {
    /// Runs `handler` in transactions on `store` under `operation`, keeping records for
    /// the kit's default TTL (30 minutes). (The bound here lets a closure be written in
    /// place: it makes the compiler give it the signature for every borrow.)
    pub fn new<E>(store: PostgresStore, operation: impl Into<String>, handler: H) -> Self
    where
        H: for<'c> Fn(&'c mut PgConnection, Delivery) -> TxHandlerFuture<'c, E>
            + Send
            + Sync
            + 'static,
        E: fmt::Display + Send,
    {
        Self {
            store,
            operation: operation.into(),
            ttl: DEFAULT_RECORD_TTL,
            handler,
            metrics: None,
        }
    }

    /// How long committed records are kept.
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Counts hits, misses and collisions on the kit's series.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<dyn IdempotencyMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn count(&self, outcome: DeliveryOutcome) {
        let Some(metrics) = &self.metrics else { return };
        match outcome {
            DeliveryOutcome::Executed => metrics.record_miss(&self.operation),
            DeliveryOutcome::Replayed => metrics.record_hit(&self.operation),
            DeliveryOutcome::RequeuedInFlight => metrics.record_collision(&self.operation),
            _ => {}
        }
    }
}

impl<H, E> Transactional<H>
where
    H: for<'c> Fn(&'c mut PgConnection, Delivery) -> TxHandlerFuture<'c, E> + Send + Sync + 'static,
    E: fmt::Display + Send,
{
    async fn keyed(&self, key: &str, delivery: Delivery) -> DeliveryOutcome {
        let id = match RecordId::new(&self.operation, key) {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(operation = %self.operation, error = %e, "invalid key: rejected");
                return DeliveryOutcome::Rejected;
            }
        };
        let options = TransactionOptions::new()
            .with_ttl(self.ttl)
            .with_in_flight(InFlight::Fail);
        let handler = &self.handler;
        let result = self
            .store
            .run_in_transaction(&id, None, options, move |conn, ctx| {
                handler(conn, delivery.with_fence(ctx.fence()))
            })
            .await;
        match result {
            Ok(outcome) if outcome.is_replayed() => DeliveryOutcome::Replayed,
            Ok(_) => DeliveryOutcome::Executed,
            // Written by a non-transactional caller under an error policy: durable, final.
            Err(RunError::StoredError(_)) => DeliveryOutcome::StoredError,
            Err(RunError::Action(e)) => {
                tracing::warn!(operation = %self.operation, error = %e, "handler failed; rolled back");
                DeliveryOutcome::Failed
            }
            Err(RunError::Idempotency(e)) => {
                tracing::warn!(operation = %self.operation, error = %e, "delivery not run");
                outcome_of_error(&e)
            }
            Err(_) => DeliveryOutcome::StorageError,
        }
    }

    async fn unprotected(&self, delivery: Delivery) -> DeliveryOutcome {
        let mut tx = match self.store.pool().begin().await {
            Ok(tx) => tx,
            Err(e) => {
                tracing::warn!(operation = %self.operation, error = %e, "could not begin");
                return DeliveryOutcome::StorageError;
            }
        };
        if let Err(e) = (self.handler)(&mut tx, delivery).await {
            tracing::warn!(operation = %self.operation, error = %e, "handler failed; rolled back");
            return DeliveryOutcome::Failed;
        }
        match tx.commit().await {
            Ok(()) => DeliveryOutcome::Unprotected,
            Err(e) => {
                tracing::warn!(operation = %self.operation, error = %e, "commit failed");
                DeliveryOutcome::StorageError
            }
        }
    }
}

impl<H, E> Process for Transactional<H>
where
    H: for<'c> Fn(&'c mut PgConnection, Delivery) -> TxHandlerFuture<'c, E> + Send + Sync + 'static,
    E: fmt::Display + Send,
{
    fn operation(&self) -> &str {
        &self.operation
    }

    fn record_ttl(&self) -> Duration {
        self.ttl
    }

    async fn process(&self, delivery: Delivery) -> DeliveryOutcome {
        let outcome = match delivery.key().map(str::to_owned) {
            Some(key) => self.keyed(&key, delivery).await,
            None => self.unprotected(delivery).await,
        };
        self.count(outcome);
        outcome
    }
}
