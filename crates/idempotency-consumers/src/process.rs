//! Running one delivery under its key: the [`Process`] trait and its coordinator form,
//! [`Idempotent`].

use std::fmt;
use std::future::Future;
use std::time::Duration;

use idempotency_coordinator::{
    Coordinator, ErrorClass, IdempotencyError, InFlight, OnStorageError, Outcome, ReservationStore,
};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::constants::DEFAULT_RECORD_TTL;
use crate::delivery::Delivery;
use crate::outcome::DeliveryOutcome;

/// Runs a delivery's handler at most once per key and says how it went. Implemented by
/// [`Idempotent`] (any coordinator store) and, with the `postgres` feature,
/// `Transactional` (the handler's writes and the record in one transaction).
///
/// Contract: [`DeliveryOutcome::Executed`] and [`DeliveryOutcome::Replayed`] only once
/// the key's record is durable (or, for a replay, was found so), since the consumer
/// acknowledges on them; every other outcome leaves the key free or held by another
/// consumer, and the delivery comes back.
pub trait Process: Send + Sync + 'static {
    /// The operation the records are kept under (a label of spans and metrics).
    fn operation(&self) -> &str;

    /// How long a finished record is kept: the horizon redeliveries must fall within.
    fn record_ttl(&self) -> Duration;

    /// Runs `delivery` (whose key is `None` only when it is to run unprotected).
    fn process(&self, delivery: Delivery) -> impl Future<Output = DeliveryOutcome> + Send;
}

/// What a library error means for the delivery.
pub(crate) fn outcome_of_error(error: &IdempotencyError) -> DeliveryOutcome {
    match error.class() {
        ErrorClass::Conflict => DeliveryOutcome::RequeuedInFlight,
        // A key that can never be valid, or reused for another payload: running it later
        // would not help either.
        ErrorClass::InvalidInput | ErrorClass::KeyReuse => DeliveryOutcome::Rejected,
        _ => DeliveryOutcome::StorageError,
    }
}

/// A handler run through a [`Coordinator`]: each delivery is a call under its key with
/// [`InFlight::Raise`] (a duplicate in flight elsewhere comes back later rather than
/// waiting on a consumer slot) and [`OnStorageError::Raise`] (a store that cannot
/// confirm the claim sends the delivery back; it never runs unprotected).
///
/// The handler gets the [`Delivery`] and returns `Result<(), E>`; an `Err` releases the
/// key (the coordinator's default), so the redelivery runs again.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use idempotency_consumers::{Delivery, DeliveryOutcome, Headers, Idempotent, Process};
/// use idempotency_coordinator::Coordinator;
///
/// let process = Idempotent::new(Coordinator::in_memory(), "orders.ship", |d: Delivery| async move {
///     println!("shipping {:?}", d.key());
///     Ok::<_, std::io::Error>(())
/// });
/// let delivery = Delivery::new("orders", "{}".into(), Headers::default()).with_key("o-1");
/// assert_eq!(process.process(delivery.clone()).await, DeliveryOutcome::Executed);
/// assert_eq!(process.process(delivery).await, DeliveryOutcome::Replayed);
/// # }
/// ```
pub struct Idempotent<S, H, W = ReleaseErrors> {
    coordinator: Coordinator<S>,
    operation: String,
    ttl: Duration,
    handler: H,
    errors: W,
}

/// The default error policy of [`Idempotent`]: every handler error releases the key and
/// the delivery comes back.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReleaseErrors;

/// The error policy set by [`Idempotent::with_stored_errors`]: the errors `when` selects
/// are stored under the key and the delivery is acknowledged.
#[derive(Debug, Clone, Copy)]
pub struct StoreErrorsWhen<F>(F);

impl<S, H, W> fmt::Debug for Idempotent<S, H, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idempotent")
            .field("operation", &self.operation)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl<S, H> Idempotent<S, H> {
    /// Runs `handler` through `coordinator` under `operation`, keeping records for the
    /// kit's default TTL (30 minutes).
    pub fn new(coordinator: Coordinator<S>, operation: impl Into<String>, handler: H) -> Self {
        Self {
            coordinator,
            operation: operation.into(),
            ttl: DEFAULT_RECORD_TTL,
            handler,
            errors: ReleaseErrors,
        }
    }
}

