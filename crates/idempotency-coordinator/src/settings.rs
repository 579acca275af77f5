//! Settings a service loads from its configuration (serde), with the Python library's
//! field names so one config file serves both.

use std::collections::HashMap;
use std::time::Duration;

use idempotency_core::constants::{
    DEFAULT_IN_FLIGHT_LEASE, DEFAULT_KEY_PREFIX, DEFAULT_TTL_MINUTES, MAX_IN_FLIGHT_LEASE,
    MAX_TTL_SECONDS, MIN_TTL_SECONDS,
};
use idempotency_core::{FieldProblem, IdempotencyDomainService, IdempotencyError, Result};
use serde::{Deserialize, Serialize};

use crate::modes::{InFlight, OnStorageError};

/// Configuration of the whole stack.
///
/// Unknown fields are refused so a typo does not silently fall back to a default.
///
/// # Examples
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use idempotency_coordinator::{IdempotencySettings, InFlight};
/// let settings: IdempotencySettings = serde_json::from_str(
///     r#"{"key_prefix": "svc:idem:", "in_flight": "raise", "operation_ttls": {"order.create": 3600}}"#,
/// )?;
/// settings.validate()?;
/// assert_eq!(settings.in_flight, InFlight::Raise);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdempotencySettings {
    /// `false` makes every call a pass-through to the action.
    pub enabled: bool,
    /// Redis key prefix.
    pub key_prefix: String,
    /// Whether the wiring records metrics (into the collector it is given).
    pub metrics_enabled: bool,
    /// Default record lifetime, in minutes.
    pub default_ttl_minutes: u64,
    /// Shortest allowed lifetime, in seconds.
    pub min_ttl_seconds: u64,
    /// Longest allowed lifetime, in seconds.
    pub max_ttl_seconds: u64,
    /// Per-operation lifetimes in seconds; they win over a call's TTL.
    pub operation_ttls: HashMap<String, u64>,
    /// What concurrent duplicates get.
    pub in_flight: InFlight,
    /// How long a reservation outlives its owner, in seconds (at least 1).
    pub in_flight_lease_seconds: u64,
    /// What a call gets when the store fails before the action.
    pub on_storage_error: OnStorageError,
    /// In-process coalescing: concurrent calls for one key in this process share one
    /// claim (see [`CoordinatorBuilder::coalesce`](crate::CoordinatorBuilder::coalesce)).
    /// Not a setting of the Python library; off by default.
    pub coalesce: bool,
}

impl Default for IdempotencySettings {
    fn default() -> Self {
        Self {
            enabled: true,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            metrics_enabled: false,
            default_ttl_minutes: DEFAULT_TTL_MINUTES,
            min_ttl_seconds: MIN_TTL_SECONDS,
            max_ttl_seconds: MAX_TTL_SECONDS,
            operation_ttls: HashMap::new(),
            in_flight: InFlight::Wait,
            in_flight_lease_seconds: DEFAULT_IN_FLIGHT_LEASE.as_secs(),
            on_storage_error: OnStorageError::Run,
            coalesce: false,
        }
    }
}

impl IdempotencySettings {
    /// Checks every setting and reports every problem at once.
    ///
    /// # Errors
    /// [`IdempotencyError::Validation`] listing each problem.
    pub fn validate(&self) -> Result<()> {
        let mut problems = match self.domain_service() {
            Ok(_) => Vec::new(),
            Err(e) => e.problems().to_vec(),
        };
        problems.extend(self.key_prefix_problems());
        problems.extend(self.lease_problems());
        problems.extend(self.operation_ttl_problems(
            Duration::from_secs(self.min_ttl_seconds),
            Duration::from_secs(self.max_ttl_seconds),
        ));
        if problems.is_empty() {
            Ok(())
        } else {
            Err(IdempotencyError::validation(problems))
        }
    }

    /// The problems of the key prefix (see `validate_key_prefix`).
    pub(crate) fn key_prefix_problems(&self) -> Vec<FieldProblem> {
        match idempotency_core::validate_key_prefix(&self.key_prefix) {
            Ok(()) => Vec::new(),
            Err(e) => vec![FieldProblem::new(
                "key_prefix",
                "value_error",
                e.to_string(),
            )],
        }
    }

    /// The problems of the lease setting: at least 1 s, at most [`MAX_IN_FLIGHT_LEASE`].
    pub(crate) fn lease_problems(&self) -> Vec<FieldProblem> {
        let lease = self.in_flight_lease_seconds;
        if lease < 1 {
            vec![FieldProblem::new(
                "in_flight_lease_seconds",
                "greater_than_equal",
                "must be at least 1",
            )]
        } else if lease > MAX_IN_FLIGHT_LEASE.as_secs() {
            vec![FieldProblem::new(
                "in_flight_lease_seconds",
                "less_than_equal",
                format!("must be at most {}", MAX_IN_FLIGHT_LEASE.as_secs()),
            )]
        } else {
            Vec::new()
        }
    }

    /// The per-operation TTLs outside `[min, max]` (the bounds of the policy the
    /// coordinator will use).
    pub(crate) fn operation_ttl_problems(&self, min: Duration, max: Duration) -> Vec<FieldProblem> {
        let ttls = self.operation_ttls.iter();
        operation_ttl_problems(
            ttls.map(|(op, ttl)| (op, Duration::from_secs(*ttl))),
            min,
            max,
        )
    }

    /// The domain service these settings describe.
    ///
    /// # Errors
    /// As [`IdempotencyDomainService::new`].
    pub fn domain_service(&self) -> Result<IdempotencyDomainService> {
        IdempotencyDomainService::new(
            Duration::from_secs(self.default_ttl_minutes.saturating_mul(60)),
            Duration::from_secs(self.min_ttl_seconds),
            Duration::from_secs(self.max_ttl_seconds),
        )
    }

    /// The lease as a duration.
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.in_flight_lease_seconds)
    }
}

/// The per-operation TTLs (whole seconds from settings, or exact ones given to the
/// builder) outside `[min, max]`.
pub(crate) fn operation_ttl_problems<'a>(
    ttls: impl IntoIterator<Item = (&'a String, Duration)>,
    min: Duration,
    max: Duration,
) -> Vec<FieldProblem> {
    ttls.into_iter()
        .filter(|(_, ttl)| !(min..=max).contains(ttl))
        .map(|(operation, ttl)| {
            FieldProblem::new(
                format!("operation_ttls.{operation}"),
                "out_of_range",
                format!(
                    "{ttl:?} is outside [{}s, {}s]",
                    min.as_secs(),
                    max.as_secs()
                ),
            )
        })
        .collect()
}
