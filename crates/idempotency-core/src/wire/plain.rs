//! The plain-value check that lets the fast decoder take a value as it is.

use crate::wire::json_text::{MAX_INT_DIGITS, PYDANTIC_MAX_DEPTH};

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
