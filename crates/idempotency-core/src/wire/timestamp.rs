//! Timestamps in the record format: ISO 8601 as the Python library writes and reads them.
//!
//! Written as `YYYY-MM-DDTHH:MM:SS[.ffffff]Z` (the fraction only when the microsecond is
//! not 0, then always six digits; a non-UTC offset as `+HH:MM`). Read exactly as pydantic 2
//! reads a `datetime` from JSON (the Python library's decoder): ISO 8601 in its accepted
//! spellings, Unix seconds as a number or a numeric string (milliseconds above 2e10), and
//! texts without an offset or with a date alone, which are reported as naive ([`Stamp`]).

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

/// A timestamp as pydantic 2 reads it into a Python `datetime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stamp {
    /// With an offset (`Z`, `+05:30`, or a Unix timestamp, which is UTC).
    Aware(OffsetDateTime),
    /// Without one (`2025-06-01T12:00:00`, or a date alone at midnight). Held as if UTC;
    /// the Python library cannot compare such an expiry with "now" and refuses the record.
    Naive(OffsetDateTime),
}

impl Stamp {
    /// The instant, a naive time taken as UTC.
    pub(crate) fn instant(self) -> OffsetDateTime {
        match self {
            Self::Aware(t) | Self::Naive(t) => t,
        }
    }
}

/// Why a value is not a timestamp, as pydantic's error type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StampError {
    /// `datetime_type`: not a string or number (or an integer beyond 64 bits).
    Type,
    /// `datetime_parsing`: a number out of range, NaN or infinite.
    Parsing,
    /// `datetime_from_date_parsing`: a string that is no timestamp.
    FromDateParsing,
}

impl StampError {
    /// pydantic's error type.
    pub(crate) fn kind(self) -> &'static str {
        match self {
            Self::Type => "datetime_type",
            Self::Parsing => "datetime_parsing",
            Self::FromDateParsing => "datetime_from_date_parsing",
        }
    }
}

/// Above this magnitude a Unix timestamp is in milliseconds (pydantic's watershed).
const MS_WATERSHED: i64 = 20_000_000_000;
/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z: Python's `datetime` range.
const UNIX_MIN: i64 = -62_135_596_800;
const UNIX_MAX: i64 = 253_402_300_799;
/// 0000-01-01T00:00:00Z: the earliest instant pydantic's parser (speedate) builds from a
/// Unix timestamp. Between it and [`UNIX_MIN`] the parse succeeds and only Python's
/// `datetime` refuses the year 0, which pydantic reports differently.
const SPEEDATE_MIN: i64 = -62_167_219_200;

/// Why a Unix timestamp gives no `datetime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnixError {
    /// In year 0: pydantic's parser accepts it, Python's `datetime` does not
    /// (`datetime_parsing`, also for a string).
    YearZero,
    /// Outside what pydantic's parser accepts (before year 0, after 9999, not finite):
    /// `datetime_parsing` for a JSON number, `datetime_from_date_parsing` for a string
    /// (pydantic then tries the text as a date).
    OutOfRange,
}

impl UnixError {
    /// The error of a timestamp given as a JSON string.
    fn in_string(self) -> StampError {
        match self {
            Self::YearZero => StampError::Parsing,
            Self::OutOfRange => StampError::FromDateParsing,
        }
    }
}

/// A UTC timestamp from whole seconds and microseconds, within Python's range.
fn from_seconds(seconds: i64, micros: u32) -> Result<OffsetDateTime, UnixError> {
    let seconds = seconds
        .checked_add(i64::from(micros / 1_000_000))
        .ok_or(UnixError::OutOfRange)?;
    let micros = micros % 1_000_000;
    if (SPEEDATE_MIN..UNIX_MIN).contains(&seconds) {
        return Err(UnixError::YearZero);
    }
    if !(UNIX_MIN..=UNIX_MAX).contains(&seconds) {
        return Err(UnixError::OutOfRange);
    }
    let nanos = i128::from(seconds) * 1_000_000_000 + i128::from(micros) * 1000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|_| UnixError::OutOfRange)
}

/// Whole milliseconds plus extra microseconds, as pydantic's parser adds them.
fn from_millis(millis: i64, extra_micros: u32) -> Result<OffsetDateTime, UnixError> {
    // Floor division: -20_000_000_001 ms is 1969-05-14T12:26:39.999.
    let seconds = millis.div_euclid(1000);
    let micros =
        u32::try_from(millis.rem_euclid(1000) * 1000).map_err(|_| UnixError::OutOfRange)?;
    from_seconds(seconds, micros + extra_micros)
}

