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
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use fred::prelude::{Client, ClientLike, Value};
use fred::types::{ClusterHash, CustomCommand};
use time::OffsetDateTime;

/// How long one `TIME` sample (or one refusal) is trusted before it is refreshed.
const RESAMPLE_AFTER: Duration = Duration::from_secs(30);
/// How soon a refresh that failed without an answer (I/O, timeout) is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
enum Sample {
    /// The server's time at the monotonic instant.
    Time(OffsetDateTime, Instant),
    /// The server refused `TIME` (an error reply, such as `NOPERM`) at this instant.
    Refused(Instant),
}

#[derive(Debug, Default)]
struct State {
    sample: Option<Sample>,
    /// A refresh failed without an answer at this instant: the last sample stays.
    failed_at: Option<Instant>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    // Set while one refresh runs: at most one `TIME` in flight per store.
    refreshing: AtomicBool,
    // Done once the store's first `TIME` was answered or failed.
    first: tokio::sync::OnceCell<()>,
}

/// A sampled server clock. Cheap to clone (one shared sample).
///
/// Invariants, enforced here: a call never waits for `TIME`, except for the store's first
/// sample (once, at start-up, in [`ServerClock::now`]); a refresh runs in the background,
/// one at a time (`refreshing`); a
/// refresh that gets no answer (I/O, timeout) keeps the last good sample, and only a
/// refusal by the server switches the store to local-clock stamps, for
/// [`RESAMPLE_AFTER`].
#[derive(Debug, Default, Clone)]
pub(crate) struct ServerClock {
    shared: Arc<Shared>,
}

impl ServerClock {
    /// The server's time now from the last sample, without asking the server; `None`
    /// without a fresh sample.
    pub(crate) fn estimate(&self) -> Option<OffsetDateTime> {
        match self.state().sample {
            Some(Sample::Time(server, at)) if at.elapsed() < RESAMPLE_AFTER => {
                Some(server + at.elapsed())
            }
            _ => None,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The server's time now, extrapolated from the last sample (however old: a
    /// monotonic clock drifts little), never waiting: a stale or missing sample is
    /// refreshed in the background. `None` when there is no sample yet or the server
    /// refused `TIME`; callers then fall back as each documents.
    pub(crate) fn current(&self, client: &Client) -> Option<OffsetDateTime> {
        let (now, refresh) = {
            let state = self.state();
            let retry_due = state.failed_at.is_none_or(|at| at.elapsed() >= RETRY_AFTER);
            match state.sample {
                Some(Sample::Time(server, at)) => (
                    Some(server + at.elapsed()),
                    at.elapsed() >= RESAMPLE_AFTER && retry_due,
                ),
                Some(Sample::Refused(at)) => (None, at.elapsed() >= RESAMPLE_AFTER),
                None => (None, retry_due),
            }
        };
        if refresh {
            self.refresh_in_background(client);
        }
        now
    }

    /// The server's time now, as [`ServerClock::current`], except that the store's very
    /// first sample is waited for (once per store, at start-up: the store asks for it when
    /// it is built), so the first calls are stamped with the server's clock too.
    pub(crate) async fn now(&self, client: &Client) -> Option<OffsetDateTime> {
        if !self.shared.first.initialized() {
            self.shared
                .first
                .get_or_init(|| async {
                    self.ask(client).await;
                })
                .await;
        }
        self.current(client)
    }

    /// Starts one refresh on the current runtime, unless one runs (or there is no
    /// runtime: then the next call starts it). The store's first sample goes through
    /// [`ServerClock::now`]'s once-cell, so callers waiting for it wait for this one.
    pub(crate) fn refresh_in_background(&self, client: &Client) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (clock, client) = (self.clone(), client.clone());
        if !self.shared.first.initialized() {
            runtime.spawn(async move {
                clock.now(&client).await;
            });
            return;
        }
        if self.shared.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        runtime.spawn(async move {
            // Cleared on drop too: a refresh cancelled by a shutdown must not block others.
            let _refreshing = Refreshing(&clock.shared.refreshing);
            clock.ask(&client).await;
        });
    }

    async fn ask(&self, client: &Client) -> Option<OffsetDateTime> {
        let sent = Instant::now();
        let reply: Result<Value, fred::error::Error> = client
            .custom(
                CustomCommand::new_static("TIME", ClusterHash::Random, false),
                Vec::<Value>::new(),
            )
            .await;
        let mut state = self.state();
        match reply {
            Ok(value) => match parse_time(&value) {
                // The server read its clock about half a round trip before the reply.
                Some(server) => {
                    state.sample = Some(Sample::Time(server, sent + sent.elapsed() / 2));
                    state.failed_at = None;
                }
                None => state.sample = Some(Sample::Refused(Instant::now())),
            },
            Err(e) if crate::errors::reply_code(&e).is_some() => {
                tracing::debug!(error = %e, "TIME refused; records are stamped with the local clock");
                state.sample = Some(Sample::Refused(Instant::now()));
            }
            // No answer: a transient fault. The last good sample stays.
            Err(e) => {
                tracing::debug!(error = %e, "TIME got no answer; keeping the last sample");
                state.failed_at = Some(Instant::now());
            }
        }
        match state.sample {
            Some(Sample::Time(server, at)) => Some(server + at.elapsed()),
            _ => None,
        }
    }

    /// Seeds a sample whose server time is `server` at the monotonic `at` (tests).
    #[cfg(test)]
    fn seed(&self, server: OffsetDateTime, at: Instant) {
        self.state().sample = Some(Sample::Time(server, at));
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

    /// A refresh that gets no answer keeps the last good sample; the call that asked for
    /// the time never waits for the refresh.
    #[tokio::test]
    async fn a_transient_failure_keeps_the_last_good_sample_without_waiting() {
        let clock = ServerClock::default();
        let server = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time");
        // Stale: a minute old.
        let at = Instant::now()
            .checked_sub(Duration::from_secs(60))
            .expect("a minute ago");
        clock.seed(server, at);
        // A client that was never connected: TIME fails without an answer.
        let mut builder = fred::prelude::Builder::default_centralized();
        builder.with_performance_config(|p| {
            p.default_command_timeout = Duration::from_millis(50);
        });
        let client = builder.build().expect("client");
        let started = Instant::now();
        let now = clock
            .current(&client)
            .expect("the stale sample, extrapolated");
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "the call waited"
        );
        assert!(now >= server + Duration::from_secs(60));
        // Let the background refresh fail.
        for _ in 0..100 {
            if !clock.shared.refreshing.load(Ordering::Acquire) && clock.state().failed_at.is_some()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            clock.state().failed_at.is_some(),
            "the refresh did not fail"
        );
        assert!(
            matches!(clock.state().sample, Some(Sample::Time(s, _)) if s == server),
            "the last good sample was dropped"
        );
        assert!(clock.current(&client).is_some());
    }
}
