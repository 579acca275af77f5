//! The record JSON around its two timestamps, so the server can stamp it.
//!
//! The text every store keeps is [`IdempotencyRecord::to_json`]'s. Its timestamps must be
//! the server's, and a statement learns the server's time only when it runs, so the
//! client encodes the record (with any timestamps) and cuts out the two values; the
//! statement writes `head || created_at || '","expires_at":"' || expires_at || tail`
//! with `idempotency_record_time(…)`, which spells a time as the encoder does.

use idempotency_core::{IdempotencyError, IdempotencyRecord, Result};

const CREATED: &str = ",\"created_at\":\"";
const EXPIRES: &str = "\",\"expires_at\":\"";
const STATUS: &str = "\",\"status\":\"";

/// The encoder's text of a record without the values of its two timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecordText {
    /// Everything up to and including `,"created_at":"`.
    pub(crate) head: String,
    /// Everything from the quote that closes `expires_at`: `","status":"…`.
    pub(crate) tail: String,
}

impl RecordText {
    /// Cuts the record's JSON around its timestamps.
    ///
    /// The field order is fixed (`…,"result":…,"created_at":"…","expires_at":"…",
    /// "status":…`). The result comes before `created_at` and may hold any text, but
    /// every field after it is a string whose quotes are escaped, so the last
    /// `,"created_at":"` is the field's own.
    pub(crate) fn of(record: &IdempotencyRecord) -> Result<Self> {
        let mut json = record.to_json();
        let cut = json.rfind(CREATED).and_then(|created| {
            let start = created + CREATED.len();
            let expires = start + json[start..].find(EXPIRES)?;
            let after = expires + EXPIRES.len();
            let end = after + json[after..].find(STATUS)?;
            Some((start, end))
        });
        let Some((start, end)) = cut else {
            return Err(IdempotencyError::serialization(
                "the record encoder wrote no timestamps where expected",
            ));
        };
        let tail = json.split_off(end);
        json.truncate(start);
        Ok(Self { head: json, tail })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use idempotency_core::{Clock, Lease, RawValue, RecordId};

    use super::RecordText;

    #[test]
    fn cuts_exactly_the_two_timestamps() {
        let id = RecordId::new("op", "k").expect("valid");
        let lease = Lease::new(id, Some("fp \"created_at\":\""), Clock::system());
        let result =
            RawValue::from_string(r#"{",\"created_at\":\"":1,"x":"\",\"status\":\""}"#.to_owned())
                .expect("json");
        let now = lease.clock().now();
        let record = lease
            .completed_record_at(now, &result, Duration::from_secs(60))
            .expect("record");
        let text = RecordText::of(&record).expect("cut");
        let json = record.to_json();
        assert!(json.starts_with(&text.head));
        assert!(json.ends_with(&text.tail));
        assert!(text.head.ends_with(r#"},"created_at":""#));
        assert!(text.tail.starts_with(r#"","status":"completed""#));
        let middle = &json[text.head.len()..json.len() - text.tail.len()];
        assert_eq!(middle.matches("\",\"expires_at\":\"").count(), 1);
    }
}