/// A JSON integer as a Unix timestamp (seconds, or milliseconds above 2e10).
pub(crate) fn from_unix_int(value: i64) -> Result<OffsetDateTime, UnixError> {
    if value.checked_abs().ok_or(UnixError::OutOfRange)? <= MS_WATERSHED {
        return from_seconds(value, 0);
    }
    from_millis(value, 0)
}

/// A JSON float as a Unix timestamp, as pydantic's parser (speedate) reads it: seconds
/// with the fraction rounded to the microsecond; above 2e10 milliseconds, whose whole
/// part is exact and whose fraction is rounded to the microsecond (not the value divided
/// by 1000 in floating point, which loses digits: `126715061817167.81` is `.167813`).
pub(crate) fn from_unix_float(value: f64) -> Result<OffsetDateTime, UnixError> {
    if !value.is_finite() {
        return Err(UnixError::OutOfRange);
    }
    let floor = value.floor();
    // Far outside the range either way; keeps the casts below exact.
    if floor.abs() > 1e15 {
        return Err(UnixError::OutOfRange);
    }
    let whole = floor as i64;
    // The fraction is in [0, 1): the rounded value fits, and rounds half away from zero
    // as Rust's `f64::round` does.
    if value.abs() > MS_WATERSHED as f64 {
        let micros = ((value - floor) * 1000.0).round() as u32;
        from_millis(whole, micros)
    } else {
        let micros = ((value - floor) * 1_000_000.0).round() as u32;
        from_seconds(whole, micros)
    }
}

/// Parses a timestamp given as a JSON string, as pydantic 2 does: ISO 8601 (a `T`, `t`,
/// space or `_` between date and time, seconds and fraction optional, `Z`/`z`/`±HH:MM`/
/// `±HHMM`/`−HH:MM` or no offset), a Unix timestamp in digits, or a date alone.
pub(crate) fn parse_timestamp_str(text: &str) -> Result<Stamp, StampError> {
    let bytes = text.as_bytes();
    match parse_iso(bytes) {
        Iso::Stamp(stamp) => return Ok(stamp),
        Iso::OutOfRange => return Err(StampError::Parsing),
        Iso::No => {}
    }
    if let Some(number) = parse_number_text(bytes) {
        let t = match number {
            NumberText::Int(i) => from_unix_int(i),
            NumberText::Float(f) => from_unix_float(f),
        };
        return t.map(Stamp::Aware).map_err(UnixError::in_string);
    }
    // A date alone is midnight without an offset.
    if bytes.len() == 10
        && let Some(date) = parse_date(bytes)
    {
        return match date {
            DateText::Valid(date) => Ok(Stamp::Naive(
                PrimitiveDateTime::new(date, Time::MIDNIGHT).assume_utc(),
            )),
            DateText::YearZero => Err(StampError::Parsing),
        };
    }
    Err(StampError::FromDateParsing)
}

/// Parses a timestamp text; `None` when pydantic would not read it as an aware one.
#[cfg(test)]
pub(crate) fn parse_timestamp(text: &str) -> Option<OffsetDateTime> {
    match parse_timestamp_str(text) {
        Ok(Stamp::Aware(t)) => Some(t),
        _ => None,
    }
}

enum NumberText {
    Int(i64),
    Float(f64),
}

