//! The server's clock: what records are stamped with and what the repository's
//! `expires_at` check is judged by.
//!
//! Liveness is Redis's (its TTLs). Timestamps still matter in two places: the Python
//! library's readers compare `expires_at` with their clock, and the repository's
//! `get`/`get_many` keep that check. So the store stamps the records it writes with the
//! server's time (a writer whose clock runs behind would otherwise write records that
//! look expired, or abandoned, early) and judges `expires_at` on the server's time too.
//!
//! Asking `TIME` on every command would cost a round trip, so the store samples it and
//! extrapolates with the monotonic clock: the estimate is off by at most half a round trip
//! plus the monotonic drift since the sample, and a jump of the local wall clock does not
//! move it. A server that refuses `TIME` (an ACL without `@fast`/`+time`) is asked again
//! only after the same interval; meanwhile there is no estimate, and callers fall back as
//! each documents: never to an error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use fred::prelude::{Client, ClientLike, Value};
use fred::types::{ClusterHash, CustomCommand};
use time::OffsetDateTime;

/// How long one `TIME` sample (or one refusal) is trusted.
const RESAMPLE_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
enum Sample {
    /// The server's time at the monotonic instant.
    Time(OffsetDateTime, Instant),
    /// `TIME` failed at this instant.
    Unavailable(Instant),
}

/// A sampled server clock.
#[derive(Debug, Default)]
pub(crate) struct ServerClock {
    sample: Mutex<Option<Sample>>,
    // Set while one caller asks `TIME`: the others keep using the last sample meanwhile,
    // so a stale sample costs one round trip per store, not one per concurrent call.
    refreshing: AtomicBool,
}

impl ServerClock {
    /// The server's time now from the last sample, without asking the server; `None`
    /// without a fresh sample.
    pub(crate) fn estimate(&self) -> Option<OffsetDateTime> {
        match *self.sample.lock().unwrap_or_else(PoisonError::into_inner) {
            Some(Sample::Time(server, at)) if at.elapsed() < RESAMPLE_AFTER => {
                Some(server + at.elapsed())
            }
            _ => None,
        }
    }

    /// The server's time now, sampling `TIME` when the last sample is stale; `None` when
    /// the server refused or failed it (asked again after [`RESAMPLE_AFTER`]).
    pub(crate) async fn now(&self, client: &Client) -> Option<OffsetDateTime> {
        let last = *self.sample.lock().unwrap_or_else(PoisonError::into_inner);
        let stale = match last {
            Some(Sample::Time(server, at)) if at.elapsed() < RESAMPLE_AFTER => {
                return Some(server + at.elapsed());
            }
            Some(Sample::Unavailable(at)) if at.elapsed() < RESAMPLE_AFTER => return None,
            Some(Sample::Time(server, at)) => Some(server + at.elapsed()),
            _ => None,
        };
        if self.refreshing.swap(true, Ordering::AcqRel) {
            // Someone else is asking: the extrapolated old sample is good enough meanwhile.
            return stale;
        }
        // Cleared on drop too: a caller cancelled mid-refresh must not block refreshes.
        let _refreshing = Refreshing(&self.refreshing);
        self.refresh(client).await
    }

    async fn refresh(&self, client: &Client) -> Option<OffsetDateTime> {
        let sent = Instant::now();
        let reply: Result<Value, _> = client
            .custom(
                CustomCommand::new_static("TIME", ClusterHash::Random, false),
                Vec::<Value>::new(),
            )
            .await;
        let sample = match reply.ok().as_ref().and_then(parse_time) {
            // The server read its clock about half a round trip before the reply arrived.
            Some(server) => Sample::Time(server, sent + sent.elapsed() / 2),
            None => {
                tracing::debug!("TIME unavailable; records are stamped with the local clock");
                Sample::Unavailable(Instant::now())
            }
        };
        *self.sample.lock().unwrap_or_else(PoisonError::into_inner) = Some(sample);
        match sample {
            Sample::Time(server, at) => Some(server + at.elapsed()),
            Sample::Unavailable(_) => None,
        }
    }
}

/// Clears the refreshing flag when the refresh ends or is dropped.
struct Refreshing<'a>(&'a AtomicBool);

impl Drop for Refreshing<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
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

    #[test]
    fn no_sample_means_no_estimate() {
        assert_eq!(ServerClock::default().estimate(), None);
    }
}
