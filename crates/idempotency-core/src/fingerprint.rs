//! Request fingerprints: what makes two calls under one key the same request.

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{IdempotencyError, Result};
use crate::json_text::{FloatStyle, to_json_bytes};

/// Hashes named values into a request fingerprint, equal to the Python library's
/// `fingerprint_of(**values)` for the same values.
///
/// `values` is usually a struct or a map (the named values); it is turned into JSON,
/// object keys are sorted by code point at every level, and the SHA-256 of the compact
/// text (non-ASCII written as is, floats spelled as Python's `repr`) is returned in
/// lowercase hex.
///
/// # Errors
/// [`IdempotencyError::Serialization`] when a value has no JSON form (for example a map
/// with non-string keys).
///
/// # Examples
/// ```
/// # fn main() -> Result<(), idempotency_core::IdempotencyError> {
/// use serde_json::json;
/// let a = idempotency_core::fingerprint_of(&json!({"amount": 100, "currency": "EUR"}))?;
/// let b = idempotency_core::fingerprint_of(&json!({"currency": "EUR", "amount": 100}))?;
/// assert_eq!(a, b);
/// assert_eq!(a.len(), 64);
/// # Ok(()) }
/// ```
pub fn fingerprint_of<T: Serialize + ?Sized>(values: &T) -> Result<String> {
    let text = canonical_json(values)?;
    let digest = Sha256::digest(text.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push(char::from(HEX[usize::from(byte >> 4)]));
        hex.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    Ok(hex)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The canonical text that [`fingerprint_of`] hashes: Python's
/// `json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`.
///
/// # Errors
/// [`IdempotencyError::Serialization`] when a value has no JSON form.
///
/// # Examples
/// ```
/// # fn main() -> Result<(), idempotency_core::IdempotencyError> {
/// let text = idempotency_core::canonical_json(&serde_json::json!({"b": 1e-7, "a": "é"}))?;
/// assert_eq!(text, r#"{"a":"é","b":1e-07}"#);
/// # Ok(()) }
/// ```
pub fn canonical_json<T: Serialize + ?Sized>(values: &T) -> Result<String> {
    let mut value = serde_json::to_value(values).map_err(IdempotencyError::serialization)?;
    sort_keys(&mut value);
    let bytes = to_json_bytes(&value, FloatStyle::PythonRepr)?;
    String::from_utf8(bytes).map_err(IdempotencyError::serialization)
}

fn sort_keys(value: &mut Value) {
    match value {
        Value::Object(map) => {
            // Byte order of UTF-8 is code point order, which is Python's `sort_keys`.
            map.sort_keys();
            map.values_mut().for_each(sort_keys);
        }
        Value::Array(items) => items.iter_mut().for_each(sort_keys),
        _ => {}
    }
}
