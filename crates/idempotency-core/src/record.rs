//! The idempotency record and its wire format.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;

use crate::constants::{MAX_KEY_LENGTH, MAX_OPERATION_LENGTH};
use crate::error::{FieldProblem, IdempotencyError, Result};
use crate::identifiers::{check_field, validate_identifiers};
use crate::timestamp::{from_unix, parse_timestamp, to_micros, write_timestamp};

/// Whether a record holds a result or reserves its key for an action still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordStatus {
    /// An in-flight reservation: the action runs, `result` is `null`, `expires_at` is the lease.
    Pending,
    /// The action finished and `result` holds what it returned.
    Completed,
}

impl RecordStatus {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Completed => "completed",
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
    operation: String,
    idempotency_key: String,
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
            .field("operation", &self.operation)
            .field("idempotency_key", &self.idempotency_key)
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
        self.operation == other.operation
            && self.idempotency_key == other.idempotency_key
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
        Ok(Self {
            operation: operation.to_owned(),
            idempotency_key: key.to_owned(),
            result: parts.result,
            created_at: parts.created_at,
            expires_at: parts.expires_at,
            status: parts.status,
            fingerprint: parts.fingerprint,
            owner: parts.owner,
        })
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
            operation: operation.to_owned(),
            idempotency_key: key.to_owned(),
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
        &self.operation
    }

    /// The idempotency key.
    pub fn idempotency_key(&self) -> &str {
        &self.idempotency_key
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

    /// Encodes the record as the Python library stores it.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(160 + self.result.get().len());
        out.push_str("{\"operation\":");
        push_json_str(&mut out, &self.operation);
        out.push_str(",\"idempotency_key\":");
        push_json_str(&mut out, &self.idempotency_key);
        out.push_str(",\"result\":");
        out.push_str(self.result.get());
        out.push_str(",\"created_at\":\"");
        write_timestamp(&mut out, self.created_at);
        out.push_str("\",\"expires_at\":\"");
        write_timestamp(&mut out, self.expires_at);
        out.push_str("\",\"status\":\"");
        out.push_str(self.status.as_str());
        out.push_str("\",\"fingerprint\":");
        match &self.fingerprint {
            Some(f) => push_json_str(&mut out, f),
            None => out.push_str("null"),
        }
        if let Some(owner) = &self.owner {
            out.push_str(",\"owner\":");
            push_json_str(&mut out, owner);
        }
        out.push('}');
        out
    }

    /// Decodes stored bytes. `operation` and `key` name the storage key that was read
    /// (for the error); the record keeps the identifiers stored in it.
    ///
    /// # Errors
    /// - [`IdempotencyError::CorruptedRecord`]: not UTF-8, not JSON, or a string with a
    ///   lone surrogate escape;
    /// - [`IdempotencyError::InvalidRecord`]: JSON of the wrong shape, with every problem.
    pub fn from_json(bytes: &[u8], operation: &str, key: &str) -> Result<Self> {
        let corrupted = |source: crate::error::BoxError| IdempotencyError::CorruptedRecord {
            operation: operation.to_owned(),
            key: key.to_owned(),
            source,
        };
        let text = std::str::from_utf8(bytes).map_err(|e| corrupted(e.into()))?;
        // Well-formed records (nearly all reads) take the typed fast path; anything it
        // does not accept goes the field-by-field way, which names every problem.
        if let Some(record) = Self::from_json_fast(text) {
            return Ok(record);
        }
        let wire: WireIn<'_> = match serde_json::from_str(text) {
            Ok(wire) => wire,
            Err(e) if e.classify() == serde_json::error::Category::Data => {
                return Err(IdempotencyError::InvalidRecord {
                    operation: operation.to_owned(),
                    key: key.to_owned(),
                    problems: crate::error::FieldProblems(vec![FieldProblem::new(
                        "",
                        "model_type",
                        "a record must be a JSON object",
                    )]),
                });
            }
            Err(e) => return Err(corrupted(e.into())),
        };
        let mut problems = Vec::new();
        let operation_value = wire_str(
            wire.operation,
            "operation",
            MAX_OPERATION_LENGTH,
            &mut problems,
        );
        let key_value = wire_str(
            wire.idempotency_key,
            "idempotency_key",
            MAX_KEY_LENGTH,
            &mut problems,
        );
        let result = wire_result(wire.result, &mut problems).map_err(|e| corrupted(e.into()))?;
        let created_at = wire_time(wire.created_at, "created_at", &mut problems);
        let expires_at = wire_time(wire.expires_at, "expires_at", &mut problems);
        let status = wire_status(wire.status, &mut problems);
        let fingerprint = wire_fingerprint(wire.fingerprint, &mut problems);
        // Our own field: anything but a string is no owner.
        let owner = wire
            .owner
            .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok());
        match (
            operation_value,
            key_value,
            result,
            created_at,
            expires_at,
            status,
        ) {
            (
                Some(operation),
                Some(idempotency_key),
                Some(result),
                Some(created_at),
                Some(expires_at),
                Some(status),
            ) if problems.is_empty() => Ok(Self {
                operation,
                idempotency_key,
                result,
                created_at,
                expires_at,
                status,
                fingerprint,
                owner,
            }),
            _ => Err(IdempotencyError::InvalidRecord {
                operation: operation.to_owned(),
                key: key.to_owned(),
                problems: crate::error::FieldProblems(problems),
            }),
        }
    }
}

