//! JSON text exactly as the Python library writes it.
//!
//! Records are written by orjson, fingerprints hash the text of Python's `json.dumps`.
//! Both put non-ASCII characters as raw UTF-8 and escape only `"`, `\` and control
//! characters (`\b \f \n \r \t` short, the rest `\u00XX` in lowercase hex), which is what
//! `serde_json` does too. They differ from `serde_json`, and from each other, in how they
//! spell floats; this module supplies those spellings as `serde_json` formatters.

use std::borrow::Cow;
use std::fmt;
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

/// The shortest decimal digits that read back as `x` (finite), and the decimal exponent
/// of the first: `x = ±0.d1d2… × 10^(exp + 1)`, as Python's `repr` (David Gay's `dtoa`,
/// mode 0) chooses them. Where two shortest spellings are equally near the exact value
/// (`1e15 + 0.3` is exactly `1000000000000000.25`), both pick the even last digit
/// (`…0.2`); Rust's own `{:e}` rounds such a tie up. `ryu` implements the same rule.
fn shortest_digits(spelled: &str) -> (bool, String, i32) {
    let (negative, rest) = match spelled.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, spelled),
    };
    let (mantissa, exp) = rest.split_once(['e', 'E']).unwrap_or((rest, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all: String = int_part.chars().chain(frac_part.chars()).collect();
    let leading = all.bytes().take_while(|&b| b == b'0').count();
    let digits = all[leading..].trim_end_matches('0');
    if digits.is_empty() {
        return (negative, "0".to_owned(), 0);
    }
    // The first significant digit's place: int_part.len() - 1 - leading.
    let place = i32::try_from(int_part.len()).unwrap_or(i32::MAX)
        - 1
        - i32::try_from(leading).unwrap_or(i32::MAX);
    (negative, digits.to_owned(), place + exp)
}

/// Writes a finite float in the given style. `spelled` is a shortest round-trip
/// spelling of the value (`ryu`'s), in any decimal layout.
fn write_float(out: &mut Vec<u8>, spelled: &str, style: FloatStyle) {
    let (negative, digits, exp) = shortest_digits(spelled);
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
        // `serde_json` writes a non-finite float as `null` before a formatter sees it.
        if !value.is_finite() {
            return writer.write_all(b"null");
        }
        let mut buf = Vec::with_capacity(24);
        write_float(
            &mut buf,
            ryu::Buffer::new().format_finite(value),
            self.style,
        );
        writer.write_all(&buf)
    }

    fn write_f32<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f32) -> io::Result<()> {
        if !value.is_finite() {
            return writer.write_all(b"null");
        }
        let mut buf = Vec::with_capacity(16);
        write_float(
            &mut buf,
            ryu::Buffer::new().format_finite(value),
            self.style,
        );
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

/// A JSON value as Python reads it (pydantic's parser for records, `json.loads` for
/// fingerprints): `NaN`, `Infinity` and `-Infinity` are numbers, numbers keep their text,
/// and an object keeps every member, duplicates included, in order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json<'a> {
    Null,
    Bool(bool),
    /// A number exactly as written.
    Number(&'a str),
    /// `NaN`, `Infinity` or `-Infinity`, as written.
    NonFinite(&'static str),
    Str(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

/// Text that is not JSON to Python; the position is a byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JsonInvalid {
    position: usize,
    what: &'static str,
}

impl fmt::Display for JsonInvalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid JSON at byte {}: {}", self.position, self.what)
    }
}

impl std::error::Error for JsonInvalid {}

/// Deepest nesting pydantic's parser reads: a value inside more containers is refused.
pub(crate) const PYDANTIC_MAX_DEPTH: usize = 200;
/// Deepest nesting accepted for a fingerprint's JSON text (Python's recursion limit).
pub(crate) const FINGERPRINT_MAX_DEPTH: usize = 990;
/// Python refuses integers of more digits (`sys.get_int_max_str_digits()`).
pub(crate) const MAX_INT_DIGITS: usize = 4300;

/// Parses `text` as one JSON document the way Python does: whitespace is space, tab, CR
/// and LF only (no BOM), nothing may follow the value, a value may sit inside at most
/// `max_depth` containers, integer parts have at most 4300 digits, and `\u` escapes
/// must pair surrogates.
pub(crate) fn parse_python_json(text: &str, max_depth: usize) -> Result<Json<'_>, JsonInvalid> {
    let mut p = Parser {
        text,
        bytes: text.as_bytes(),
        pos: 0,
        max_depth,
    };
    p.skip_ws();
    let value = p.value(0)?;
    p.skip_ws();
    if p.pos != p.bytes.len() {
        return Err(p.fail("trailing characters"));
    }
    Ok(value)
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    max_depth: usize,
}

