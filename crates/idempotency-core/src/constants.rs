//! Limits and defaults shared by every crate of the kit.
//!
//! The TTL defaults are the user guide's (30 minutes, 60 s to 24 h). The Python library
//! 0.5.0 ships other defaults (60 minutes, up to 30 days); only the wire format must match.

use std::time::Duration;

/// Longest idempotency key, in Unicode characters after trimming.
pub const MAX_KEY_LENGTH: usize = 255;

/// Longest operation name, in Unicode characters after trimming.
pub const MAX_OPERATION_LENGTH: usize = 100;

/// Default record lifetime in minutes.
pub const DEFAULT_TTL_MINUTES: u64 = 30;

/// Default record lifetime.
pub const DEFAULT_TTL: Duration = Duration::from_secs(DEFAULT_TTL_MINUTES * 60);

/// Shortest record lifetime the domain service accepts by default, in seconds.
pub const MIN_TTL_SECONDS: u64 = 60;

/// Longest record lifetime the domain service accepts by default, in seconds (24 hours).
pub const MAX_TTL_SECONDS: u64 = 86_400;

/// How long an in-flight reservation outlives its owner before it counts as abandoned.
pub const DEFAULT_IN_FLIGHT_LEASE: Duration = Duration::from_secs(30);

/// Longest lease a reservation may have (a day): longer would only keep a crashed
/// owner's key stuck, and bounds the arithmetic on deadlines.
pub const MAX_IN_FLIGHT_LEASE: Duration = Duration::from_secs(86_400);

/// Shortest lease a reservation may have.
pub const MIN_IN_FLIGHT_LEASE: Duration = Duration::from_secs(1);

/// Default Redis key prefix: keys are `{prefix}{operation}:{idempotency_key}`.
pub const DEFAULT_KEY_PREFIX: &str = "idempotency:";

/// The character that separates operation and key in a storage key; forbidden in both.
pub const KEY_SEPARATOR: char = ':';

/// How far past its `expires_at` (by the store's clock) a pending record must be before a
/// store treats it as abandoned: taken over by a claim, or deleted by a read, only when
/// the store will never expire the key itself (a reservation Redis holds with a TTL is
/// live, whatever its `expires_at` says: its writer's clock may run behind).
pub const ABANDONED_AFTER: Duration = Duration::from_secs(3600);
