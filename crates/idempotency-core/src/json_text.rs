//! JSON text exactly as the Python library writes it.
//!
//! Records are written by orjson, fingerprints hash the text of Python's `json.dumps`.
//! Both put non-ASCII characters as raw UTF-8 and escape only `"`, `\` and control
//! characters (`\b \f \n \r \t` short, the rest `\u00XX` in lowercase hex), which is what
//! `serde_json` does too. They differ from `serde_json`, and from each other, in how they
//! spell floats; this module supplies those spellings as `serde_json` formatters.

use std::io;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::error::{IdempotencyError, Result};

/// Which writer's float spelling to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FloatStyle {
    /// orjson: decimal for `1e-5 <= |x| < 1e16`, else `1e-7`, `1e+16` (no exponent padding).
    Orjson,
    /// Python `repr`: decimal for `1e-4 <= |x| < 1e16`, else `1e-05`, `1e+16` (two digits at least).
    PythonRepr,
}

/// Writes a finite float in the given style. `shortest_exp` is Rust's `{:e}` text of the
/// value, which holds the shortest digits that round-trip.
fn write_float(out: &mut Vec<u8>, shortest_exp: &str, style: FloatStyle) {
    let (negative, rest) = match shortest_exp.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, shortest_exp),
    };
    let (mantissa, exp) = rest.split_once('e').unwrap_or((rest, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if negative {
        out.push(b'-');
    }
    let low = match style {
        FloatStyle::Orjson => -5,
        FloatStyle::PythonRepr => -4,
    };
    if (low..16).contains(&exp) {
        if exp >= 0 {
            let int_len = (exp + 1) as usize;
            if digits.len() <= int_len {
                out.extend_from_slice(digits.as_bytes());
                out.extend(std::iter::repeat_n(b'0', int_len - digits.len()));
                out.extend_from_slice(b".0");
            } else {
                out.extend_from_slice(&digits.as_bytes()[..int_len]);
                out.push(b'.');
                out.extend_from_slice(&digits.as_bytes()[int_len..]);
            }
        } else {
            out.extend_from_slice(b"0.");
            out.extend(std::iter::repeat_n(b'0', (-exp - 1) as usize));
            out.extend_from_slice(digits.as_bytes());
        }
    } else {
        out.extend_from_slice(&digits.as_bytes()[..1]);
        if digits.len() > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits.as_bytes()[1..]);
        }
        out.push(b'e');
        out.push(if exp < 0 { b'-' } else { b'+' });
        let magnitude = exp.unsigned_abs();
        if style == FloatStyle::PythonRepr && magnitude < 10 {
            out.push(b'0');
        }
        out.extend_from_slice(magnitude.to_string().as_bytes());
    }
}

/// The `serde_json` formatter that spells numbers as the Python library does.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PythonFormatter {
    pub(crate) style: FloatStyle,
}

impl serde_json::ser::Formatter for PythonFormatter {
    fn write_f64<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        let mut buf = Vec::with_capacity(24);
        write_float(&mut buf, &format!("{value:e}"), self.style);
        writer.write_all(&buf)
    }

    fn write_f32<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f32) -> io::Result<()> {
        let mut buf = Vec::with_capacity(16);
        write_float(&mut buf, &format!("{value:e}"), self.style);
        writer.write_all(&buf)
    }

    fn write_i128<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: i128) -> io::Result<()> {
        if self.style == FloatStyle::Orjson
            && i64::try_from(value).is_err()
            && u64::try_from(value).is_err()
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "integer exceeds 64-bit range",
            ));
        }
        writer.write_all(value.to_string().as_bytes())
    }

    fn write_u128<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: u128) -> io::Result<()> {
        if self.style == FloatStyle::Orjson && u64::try_from(value).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "integer exceeds 64-bit range",
            ));
        }
        writer.write_all(value.to_string().as_bytes())
    }
}

/// Serializes a value as compact JSON in the given style.
pub(crate) fn to_json_bytes<T: Serialize + ?Sized>(
    value: &T,
    style: FloatStyle,
) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(128);
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, PythonFormatter { style });
    value
        .serialize(&mut ser)
        .map_err(IdempotencyError::serialization)?;
    Ok(buf)
}

/// Serializes a value into a stored result: JSON text byte-compatible with what the
/// Python library stores (orjson's float spelling; integers limited to 64 bits, NaN and
/// infinities written as `null`).
///
/// # Errors
/// [`IdempotencyError::Serialization`] when the value has no JSON form (a map with
/// non-string keys, an integer beyond 64 bits, a failing `Serialize` impl).
///
/// # Examples
/// ```
/// # fn main() -> Result<(), idempotency_core::IdempotencyError> {
/// let raw = idempotency_core::to_result_json(&vec![1e16, 1e-7, 1.0])?;
/// assert_eq!(raw.get(), "[1e+16,1e-7,1.0]");
/// # Ok(()) }
/// ```
pub fn to_result_json<T: Serialize + ?Sized>(value: &T) -> Result<Box<RawValue>> {
    let bytes = to_json_bytes(value, FloatStyle::Orjson)?;
    let text = String::from_utf8(bytes).map_err(IdempotencyError::serialization)?;
    RawValue::from_string(text).map_err(IdempotencyError::serialization)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spell(x: f64, style: FloatStyle) -> String {
        let mut out = Vec::new();
        write_float(&mut out, &format!("{x:e}"), style);
        String::from_utf8(out).expect("ascii")
    }

    #[test]
    fn orjson_spelling_matches_the_conformance_list() {
        let cases = [
            (0.1, "0.1"),
            (1.0, "1.0"),
            (1e16, "1e+16"),
            (1e-7, "1e-7"),
            (-0.0, "-0.0"),
            (0.0, "0.0"),
            (1e300, "1e+300"),
            (1_000_000_000_000_000.0, "1000000000000000.0"),
            (0.0001, "0.0001"),
            (1e-5, "0.00001"),
            (1.5e-5, "0.000015"),
            (1e-6, "1e-6"),
            (2.5e-7, "2.5e-7"),
            (5e-324, "5e-324"),
            (123_456.789, "123456.789"),
            (1.234_567_890_123_456_8e17, "1.2345678901234568e+17"),
            (f64::MAX, "1.7976931348623157e+308"),
        ];
        for (x, want) in cases {
            assert_eq!(spell(x, FloatStyle::Orjson), want, "{x:e}");
        }
    }

    #[test]
    fn python_repr_spelling_pads_exponents_and_moves_the_threshold() {
        assert_eq!(spell(1e-5, FloatStyle::PythonRepr), "1e-05");
        assert_eq!(spell(1e-7, FloatStyle::PythonRepr), "1e-07");
        assert_eq!(spell(0.0001, FloatStyle::PythonRepr), "0.0001");
        assert_eq!(spell(2.5e-5, FloatStyle::PythonRepr), "2.5e-05");
        assert_eq!(spell(1e16, FloatStyle::PythonRepr), "1e+16");
        assert_eq!(spell(100.0, FloatStyle::PythonRepr), "100.0");
    }

    #[test]
    fn integers_beyond_64_bits_are_refused_for_records() {
        assert!(to_result_json(&(u128::from(u64::MAX) + 1)).is_err());
        assert!(to_result_json(&(i128::from(i64::MIN) - 1)).is_err());
        assert_eq!(
            to_result_json(&u128::from(u64::MAX)).expect("fits").get(),
            "18446744073709551615"
        );
    }

    #[test]
    fn non_finite_floats_become_null() {
        assert_eq!(
            to_result_json(&[f64::NAN, f64::INFINITY])
                .expect("json")
                .get(),
            "[null,null]"
        );
    }
}
