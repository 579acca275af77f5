//! JSON comparison by value that keeps integers of any size exact.
//!
//! `serde_json` without `arbitrary_precision` reads integers beyond 64 bits as floats, so
//! comparing two texts through `serde_json::Value` would call `2^64` and `2^64 + 1` equal.
//! This module reads JSON into its own tree: integers as digit strings, other numbers as
//! `f64`, objects as ordered key lists.

use std::fmt::Write as _;

/// A JSON value with exact integers.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    /// `null`
    Null,
    /// `true`/`false`
    Bool(bool),
    /// An integer literal, normalized (no leading `+`, `-0` as `0`).
    Int(String),
    /// A number with a fraction or exponent.
    Float(f64),
    /// A string.
    Str(String),
    /// An array.
    Array(Vec<Json>),
    /// An object, keys in text order.
    Object(Vec<(String, Json)>),
}

/// Parses JSON text.
///
/// # Errors
/// A message when the text is not JSON.
pub fn parse(text: &str) -> Result<Json, String> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    let v = p.value()?;
    p.ws();
    if p.i != p.s.len() {
        return Err(format!("trailing characters at {}", p.i));
    }
    Ok(v)
}

/// Whether two JSON texts hold the same value (object key order ignored).
///
/// # Panics
/// When either is not JSON.
pub fn same_value(a: &str, b: &str) -> bool {
    let a = parse(a).unwrap_or_else(|e| panic!("not JSON ({e}): {a}"));
    let b = parse(b).unwrap_or_else(|e| panic!("not JSON ({e}): {b}"));
    eq(&a, &b)
}

fn eq(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Object(x), Json::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.iter().any(|(k2, v2)| k == k2 && eq(v, v2)))
        }
        (Json::Array(x), Json::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| eq(p, q))
        }
        (Json::Float(x), Json::Float(y)) => {
            x.to_bits() == y.to_bits() || (x == y && x.is_sign_negative() == y.is_sign_negative())
        }
        _ => a == b,
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        self.ws();
        match self.s.get(self.i) {
            Some(b'{') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Json::Object(items));
                }
                loop {
                    self.ws();
                    let Json::Str(k) = self.value()? else {
                        return Err("object key must be a string".into());
                    };
                    self.ws();
                    self.expect(b':')?;
                    let v = self.value()?;
                    items.push((k, v));
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Object(items));
                        }
                        _ => return Err("expected , or }".into()),
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Json::Array(items));
                }
                loop {
                    items.push(self.value()?);
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Array(items));
                        }
                        _ => return Err("expected , or ]".into()),
                    }
                }
            }
            Some(b'"') => {
                let start = self.i;
                self.i += 1;
                while self.i < self.s.len() && self.s[self.i] != b'"' {
                    if self.s[self.i] == b'\\' {
                        self.i += 1;
                    }
                    self.i += 1;
                }
                self.i += 1;
                let raw = std::str::from_utf8(&self.s[start..self.i.min(self.s.len())])
                    .map_err(|e| e.to_string())?;
                serde_json::from_str::<String>(raw)
                    .map(Json::Str)
                    .map_err(|e| e.to_string())
            }
            Some(b't') => self.word("true", Json::Bool(true)),
            Some(b'f') => self.word("false", Json::Bool(false)),
            Some(b'n') => self.word("null", Json::Null),
            Some(_) => {
                let start = self.i;
                while self.i < self.s.len()
                    && matches!(
                        self.s[self.i],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.i += 1;
                }
                let text =
                    std::str::from_utf8(&self.s[start..self.i]).map_err(|e| e.to_string())?;
                if text.bytes().all(|b| b.is_ascii_digit() || b == b'-') && !text.is_empty() {
                    let negative = text.starts_with('-');
                    let digits = text.trim_start_matches('-').trim_start_matches('0');
                    let mut out = String::new();
                    if digits.is_empty() {
                        out.push('0');
                    } else {
                        let _ = write!(out, "{}{digits}", if negative { "-" } else { "" });
                    }
                    Ok(Json::Int(out))
                } else {
                    text.parse::<f64>()
                        .map(Json::Float)
                        .map_err(|e| format!("{e}: {text}"))
                }
            }
            None => Err("unexpected end".into()),
        }
    }

    fn word(&mut self, w: &str, v: Json) -> Result<Json, String> {
        if self.s[self.i..].starts_with(w.as_bytes()) {
            self.i += w.len();
            Ok(v)
        } else {
            Err(format!("expected {w}"))
        }
    }

    fn expect(&mut self, b: u8) -> Result<(), String> {
        if self.s.get(self.i) == Some(&b) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected {}", b as char))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_integers_stay_exact() {
        assert!(same_value("18446744073709551616", "18446744073709551616"));
        assert!(!same_value("18446744073709551616", "18446744073709551617"));
        assert!(same_value(
            r#"{"a": [1E+16, 1e-07]}"#,
            r#"{"a":[1e+16,1e-7]}"#
        ));
        assert!(!same_value("1", "1.0"));
        assert!(!same_value("0.0", "-0.0"));
    }
}
