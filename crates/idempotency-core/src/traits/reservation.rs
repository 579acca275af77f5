//! Fenced reservations: the optional ability a coordinator uses to hold a key while its
//! action runs (protocol v2).
//!
//! # The protocol
//! 1. The caller makes a [`Lease`] (a fresh owner token) **before** anything is sent, so a
//!    call dropped while its claim is in flight can still release what the claim wrote.
//! 2. [`ReservationStore::claim`] writes the pending record carrying the token if the key
//!    is free, and otherwise returns what holds the key. A pending record carrying *our*
//!    token is ours (a claim re-sent after a lost reply finds its own write): acquired.
//!    A value nobody can read is taken over atomically (deleted only if its bytes are
//!    unchanged, and claimed in the same step), so exactly one caller runs, fenced.
//! 3. [`ReservationStore::renew`], [`ReservationStore::complete`] and
//!    [`ReservationStore::release`] change the key only while it holds the pending record
//!    carrying the token (`complete` also into an empty key; a re-sent `complete` that
//!    finds the very record it writes is success).
//!
//! Liveness is the store's: a key the store still holds is alive, whatever its
//! `expires_at` says to a client's clock. Nothing deletes a pending record except its
//! owner's release, the store's own expiry, or the takeover of an abandoned one (past
//! its `expires_at` by more than an hour on the store's clock, see [`is_abandoned`], and
//! held with no expiry, so that nobody would ever free it).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::value::RawValue;
use time::OffsetDateTime;