impl<'a> Parser<'a> {
    fn fail(&self, what: &'static str) -> JsonInvalid {
        JsonInvalid {
            position: self.pos,
            what,
        }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    fn literal(&mut self, word: &str) -> bool {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json<'a>, JsonInvalid> {
        if depth > self.max_depth {
            return Err(self.fail("recursion limit exceeded"));
        }
        match self.bytes.get(self.pos) {
            None => Err(self.fail("EOF while parsing a value")),
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => self.string().map(Json::Str),
            Some(b'n') if self.literal("null") => Ok(Json::Null),
            Some(b't') if self.literal("true") => Ok(Json::Bool(true)),
            Some(b'f') if self.literal("false") => Ok(Json::Bool(false)),
            Some(b'N') if self.literal("NaN") => Ok(Json::NonFinite("NaN")),
            Some(b'I') if self.literal("Infinity") => Ok(Json::NonFinite("Infinity")),
            Some(b'-') if self.literal("-Infinity") => Ok(Json::NonFinite("-Infinity")),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.fail("expected value")),
        }
    }

    fn digits(&mut self) -> usize {
        let from = self.pos;
        while self.bytes.get(self.pos).is_some_and(u8::is_ascii_digit) {
            self.pos += 1;
        }
        self.pos - from
    }

    fn number(&mut self) -> Result<Json<'a>, JsonInvalid> {
        let start = self.pos;
        if self.bytes.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        let int_start = self.pos;
        let int_digits = self.digits();
        if int_digits == 0 {
            return Err(self.fail("invalid number"));
        }
        if int_digits > 1 && self.bytes[int_start] == b'0' {
            return Err(self.fail("invalid number: leading zero"));
        }
        if int_digits > MAX_INT_DIGITS {
            return Err(self.fail("number too large"));
        }
        if self.bytes.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.fail("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = self.bytes.get(self.pos) {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.bytes.get(self.pos) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.fail("invalid number"));
            }
        }
        Ok(Json::Number(&self.text[start..self.pos]))
    }

    fn hex4(&mut self) -> Result<u32, JsonInvalid> {
        let slice = self
            .bytes
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.fail("EOF in escape"))?;
        let mut v = 0u32;
        for &b in slice {
            let d = char::from(b)
                .to_digit(16)
                .ok_or_else(|| self.fail("invalid escape"))?;
            v = v * 16 + d;
        }
        self.pos += 4;
        Ok(v)
    }

    fn escape(&mut self, out: &mut String) -> Result<(), JsonInvalid> {
        self.pos += 1;
        let escaped = self.bytes.get(self.pos).copied();
        self.pos += 1;
        match escaped {
            Some(b'"') => out.push('"'),
            Some(b'\\') => out.push('\\'),
            Some(b'/') => out.push('/'),
            Some(b'b') => out.push('\u{8}'),
            Some(b'f') => out.push('\u{c}'),
            Some(b'n') => out.push('\n'),
            Some(b'r') => out.push('\r'),
            Some(b't') => out.push('\t'),
            Some(b'u') => {
                let first = self.hex4()?;
                let code = if (0xD800..0xDC00).contains(&first) {
                    if !self.literal("\\u") {
                        return Err(self.fail("lone leading surrogate"));
                    }
                    let second = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&second) {
                        return Err(self.fail("lone leading surrogate"));
                    }
                    0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
                } else {
                    first
                };
                out.push(char::from_u32(code).ok_or_else(|| self.fail("lone surrogate"))?);
            }
            _ => return Err(self.fail("invalid escape")),
        }
        Ok(())
    }

    fn string(&mut self) -> Result<Cow<'a, str>, JsonInvalid> {
        self.pos += 1;
        let start = self.pos;
        // A plain run first: most strings have no escapes and are borrowed.
        loop {
            match self.bytes.get(self.pos) {
                None => return Err(self.fail("EOF while parsing a string")),
                Some(b'"') => {
                    let s = &self.text[start..self.pos];
                    self.pos += 1;
                    return Ok(Cow::Borrowed(s));
                }
                Some(b'\\') => break,
                Some(&b) if b < 0x20 => return Err(self.fail("control character in string")),
                Some(_) => self.pos += 1,
            }
        }
        let mut out = String::from(&self.text[start..self.pos]);
        loop {
            match self.bytes.get(self.pos) {
                None => return Err(self.fail("EOF while parsing a string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(Cow::Owned(out));
                }
                Some(b'\\') => self.escape(&mut out)?,
                Some(&b) if b < 0x20 => return Err(self.fail("control character in string")),
                Some(_) => {
                    let from = self.pos;
                    while self
                        .bytes
                        .get(self.pos)
                        .is_some_and(|&b| b >= 0x20 && b != b'"' && b != b'\\')
                    {
                        self.pos += 1;
                    }
                    out.push_str(&self.text[from..self.pos]);
                }
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Json<'a>, JsonInvalid> {
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.bytes.get(self.pos) == Some(&b']') {
            self.pos += 1;
            return Ok(Json::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth + 1)?);
            self.skip_ws();
            match self.bytes.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Json::Array(items));
                }
                _ => return Err(self.fail("expected ',' or ']'")),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Json<'a>, JsonInvalid> {
        self.pos += 1;
        let mut members = Vec::new();
        self.skip_ws();
        if self.bytes.get(self.pos) == Some(&b'}') {
            self.pos += 1;
            return Ok(Json::Object(members));
        }
        loop {
            self.skip_ws();
            if self.bytes.get(self.pos) != Some(&b'"') {
                return Err(self.fail("expected a key"));
            }
            let key = self.string()?;
            self.skip_ws();
            if self.bytes.get(self.pos) != Some(&b':') {
                return Err(self.fail("expected ':'"));
            }
            self.pos += 1;
            self.skip_ws();
            let value = self.value(depth + 1)?;
            members.push((key, value));
            self.skip_ws();
            match self.bytes.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Json::Object(members));
                }
                _ => return Err(self.fail("expected ',' or '}'")),
            }
        }
    }
}

