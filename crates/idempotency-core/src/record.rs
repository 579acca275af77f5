//! The idempotency record and its wire format.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;

use crate::constants::{MAX_KEY_LENGTH, MAX_OPERATION_LENGTH};
use crate::error::{FieldProblem, IdempotencyError, Result};
use crate::identifiers::{RecordId, check_field, validate_identifiers};
use crate::json_text::{
    Json, MAX_INT_DIGITS, PYDANTIC_MAX_DEPTH, dict_members, parse_python_json, write_replayed,
};
use crate::timestamp::{
    Stamp, StampError, from_unix_float, from_unix_int, parse_timestamp_str, to_micros,
    write_timestamp,
};

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
    pub fn id(&self) -> RecordId {
        RecordId::from_validated(&self.operation, &self.idempotency_key)
    }

    /// A record of parts whose identifiers are valid already (validated by
    /// [`IdempotencyRecord::from_parts`], or taken from a [`RecordId`]): nothing is
    /// validated again.
    pub(crate) fn of_valid_parts(parts: RecordParts) -> Self {
        Self {
            operation: parts.operation,
            idempotency_key: parts.idempotency_key,
            result: parts.result,
            created_at: parts.created_at,
            expires_at: parts.expires_at,
            status: parts.status,
            fingerprint: parts.fingerprint,
            owner: parts.owner,
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

    /// Decodes stored bytes as the Python library 0.5.0 does (pydantic 2's
    /// `model_validate_json`, then its expiry check). `operation` and `key` name the
    /// storage key that was read (for the error); the record keeps the identifiers stored
    /// in it. The decoding rules are listed in `docs/redis.md` ("Conformance").
    ///
    /// # Errors
    /// - [`IdempotencyError::CorruptedRecord`]: not UTF-8, not JSON to Python (a BOM,
    ///   trailing characters, a lone surrogate escape, nesting beyond 200, an integer of
    ///   more than 4300 digits, …), or an expiry without a timezone, which the Python
    ///   library cannot compare with the current time
    ///   ([`IdempotencyError::record_error_type`] tells that one apart);
    /// - [`IdempotencyError::InvalidRecord`]: JSON of the wrong shape, with every problem
    ///   (one `model_type` problem at the root when the JSON is not an object).
    pub fn from_json(bytes: &[u8], operation: &str, key: &str) -> Result<Self> {
        let text = std::str::from_utf8(bytes).map_err(|e| IdempotencyError::CorruptedRecord {
            operation: operation.to_owned(),
            key: key.to_owned(),
            source: e.into(),
        })?;
        // Well-formed records (nearly all reads) take the typed fast path; anything it
        // does not accept goes the detailed way, which decides as Python does.
        if let Some(record) = Self::from_json_fast(text) {
            return Ok(record);
        }
        Self::from_json_detailed(text, operation, key)
    }

    /// Decodes with a parser that reads JSON as pydantic does, field by field.
    fn from_json_detailed(text: &str, operation: &str, key: &str) -> Result<Self> {
        let corrupted = |source: crate::error::BoxError| IdempotencyError::CorruptedRecord {
            operation: operation.to_owned(),
            key: key.to_owned(),
            source,
        };
        let invalid = |problems: Vec<FieldProblem>| IdempotencyError::InvalidRecord {
            operation: operation.to_owned(),
            key: key.to_owned(),
            problems: crate::error::FieldProblems(problems),
        };
        let json = parse_python_json(text, PYDANTIC_MAX_DEPTH).map_err(|e| corrupted(e.into()))?;
        let Json::Object(members) = &json else {
            return Err(invalid(vec![FieldProblem::new(
                "",
                "model_type",
                "a record must be a JSON object",
            )]));
        };
        // Python's dict: a repeated key takes its last value.
        let fields = dict_members(members);
        let get = |name: &str| fields.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        let mut problems = Vec::new();
        let operation_value = field_str(
            get("operation"),
            "operation",
            MAX_OPERATION_LENGTH,
            &mut problems,
        );
        let key_value = field_str(
            get("idempotency_key"),
            "idempotency_key",
            MAX_KEY_LENGTH,
            &mut problems,
        );
        let result = match get("result") {
            Some(value) => {
                let mut out = String::with_capacity(64);
                write_replayed(value, &mut out);
                Some(raw_value(&out).map_err(|e| corrupted(e.into()))?)
            }
            None => {
                problems.push(FieldProblem::new("result", "missing", "field required"));
                None
            }
        };
        let created_at = field_time(get("created_at"), "created_at", &mut problems);
        let expires_at = field_time(get("expires_at"), "expires_at", &mut problems);
        let status = field_status(get("status"), &mut problems);
        let fingerprint = field_fingerprint(get("fingerprint"), &mut problems);
        // Our own field, unknown to Python: anything but a string is no owner.
        let owner = match get("owner") {
            Some(Json::Str(s)) => Some(s.clone().into_owned()),
            _ => None,
        };
        let (
            Some(operation_value),
            Some(idempotency_key),
            Some(result),
            Some(created_at),
            Some(expires_at),
            Some(status),
        ) = (
            operation_value,
            key_value,
            result,
            created_at,
            expires_at,
            status,
        )
        else {
            return Err(invalid(problems));
        };
        if !problems.is_empty() {
            return Err(invalid(problems));
        }
        // Python validates the record, then compares its expiry with an aware "now":
        // an expiry without a timezone raises there, so the record is refused.
        let Stamp::Aware(expires_at) = expires_at else {
            return Err(corrupted(Box::new(NaiveExpiry)));
        };
        Ok(Self {
            operation: operation_value,
            idempotency_key,
            result,
            // A naive creation time is kept as UTC (Python keeps it naive; nothing
            // decides on it).
            created_at: created_at.instant(),
            expires_at,
            status,
            fingerprint,
            owner,
        })
    }

    /// Decodes a well-formed record in one typed pass; `None` sends the bytes to the
    /// detailed decoder. Accepts only what that decoder accepts, with the same outcome.
    fn from_json_fast(text: &str) -> Option<Self> {
        // A struct also deserializes from a JSON array; Python wants an object.
        if text
            .trim_start_matches([' ', '\t', '\n', '\r'])
            .as_bytes()
            .first()
            != Some(&b'{')
        {
            return None;
        }
        // Fails (so defers) on a result or an unknown field that is not plain.
        let wire: WireFast<'_> = serde_json::from_str(text).ok()?;
        let operation = wire.operation.trim();
        let key = wire.idempotency_key.trim();
        let mut problems = Vec::new();
        check_field("operation", operation, MAX_OPERATION_LENGTH, &mut problems);
        check_field("idempotency_key", key, MAX_KEY_LENGTH, &mut problems);
        if !problems.is_empty() {
            return None;
        }
        let status = match wire.status {
            None | Some("completed") => RecordStatus::Completed,
            Some("pending") => RecordStatus::Pending,
            Some("stored_error") => RecordStatus::StoredError,
            Some(_) => return None,
        };
        let Ok(Stamp::Aware(expires_at)) = parse_timestamp_str(wire.expires_at) else {
            return None;
        };
        Some(Self {
            operation: operation.to_owned(),
            idempotency_key: key.to_owned(),
            result: wire.result.to_owned(),
            created_at: parse_timestamp_str(wire.created_at).ok()?.instant(),
            expires_at,
            status,
            fingerprint: wire.fingerprint.map(Cow::into_owned),
            owner: wire.owner.map(Cow::into_owned),
        })
    }
}

/// Wraps checked JSON text; results nest up to pydantic's 200 levels, deeper than
/// `serde_json`'s default limit, so the limit is lifted (the raw value is read without
/// recursion).
fn raw_value(text: &str) -> std::result::Result<Box<RawValue>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    de.disable_recursion_limit();
    let raw = <Box<RawValue>>::deserialize(&mut de)?;
    de.end()?;
    Ok(raw)
}