impl<S, H, W> Idempotent<S, H, W> {
    /// How long finished records are kept (within the coordinator's TTL bounds; an
    /// operation TTL set on the coordinator wins, so set the same value there).
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Stores the handler errors `when` selects (errors that are answers, such as a
    /// rejected order, not accidents such as a timeout): the record keeps the error (as
    /// JSON, the error type being serde-serializable), the delivery is acknowledged
    /// ([`DeliveryOutcome::StoredError`]), and a redelivery or duplicate replays it
    /// without running the handler. Other errors release the key as before.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use idempotency_consumers::{Delivery, DeliveryOutcome, Headers, Idempotent, Process};
    /// use idempotency_coordinator::Coordinator;
    ///
    /// #[derive(Debug, serde::Serialize, serde::Deserialize)]
    /// enum OrderError { OutOfStock, Timeout }
    /// impl std::fmt::Display for OrderError {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { write!(f, "{self:?}") }
    /// }
    ///
    /// let process = Idempotent::new(Coordinator::in_memory(), "orders.reserve", |_: Delivery| async {
    ///     Err::<(), _>(OrderError::OutOfStock)
    /// })
    /// .with_stored_errors(|e: &OrderError| matches!(e, OrderError::OutOfStock));
    /// let delivery = Delivery::new("orders", "{}".into(), Headers::default()).with_key("o-1");
    /// assert_eq!(process.process(delivery.clone()).await, DeliveryOutcome::StoredError);
    /// assert_eq!(process.process(delivery).await, DeliveryOutcome::StoredError);
    /// # }
    /// ```
    pub fn with_stored_errors<E, F>(self, when: F) -> Idempotent<S, H, StoreErrorsWhen<F>>
    where
        F: Fn(&E) -> bool,
    {
        Idempotent {
            coordinator: self.coordinator,
            operation: self.operation,
            ttl: self.ttl,
            handler: self.handler,
            errors: StoreErrorsWhen(when),
        }
    }
}

/// The error of a coordinator call made for a delivery.
enum Failure<E> {
    Handler(E),
    Kit(IdempotencyError),
}

impl<E> From<IdempotencyError> for Failure<E> {
    fn from(e: IdempotencyError) -> Self {
        Self::Kit(e)
    }
}

// A stored error is the handler's: the library's own errors are never selected for
// storing (the predicate sees handler errors only), so they never reach these.
impl<E: Serialize> Serialize for Failure<E> {
    fn serialize<Z: Serializer>(&self, serializer: Z) -> Result<Z::Ok, Z::Error> {
        match self {
            Self::Handler(e) => e.serialize(serializer),
            Self::Kit(_) => Err(serde::ser::Error::custom(
                "the library's errors are never stored",
            )),
        }
    }
}

impl<'de, E: Deserialize<'de>> Deserialize<'de> for Failure<E> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        E::deserialize(deserializer).map(Self::Handler)
    }
}

impl<S, H, W> Idempotent<S, H, W> {
    /// What a finished call means for the delivery.
    fn outcome_of<E: fmt::Display>(
        &self,
        result: Result<((), Outcome), Failure<E>>,
        stored: impl Fn(&E) -> bool,
    ) -> DeliveryOutcome {
        match result {
            Ok(((), Outcome::Executed | Outcome::TookOver)) => DeliveryOutcome::Executed,
            Ok(((), Outcome::Replayed | Outcome::WaitedThenReplayed)) => DeliveryOutcome::Replayed,
            // `Raise` never runs unprotected; `Bypassed` is the keyless run.
            Ok(((), _)) => DeliveryOutcome::Unprotected,
            Err(Failure::Handler(e)) if stored(&e) => {
                tracing::info!(operation = %self.operation, error = %e, "handler error stored");
                DeliveryOutcome::StoredError
            }
            Err(Failure::Handler(e)) => {
                tracing::warn!(operation = %self.operation, error = %e, "handler failed; the key is released");
                DeliveryOutcome::Failed
            }
            Err(Failure::Kit(e)) => {
                tracing::warn!(operation = %self.operation, error = %e, "delivery not run");
                outcome_of_error(&e)
            }
        }
    }
}

impl<S, H, Fut, E> Process for Idempotent<S, H, ReleaseErrors>
where
    S: ReservationStore,
    H: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: fmt::Display + Send,
{
    fn operation(&self) -> &str {
        &self.operation
    }

    fn record_ttl(&self) -> Duration {
        self.ttl
    }

    async fn process(&self, delivery: Delivery) -> DeliveryOutcome {
        let key = delivery.key().map(str::to_owned);
        let handler = &self.handler;
        let result = self
            .coordinator
            .call(&self.operation, key.as_deref())
            .ttl(self.ttl)
            .in_flight(InFlight::Raise)
            .on_storage_error(OnStorageError::Raise)
            .run_fenced_with_outcome(|fence| async move {
                let delivery = match fence {
                    Some(fence) => delivery.with_fence(fence),
                    None => delivery,
                };
                handler(delivery).await.map_err(Failure::Handler)
            })
            .await;
        self.outcome_of(result, |_| false)
    }
}

impl<S, H, Fut, E, F> Process for Idempotent<S, H, StoreErrorsWhen<F>>
where
    S: ReservationStore,
    H: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: fmt::Display + Serialize + DeserializeOwned + Send,
    F: Fn(&E) -> bool + Send + Sync + 'static,
{
    fn operation(&self) -> &str {
        &self.operation
    }

    fn record_ttl(&self) -> Duration {
        self.ttl
    }

    async fn process(&self, delivery: Delivery) -> DeliveryOutcome {
        let key = delivery.key().map(str::to_owned);
        let handler = &self.handler;
        let when = &self.errors.0;
        let result = self
            .coordinator
            .call(&self.operation, key.as_deref())
            .ttl(self.ttl)
            .in_flight(InFlight::Raise)
            .on_storage_error(OnStorageError::Raise)
            .store_errors(|failure: &Failure<E>| matches!(failure, Failure::Handler(e) if when(e)))
            .run_fenced_with_outcome(|fence| async move {
                let delivery = match fence {
                    Some(fence) => delivery.with_fence(fence),
                    None => delivery,
                };
                handler(delivery).await.map_err(Failure::Handler)
            })
            .await;
        self.outcome_of(result, when)
    }
}