/// The members of an object as a Python `dict` holds them: a repeated key keeps its
/// first position and takes its last value.
pub(crate) fn dict_members<'j, 'a>(
    members: &'j [(Cow<'a, str>, Json<'a>)],
) -> Vec<(&'j str, &'j Json<'a>)> {
    let mut out: Vec<(&str, &Json<'a>)> = Vec::with_capacity(members.len());
    if members.len() <= 16 {
        for (k, v) in members {
            match out.iter_mut().find(|(seen, _)| *seen == k.as_ref()) {
                Some(slot) => slot.1 = v,
                None => out.push((k.as_ref(), v)),
            }
        }
    } else {
        let mut index = std::collections::HashMap::with_capacity(members.len());
        for (k, v) in members {
            if let Some(&i) = index.get(k.as_ref()) {
                out[i] = (k.as_ref(), v);
            } else {
                index.insert(k.as_ref(), out.len());
                out.push((k.as_ref(), v));
            }
        }
    }
    out
}

/// Whether a number's text is a float to Python (a point or an exponent).
fn is_float_text(text: &str) -> bool {
    text.bytes().any(|b| matches!(b, b'.' | b'e' | b'E'))
}

/// Writes a result as the Python library replays it: repeated keys resolved as a `dict`
/// does, `NaN`/`Infinity` and floats beyond the `f64` range as `null`; integers exact.
pub(crate) fn write_replayed(value: &Json<'_>, out: &mut String) {
    write_tree(value, out, false, &|scalar, out| match scalar {
        Json::Number(text)
            if is_float_text(text) && text.parse::<f64>().is_ok_and(f64::is_infinite) =>
        {
            out.push_str("null");
        }
        // `-0` is the integer 0 to Python (and `serde_json` would read it as a float).
        Json::Number(text) if is_negative_zero_integer(text) => out.push('0'),
        Json::Number(text) => out.push_str(text),
        _ => out.push_str("null"),
    });
}

/// Whether a number's text is the integer `-0`, which Python reads as `0`.
pub(crate) fn is_negative_zero_integer(text: &str) -> bool {
    text.strip_prefix('-')
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b == b'0'))
}

