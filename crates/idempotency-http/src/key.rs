//! Parsing the `Idempotency-Key` header: the draft's sf-string (`"abc"`) and the bare
//! form (`abc`) are one key; any UTF-8 is accepted.

use http::HeaderValue;
use http::header::GetAll;

/// Why a key header was refused (each a 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyProblem {
    /// The header was given more than once.
    Repeated,
    /// The key is empty (`""` or only whitespace).
    Empty,
    /// The key has more characters than allowed.
    TooLong,
    /// The bytes are not UTF-8.
    NotUtf8,
    /// A quoted value that is not a well-formed sf-string.
    Malformed,
}

/// The key of a request: `Ok(None)` when the header is absent.
pub(crate) fn parse_key(
    values: &GetAll<'_, HeaderValue>,
    max_chars: usize,
) -> Result<Option<String>, KeyProblem> {
    let mut iter = values.iter();
    let Some(value) = iter.next() else {
        return Ok(None);
    };
    if iter.next().is_some() {
        return Err(KeyProblem::Repeated);
    }
    parse_value(value.as_bytes(), max_chars).map(Some)
}

fn parse_value(bytes: &[u8], max_chars: usize) -> Result<String, KeyProblem> {
    let text = std::str::from_utf8(bytes).map_err(|_| KeyProblem::NotUtf8)?;
    let text = text.trim_matches([' ', '\t']);
    let key = if text.starts_with('"') {
        unquote(text)?
    } else {
        text.to_owned()
    };
    if key.is_empty() {
        return Err(KeyProblem::Empty);
    }
    if key.len() > max_chars && key.chars().count() > max_chars {
        return Err(KeyProblem::TooLong);
    }
    Ok(key)
}

/// An RFC 8941 sf-string, leniently: non-ASCII inside the quotes is accepted (the key
/// may be any UTF-8), but the escapes and the closing quote are strict.
fn unquote(text: &str) -> Result<String, KeyProblem> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().skip(1);
    loop {
        match chars.next() {
            None => return Err(KeyProblem::Malformed),
            Some('"') => break,
            Some('\\') => match chars.next() {
                Some(c @ ('"' | '\\')) => out.push(c),
                _ => return Err(KeyProblem::Malformed),
            },
            Some(c) if c.is_control() => return Err(KeyProblem::Malformed),
            Some(c) => out.push(c),
        }
    }
    // Parameters (`;a=1`) or anything else after the string are not a key.
    if chars.next().is_some() {
        return Err(KeyProblem::Malformed);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<String, KeyProblem> {
        parse_value(bytes, 255)
    }

    #[test]
    fn quoted_and_bare_forms_are_one_key() {
        assert_eq!(parse(b"\"abc\""), parse(b"abc"));
        assert_eq!(parse(b"\"a\\\"b\\\\c\"").as_deref(), Ok("a\"b\\c"));
    }

    #[test]
    fn non_ascii_and_colons_are_keys() {
        assert_eq!(parse("ключ:1".as_bytes()).as_deref(), Ok("ключ:1"));
        assert_eq!(parse("\"日本\"".as_bytes()).as_deref(), Ok("日本"));
    }

    #[test]
    fn refusals() {
        assert_eq!(parse(b""), Err(KeyProblem::Empty));
        assert_eq!(parse(b"\"\""), Err(KeyProblem::Empty));
        assert_eq!(parse(b"\xff\xfe"), Err(KeyProblem::NotUtf8));
        assert_eq!(parse(b"\"abc"), Err(KeyProblem::Malformed));
        assert_eq!(parse(b"\"a\\b\""), Err(KeyProblem::Malformed));
        assert_eq!(parse(b"\"a\";x=1"), Err(KeyProblem::Malformed));
        assert_eq!(parse("é".repeat(256).as_bytes()), Err(KeyProblem::TooLong));
        assert!(parse("é".repeat(255).as_bytes()).is_ok());
    }

    #[test]
    fn a_repeated_header_is_refused() {
        let mut headers = http::HeaderMap::new();
        headers.append("idempotency-key", HeaderValue::from_static("a"));
        headers.append("idempotency-key", HeaderValue::from_static("a"));
        assert_eq!(
            parse_key(&headers.get_all("idempotency-key"), 255),
            Err(KeyProblem::Repeated)
        );
        assert_eq!(parse_key(&headers.get_all("other"), 255), Ok(None));
    }
}
