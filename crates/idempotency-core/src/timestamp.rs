//! Timestamps in the record format: ISO 8601 as the Python library writes and reads them.
//!
//! Written as `YYYY-MM-DDTHH:MM:SS[.ffffff]Z` (the fraction only when the microsecond is
//! not 0, then always six digits; a non-UTC offset as `+HH:MM`). Read in every spelling
//! pydantic accepts that we have seen stored: `Z`/`z`/`+00:00`/other offsets, a space for
//! `T`, 0 to 9 fraction digits, no offset (taken as UTC), and Unix seconds as a number or
//! a numeric string (milliseconds when above 2e10, as pydantic does).

use std::fmt::Write as _;

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// Appends `value` as exactly `width` decimal digits.
fn push_digits(out: &mut String, value: u32, width: u32) {
    let mut divisor = 10u32.pow(width - 1);
    while divisor > 0 {
        out.push(char::from(b'0' + ((value / divisor) % 10) as u8));
        divisor /= 10;
    }
}

/// Appends the record spelling of `t`. Hand-rolled digits: this runs on every write.
pub(crate) fn write_timestamp(out: &mut String, t: OffsetDateTime) {
    let year = t.year();
    if (0..=9999).contains(&year) {
        push_digits(out, year as u32, 4);
    } else {
        // Writing into a String cannot fail.
        let _ = write!(out, "{year:04}");
    }
    out.push('-');
    push_digits(out, u32::from(u8::from(t.month())), 2);
    out.push('-');
    push_digits(out, u32::from(t.day()), 2);
    out.push('T');
    push_digits(out, u32::from(t.hour()), 2);
    out.push(':');
    push_digits(out, u32::from(t.minute()), 2);
    out.push(':');
    push_digits(out, u32::from(t.second()), 2);
    let micro = t.microsecond();
    if micro != 0 {
        out.push('.');
        push_digits(out, micro, 6);
    }
    let offset = t.offset();
    if offset.is_utc() {
        out.push('Z');
    } else {
        let total = offset.whole_seconds();
        out.push(if total < 0 { '-' } else { '+' });
        let total = total.unsigned_abs();
        push_digits(out, total / 3600, 2);
        out.push(':');
        push_digits(out, (total % 3600) / 60, 2);
    }
}

/// The record spelling of `t`.
#[cfg(test)]
pub(crate) fn format_timestamp(t: OffsetDateTime) -> String {
    let mut s = String::with_capacity(32);
    write_timestamp(&mut s, t);
    s
}

/// Truncates to whole microseconds, the precision the record format carries.
pub(crate) fn to_micros(t: OffsetDateTime) -> OffsetDateTime {
    let nanos = t.nanosecond();
    t.replace_nanosecond(nanos - nanos % 1000).unwrap_or(t)
}

/// Parses a Unix timestamp given in seconds (milliseconds above 2e10, as pydantic does).
pub(crate) fn from_unix(value: f64) -> Option<OffsetDateTime> {
    if !value.is_finite() {
        return None;
    }
    let seconds = if value.abs() > 2e10 {
        value / 1000.0
    } else {
        value
    };
    let micros = (seconds * 1_000_000.0).round();
    if micros.abs() > 9.0e18 {
        return None;
    }
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros as i64) * 1000).ok()
}