/// Writes `value` as Python's `json.dumps(json.loads(text), sort_keys=True,
/// separators=(",", ":"), ensure_ascii=False)` does.
pub(crate) fn write_canonical(value: &Json<'_>, out: &mut String) {
    write_tree(value, out, true, &|scalar, out| match scalar {
        Json::NonFinite(word) => out.push_str(word),
        Json::Number(text) if is_float_text(text) => {
            let x: f64 = text.parse().unwrap_or(f64::NAN);
            if x.is_nan() {
                out.push_str("NaN");
            } else if x.is_infinite() {
                out.push_str(if x < 0.0 { "-Infinity" } else { "Infinity" });
            } else {
                let mut buf = Vec::with_capacity(24);
                write_float(
                    &mut buf,
                    ryu::Buffer::new().format_finite(x),
                    FloatStyle::PythonRepr,
                );
                out.push_str(&String::from_utf8_lossy(&buf));
            }
        }
        // `-0` is the integer 0.
        Json::Number(text) if is_negative_zero_integer(text) => out.push('0'),
        Json::Number(text) => out.push_str(text),
        _ => out.push_str("null"),
    });
}

/// Writes a value compactly: `null`, booleans, strings and containers the same way for
/// every style, numbers and non-finite tokens (and `null`) by `scalar`; object members in
/// key order when `sort_keys` (byte order of UTF-8 is code point order, which is Python's
/// `sort_keys`), in their order otherwise.
fn write_tree(
    value: &Json<'_>,
    out: &mut String,
    sort_keys: bool,
    scalar: &dyn Fn(&Json<'_>, &mut String),
) {
    match value {
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Str(s) => push_json_string(out, s),
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_tree(item, out, sort_keys, scalar);
            }
            out.push(']');
        }
        Json::Object(members) => {
            let mut members = dict_members(members);
            if sort_keys {
                members.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push('{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_json_string(out, k);
                out.push(':');
                write_tree(v, out, sort_keys, scalar);
            }
            out.push('}');
        }
        Json::Null | Json::NonFinite(_) | Json::Number(_) => scalar(value, out),
    }
}

/// Appends `s` as a JSON string: `"` and `\` escaped, control characters as `\b \f \n
/// \r \t` or `\u00XX` (lowercase hex), everything else as is (Python, orjson and
/// `serde_json` agree on this).
pub(crate) fn push_json_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let mut from = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[from..i]);
        if escape.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(escape);
        }
        from = i + 1;
    }
    out.push_str(&s[from..]);
    out.push('"');
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
    fn python_json_reads_nan_duplicates_and_depth_as_python_does() {
        let read = |t: &str| {
            let v = parse_python_json(t, PYDANTIC_MAX_DEPTH).map_err(|e| e.to_string())?;
            let mut out = String::new();
            write_replayed(&v, &mut out);
            Ok::<_, String>(out)
        };
        assert_eq!(
            read(" [NaN, Infinity,-Infinity] ").as_deref(),
            Ok("[null,null,null]")
        );
        assert_eq!(
            read(r#"{"a":1,"b":2,"a":3}"#).as_deref(),
            Ok(r#"{"a":3,"b":2}"#)
        );
        assert_eq!(
            read("[1e400,-1e400,1e-400]").as_deref(),
            Ok("[null,null,1e-400]")
        );
        assert_eq!(read(r#""\ud83d\ude00""#).as_deref(), Ok("\"\u{1F600}\""));
        for bad in [
            "\u{feff}1",
            "nan",
            "-NaN",
            "01",
            "1.",
            ".5",
            "[1,]",
            "{}x",
            r#""\ud800""#,
            "\"a\u{1}\"",
            "\u{c}1",
        ] {
            assert!(read(bad).is_err(), "{bad:?}");
        }
        let deep = |d: usize| format!("{}{}", "[".repeat(d), "]".repeat(d));
        assert!(read(&deep(201)).is_ok());
        assert!(read(&deep(202)).is_err());
        assert!(read(&"1".repeat(4300)).is_ok());
        assert!(read(&"1".repeat(4301)).is_err());
    }

    #[test]
    fn canonical_text_follows_json_dumps() {
        let canon = |t: &str| {
            let v = parse_python_json(t, 1000).expect("json");
            let mut out = String::new();
            write_canonical(&v, &mut out);
            out
        };
        assert_eq!(
            canon(r#"{"b":18446744073709551616,"a":-1000000000000000000000000000000}"#),
            r#"{"a":-1000000000000000000000000000000,"b":18446744073709551616}"#
        );
        assert_eq!(
            canon("[1.0, 1e16, 1E-5, -0, -0.0, 1e400, NaN]"),
            "[1.0,1e+16,1e-05,0,-0.0,Infinity,NaN]"
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
