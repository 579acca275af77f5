//! Which results a record can hold, and the record left when one cannot.
//!
//! A result is stored only if the decoder every claim uses (Python's rules, see
//! `record.rs`) reads it back: a lone surrogate escape (`"\ud83d"`, which JavaScript's
//! `JSON.stringify` writes for a string cut inside an emoji), nesting beyond pydantic's
//! 200 levels or an integer of more than 4300 digits would otherwise be written as a
//! completed record that every later claim finds unreadable and takes over, running the
//! action again. When the action has run and its result cannot be stored, the key keeps
//! a stored error holding [`unstorable_marker`] instead: every retry gets
//! [`IdempotencyError::ResultNotStorable`], none runs the action again.

use serde_json::value::RawValue;

use crate::error::{IdempotencyError, Result};
use crate::wire::json_text::{
    PYDANTIC_MAX_DEPTH, parse_python_json, push_json_string, write_replayed,
};
use crate::wire::plain::is_plain_value;

/// The one member of a stored error that marks a result that could not be stored.
const MARKER: &str = "idempotency_kit_result_not_storable";

/// Checks that a record holding `result` reads back as a record: the JSON text must be
/// JSON to Python (no lone surrogate escape, integers of at most 4300 digits) and nest
/// at most 199 containers deep (the record is one more).
///
/// # Errors
/// [`IdempotencyError::Serialization`] saying why, when it cannot be stored.
///
/// # Examples
/// ```
/// use idempotency_core::{RawValue, check_storable};
/// let fine = RawValue::from_string(r#"{"emoji":"\ud83d\ude00"}"#.to_owned()).unwrap();
/// assert!(check_storable(&fine).is_ok());
/// let cut = RawValue::from_string(r#""\ud83d""#.to_owned()).unwrap();
/// assert!(check_storable(&cut).is_err());
/// ```
pub fn check_storable(result: &RawValue) -> Result<()> {
    storable_form(result).map(drop)
}

/// The form a record holds `result` in: the text itself when every reader takes it as
/// it is (nearly always), else the text a reader replays (a repeated key's last value,
/// `-0` as `0`, a float beyond the `f64` range as `null`), so that every store holds,
/// and every reader gets, the same text. Every store builds its finished records
/// through this (`Lease::finished_record_at`).
///
/// # Errors
/// As [`check_storable`].
///
/// # Examples
/// ```
/// use idempotency_core::{RawValue, storable_form};
/// let raw = RawValue::from_string("[-0,1e400]".to_owned()).unwrap();
/// assert_eq!(storable_form(&raw).unwrap().get(), "[0,null]");
/// ```
pub fn storable_form(result: &RawValue) -> Result<Box<RawValue>> {
    let text = result.get();
    if is_plain_value(text) {
        return Ok(result.to_owned());
    }
    // Inside the record's own object: one level less to spare.
    let json = parse_python_json(text, PYDANTIC_MAX_DEPTH - 1).map_err(|e| {
        IdempotencyError::serialization(format!(
            "the result cannot be stored as a record any client can read back ({e})"
        ))
    })?;
    let mut out = String::with_capacity(text.len());
    write_replayed(&json, &mut out);
    let mut de = serde_json::Deserializer::from_str(&out);
    de.disable_recursion_limit();
    let raw = <Box<RawValue> as serde::Deserialize>::deserialize(&mut de)
        .map_err(IdempotencyError::serialization)?;
    de.end().map_err(IdempotencyError::serialization)?;
    Ok(raw)
}

/// The stored error written under a key whose action ran but whose result could not be
/// stored: `{"idempotency_kit_result_not_storable": reason}`.
///
/// # Examples
/// ```
/// let marker = idempotency_core::unstorable_marker("nested too deep");
/// assert_eq!(idempotency_core::unstorable_reason(&marker).as_deref(), Some("nested too deep"));
/// ```
pub fn unstorable_marker(reason: &str) -> Box<RawValue> {
    let mut text = String::with_capacity(MARKER.len() + reason.len() + 8);
    text.push('{');
    push_json_string(&mut text, MARKER);
    text.push(':');
    push_json_string(&mut text, reason);
    text.push('}');
    RawValue::from_string(text).unwrap_or_else(|_| {
        // Unreachable: the text is an object of one escaped string; kept total anyway.
        RawValue::from_string(format!("{{\"{MARKER}\":\"\"}}")).unwrap_or_default()
    })
}

/// The reason held by a stored error that is [`unstorable_marker`]'s, or `None` for any
/// other stored error.
pub fn unstorable_reason(stored: &RawValue) -> Option<String> {
    let text = stored.get();
    if !text.contains(MARKER) {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let object = value.as_object()?;
    if object.len() != 1 {
        return None;
    }
    object.get(MARKER)?.as_str().map(str::to_owned)
}

/// Whether `bytes` are, by their structure alone, a finished record: a JSON object
/// (after any whitespace and a UTF-8 byte-order mark) whose top-level `status` member is
/// the string `"completed"` or `"stored_error"`, or a whole object with no `status`
/// member but a `result` one (the decoder reads a record without `status` as completed),
/// whatever
/// else in it a decoder refuses. A claim never takes such a value over (its action ran),
/// even when no decoder can read it. Reads without recursion, so any bytes are safe.
///
/// # Examples
/// ```
/// use idempotency_core::looks_finished;
/// assert!(looks_finished(br#"{"result":"\ud83d","status":"completed"}"#));
/// assert!(looks_finished(br#"{"result":1,"expires_at":"2099-01-01T00:00:00"}"#));
/// assert!(!looks_finished(br#"{"result":{"status":"completed"},"status":"pending"}"#));
/// assert!(!looks_finished(b"not json"));
/// assert!(!looks_finished(br#"{"operation":"op","result":"#)); // cut short: unknown
/// ```
pub fn looks_finished(bytes: &[u8]) -> bool {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let start = bytes
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if start.is_none_or(|at| bytes[at] != b'{') {
        return false;
    }
    let mut depth = 0usize;
    // At depth 1: whether the next string is a member's name, and the last name read.
    let mut expect_key = false;
    let mut after_colon = false;
    let mut key: &[u8] = b"";
    let (mut has_status, mut has_result, mut closed) = (false, false, false);
    let mut i = start.unwrap_or(0);
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let from = i + 1;
                let mut end = from;
                while end < bytes.len() && bytes[end] != b'"' {
                    end += if bytes[end] == b'\\' { 2 } else { 1 };
                }
                let Some(text) = bytes.get(from..end) else {
                    break;
                };
                if depth == 1 {
                    if expect_key {
                        key = text;
                        expect_key = false;
                        has_status |= key == b"status";
                        has_result |= key == b"result";
                    } else if after_colon
                        && key == b"status"
                        && (text == b"completed" || text == b"stored_error")
                    {
                        return true;
                    }
                }
                after_colon = false;
                i = end + 1;
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                expect_key = depth == 1;
                after_colon = false;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    closed = true;
                    break;
                }
            }
            b',' => {
                expect_key = depth == 1;
                after_colon = false;
            }
            b':' => after_colon = depth == 1,
            b' ' | b'\t' | b'\n' | b'\r' => {}
            _ => after_colon = false,
        }
        i += 1;
    }
    // No `status` at all in a whole object: the decoder's default is `completed`. (A value
    // cut short says nothing: our writers put `status` after `result`, so a truncated
    // reservation and a truncated completion look alike.)
    closed && !has_status && has_result
}
