//! The idempotency record: what a store keeps for one identity. Its bytes (the encoder
//! and the decoder) are the [`wire`](crate::wire) module's.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;

use crate::error::{IdempotencyError, Result};
use crate::identity::{RecordId, validate_identifiers};
use crate::wire::timestamp::to_micros;

/// Whether a record holds a result or reserves its key for an action still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordStatus {
    /// An in-flight reservation: the action runs, `result` is `null`, `expires_at` is the lease.
    Pending,
    /// The action finished and `result` holds what it returned.
    Completed,
    /// The action failed with an error the caller chose to store: `result` holds the
    /// error, replayed to retries as the same error. Written only by this kit (spelled
    /// `stored_error`); the Python library 0.5.0 reads it as a corrupted record, so it
    /// never replays it as a success.
    #[serde(rename = "stored_error")]
    StoredError,
}

impl RecordStatus {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Completed => "completed",
            Self::StoredError => "stored_error",
        }
    }
}

/// A stored result (or reservation) for one `(operation, idempotency_key)`.
///
/// Its JSON form ([`IdempotencyRecord::to_json`]) is byte-compatible with the Python
/// idempotency-kit 0.5.0: the fields `operation, idempotency_key, result, created_at,
/// expires_at, status, fingerprint` in that order, then `owner` on reservations made by
/// this kit (the Python library ignores unknown fields). The result is kept as raw JSON
/// text, so what was stored is replayed exactly, integers beyond 64 bits included.
///
/// # Examples
/// ```
/// # fn main() -> Result<(), idempotency_core::IdempotencyError> {
/// use idempotency_core::IdempotencyDomainService;
/// let svc = IdempotencyDomainService::default();
/// let record = svc.create_record("order.create", "k-1", &serde_json::json!({"id": 7}))?;
/// let bytes = record.to_json();
/// let back = idempotency_core::IdempotencyRecord::from_json(bytes.as_bytes(), "order.create", "k-1")?;
/// assert_eq!(back, record);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct IdempotencyRecord {
    // The identity, validated when the record was made (by `from_parts`, the domain
    // service, a lease or the decoder), so it is never validated again.
    id: RecordId,
    result: Box<RawValue>,
    created_at: OffsetDateTime,
    expires_at: OffsetDateTime,
    status: RecordStatus,
    fingerprint: Option<String>,
    owner: Option<String>,
}

impl fmt::Debug for IdempotencyRecord {
    // The result is left out on purpose: it may hold personal data, and records get logged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyRecord")
            .field("operation", &self.id.operation())
            .field("idempotency_key", &self.id.key())
            .field("result_len", &self.result.get().len())
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .field("status", &self.status)
            .field("fingerprint", &self.fingerprint)
            .field("owner", &self.owner)
            .finish()
    }
}

impl PartialEq for IdempotencyRecord {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.result.get() == other.result.get()
            && self.created_at == other.created_at
            && self.expires_at == other.expires_at
            && self.status == other.status
            && self.fingerprint == other.fingerprint
            && self.owner == other.owner
    }
}

/// The parts of a record, for [`IdempotencyRecord::from_parts`].
#[derive(Debug, Clone)]
pub struct RecordParts {
    /// Operation name (trimmed and validated on construction).
    pub operation: String,
    /// Idempotency key (trimmed and validated on construction).
    pub idempotency_key: String,
    /// The result as JSON text.
    pub result: Box<RawValue>,
    /// When the record was made.
    pub created_at: OffsetDateTime,
    /// When it stops being valid.
    pub expires_at: OffsetDateTime,
    /// Pending or completed.
    pub status: RecordStatus,
    /// Fingerprint of the request, if any.
    pub fingerprint: Option<String>,
    /// Owner token of a reservation, if any.
    pub owner: Option<String>,
}

pub(crate) fn null_json() -> Box<RawValue> {
    RawValue::NULL.to_owned()
}

impl IdempotencyRecord {
    /// Builds a record from its parts, validating the identifiers.
    ///
    /// # Errors
    /// [`IdempotencyError::Validation`] for invalid identifiers.
    pub fn from_parts(parts: RecordParts) -> Result<Self> {
        let (operation, key) = validate_identifiers(&parts.operation, &parts.idempotency_key)?;
        let (operation, idempotency_key) = (operation.to_owned(), key.to_owned());
        Ok(Self::of_valid_parts(RecordParts {
            operation,
            idempotency_key,
            ..parts
        }))
    }

    /// The record's identity. Its identifiers were validated when it was made (by
    /// [`IdempotencyRecord::from_parts`], the domain service or the decoder), so this
    /// validates nothing again.
    pub fn id(&self) -> &RecordId {
        &self.id
    }