// Here rather than in `error.rs`: the decision is about the record's wire format (which
// errors the decoder makes), and `error.rs` stays free of it.
impl IdempotencyError {
    /// The error type a store counts for a record it could not read, as the Python
    /// library counts it: `deserialization_error` for a record that parses but cannot be
    /// used (an expiry without a timezone), `validation_error` for the rest; `None` for
    /// errors that are not about a stored record.
    pub fn record_error_type(&self) -> Option<crate::traits::metrics::ErrorType> {
        match self {
            Self::CorruptedRecord { source, .. } if source.is::<NaiveExpiry>() => {
                Some(crate::traits::metrics::ErrorType::Deserialization)
            }
            Self::CorruptedRecord { .. } | Self::InvalidRecord { .. } => {
                Some(crate::traits::metrics::ErrorType::Validation)
            }
            _ => None,
        }
    }
}

/// An expiry without a timezone: pydantic reads it, the Python library's expiry check
/// then fails (`can't compare offset-naive and offset-aware datetimes`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct NaiveExpiry;

impl fmt::Display for NaiveExpiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expires_at has no timezone and cannot be compared with the current time")
    }
}

impl std::error::Error for NaiveExpiry {}

/// Whether a value of a stored record (the result, or an unknown field), which
/// `serde_json` has read (so: valid JSON to it, no `NaN`, no control character in a
/// string, no bad escape), also reads the same to Python and to the detailed decoder.
/// Unknown fields are checked too: pydantic parses the whole text before it looks at a
/// field, so one bad value anywhere makes the record unreadable to it.
///
/// It refuses, so that the detailed decoder decides:
/// - a `\u` escape (a lone surrogate is invalid to Python) and `\/` (re-spelt);
/// - an integer part of more than 4300 digits, in any number (`1…1e-5000` included:
///   Python refuses it), and a float beyond the `f64` range (replayed as `null`);
/// - nesting within 2 of pydantic's limit (the value sits inside the record);
/// - inside a container: whitespace and a repeated key (both re-written by the
///   detailed decoder), an escaped key or more than 32 keys (not compared here).
///
/// Conservative: `false` only costs a slower decode, never another outcome.
pub(crate) fn is_plain_value(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    // Open containers: whether each is an object, and where its keys start in `keys`.
    let mut stack: Vec<(bool, usize)> = Vec::new();
    let mut keys: Vec<&str> = Vec::new();
    let mut expect_key = false;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let start = i + 1;
                let mut j = start;
                let mut escaped = false;
                loop {
                    let rest = bytes.get(j..).unwrap_or_default();
                    match rest.iter().position(|&b| b == b'"' || b == b'\\') {
                        None => return false,
                        Some(at) if bytes[j + at] == b'"' => {
                            j += at;
                            break;
                        }
                        Some(at) => {
                            j += at;
                            if matches!(bytes.get(j + 1), Some(b'u' | b'/')) {
                                return false;
                            }
                            escaped = true;
                            j += 2;
                        }
                    }
                }
                if expect_key {
                    let Some(&(_, from)) = stack.last() else {
                        return false;
                    };
                    let key = &text[start..j];
                    if escaped || keys.len() - from >= 32 || keys[from..].contains(&key) {
                        return false;
                    }
                    keys.push(key);
                }
                expect_key = false;
                i = j + 1;
                continue;
            }
            open @ (b'{' | b'[') => {
                if stack.len() >= PYDANTIC_MAX_DEPTH - 2 {
                    return false;
                }
                stack.push((open == b'{', keys.len()));
                expect_key = open == b'{';
            }
            b'}' | b']' => {
                if let Some((_, from)) = stack.pop() {
                    keys.truncate(from);
                }
            }
            b',' => expect_key = stack.last().is_some_and(|&(object, _)| object),
            b' ' | b'\t' | b'\n' | b'\r' => return false,
            b'-' | b'0'..=b'9' => {
                let start = i;
                i += usize::from(bytes[i] == b'-');
                let digits_from = i;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                // Python's limit is on the digits before the point or exponent.
                let int_digits = i - digits_from;
                // `-0` is Python's integer 0: re-spelt by the detailed decoder.
                if bytes[start] == b'-'
                    && int_digits > 0
                    && bytes[digits_from..i].iter().all(|&b| b == b'0')
                    && !matches!(bytes.get(i), Some(b'.' | b'e' | b'E'))
                {
                    return false;
                }
                let float_from = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                if int_digits > MAX_INT_DIGITS
                    || (i > float_from && text[start..i].parse::<f64>().is_ok_and(f64::is_infinite))
                {
                    return false;
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    true
}

/// An identifier field as pydantic validates it: a string, stripped, 1 to `max`
/// characters, and (checked only when the length is right) without `:`.
fn field_str(
    value: Option<&Json<'_>>,
    field: &str,
    max: usize,
    problems: &mut Vec<FieldProblem>,
) -> Option<String> {
    match value {
        None => {
            problems.push(FieldProblem::new(field, "missing", "field required"));
            None
        }
        Some(Json::Str(s)) => {
            let trimmed = s.trim();
            let mut found = Vec::new();
            check_field(field, trimmed, max, &mut found);
            // pydantic runs the `:` check only on a value of the right length.
            if found.iter().any(|p| p.kind != "value_error") {
                found.retain(|p| p.kind != "value_error");
            }
            let ok = found.is_empty();
            problems.append(&mut found);
            ok.then(|| trimmed.to_owned())
        }
        Some(_) => {
            problems.push(FieldProblem::new(field, "string_type", "must be a string"));
            None
        }
    }
}

/// `status`: absent reads as completed (records written before the field existed).
fn field_status(
    value: Option<&Json<'_>>,
    problems: &mut Vec<FieldProblem>,
) -> Option<RecordStatus> {
    match value {
        None => Some(RecordStatus::Completed),
        Some(Json::Str(s)) if s == "pending" => Some(RecordStatus::Pending),
        Some(Json::Str(s)) if s == "completed" => Some(RecordStatus::Completed),
        Some(Json::Str(s)) if s == "stored_error" => Some(RecordStatus::StoredError),
        Some(_) => {
            problems.push(FieldProblem::new(
                "status",
                "literal_error",
                "must be 'pending' or 'completed'",
            ));
            None
        }
    }
}

/// `fingerprint`: a string or `null`.
fn field_fingerprint(value: Option<&Json<'_>>, problems: &mut Vec<FieldProblem>) -> Option<String> {
    match value {
        None | Some(Json::Null) => None,
        Some(Json::Str(s)) => Some(s.clone().into_owned()),
        Some(_) => {
            problems.push(FieldProblem::new(
                "fingerprint",
                "string_type",
                "must be a string or null",
            ));
            None
        }
    }
}

/// A timestamp field as pydantic reads a `datetime` from JSON.
fn field_time(
    value: Option<&Json<'_>>,
    field: &str,
    problems: &mut Vec<FieldProblem>,
) -> Option<Stamp> {
    let read = match value {
        None => {
            problems.push(FieldProblem::new(field, "missing", "field required"));
            return None;
        }
        Some(Json::Str(s)) => parse_timestamp_str(s),
        Some(Json::Number(text)) => {
            if text.bytes().any(|b| matches!(b, b'.' | b'e' | b'E')) {
                // A number pydantic cannot turn into a `datetime` is `datetime_parsing`,
                // whichever way it fails.
                text.parse::<f64>()
                    .ok()
                    .and_then(|f| from_unix_float(f).ok())
                    .map(Stamp::Aware)
                    .ok_or(StampError::Parsing)
            } else {
                match text.parse::<i64>() {
                    Ok(i) => from_unix_int(i)
                        .map(Stamp::Aware)
                        .map_err(|_| StampError::Parsing),
                    // An integer beyond 64 bits is not a number pydantic takes here.
                    Err(_) => Err(StampError::Type),
                }
            }
        }
        Some(Json::NonFinite(_)) => Err(StampError::Parsing),
        Some(_) => Err(StampError::Type),
    };
    match read {
        Ok(stamp) => Some(stamp),
        Err(e) => {
            let message = match e {
                StampError::Type => "must be a timestamp",
                _ => "not a valid timestamp",
            };
            problems.push(FieldProblem::new(field, e.kind(), message));
            None
        }
    }
}

/// The typed shape of a well-formed record. Strings with escapes are owned; numbers for
/// timestamps, `null` where a value is required, a field twice, `NaN`, a result or an
/// unknown field that is not plain ([`is_plain_value`]): all fail here and go to the
/// detailed decoder. Written by hand so that unknown fields are seen (and checked)
/// rather than skipped, without a pass over the whole text.
struct WireFast<'a> {
    operation: Cow<'a, str>,
    idempotency_key: Cow<'a, str>,
    result: &'a RawValue,
    created_at: &'a str,
    expires_at: &'a str,
    /// A present `status` must be a string (`null` is refused by pydantic).
    status: Option<&'a str>,
    fingerprint: Option<Cow<'a, str>>,
    owner: Option<Cow<'a, str>>,
}