impl IdempotencyRecord {
    /// Decodes a well-formed record in one typed pass; `None` sends the bytes to the
    /// detailed decoder. Accepts exactly what that decoder accepts as valid, nothing more.
    fn from_json_fast(text: &str) -> Option<Self> {
        let wire: WireFast<'_> = serde_json::from_str(text).ok()?;
        let operation = wire.operation.trim();
        let key = wire.idempotency_key.trim();
        let mut problems = Vec::new();
        check_field("operation", operation, MAX_OPERATION_LENGTH, &mut problems);
        check_field("idempotency_key", key, MAX_KEY_LENGTH, &mut problems);
        if !problems.is_empty() || wire.result.get().contains("\\u") {
            return None;
        }
        Some(Self {
            operation: operation.to_owned(),
            idempotency_key: key.to_owned(),
            result: wire.result.to_owned(),
            created_at: parse_timestamp(wire.created_at)?,
            expires_at: parse_timestamp(wire.expires_at)?,
            status: wire.status,
            fingerprint: wire.fingerprint.map(std::borrow::Cow::into_owned),
            owner: wire.owner.map(std::borrow::Cow::into_owned),
        })
    }
}

fn completed() -> RecordStatus {
    RecordStatus::Completed
}

/// The typed shape of a well-formed record. Strings with escapes, numbers for
/// timestamps, `null` where a value is required, duplicate fields: all fail here and go
/// to the detailed decoder.
#[derive(Deserialize)]
struct WireFast<'a> {
    #[serde(borrow)]
    operation: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    idempotency_key: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    result: &'a RawValue,
    created_at: &'a str,
    expires_at: &'a str,
    #[serde(default = "completed")]
    status: RecordStatus,
    #[serde(borrow, default)]
    fingerprint: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    owner: Option<std::borrow::Cow<'a, str>>,
}

/// Appends `s` as a JSON string with `serde_json`'s escaping (the same as orjson's).
fn push_json_str(out: &mut String, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        // Serializing a str cannot fail.
        out.push_str(&serde_json::to_string(s).unwrap_or_default());
    }
}

fn wire_result(
    raw: Option<&RawValue>,
    problems: &mut Vec<FieldProblem>,
) -> std::result::Result<Option<Box<RawValue>>, serde_json::Error> {
    let Some(raw) = raw else {
        problems.push(FieldProblem::new("result", "missing", "field required"));
        return Ok(None);
    };
    // serde_json checks escapes only for hex digits when it captures raw text; a full
    // parse rejects lone surrogates as pydantic does.
    if raw.get().contains("\\u") {
        serde_json::from_str::<serde_json::Value>(raw.get())?;
    }
    Ok(Some(raw.to_owned()))
}

fn wire_status(raw: Option<&RawValue>, problems: &mut Vec<FieldProblem>) -> Option<RecordStatus> {
    // Records written before the field existed read as completed.
    let Some(raw) = raw else {
        return Some(RecordStatus::Completed);
    };
    let status = serde_json::from_str::<RecordStatus>(raw.get()).ok();
    if status.is_none() {
        problems.push(FieldProblem::new(
            "status",
            "literal_error",
            "must be 'pending' or 'completed'",
        ));
    }
    status
}

fn wire_fingerprint(raw: Option<&RawValue>, problems: &mut Vec<FieldProblem>) -> Option<String> {
    let raw = raw?;
    match serde_json::from_str::<Option<String>>(raw.get()) {
        Ok(f) => f,
        Err(_) => {
            problems.push(FieldProblem::new(
                "fingerprint",
                "string_type",
                "must be a string or null",
            ));
            None
        }
    }
}

fn wire_str(
    raw: Option<&RawValue>,
    field: &str,
    max: usize,
    problems: &mut Vec<FieldProblem>,
) -> Option<String> {
    let Some(raw) = raw else {
        problems.push(FieldProblem::new(field, "missing", "field required"));
        return None;
    };
    match serde_json::from_str::<String>(raw.get()) {
        Ok(s) => {
            let trimmed = s.trim();
            let before = problems.len();
            check_field(field, trimmed, max, problems);
            (problems.len() == before).then(|| trimmed.to_owned())
        }
        Err(_) => {
            problems.push(FieldProblem::new(field, "string_type", "must be a string"));
            None
        }
    }
}

fn wire_time(
    raw: Option<&RawValue>,
    field: &str,
    problems: &mut Vec<FieldProblem>,
) -> Option<OffsetDateTime> {
    let Some(raw) = raw else {
        problems.push(FieldProblem::new(field, "missing", "field required"));
        return None;
    };
    // The common case, a string without escapes, is read without allocating.
    let parsed = if let Ok(text) = serde_json::from_str::<&str>(raw.get()) {
        parse_timestamp(text)
    } else {
        match serde_json::from_str::<serde_json::Value>(raw.get()) {
            Ok(serde_json::Value::String(s)) => parse_timestamp(&s),
            Ok(serde_json::Value::Number(n)) => n.as_f64().and_then(from_unix),
            _ => {
                problems.push(FieldProblem::new(
                    field,
                    "datetime_type",
                    "must be a timestamp",
                ));
                return None;
            }
        }
    };
    if parsed.is_none() {
        problems.push(FieldProblem::new(
            field,
            "datetime_from_date_parsing",
            "not a valid timestamp",
        ));
    }
    parsed
}

/// Captures a present field's raw text, `null` included (absent stays `None`).
fn present<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct WireIn<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    operation: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    idempotency_key: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    result: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    created_at: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    expires_at: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    status: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    fingerprint: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    owner: Option<&'a RawValue>,
}
