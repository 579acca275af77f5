//! The lease a caller holds while it reserves a key, and the owner token it carries.
//! The decisions every store makes the same way about a pending record ([`holds_lease`],
//! [`is_abandoned`]) live here beside it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::value::RawValue;
use time::OffsetDateTime;

use crate::claim::{Fence, Finished};
use crate::clock::Clock;
use crate::constants::MIN_IN_FLIGHT_LEASE;
use crate::error::{IdempotencyError, Result};
use crate::identity::RecordId;
use crate::record::{IdempotencyRecord, RecordStatus};

/// What a caller holds while it reserves a key: the record's identity, a fresh owner
/// token, the request's fingerprint and when the reservation was made.
///
/// Made before the claim is sent ([`Lease::new`]); only a validated [`RecordId`] can
/// make one. Cheap to clone.
///
/// # Examples
/// ```
/// # fn main() -> Result<(), idempotency_core::IdempotencyError> {
/// use idempotency_core::{Clock, Lease, RecordId};
/// let lease = Lease::new(RecordId::new("op", "k")?, Some("fp"), Clock::system());
/// assert_eq!(lease.id().key(), "k");
/// assert_eq!(lease.token().len(), 32);
/// assert_ne!(lease.token(), Lease::new(lease.id().clone(), None, Clock::system()).token());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    id: RecordId,
    token: Arc<str>,
    fingerprint: Option<Arc<str>>,
    created_at: OffsetDateTime,
    clock: Clock,
}

impl Lease {
    /// A new lease on `id` with a fresh owner token, stamped by `clock`.
    pub fn new(id: RecordId, fingerprint: Option<&str>, clock: Clock) -> Self {
        Self {
            id,
            token: new_owner_token().into(),
            fingerprint: fingerprint.map(Arc::from),
            created_at: clock.now(),
            clock,
        }
    }

    /// The record's identity.
    pub fn id(&self) -> &RecordId {
        &self.id
    }

    /// The operation.
    pub fn operation(&self) -> &str {
        self.id.operation()
    }

    /// The idempotency key.
    pub fn key(&self) -> &str {
        self.id.key()
    }

    /// The owner token written into the pending record.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The fingerprint of the reservation.
    pub fn fingerprint(&self) -> Option<&str> {
        self.fingerprint.as_deref()
    }

    /// When the reservation was made (the pending record's `created_at`).
    pub fn created_at(&self) -> OffsetDateTime {
        self.created_at
    }

    /// The clock the lease stamps its records with.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// The pending record of this lease, living `lease` from now (by the lease's clock).
    ///
    /// # Errors
    /// A lease shorter than [`MIN_IN_FLIGHT_LEASE`].
    pub fn pending_record(&self, lease: Duration) -> Result<IdempotencyRecord> {
        self.pending_record_at(self.clock.now(), lease)
    }

    /// The pending record of this lease stamped on another clock, whose time is now
    /// `now` (a store stamping with its server's clock): `expires_at` is `now + lease`,
    /// and `created_at` is the lease's creation moved onto that clock.
    ///
    /// # Errors
    /// A lease shorter than [`MIN_IN_FLIGHT_LEASE`].
    pub fn pending_record_at(
        &self,
        now: OffsetDateTime,
        lease: Duration,
    ) -> Result<IdempotencyRecord> {
        if lease < MIN_IN_FLIGHT_LEASE {
            return Err(IdempotencyError::invalid_field(
                "lease",
                "greater_than_equal",
                "must be at least 1 s",
            ));
        }
        let now = crate::wire::timestamp::to_micros(now);
        let created_at =
            crate::wire::timestamp::to_micros(self.created_at + (now - self.clock.now()));
        Ok(self.record(
            RawValue::NULL.to_owned(),
            RecordStatus::Pending,
            created_at.min(now),
            later(now, lease, "lease")?,
            Some(self.token.to_string()),
        ))
    }