use crate::clock::Clock;
use crate::constants::MIN_IN_FLIGHT_LEASE;
use crate::error::{IdempotencyError, Result};
use crate::identifiers::RecordId;
use crate::record::{IdempotencyRecord, RecordParts, RecordStatus};
use crate::traits::storage::IdempotencyRepository;

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
        let now = crate::timestamp::to_micros(now);
        let created_at = crate::timestamp::to_micros(self.created_at + (now - self.clock.now()));
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
        let now = crate::timestamp::to_micros(now);
        // In the form every reader replays, so every store holds the same text.
        Ok(self.record(
            crate::storable::storable_form(finished.raw())?,
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
        IdempotencyRecord::of_valid_parts(RecordParts {
            operation: self.id.operation().to_owned(),
            idempotency_key: self.id.key().to_owned(),
            result,
            created_at,
            expires_at,
            status,
            fingerprint: self.fingerprint().map(str::to_owned),
            owner,
        })
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

/// The outcome of [`ReservationStore::claim`].
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The key now holds our pending record (written by this claim, by an earlier send of
    /// it, or by taking over an unreadable value or an abandoned reservation).
    Acquired,
    /// The key holds this record (completed: a hit; pending: someone else's action runs).
    Found(IdempotencyRecord),
}

/// Whether a fenced write found our reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fence {
    /// It was ours (or, for `complete`, the key already held exactly our completed
    /// record: a re-sent completion) and the write was made.
    Held,
    /// Another owner's record (or a completed one) is there; nothing was written.
    Lost,
    /// `complete` only: our reservation was gone (it expired, was removed, or was
    /// overwritten by bytes no client can read) and nobody else's record was there, so
    /// the write was made. The lease was lost while the action ran: a duplicate may have
    /// run and given the key up meanwhile, so callers count it as a lost lease.
    Vacated,
}

/// What a completion writes over its reservation: the action's result, or an error of
/// the action stored so that retries replay it (status [`RecordStatus::StoredError`]).
#[derive(Debug, Clone, Copy)]
pub enum Finished<'a> {
    /// The action's result, as JSON text (status [`RecordStatus::Completed`]).
    Value(&'a RawValue),
    /// A stored error of the action, as JSON text (status [`RecordStatus::StoredError`]).
    Error(&'a RawValue),
}

impl<'a> Finished<'a> {
    /// The status of the record it makes.
    ///
    /// # Examples
    /// ```
    /// use idempotency_core::{Finished, RawValue, RecordStatus};
    /// let null = RawValue::NULL;
    /// assert_eq!(Finished::Value(null).status(), RecordStatus::Completed);
    /// assert_eq!(Finished::Error(null).status(), RecordStatus::StoredError);
    /// ```
    pub fn status(self) -> RecordStatus {
        match self {
            Self::Value(_) => RecordStatus::Completed,
            Self::Error(_) => RecordStatus::StoredError,
        }
    }

    /// The JSON text stored as the record's result.
    pub fn raw(self) -> &'a RawValue {
        match self {
            Self::Value(raw) | Self::Error(raw) => raw,
        }
    }
}

/// A subscription to changes of one key, made by [`ReservationStore::watch`].
pub trait KeyWatch: Send {
    /// Waits until the key is completed or released, or `timeout` passes; `true` when
    /// woken by a change. A change after `watch` returned and before this call is not
    /// missed.
    fn changed(&mut self, timeout: Duration) -> impl Future<Output = bool> + Send;
}

/// Fenced single-key operations for the coordinator. Each call is one atomic step on the
/// store (one round trip on Redis; a claim that takes over an unreadable value adds one per
/// takeover, and the server's clock is sampled at most every 30 s).
///
/// Invariants every implementation keeps (the store contract tests check them on each
/// store):
/// - a write that names a lease changes the key only while the key holds the pending
///   record carrying that lease's token ([`holds_lease`]), or, for `complete`, nothing;
///   a caller whose lease ran out and was taken over can never overwrite or delete the
///   newer owner's record, nor a completed record;
/// - liveness is the store's: a held key is never judged dead by a client clock, and
///   nothing but `release`, the store's expiry or the takeover of an abandoned record
///   ([`is_abandoned`], on the store's clock, and only one the store never expires)
///   removes a pending record;
/// - `claim` is idempotent for its lease: repeating it (a re-sent command) returns
///   [`Claim::Acquired`] while our pending record is there;
/// - no value under the key makes `claim` return without either the key held by us or a
///   decodable record in hand: unreadable values are taken over atomically, values of
///   another type are a data error naming the key.
///
/// A repository without these abilities still works through
/// [`Unfenced`](crate::Unfenced), which emulates them with `save`/`get`/`replace`/
/// `delete` without the fencing guarantee.
pub trait ReservationStore: IdempotencyRepository {
    /// The subscription type of [`ReservationStore::watch`].
    type Watch: KeyWatch;

    /// Reserves the lease's key with its pending record (living `lease`), or returns the
    /// record that holds it.
    ///
    /// # Errors
    /// Storage errors; a data error when the key holds something that is not a record
    /// and cannot be taken over (a value of another type); a lease under 1 s.
    fn claim(
        &self,
        lease: &Lease,
        duration: Duration,
    ) -> impl Future<Output = Result<Claim>> + Send;

    /// Writes the lease's final record (built from the lease, so it cannot land under
    /// another key; living `ttl`) if the key still holds our pending record or nothing:
    /// the one fenced write behind [`ReservationStore::complete`] and
    /// [`ReservationStore::complete_with_error`].
    ///
    /// # Errors
    /// Storage errors; a `ttl` that ends past the year 9999.
    fn finish(
        &self,
        lease: &Lease,
        finished: Finished<'_>,
        ttl: Duration,
    ) -> impl Future<Output = Result<Fence>> + Send;

    /// Writes the completed record of the lease (holding `result`, living `ttl`) under the
    /// fence of [`ReservationStore::finish`].
    ///
    /// # Errors
    /// As [`ReservationStore::finish`].
    fn complete(
        &self,
        lease: &Lease,
        result: &RawValue,
        ttl: Duration,
    ) -> impl Future<Output = Result<Fence>> + Send {
        self.finish(lease, Finished::Value(result), ttl)
    }

    /// Writes the lease's record holding a stored error of the action (status
    /// [`RecordStatus::StoredError`], living `ttl`) under the fence of
    /// [`ReservationStore::finish`]: retries replay the error instead of running again.
    ///
    /// # Errors
    /// As [`ReservationStore::finish`].
    fn complete_with_error(
        &self,
        lease: &Lease,
        error: &RawValue,
        ttl: Duration,
    ) -> impl Future<Output = Result<Fence>> + Send {
        self.finish(lease, Finished::Error(error), ttl)
    }

    /// Pushes our pending record's expiry `duration` ahead, if we still own it.
    ///
    /// # Errors
    /// Storage errors.
    fn renew(
        &self,
        lease: &Lease,
        duration: Duration,
    ) -> impl Future<Output = Result<Fence>> + Send;

    /// Deletes our pending record, if we still own it.
    ///
    /// # Errors
    /// Storage errors.
    fn release(&self, lease: &Lease) -> impl Future<Output = Result<Fence>> + Send;

    /// Subscribes to completion and release of the key.
    ///
    /// # Errors
    /// Storage errors.
    fn watch(&self, id: &RecordId) -> impl Future<Output = Result<Self::Watch>> + Send;
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