/// A string borrowed from the input when it has no escape.
struct BorrowedStr<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for BorrowedStr<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = BorrowedStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> std::result::Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(Visit)
    }
}

impl<'de> Deserialize<'de> for WireFast<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = WireFast<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a record")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                use serde::de::Error as _;
                fn set<T, E: serde::de::Error>(
                    slot: &mut Option<T>,
                    value: T,
                    name: &'static str,
                ) -> std::result::Result<(), E> {
                    if slot.replace(value).is_some() {
                        return Err(E::duplicate_field(name));
                    }
                    Ok(())
                }
                let (mut operation, mut key, mut result, mut created, mut expires) =
                    (None, None, None, None, None);
                let (mut status, mut fingerprint, mut owner) = (None, None, None);
                while let Some(field) = map.next_key::<BorrowedStr<'de>>()? {
                    match field.0.as_ref() {
                        "operation" => set(
                            &mut operation,
                            map.next_value::<BorrowedStr<'de>>()?.0,
                            "operation",
                        )?,
                        "idempotency_key" => set(
                            &mut key,
                            map.next_value::<BorrowedStr<'de>>()?.0,
                            "idempotency_key",
                        )?,
                        "result" => {
                            let raw: &'de RawValue = map.next_value()?;
                            if !is_plain_value(raw.get()) {
                                return Err(A::Error::custom("result is not plain"));
                            }
                            set(&mut result, raw, "result")?;
                        }
                        "created_at" => set(&mut created, map.next_value()?, "created_at")?,
                        "expires_at" => set(&mut expires, map.next_value()?, "expires_at")?,
                        "status" => set(&mut status, map.next_value::<&'de str>()?, "status")?,
                        "fingerprint" => set(
                            &mut fingerprint,
                            map.next_value::<Option<BorrowedStr<'de>>>()?,
                            "fingerprint",
                        )?,
                        "owner" => set(
                            &mut owner,
                            map.next_value::<Option<BorrowedStr<'de>>>()?,
                            "owner",
                        )?,
                        // Ignored by both libraries, but parsed by Python first.
                        _ => {
                            let raw: &'de RawValue = map.next_value()?;
                            if !is_plain_value(raw.get()) {
                                return Err(A::Error::custom("unknown field is not plain"));
                            }
                        }
                    }
                }
                Ok(WireFast {
                    operation: operation.ok_or_else(|| A::Error::missing_field("operation"))?,
                    idempotency_key: key
                        .ok_or_else(|| A::Error::missing_field("idempotency_key"))?,
                    result: result.ok_or_else(|| A::Error::missing_field("result"))?,
                    created_at: created.ok_or_else(|| A::Error::missing_field("created_at"))?,
                    expires_at: expires.ok_or_else(|| A::Error::missing_field("expires_at"))?,
                    status,
                    fingerprint: fingerprint.flatten().map(|f| f.0),
                    owner: owner.flatten().map(|o| o.0),
                })
            }
        }
        d.deserialize_map(Visit)
    }
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