    /// The completed record of this lease holding `result`, living `ttl` from now. It
    /// carries no owner (as the Python library writes it).
    ///
    /// # Errors
    /// A `ttl` that ends past the year 9999; a result no reader could read back
    /// ([`crate::check_storable`]).
    pub fn completed_record(&self, result: &RawValue, ttl: Duration) -> Result<IdempotencyRecord> {
        self.finished_record_at(self.clock.now(), Finished::Value(result), ttl)
    }

    /// The completed record stamped on another clock whose time is now `now`.
    ///
    /// # Errors
    /// As [`Lease::completed_record`].
    pub fn completed_record_at(
        &self,
        now: OffsetDateTime,
        result: &RawValue,
        ttl: Duration,
    ) -> Result<IdempotencyRecord> {
        self.finished_record_at(now, Finished::Value(result), ttl)
    }

    /// The record of this lease holding a stored error of the action (see
    /// [`RecordStatus::StoredError`]), stamped on a clock whose time is now `now`.
    ///
    /// # Errors
    /// As [`Lease::completed_record`].
    pub fn stored_error_record_at(
        &self,
        now: OffsetDateTime,
        error: &RawValue,
        ttl: Duration,
    ) -> Result<IdempotencyRecord> {
        self.finished_record_at(now, Finished::Error(error), ttl)
    }

    /// The final record of this lease (completed or stored error, never pending: a
    /// pending record carries the owner token and is made by [`Lease::pending_record_at`]),
    /// living `ttl`, stamped on a clock whose time is now `now`. It carries no owner.
    ///
    /// # Errors
    /// As [`Lease::completed_record`].
    ///
    /// # Examples
    /// ```
    /// # fn main() -> Result<(), idempotency_core::IdempotencyError> {
    /// use std::time::Duration;
    /// use idempotency_core::{Clock, Finished, Lease, RawValue, RecordId, RecordStatus};
    /// let lease = Lease::new(RecordId::new("op", "k")?, None, Clock::system());
    /// let now = lease.clock().now();
    /// let error = Finished::Error(RawValue::NULL);
    /// let record = lease.finished_record_at(now, error, Duration::from_secs(60))?;
    /// assert_eq!(record.status(), RecordStatus::StoredError);
    /// assert_eq!(record.owner(), None);
    /// # Ok(()) }
    /// ```
    pub fn finished_record_at(
        &self,
        now: OffsetDateTime,
        finished: Finished<'_>,
        ttl: Duration,
    ) -> Result<IdempotencyRecord> {
        let now = crate::wire::timestamp::to_micros(now);
        // In the form every reader replays, so every store holds the same text.
        Ok(self.record(
            crate::wire::storable::storable_form(finished.raw())?,
            finished.status(),
            now,
            later(now, ttl, "ttl")?,
            None,
        ))
    }

    fn record(
        &self,
        result: Box<RawValue>,
        status: RecordStatus,
        created_at: OffsetDateTime,
        expires_at: OffsetDateTime,
        owner: Option<String>,
    ) -> IdempotencyRecord {
        // Built from the lease's identity: a record under another key cannot be made here.
        IdempotencyRecord::assemble(
            self.id.clone(),
            result,
            (created_at, expires_at),
            status,
            self.fingerprint().map(str::to_owned),
            owner,
        )
    }
}

/// `now + after`, or a validation error naming `field` when that is past the year 9999.
fn later(now: OffsetDateTime, after: Duration, field: &str) -> Result<OffsetDateTime> {
    time::Duration::try_from(after)
        .ok()
        .and_then(|after| now.checked_add(after))
        .ok_or_else(|| IdempotencyError::invalid_field(field, "less_than_equal", "too long"))
}