/// Parses a timestamp text; `None` when it is not one.
pub(crate) fn parse_timestamp(text: &str) -> Option<OffsetDateTime> {
    let text = text.trim();
    if let Some(t) = parse_iso(text.as_bytes()) {
        return Some(t);
    }
    // Unix seconds in a string: digits, an optional sign and fraction, nothing else.
    if !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-' || b == b'+')
    {
        return text.parse::<f64>().ok().and_then(from_unix);
    }
    None
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn digits(&mut self, n: usize) -> Option<u32> {
        let slice = self.bytes.get(self.pos..self.pos + n)?;
        let mut v = 0u32;
        for &b in slice {
            if !b.is_ascii_digit() {
                return None;
            }
            v = v * 10 + u32::from(b - b'0');
        }
        self.pos += n;
        Some(v)
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.bytes.get(self.pos) == Some(&b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }
}

fn parse_iso(bytes: &[u8]) -> Option<OffsetDateTime> {
    let mut c = Cursor { bytes, pos: 0 };
    let year = c.digits(4)?;
    c.eat(b'-').then_some(())?;
    let month = c.digits(2)?;
    c.eat(b'-').then_some(())?;
    let day = c.digits(2)?;
    let date = Date::from_calendar_date(year as i32, Month::try_from(month as u8).ok()?, day as u8)
        .ok()?;
    let time = if c.eat(b'T') || c.eat(b't') || c.eat(b' ') {
        let hour = c.digits(2)?;
        c.eat(b':').then_some(())?;
        let minute = c.digits(2)?;
        let (second, nanos) = if c.eat(b':') {
            let second = c.digits(2)?;
            let mut nanos = 0u32;
            if c.eat(b'.') || c.eat(b',') {
                let start = c.pos;
                let mut scale = 100_000_000u32;
                while let Some(b) = c.peek().filter(u8::is_ascii_digit) {
                    nanos += u32::from(b - b'0') * scale;
                    scale /= 10;
                    c.pos += 1;
                }
                let count = c.pos - start;
                if count == 0 || count > 9 {
                    return None;
                }
            }
            (second, nanos)
        } else {
            (0, 0)
        };
        Time::from_hms_nano(hour as u8, minute as u8, second as u8, nanos).ok()?
    } else {
        Time::MIDNIGHT
    };
    let offset = match c.peek() {
        None => UtcOffset::UTC,
        Some(b'Z' | b'z') => {
            c.pos += 1;
            UtcOffset::UTC
        }
        Some(sign @ (b'+' | b'-')) => {
            c.pos += 1;
            let hours = c.digits(2)? as i8;
            let _ = c.eat(b':');
            let minutes = c.digits(2)? as i8;
            let (h, m) = if sign == b'-' {
                (-hours, -minutes)
            } else {
                (hours, minutes)
            };
            UtcOffset::from_hms(h, m, 0).ok()?
        }
        Some(_) => return None,
    };
    if c.pos != bytes.len() {
        return None;
    }
    // The record format carries microseconds (as Python's datetime does): finer digits are cut.
    Some(to_micros(
        PrimitiveDateTime::new(date, time).assume_offset(offset),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(text: &str) -> String {
        format_timestamp(parse_timestamp(text).expect(text))
    }

    #[test]
    fn writes_the_python_spelling() {
        assert_eq!(
            round("2025-06-01T12:00:00.123456Z"),
            "2025-06-01T12:00:00.123456Z"
        );
        assert_eq!(round("2099-01-01T00:00:00.000000Z"), "2099-01-01T00:00:00Z");
        assert_eq!(
            round("2025-06-01T12:00:00.12Z"),
            "2025-06-01T12:00:00.120000Z"
        );
        assert_eq!(
            round("2025-06-01T17:30:00.123456+05:30"),
            "2025-06-01T17:30:00.123456+05:30"
        );
        assert_eq!(
            round("2025-06-01T12:00:00.123456+00:00"),
            "2025-06-01T12:00:00.123456Z"
        );
        assert_eq!(
            round("2025-06-01 12:00:00.123456z"),
            "2025-06-01T12:00:00.123456Z"
        );
        assert_eq!(
            round("2025-06-01T09:00:00-03:00"),
            "2025-06-01T09:00:00-03:00"
        );
    }

    #[test]
    fn reads_unix_seconds_and_milliseconds() {
        assert_eq!(round("1748779200"), "2025-06-01T12:00:00Z");
        assert_eq!(round("4070908800.5"), "2099-01-01T00:00:00.500000Z");
        assert_eq!(
            format_timestamp(from_unix(1_748_779_200_000.0).expect("ms")),
            "2025-06-01T12:00:00Z"
        );
    }

    #[test]
    fn refuses_what_is_not_a_timestamp() {
        for bad in [
            "not a date",
            "",
            "2025-13-01T00:00:00Z",
            "2025-06-01T12:00:00Zjunk",
            "2025-06-01T25:00:00Z",
        ] {
            assert!(parse_timestamp(bad).is_none(), "{bad}");
        }
    }
}
