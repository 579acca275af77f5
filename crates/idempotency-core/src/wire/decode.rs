//! The decoder: stored bytes to a record, as the Python library 0.5.0 reads them
//! (pydantic 2's `model_validate_json`, then its expiry check). A fast typed pass takes
//! the well-formed records; anything it does not accept goes to the detailed decoder,
//! which decides as Python does.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::constants::{MAX_KEY_LENGTH, MAX_OPERATION_LENGTH};
use crate::error::{BoxError, FieldProblem, FieldProblems, IdempotencyError, Result};
use crate::identity::{RecordId, check_field};
use crate::metric_labels::ErrorType;
use crate::record::{IdempotencyRecord, RecordStatus};
use crate::wire::json_text::{
    Json, PYDANTIC_MAX_DEPTH, dict_members, parse_python_json, write_replayed,
};
use crate::wire::plain::is_plain_value;
use crate::wire::timestamp::{
    Stamp, StampError, from_unix_float, from_unix_int, parse_timestamp_str,
};

/// Why stored bytes are not a record, as the Python library 0.5.0 would refuse them.
/// It knows the metric label a store counts it under ([`DecodeError::error_type`]) and
/// becomes the crate's error with the storage key that was read
/// ([`DecodeError::into_error`]).
///
/// # Examples
/// ```
/// use idempotency_core::{DecodeError, ErrorType, IdempotencyRecord};
/// let naive = br#"{"operation":"op","idempotency_key":"k","result":1,
///     "created_at":"2026-01-01T00:00:00","expires_at":"2026-01-01T00:30:00"}"#;
/// let err = IdempotencyRecord::decode(naive).unwrap_err();
/// assert!(matches!(err, DecodeError::NaiveExpiry));
/// assert_eq!(err.error_type(), ErrorType::Deserialization);
/// let err = IdempotencyRecord::decode(b"[1]").unwrap_err();
/// assert_eq!(err.error_type(), ErrorType::Validation);
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes are not UTF-8.
    NotUtf8(std::str::Utf8Error),
    /// The text is not JSON to Python: a BOM, trailing characters, a lone surrogate
    /// escape, nesting beyond 200, an integer of more than 4300 digits, …
    NotJson(BoxError),
    /// JSON of the wrong shape, with every problem (one `model_type` problem at the root
    /// when the JSON is not an object).
    Shape(FieldProblems),
    /// An expiry without a timezone: pydantic reads it, the Python library's expiry
    /// check then fails (`can't compare offset-naive and offset-aware datetimes`).
    NaiveExpiry,
}

impl DecodeError {
    /// The error type a store counts, as the Python library counts it:
    /// `deserialization_error` for a record that parses but cannot be used (an expiry
    /// without a timezone), `validation_error` for the rest.
    pub fn error_type(&self) -> ErrorType {
        match self {
            Self::NaiveExpiry => ErrorType::Deserialization,
            Self::NotUtf8(_) | Self::NotJson(_) | Self::Shape(_) => ErrorType::Validation,
        }
    }

    /// The crate's error for the storage key `operation:key` that held the bytes: a wrong
    /// shape is [`IdempotencyError::InvalidRecord`], the rest
    /// [`IdempotencyError::CorruptedRecord`] carrying this error as its source.
    pub fn into_error(self, operation: &str, key: &str) -> IdempotencyError {
        match self {
            Self::Shape(problems) => IdempotencyError::InvalidRecord {
                operation: operation.to_owned(),
                key: key.to_owned(),
                problems,
            },
            other => IdempotencyError::CorruptedRecord {
                operation: operation.to_owned(),
                key: key.to_owned(),
                source: Box::new(other),
            },
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotUtf8(e) => write!(f, "not UTF-8: {e}"),
            Self::NotJson(e) => write!(f, "not JSON: {e}"),
            Self::Shape(problems) => write!(f, "not a record: {problems}"),
            Self::NaiveExpiry => f.write_str(
                "expires_at has no timezone and cannot be compared with the current time",
            ),
        }
    }
}

impl std::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::NotUtf8(e) => Some(e),
            Self::NotJson(e) => Some(e.as_ref()),
            Self::Shape(_) | Self::NaiveExpiry => None,
        }
    }
}

impl IdempotencyRecord {
    /// Decodes stored bytes as the Python library 0.5.0 does (pydantic 2's
    /// `model_validate_json`, then its expiry check). `operation` and `key` name the
    /// storage key that was read (for the error); the record keeps the identifiers stored
    /// in it. The decoding rules are listed in `docs/redis.md` ("Conformance").
    ///
    /// # Errors
    /// What [`IdempotencyRecord::decode`] refuses, as [`DecodeError::into_error`] makes
    /// it: [`IdempotencyError::CorruptedRecord`] (not UTF-8, not JSON to Python, an
    /// expiry without a timezone; [`IdempotencyError::record_error_type`] tells that one
    /// apart) or [`IdempotencyError::InvalidRecord`] (JSON of the wrong shape).
    pub fn from_json(bytes: &[u8], operation: &str, key: &str) -> Result<Self> {
        Self::decode(bytes).map_err(|e| e.into_error(operation, key))
    }

    /// Decodes stored bytes as [`IdempotencyRecord::from_json`] does, failing with the
    /// typed [`DecodeError`].
    ///
    /// # Errors
    /// [`DecodeError`]: why Python would refuse the bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let text = std::str::from_utf8(bytes).map_err(DecodeError::NotUtf8)?;
        // Well-formed records (nearly all reads) take the typed fast path; anything it
        // does not accept goes the detailed way, which decides as Python does.
        if let Some(record) = Self::from_json_fast(text) {
            return Ok(record);
        }
        Self::from_json_detailed(text)
    }

    /// Decodes with a parser that reads JSON as pydantic does, field by field.
    fn from_json_detailed(text: &str) -> Result<Self, DecodeError> {
        let corrupted = |source: BoxError| DecodeError::NotJson(source);
        let invalid = |problems: Vec<FieldProblem>| DecodeError::Shape(FieldProblems(problems));
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
            return Err(DecodeError::NaiveExpiry);
        };
        Ok(Self::assemble(
            RecordId::from_validated(&operation_value, &idempotency_key),
            result,
            // A naive creation time is kept as UTC (Python keeps it naive; nothing
            // decides on it).
            (created_at.instant(), expires_at),
            status,
            fingerprint,
            owner,
        ))
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
        let created_at = parse_timestamp_str(wire.created_at).ok()?.instant();
        Some(Self::assemble(
            RecordId::from_validated(operation, key),
            wire.result.to_owned(),
            (created_at, expires_at),
            status,
            wire.fingerprint.map(Cow::into_owned),
            wire.owner.map(Cow::into_owned),
        ))
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
    /// library counts it ([`DecodeError::error_type`]); `None` for errors that are not
    /// about a stored record.
    pub fn record_error_type(&self) -> Option<ErrorType> {
        match self {
            Self::CorruptedRecord { source, .. } => Some(
                source
                    .downcast_ref::<DecodeError>()
                    .map_or(ErrorType::Validation, DecodeError::error_type),
            ),
            Self::InvalidRecord { .. } => Some(ErrorType::Validation),
            _ => None,
        }
    }
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
