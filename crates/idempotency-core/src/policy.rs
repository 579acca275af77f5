//! The domain service: record factory and TTL policy.

use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::constants::{DEFAULT_TTL, MAX_TTL_SECONDS, MIN_IN_FLIGHT_LEASE, MIN_TTL_SECONDS};
use crate::error::{FieldProblem, IdempotencyError, Result};
use crate::identity::validate_identifiers;
use crate::record::{IdempotencyRecord, RecordStatus, null_json};
use crate::wire::json_text::to_result_json;

/// Per-record options: a TTL override and a fingerprint.
///
/// # Examples
/// ```
/// let opts = idempotency_core::RecordOptions::new().ttl_minutes(1440).fingerprint("abc");
/// assert_eq!(opts.ttl_override(), Some(std::time::Duration::from_secs(86_400)));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordOptions {
    ttl: Option<Duration>,
    fingerprint: Option<String>,
}

impl RecordOptions {
    /// No override, no fingerprint.
    pub fn new() -> Self {
        Self::default()
    }

    /// Overrides the TTL in whole minutes, as the user guide's `ttl_minutes`.
    #[must_use]
    pub fn ttl_minutes(self, minutes: u64) -> Self {
        self.ttl(Duration::from_secs(minutes.saturating_mul(60)))
    }

    /// Overrides the TTL.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Sets the request fingerprint stored with the record.
    #[must_use]
    pub fn fingerprint(mut self, fingerprint: impl Into<String>) -> Self {
        self.fingerprint = Some(fingerprint.into());
        self
    }

    /// Sets or clears the fingerprint.
    #[must_use]
    pub fn maybe_fingerprint(mut self, fingerprint: Option<String>) -> Self {
        self.fingerprint = fingerprint;
        self
    }

    /// The TTL override, if any.
    pub fn ttl_override(&self) -> Option<Duration> {
        self.ttl
    }

    /// The fingerprint, if any.
    pub fn fingerprint_value(&self) -> Option<&str> {
        self.fingerprint.as_deref()
    }
}

/// Creates and validates records under a TTL policy: the Python library's
/// `IdempotencyDomainService`, under the same name so the user guide reads across.
///
/// Defaults: TTL 30 minutes, bounds 60 s to 86,400 s.
///
/// # Examples
/// ```
/// # fn main() -> Result<(), idempotency_core::IdempotencyError> {
/// use std::time::Duration;
/// use idempotency_core::{IdempotencyDomainService, RecordOptions};
///
/// let svc = IdempotencyDomainService::new(Duration::from_secs(600), Duration::from_secs(60), Duration::from_secs(3600))?;
/// let record = svc.create_record_with("order.create", "k-1", &42, &RecordOptions::new().ttl_minutes(5))?;
/// assert!(record.remaining_ttl() <= Duration::from_secs(300));
/// assert!(svc.create_record_with("order.create", "k-1", &42, &RecordOptions::new().ttl_minutes(120)).is_err());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyDomainService {
    default_ttl: Duration,
    min_ttl: Duration,
    max_ttl: Duration,
}

impl Default for IdempotencyDomainService {
    fn default() -> Self {
        Self {
            default_ttl: DEFAULT_TTL,
            min_ttl: Duration::from_secs(MIN_TTL_SECONDS),
            max_ttl: Duration::from_secs(MAX_TTL_SECONDS),
        }
    }
}

impl IdempotencyDomainService {
    /// A service with the given default TTL and bounds.
    ///
    /// # Errors
    /// [`IdempotencyError::Validation`] listing every problem: the minimum below 1 s, the
    /// maximum below the minimum, the default outside the bounds.
    pub fn new(default_ttl: Duration, min_ttl: Duration, max_ttl: Duration) -> Result<Self> {
        let mut problems = Vec::new();
        if min_ttl < Duration::from_secs(1) {
            problems.push(FieldProblem::new(
                "min_ttl",
                "greater_than_equal",
                "must be at least 1 s",
            ));
        }
        if max_ttl < min_ttl {
            problems.push(FieldProblem::new(
                "max_ttl",
                "greater_than_equal",
                "must be at least min_ttl",
            ));
        }
        if default_ttl < min_ttl || default_ttl > max_ttl {
            problems.push(FieldProblem::new(
                "default_ttl",
                "out_of_range",
                format!(
                    "{}s is outside [{}s, {}s]",
                    default_ttl.as_secs_f64(),
                    min_ttl.as_secs_f64(),
                    max_ttl.as_secs_f64()
                ),
            ));
        }
        if problems.is_empty() {
            Ok(Self {
                default_ttl,
                min_ttl,
                max_ttl,
            })
        } else {
            Err(IdempotencyError::validation(problems))
        }
    }

    /// The default TTL.
    pub fn default_ttl(&self) -> Duration {
        self.default_ttl
    }

    /// The lower TTL bound.
    pub fn min_ttl(&self) -> Duration {
        self.min_ttl
    }