/// Whether `record` is the pending record of the lease with `token`: the one decision
/// every fenced step (and every store) makes the same way. Exact: the status must be
/// `pending` and the owner field must equal the token; nothing inside the result counts.
///
/// # Examples
/// ```
/// # fn main() -> Result<(), idempotency_core::IdempotencyError> {
/// use std::time::Duration;
/// use idempotency_core::{Clock, Lease, RecordId, holds_lease};
/// let lease = Lease::new(RecordId::new("op", "k")?, None, Clock::system());
/// let pending = lease.pending_record(Duration::from_secs(5))?;
/// assert!(holds_lease(&pending, lease.token()));
/// assert!(!holds_lease(&pending, "someone-else"));
/// # Ok(()) }
/// ```
pub fn holds_lease(record: &IdempotencyRecord, token: &str) -> bool {
    record.is_pending() && record.owner() == Some(token)
}

/// The fence of a completion, from what holds the key before it writes: nothing
/// ([`Fence::Vacated`]: written, though our reservation was gone), our pending record
/// ([`Fence::Held`]), anything else ([`Fence::Lost`]: nothing may be written). The
/// decision every store's `finish` makes (Redis in `complete.lua`).
pub(crate) fn completion_fence(found: Option<&IdempotencyRecord>, lease: &Lease) -> Fence {
    match found {
        None => Fence::Vacated,
        Some(record) if holds_lease(record, lease.token()) => Fence::Held,
        Some(_) => Fence::Lost,
    }
}

/// Whether `record` is a reservation nobody can still be running: pending, and past its
/// `expires_at` by more than [`ABANDONED_AFTER`](crate::constants::ABANDONED_AFTER) on
/// the **store's** clock `store_now` (never a client's). A store takes such a record over
/// on claim, as it does with unreadable values, only when it will never expire the key
/// itself (Redis: `PTTL` -1): while the store still expires the key, it is alive, since a
/// writer whose clock runs behind stamps such records on live reservations.
///
/// # Examples
/// ```
/// # fn main() -> Result<(), idempotency_core::IdempotencyError> {
/// use std::time::Duration;
/// use idempotency_core::{Clock, Lease, RecordId, is_abandoned};
/// let lease = Lease::new(RecordId::new("op", "k")?, None, Clock::system());
/// let pending = lease.pending_record(Duration::from_secs(30))?;
/// assert!(!is_abandoned(&pending, Clock::system().now()));
/// assert!(is_abandoned(&pending, Clock::system().now() + time::Duration::hours(2)));
/// # Ok(()) }
/// ```
pub fn is_abandoned(record: &IdempotencyRecord, store_now: OffsetDateTime) -> bool {
    record.is_pending() && record.expires_at() + crate::constants::ABANDONED_AFTER < store_now
}

/// The `SplitMix64` finaliser: a bijection on `u64` that scatters consecutive inputs.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A fresh owner token: unique per process start and call, not guessable from outside
/// without the process's random seed. 32 hex characters.
pub fn new_owner_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::OnceLock;
    // Process-wide by necessity: the seed and counter make tokens unique across every
    // store and coordinator of the process; they are never reset or observed.
    static SEED: OnceLock<(u64, u64)> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let (a, b) = *SEED.get_or_init(|| {
        let state = std::collections::hash_map::RandomState::new();
        let mut h = state.build_hasher();
        h.write_u32(std::process::id());
        let a = h.finish();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        (a, h.finish())
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Both halves are mixed, so tokens are neither sequential nor guessable without the
    // seed; the low half is a bijection of the counter (unique per process), the process
    // seed tells processes apart.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write_u64(a ^ n);
    hex_pair(h.finish() ^ b, mix64(n ^ b))
}

/// `hi` then `lo` as 32 lowercase hex digits (what `format!("{hi:016x}{lo:016x}")` writes,
/// without the formatting machinery: a token is made on every claim).
fn hex_pair(hi: u64, lo: u64) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(32);
    for word in [hi, lo] {
        for shift in (0..16).rev() {
            out.push(char::from(DIGITS[((word >> (shift * 4)) & 0xf) as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::hex_pair;

    #[test]
    fn hex_pair_writes_what_format_writes() {
        for (hi, lo) in [
            (0, 0),
            (u64::MAX, 1),
            (0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210),
            (0xa, 0xb0),
        ] {
            assert_eq!(hex_pair(hi, lo), format!("{hi:016x}{lo:016x}"));
        }
    }
}
