//! Request fingerprints: what makes two calls under one key the same request.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{IdempotencyError, Result};
use crate::wire::json_text::{FINGERPRINT_MAX_DEPTH, parse_python_json, write_canonical};
use crate::wire::python_floats::{CanonicalFormatter, NonFinite, Pending};

/// Hashes named values into a request fingerprint, equal to the Python library's
/// `fingerprint_of(**values)` for the same values.
///
/// `values` is usually a struct or a map (the named values); it is turned into JSON,
/// object keys are sorted by code point at every level, and the SHA-256 of the compact
/// text (non-ASCII written as is, integers of any width in full, floats spelled as
/// Python's `repr`) is returned in lowercase hex.
///
/// **Exact JSON text.** A [`RawValue`](serde_json::value::RawValue) (alone, or as a field
/// or map value) is read from its text, as Python's `json.loads` reads it: integers
/// beyond 64 bits stay exact (`18446744073709551616`), `1.0` stays a float, a repeated
/// key takes its last value, `NaN`/`Infinity` are kept. Use it for numbers that a
/// [`serde_json::Value`] would turn into floats (this crate does not enable
/// `serde_json/arbitrary_precision`).
///
/// # Errors
/// [`IdempotencyError::Fingerprint`] when a value has no JSON form (for example a map
/// with non-string keys, or raw text that is not JSON).
///
/// # Examples
/// ```
/// # fn main() -> Result<(), idempotency_core::IdempotencyError> {
/// use serde_json::json;
/// let a = idempotency_core::fingerprint_of(&json!({"amount": 100, "currency": "EUR"}))?;
/// let b = idempotency_core::fingerprint_of(&json!({"currency": "EUR", "amount": 100}))?;
/// assert_eq!(a, b);
/// assert_eq!(a.len(), 64);
///
/// // Exact JSON text, integers beyond 64 bits included:
/// let raw = serde_json::value::RawValue::from_string(r#"{"n": 18446744073709551616}"#.into())
///     .map_err(idempotency_core::IdempotencyError::fingerprint)?;
/// assert_eq!(
///     idempotency_core::canonical_json(&raw)?,
///     r#"{"n":18446744073709551616}"#
/// );
/// // The same number as a Rust integer:
/// let mut values = std::collections::BTreeMap::new();
/// values.insert("n", u128::from(u64::MAX) + 1);
/// assert_eq!(idempotency_core::fingerprint_of(&values)?, idempotency_core::fingerprint_of(&raw)?);
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
/// [`IdempotencyError::Fingerprint`] when a value has no JSON form.
///
/// # Examples
/// ```
/// # fn main() -> Result<(), idempotency_core::IdempotencyError> {
/// let text = idempotency_core::canonical_json(&serde_json::json!({"b": 1e-7, "a": "é"}))?;
/// assert_eq!(text, r#"{"a":"é","b":1e-07}"#);
/// assert_eq!(idempotency_core::canonical_json(&i128::MIN)?, i128::MIN.to_string());
/// # Ok(()) }
/// ```
pub fn canonical_json<T: Serialize + ?Sized>(values: &T) -> Result<String> {
    // Integers of every width are written in full and raw text verbatim; the text is then
    // read back as Python would read it, keys sorted and numbers respelled.
    // `NaN` and the infinities are written as Python writes them (`serde_json` alone
    // writes `null`).
    let pending = Pending::new(None);
    let mut buf = Vec::with_capacity(128);
    let mut ser =
        serde_json::Serializer::with_formatter(&mut buf, CanonicalFormatter { pending: &pending });
    values
        .serialize(NonFinite {
            inner: &mut ser,
            pending: &pending,
        })
        .map_err(IdempotencyError::fingerprint)?;
    let text = String::from_utf8(buf).map_err(IdempotencyError::fingerprint)?;
    let json =
        parse_python_json(&text, FINGERPRINT_MAX_DEPTH).map_err(IdempotencyError::fingerprint)?;
    let mut out = String::with_capacity(text.len());
    write_canonical(&json, &mut out);
    Ok(out)
}
