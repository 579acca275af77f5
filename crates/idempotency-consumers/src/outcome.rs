//! What became of a delivery, and what the consumer tells the broker.

use std::fmt;
use std::time::Duration;

/// How a delivery ended; one per delivery, in the span's `outcome` field and in
/// [`ConsumerMetrics`](crate::ConsumerMetrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeliveryOutcome {
    /// The handler ran and its record is durable: acknowledged.
    Executed,
    /// A finished record was there: acknowledged without running the handler.
    Replayed,
    /// The key is in flight elsewhere: not acknowledged, sent back with a delay.
    RequeuedInFlight,
    /// The handler failed: the key was released and the delivery sent back.
    Failed,
    /// The store failed (or the record could not be read or written): sent back with a
    /// delay, never acknowledged.
    StorageError,
    /// The handler failed with an error its policy stores
    /// ([`Idempotent::with_stored_errors`](crate::Idempotent::with_stored_errors)), or a
    /// stored error was replayed: acknowledged, the error is the message's answer.
    StoredError,
    /// No key (under [`MissingKey::Reject`](crate::MissingKey::Reject)), an invalid key,
    /// or a key reused for another payload: rejected (dead-letter), the handler never ran.
    Rejected,
    /// No key, run without idempotency ([`MissingKey::RunUnprotected`](crate::MissingKey::RunUnprotected)).
    Unprotected,
    /// Taken by the consumer but not started before a shutdown: sent back at once.
    Returned,
}

impl DeliveryOutcome {
    /// Every outcome, for pre-registering label values.
    pub const ALL: [Self; 9] = [
        Self::Executed,
        Self::Replayed,
        Self::RequeuedInFlight,
        Self::Failed,
        Self::StorageError,
        Self::StoredError,
        Self::Rejected,
        Self::Unprotected,
        Self::Returned,
    ];

    /// The label: snake case.
    ///
    /// # Examples
    /// ```
    /// use idempotency_consumers::DeliveryOutcome;
    /// assert_eq!(DeliveryOutcome::RequeuedInFlight.as_str(), "requeued_in_flight");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Executed => "executed",
            Self::Replayed => "replayed",
            Self::RequeuedInFlight => "requeued_in_flight",
            Self::Failed => "failed",
            Self::StorageError => "storage_error",
            Self::StoredError => "stored_error",
            Self::Rejected => "rejected",
            Self::Unprotected => "unprotected",
            Self::Returned => "returned",
        }
    }

    /// What the consumer answers the broker for this outcome, given its delays.
    pub fn settlement(self, delays: &Delays) -> Settlement {
        match self {
            Self::Executed | Self::Replayed | Self::StoredError | Self::Unprotected => {
                Settlement::Ack
            }
            Self::RequeuedInFlight => Settlement::Retry(delays.in_flight),
            Self::Failed => Settlement::Retry(delays.failure),
            Self::StorageError => Settlement::Retry(delays.storage),
            Self::Returned => Settlement::Retry(Duration::ZERO),
            Self::Rejected => Settlement::Reject,
        }
    }
}

impl fmt::Display for DeliveryOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Settlement {
    /// Acknowledge: the broker forgets the message.
    Ack,
    /// Send it back, to be delivered again after this delay (JetStream `NAK` with a
    /// delay; AMQP `basic.nack` with requeue after the consumer waited the delay).
    Retry(Duration),
    /// Reject: JetStream `TERM`, AMQP `basic.nack` without requeue (dead-letter).
    Reject,
}

/// How long each kind of sent-back delivery waits before it comes back.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use idempotency_consumers::{Delays, DeliveryOutcome, Settlement};
/// let delays = Delays::default().with_in_flight(Duration::from_millis(200));
/// assert_eq!(
///     DeliveryOutcome::RequeuedInFlight.settlement(&delays),
///     Settlement::Retry(Duration::from_millis(200)),
/// );
/// assert_eq!(DeliveryOutcome::Replayed.settlement(&delays), Settlement::Ack);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delays {
    in_flight: Duration,
    failure: Duration,
    storage: Duration,
}

impl Default for Delays {
    fn default() -> Self {
        Self {
            in_flight: crate::constants::DEFAULT_IN_FLIGHT_DELAY,
            failure: crate::constants::DEFAULT_FAILURE_DELAY,
            storage: crate::constants::DEFAULT_STORAGE_DELAY,
        }
    }
}

impl Delays {
    /// The delay of a delivery whose key is in flight elsewhere (default 1 s).
    #[must_use]
    pub fn with_in_flight(mut self, delay: Duration) -> Self {
        self.in_flight = delay;
        self
    }

    /// The delay of a delivery whose handler failed (default 1 s).
    #[must_use]
    pub fn with_failure(mut self, delay: Duration) -> Self {
        self.failure = delay;
        self
    }

    /// The delay of a delivery that met a storage error (default 5 s).
    #[must_use]
    pub fn with_storage(mut self, delay: Duration) -> Self {
        self.storage = delay;
        self
    }

    /// The in-flight delay.
    pub fn in_flight(&self) -> Duration {
        self.in_flight
    }

    /// The failure delay.
    pub fn failure(&self) -> Duration {
        self.failure
    }

    /// The storage-error delay.
    pub fn storage(&self) -> Duration {
        self.storage
    }

    /// The longest of the three.
    pub fn longest(&self) -> Duration {
        self.in_flight.max(self.failure).max(self.storage)
    }
}