/// pydantic's number-in-a-string grammar: `[+-]digits`, or `[+-]digits.digits[e[+-]digits]`
/// with either digit run possibly empty (but not both); an exponent only after a point.
fn parse_number_text(bytes: &[u8]) -> Option<NumberText> {
    let (negative, rest) = match bytes.first()? {
        b'-' => (true, &bytes[1..]),
        b'+' => (false, &bytes[1..]),
        _ => (false, bytes),
    };
    let int_len = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let (int_digits, after) = rest.split_at(int_len);
    if after.is_empty() {
        if int_len == 0 {
            return None;
        }
        let text = std::str::from_utf8(int_digits).ok()?;
        let magnitude: i64 = text.parse().ok()?;
        return Some(NumberText::Int(if negative {
            -magnitude
        } else {
            magnitude
        }));
    }
    let after = after.strip_prefix(b".")?;
    let frac_len = after.iter().take_while(|b| b.is_ascii_digit()).count();
    let (frac_digits, after) = after.split_at(frac_len);
    if int_len + frac_len == 0 {
        return None;
    }
    let mut clean = String::with_capacity(bytes.len() + 4);
    if negative {
        clean.push('-');
    }
    clean.push_str(std::str::from_utf8(if int_len == 0 { b"0" } else { int_digits }).ok()?);
    clean.push('.');
    clean.push_str(std::str::from_utf8(if frac_len == 0 { b"0" } else { frac_digits }).ok()?);
    if !after.is_empty() {
        let exp = after
            .strip_prefix(b"e")
            .or_else(|| after.strip_prefix(b"E"))?;
        let digits = exp
            .strip_prefix(b"+")
            .or_else(|| exp.strip_prefix(b"-"))
            .unwrap_or(exp);
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        clean.push('e');
        clean.push_str(std::str::from_utf8(exp).ok()?);
    }
    clean.parse().ok().map(NumberText::Float)
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

/// A `YYYY-MM-DD` text.
enum DateText {
    Valid(Date),
    /// A date to pydantic's parser, but out of Python's range.
    YearZero,
}

/// `YYYY-MM-DD` at the start of `bytes`; `None` if it is not a date.
fn parse_date(bytes: &[u8]) -> Option<DateText> {
    let mut c = Cursor { bytes, pos: 0 };
    let year = c.digits(4)?;
    c.eat(b'-').then_some(())?;
    let month = c.digits(2)?;
    c.eat(b'-').then_some(())?;
    let day = c.digits(2)?;
    let month = Month::try_from(u8::try_from(month).ok()?).ok()?;
    // Validate month and day against a leap year stand-in when the year is 0.
    let check_year = if year == 0 { 2000 } else { year as i32 };
    let date = Date::from_calendar_date(check_year, month, day as u8).ok()?;
    Some(if year == 0 {
        DateText::YearZero
    } else {
        DateText::Valid(date)
    })
}

enum Iso {
    Stamp(Stamp),
    /// A well-formed text Python's `datetime` cannot hold (year 0).
    OutOfRange,
    No,
}

fn parse_iso(bytes: &[u8]) -> Iso {
    parse_iso_inner(bytes).unwrap_or(Iso::No)
}

fn parse_iso_inner(bytes: &[u8]) -> Option<Iso> {
    let date = parse_date(bytes)?;
    if !matches!(bytes.get(10), Some(b'T' | b't' | b' ' | b'_')) {
        return None;
    }
    let mut c = Cursor { bytes, pos: 11 };
    let hour = c.digits(2)?;
    c.eat(b':').then_some(())?;
    let minute = c.digits(2)?;
    let (second, micros) = if c.eat(b':') {
        let second = c.digits(2)?;
        let mut micros = 0u32;
        if c.eat(b'.') || c.eat(b',') {
            let start = c.pos;
            while let Some(b) = c.peek().filter(u8::is_ascii_digit) {
                // Digits past the sixth are cut, as pydantic does.
                if c.pos - start < 6 {
                    micros = micros * 10 + u32::from(b - b'0');
                }
                c.pos += 1;
            }
            let count = c.pos - start;
            if count == 0 {
                return None;
            }
            if count < 6 {
                micros *= 10u32.pow(6 - count as u32);
            }
        }
        (second, micros)
    } else {
        (0, 0)
    };
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let time = Time::from_hms_micro(hour as u8, minute as u8, second as u8, micros).ok()?;
    let offset = match c.peek() {
        None => None,
        Some(b'Z' | b'z') => {
            c.pos += 1;
            Some(UtcOffset::UTC)
        }
        Some(first) => {
            // ASCII signs, or U+2212 MINUS SIGN.
            let negative = if first == b'+' {
                c.pos += 1;
                false
            } else if first == b'-' {
                c.pos += 1;
                true
            } else if bytes[c.pos..].starts_with("\u{2212}".as_bytes()) {
                c.pos += 3;
                true
            } else {
                return None;
            };
            let hours = c.digits(2)?;
            let _ = c.eat(b':');
            let minutes = c.digits(2)?;
            if minutes > 59 || hours * 3600 + minutes * 60 >= 86_400 {
                return None;
            }
            let (h, m) = (hours as i8, minutes as i8);
            let (h, m) = if negative { (-h, -m) } else { (h, m) };
            Some(UtcOffset::from_hms(h, m, 0).ok()?)
        }
    };
    if c.pos != bytes.len() {
        return None;
    }
    let DateText::Valid(date) = date else {
        return Some(Iso::OutOfRange);
    };
    let local = PrimitiveDateTime::new(date, time);
    Some(Iso::Stamp(match offset {
        Some(offset) => Stamp::Aware(local.assume_offset(offset)),
        None => Stamp::Naive(local.assume_utc()),
    }))
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
            format_timestamp(from_unix_float(1_748_779_200_000.0).expect("ms")),
            "2025-06-01T12:00:00Z"
        );
    }

    #[test]
    fn tells_naive_timestamps_from_aware_ones() {
        for naive in ["2025-06-01T12:00:00", "2025-06-01", "2025-06-01 12:00"] {
            assert!(
                matches!(parse_timestamp_str(naive), Ok(Stamp::Naive(_))),
                "{naive}"
            );
        }
        assert_eq!(
            parse_timestamp_str("2025-06-01T12:00:00.1234567891Z")
                .map(|s| format_timestamp(s.instant())),
            Ok("2025-06-01T12:00:00.123456Z".to_owned())
        );
        assert_eq!(
            parse_timestamp_str("2099-01-01T00:00:00\u{2212}05:00")
                .map(|s| format_timestamp(s.instant())),
            Ok("2099-01-01T00:00:00-05:00".to_owned())
        );
    }

    #[test]
    fn reads_numbers_in_strings_as_pydantic_does() {
        let read = |t: &str| parse_timestamp_str(t).map(|s| format_timestamp(s.instant()));
        assert_eq!(read("1.5e3"), Ok("1970-01-01T00:25:00Z".to_owned()));
        assert_eq!(read("+.5"), Ok("1970-01-01T00:00:00.500000Z".to_owned()));
        assert_eq!(
            read("-20000000001"),
            Ok("1969-05-14T12:26:39.999000Z".to_owned())
        );
        assert_eq!(
            read("1748779200.9999999"),
            Ok("2025-06-01T12:00:01Z".to_owned())
        );
        assert_eq!(
            read("253402300799000"),
            Ok("9999-12-31T23:59:59Z".to_owned())
        );
        for bad in [
            "1e3",
            "253402300800000",
            "253402300800000.5",
            " 1",
            "1.5e",
            ".",
            // Before year 0: pydantic's parser refuses it, then tries a date.
            "-62167219200001",
            "-62167219200000.5",
            "-100000000000000",
        ] {
            assert_eq!(read(bad), Err(StampError::FromDateParsing), "{bad}");
        }
        // In year 0: pydantic's parser reads it, Python's `datetime` refuses it.
        for year_zero in [
            "0000-01-01T00:00:00Z",
            "-62135596800001",
            "-62135596800000.5",
            "-62167219200000",
        ] {
            assert_eq!(read(year_zero), Err(StampError::Parsing), "{year_zero}");
        }
        assert_eq!(
            read("-62135596800000"),
            Ok("0001-01-01T00:00:00Z".to_owned())
        );
    }

    #[test]
    fn reads_milliseconds_with_a_fraction_as_pydantic_does() {
        // Whole milliseconds plus the fraction rounded to the microsecond (Python 0.5.0's
        // outcomes); dividing by 1000 in floating point gave `.167816`.
        let cases = [
            (126_715_061_817_167.81, "5985-06-10T12:16:57.167813Z"),
            (4_070_908_800_123.456_7, "2099-01-01T00:00:00.123457Z"),
            (4_070_908_800_000.7, "2099-01-01T00:00:00.000700Z"),
            (-20_000_000_001.5, "1969-05-14T12:26:39.998500Z"),
        ];
        for (value, want) in cases {
            assert_eq!(
                from_unix_float(value).map(format_timestamp),
                Ok(want.to_owned()),
                "{value}"
            );
        }
        let read = |t: &str| parse_timestamp_str(t).map(|s| format_timestamp(s.instant()));
        assert_eq!(
            read("126715061817167.81"),
            Ok("5985-06-10T12:16:57.167813Z".to_owned())
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
            "2025-06-01T12:00:00+05",
            "2025-06-01T12:00:00+24:00",
            "2025-06-01T12:00:00.Z",
            " 2025-06-01T12:00:00Z",
            "2025-06-01T12:00:00",
        ] {
            assert!(parse_timestamp(bad).is_none(), "{bad}");
        }
    }
}