    /// The upper TTL bound.
    pub fn max_ttl(&self) -> Duration {
        self.max_ttl
    }

    /// The TTL a record gets: the override if given, else the default; checked against
    /// the bounds.
    ///
    /// # Errors
    /// [`IdempotencyError::InvalidTtl`] outside the bounds.
    pub fn resolve_ttl(&self, ttl: Option<Duration>) -> Result<Duration> {
        let ttl = ttl.unwrap_or(self.default_ttl);
        if ttl < self.min_ttl || ttl > self.max_ttl {
            return Err(IdempotencyError::InvalidTtl {
                given: ttl,
                min: self.min_ttl,
                max: self.max_ttl,
            });
        }
        Ok(ttl)
    }

    /// A completed record with the default TTL and no fingerprint.
    ///
    /// # Errors
    /// Validation of the identifiers, or serialization of the result.
    pub fn create_record<T: Serialize + ?Sized>(
        &self,
        operation: &str,
        idempotency_key: &str,
        result: &T,
    ) -> Result<IdempotencyRecord> {
        self.create_record_with(
            operation,
            idempotency_key,
            result,
            &RecordOptions::default(),
        )
    }

    /// A completed record with options (TTL override in minutes or as a `Duration`,
    /// fingerprint).
    ///
    /// # Errors
    /// Validation of the identifiers, [`IdempotencyError::InvalidTtl`], or serialization
    /// of the result.
    pub fn create_record_with<T: Serialize + ?Sized>(
        &self,
        operation: &str,
        idempotency_key: &str,
        result: &T,
        options: &RecordOptions,
    ) -> Result<IdempotencyRecord> {
        self.completed_record(
            operation,
            idempotency_key,
            || to_result_json(result),
            options.ttl,
            options.fingerprint.as_deref(),
        )
    }

    /// A completed record from a result that is already JSON text (what a result adapter
    /// produces).
    ///
    /// # Errors
    /// Validation of the identifiers, or [`IdempotencyError::InvalidTtl`].
    pub fn create_record_raw(
        &self,
        operation: &str,
        idempotency_key: &str,
        result: Box<RawValue>,
        ttl: Option<Duration>,
        fingerprint: Option<&str>,
    ) -> Result<IdempotencyRecord> {
        self.completed_record(operation, idempotency_key, || Ok(result), ttl, fingerprint)
    }

    /// The one builder of completed records: identifiers, then TTL, then the result (made
    /// last, so a bad identifier or TTL is reported before a result that cannot be
    /// serialized).
    fn completed_record(
        &self,
        operation: &str,
        idempotency_key: &str,
        result: impl FnOnce() -> Result<Box<RawValue>>,
        ttl: Option<Duration>,
        fingerprint: Option<&str>,
    ) -> Result<IdempotencyRecord> {
        let (operation, key) = validate_identifiers(operation, idempotency_key)?;
        let ttl = self.resolve_ttl(ttl)?;
        Ok(IdempotencyRecord::new_unchecked(
            operation,
            key,
            result()?,
            ttl,
            RecordStatus::Completed,
            fingerprint.map(str::to_owned),
        ))
    }

    /// The in-flight reservation for an action about to run. The lease is not held to
    /// the TTL bounds, only to at least 1 s.
    ///
    /// # Errors
    /// Validation of the identifiers and of the lease.
    pub fn create_pending_record(
        &self,
        operation: &str,
        idempotency_key: &str,
        lease: Duration,
        fingerprint: Option<&str>,
    ) -> Result<IdempotencyRecord> {
        let ids = validate_identifiers(operation, idempotency_key);
        let lease_ok = lease >= MIN_IN_FLIGHT_LEASE;
        let (operation, key) = match (ids, lease_ok) {
            (Ok(ids), true) => ids,
            (Ok(_), false) => {
                return Err(IdempotencyError::invalid_field(
                    "lease",
                    "greater_than_equal",
                    "must be at least 1 s",
                ));
            }
            (Err(IdempotencyError::Validation { mut problems }), ok) => {
                if !ok {
                    problems.0.push(FieldProblem::new(
                        "lease",
                        "greater_than_equal",
                        "must be at least 1 s",
                    ));
                }
                return Err(IdempotencyError::Validation { problems });
            }
            (Err(e), _) => return Err(e),
        };
        Ok(IdempotencyRecord::new_unchecked(
            operation,
            key,
            null_json(),
            lease,
            RecordStatus::Pending,
            fingerprint.map(str::to_owned),
        ))
    }

    /// Checks that a record is still usable.
    ///
    /// # Errors
    /// [`IdempotencyError::RecordExpired`] once its lifetime has passed.
    pub fn validate_record(&self, record: &IdempotencyRecord) -> Result<()> {
        if record.is_expired() {
            return Err(IdempotencyError::RecordExpired {
                operation: record.operation().to_owned(),
                key: record.idempotency_key().to_owned(),
            });
        }
        Ok(())
    }
}
