//! How a multi-step run behaves.

use std::time::Duration;

use idempotency_core::{IdempotencyError, Result};

use crate::constants::{
    DEFAULT_STEPS_LEASE, DEFAULT_STEPS_RETENTION, DEFAULT_TTL, MIN_STEPS_LEASE,
};
use crate::transaction::InFlight;

/// The settings of [`PostgresStore::run_steps`](crate::PostgresStore::run_steps).
///
/// - `lease`: how long the owner holds the run without committing a phase (every
///   committed phase and [`StepRun::renew`](crate::StepRun::renew) renew it). Make it
///   longer than the longest gap between two phases (an external call), or renew
///   during it: past it, a retry takes the run over, and this owner commits nothing
///   more. At least 1 s.
/// - `retention`: how long the row of an unfinished run is kept from its last claim: a
///   retry within it resumes the run; after it the key is free and a retry starts
///   afresh, with new step keys. At least the lease.
/// - `ttl`: how long the completed record is replayed.
/// - `in_flight`: what a call does while another owner's lease on the run is alive.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use idempotency_postgres::{InFlight, StepsOptions};
/// let options = StepsOptions::new()
///     .with_lease(Duration::from_secs(10))
///     .with_in_flight(InFlight::Fail);
/// assert_eq!(options.lease(), Duration::from_secs(10));
/// assert_eq!(options.retention(), Duration::from_secs(86_400));
/// assert_eq!(options.in_flight(), InFlight::Fail);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepsOptions {
    lease: Duration,
    retention: Duration,
    ttl: Duration,
    in_flight: InFlight,
}

impl Default for StepsOptions {
    fn default() -> Self {
        Self {
            lease: DEFAULT_STEPS_LEASE,
            retention: DEFAULT_STEPS_RETENTION,
            ttl: DEFAULT_TTL,
            in_flight: InFlight::default(),
        }
    }
}

impl StepsOptions {
    /// The defaults: a 30 s lease, 24 hours of retention, the kit's default TTL (30
    /// minutes), [`InFlight::Wait`].
    pub fn new() -> Self {
        Self::default()
    }

    /// How long the owner holds the run between two commits.
    #[must_use]
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How long the row of an unfinished run is kept.
    #[must_use]
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// How long the completed record is replayed.
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// What to do while another owner holds the run.
    #[must_use]
    pub fn with_in_flight(mut self, in_flight: InFlight) -> Self {
        self.in_flight = in_flight;
        self
    }

    /// How long the owner holds the run between two commits.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// How long the row of an unfinished run is kept.
    pub fn retention(&self) -> Duration {
        self.retention
    }

    /// How long the completed record is replayed.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// What to do while another owner holds the run.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight
    }

    /// The settings checked together, before a run touches the database.
    pub(crate) fn check(&self) -> Result<()> {
        if self.lease < MIN_STEPS_LEASE {
            return Err(IdempotencyError::invalid_field(
                "lease",
                "greater_than_equal",
                "must be at least 1 s",
            ));
        }
        if self.retention < self.lease {
            return Err(IdempotencyError::invalid_field(
                "retention",
                "greater_than_equal",
                "must be at least the lease",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::StepsOptions;

    #[test]
    fn a_lease_under_a_second_or_past_the_retention_is_refused() {
        assert!(StepsOptions::new().check().is_ok());
        let short = StepsOptions::new().with_lease(Duration::from_millis(500));
        assert!(short.check().is_err());
        let past = StepsOptions::new()
            .with_lease(Duration::from_secs(60))
            .with_retention(Duration::from_secs(30));
        assert!(past.check().is_err());
    }
}
