//! The server's clock, as the repository's `expires_at` check needs it.
//!
//! Liveness is Redis's (its TTLs); the one place a record's `expires_at` is still compared
//! with a clock is the repository `get`/`get_many` (the Python library's semantics), and
//! there the clock is the server's, never the reader's. Asking `TIME` on every read would
//! cost a round trip, so the store samples it and extrapolates with the monotonic clock:
//! the estimate is off by at most half a round trip plus the monotonic drift since the
//! sample, and a jump of the reader's wall clock does not move it at all.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use fred::prelude::{Client, ClientLike, FredResult, Value};
use fred::types::{ClusterHash, CustomCommand};
use time::OffsetDateTime;

/// How long one `TIME` sample is trusted.
const RESAMPLE_AFTER: Duration = Duration::from_secs(30);

/// A sampled server clock.
#[derive(Debug, Default)]
pub(crate) struct ServerClock {
    // (server time at the sample, monotonic instant of the sample)
    sample: Mutex<Option<(OffsetDateTime, Instant)>>,
}

impl ServerClock {
    /// The server's time now, sampling `TIME` when the last sample is stale.
    pub(crate) async fn now(&self, client: &Client) -> FredResult<OffsetDateTime> {
        let cached = *self.sample.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((server, at)) = cached
            && at.elapsed() < RESAMPLE_AFTER
        {
            return Ok(server + at.elapsed());
        }
        let sent = Instant::now();
        let reply: Value = client
            .custom(
                CustomCommand::new_static("TIME", ClusterHash::Random, false),
                Vec::<Value>::new(),
            )
            .await?;
        let rtt = sent.elapsed();
        let server = parse_time(&reply).ok_or_else(|| {
            fred::error::Error::new(fred::error::ErrorKind::Protocol, "unexpected TIME reply")
        })?;
        // The server read its clock about half a round trip before the reply arrived.
        let at = sent + rtt / 2;
        *self.sample.lock().unwrap_or_else(PoisonError::into_inner) = Some((server, at));
        Ok(server + at.elapsed())
    }
}

/// `TIME`'s `[seconds, microseconds]` as a UTC time.
fn parse_time(reply: &Value) -> Option<OffsetDateTime> {
    let Value::Array(parts) = reply else {
        return None;
    };
    let number = |v: &Value| -> Option<i64> {
        v.as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    };
    let secs = number(parts.first()?)?;
    let micros = number(parts.get(1)?)?;
    let t = OffsetDateTime::from_unix_timestamp(secs).ok()?;
    Some(t + time::Duration::microseconds(micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_replies_parse_as_utc() {
        let reply = Value::Array(vec![Value::from("1700000000"), Value::from("250000")]);
        let t = parse_time(&reply).expect("parses");
        assert_eq!(t.unix_timestamp(), 1_700_000_000);
        assert_eq!(t.microsecond(), 250_000);
        assert_eq!(parse_time(&Value::Null), None);
    }
}