    /// A record of parts whose identifiers are valid already (validated by
    /// [`IdempotencyRecord::from_parts`], or taken from a [`RecordId`]): nothing is
    /// validated again.
    pub(crate) fn of_valid_parts(parts: RecordParts) -> Self {
        Self {
            id: RecordId::from_validated(&parts.operation, &parts.idempotency_key),
            result: parts.result,
            created_at: parts.created_at,
            expires_at: parts.expires_at,
            status: parts.status,
            fingerprint: parts.fingerprint,
            owner: parts.owner,
        }
    }

    /// A record of an identity whose identifiers are valid already, from its fields
    /// (`times`: created, expires), as the decoder and a lease make them.
    pub(crate) fn assemble(
        id: RecordId,
        result: Box<RawValue>,
        (created_at, expires_at): (OffsetDateTime, OffsetDateTime),
        status: RecordStatus,
        fingerprint: Option<String>,
        owner: Option<String>,
    ) -> Self {
        Self {
            id,
            result,
            created_at,
            expires_at,
            status,
            fingerprint,
            owner,
        }
    }

    /// A completed record made now, living `ttl`, from already validated identifiers.
    pub(crate) fn new_unchecked(
        operation: &str,
        key: &str,
        result: Box<RawValue>,
        lifetime: Duration,
        status: RecordStatus,
        fingerprint: Option<String>,
    ) -> Self {
        let now = to_micros(OffsetDateTime::now_utc());
        Self {
            id: RecordId::from_validated(operation, key),
            result,
            created_at: now,
            expires_at: now + lifetime,
            status,
            fingerprint,
            owner: None,
        }
    }

    /// The operation name.
    pub fn operation(&self) -> &str {
        self.id.operation()
    }

    /// The idempotency key.
    pub fn idempotency_key(&self) -> &str {
        self.id.key()
    }

    /// The stored result as JSON text (`null` on a reservation).
    pub fn result(&self) -> &RawValue {
        &self.result
    }

    /// The stored result parsed into a [`serde_json::Value`]. Integers beyond 64 bits
    /// become floats there; use [`IdempotencyRecord::result`] to keep them exact.
    ///
    /// # Errors
    /// [`IdempotencyError::Serialization`] if the text cannot be parsed (it always can for
    /// records that came through this crate).
    pub fn result_value(&self) -> Result<serde_json::Value> {
        serde_json::from_str(self.result.get()).map_err(IdempotencyError::serialization)
    }

    /// When the record was made.
    pub fn created_at(&self) -> OffsetDateTime {
        self.created_at
    }

    /// When the record stops being valid.
    pub fn expires_at(&self) -> OffsetDateTime {
        self.expires_at
    }

    /// Pending or completed.
    pub fn status(&self) -> RecordStatus {
        self.status
    }

    /// The fingerprint of the request the record belongs to, if it has one.
    pub fn fingerprint(&self) -> Option<&str> {
        self.fingerprint.as_deref()
    }

    /// The owner token of a reservation made by this kit.
    pub fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }

    /// The same record carrying an owner token.
    #[must_use]
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// The same record with another expiry.
    #[must_use]
    pub fn with_expires_at(mut self, expires_at: OffsetDateTime) -> Self {
        self.expires_at = to_micros(expires_at);
        self
    }

    /// Whether this is an in-flight reservation.
    pub fn is_pending(&self) -> bool {
        self.status == RecordStatus::Pending
    }

    /// Whether the result is a stored error of the action (see
    /// [`RecordStatus::StoredError`]).
    pub fn is_stored_error(&self) -> bool {
        self.status == RecordStatus::StoredError
    }

    /// Whether the record has expired now.
    pub fn is_expired(&self) -> bool {
        self.is_expired_at(OffsetDateTime::now_utc())
    }

    /// Whether the record has expired at `now`.
    pub fn is_expired_at(&self, now: OffsetDateTime) -> bool {
        now >= self.expires_at
    }

    /// The lifetime left, zero once expired.
    pub fn remaining_ttl(&self) -> Duration {
        let left = self.expires_at - OffsetDateTime::now_utc();
        left.try_into().unwrap_or(Duration::ZERO)
    }

    /// The lifetime left in whole seconds, rounded up (what a store's TTL is set to);
    /// 0 once expired.
    pub fn remaining_ttl_secs_ceil(&self) -> u64 {
        let left = self.remaining_ttl();
        left.as_secs() + u64::from(left.subsec_nanos() > 0)
    }
}
