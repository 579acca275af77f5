//! How a transactional call behaves.

use std::time::Duration;

use crate::constants::DEFAULT_TTL;

/// What a transactional call does when another transaction holds its key (it claimed
/// the key and has neither committed nor rolled back).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum InFlight {
    /// Wait for that transaction: replay its result when it commits, run the action
    /// when it rolls back. The wait is bounded only by the server's `lock_timeout` /
    /// `statement_timeout` and the pool's settings.
    #[default]
    Wait,
    /// Fail at once with
    /// [`IdempotencyError::InProgress`](idempotency_core::IdempotencyError::InProgress).
    Fail,
}

/// The settings of [`PostgresStore::run_in_transaction`](crate::PostgresStore::run_in_transaction).
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use idempotency_postgres::{InFlight, TransactionOptions};
/// let options = TransactionOptions::new().with_ttl(Duration::from_secs(3600)).with_in_flight(InFlight::Fail);
/// assert_eq!(options.in_flight(), InFlight::Fail);
/// assert_eq!(options.ttl(), Duration::from_secs(3600));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransactionOptions {
    ttl: Duration,
    in_flight: InFlight,
}

impl Default for TransactionOptions {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_TTL,
            in_flight: InFlight::default(),
        }
    }
}

impl TransactionOptions {
    /// The defaults: the kit's default TTL (30 minutes), [`InFlight::Wait`].
    pub fn new() -> Self {
        Self::default()
    }

    /// How long the committed record is replayed.
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// What to do while another transaction holds the key.
    #[must_use]
    pub fn with_in_flight(mut self, in_flight: InFlight) -> Self {
        self.in_flight = in_flight;
        self
    }

    /// How long the committed record is replayed.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// What to do while another transaction holds the key.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight
    }
}
