//! Whether records live as long as the broker may redeliver a message.
//!
//! A redelivery that arrives after its record expired runs the handler again. The
//! broker's redelivery horizon is the longest time between a message's first delivery
//! and its last: for JetStream, the sum over `max_deliver` deliveries of how long each
//! waits before the next (`ack_wait`, or the `backoff` entry for that delivery, or the
//! consumer's own `NAK` delay when longer).

use std::fmt;
use std::time::Duration;

use crate::outcome::Delays;

/// How a record's lifetime compares with the broker's redelivery horizon.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use idempotency_consumers::{Delays, Retention};
/// let ten_secs = Duration::from_secs(10);
/// let retention = Retention::jetstream(Duration::from_secs(3600), 5, ten_secs, &[], &Delays::default());
/// assert_eq!(retention, Retention::Covered { ttl: Duration::from_secs(3600), horizon: Duration::from_secs(50) });
/// assert!(Retention::jetstream(ten_secs, -1, ten_secs, &[], &Delays::default()).is_short());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Retention {
    /// Records outlive every redelivery.
    Covered {
        /// The record TTL.
        ttl: Duration,
        /// The broker's redelivery horizon.
        horizon: Duration,
    },
    /// A redelivery may come after its record expired and run the handler again.
    Short {
        /// The record TTL.
        ttl: Duration,
        /// The broker's redelivery horizon.
        horizon: Duration,
    },
    /// The broker redelivers without limit (`max_deliver` of -1): no TTL covers it.
    Unbounded {
        /// The record TTL.
        ttl: Duration,
    },
}

impl Retention {
    /// The horizon of a JetStream consumer with these settings, compared with `ttl`.
    pub fn jetstream(
        ttl: Duration,
        max_deliver: i64,
        ack_wait: Duration,
        backoff: &[Duration],
        delays: &Delays,
    ) -> Self {
        let Ok(deliveries) = u32::try_from(max_deliver) else {
            return Self::Unbounded { ttl };
        };
        if deliveries == 0 {
            return Self::Unbounded { ttl };
        }
        let longest_nak = delays.longest();
        let horizon = (0..deliveries as usize).fold(Duration::ZERO, |sum, i| {
            let wait = match backoff {
                [] => ack_wait,
                _ => backoff[i.min(backoff.len() - 1)],
            };
            sum.saturating_add(wait.max(longest_nak))
        });
        Self::compare(ttl, horizon)
    }

    /// `ttl` against a horizon the caller knows (an AMQP queue's delivery limit times
    /// the consumer timeout, say).
    pub fn compare(ttl: Duration, horizon: Duration) -> Self {
        if ttl >= horizon {
            Self::Covered { ttl, horizon }
        } else {
            Self::Short { ttl, horizon }
        }
    }

    /// Whether a redelivery may outlive its record.
    pub fn is_short(&self) -> bool {
        !matches!(self, Self::Covered { .. })
    }

    /// Logs a warning when records do not cover the horizon.
    pub fn warn_if_short(&self, operation: &str) {
        if self.is_short() {
            tracing::warn!(operation, "{self}");
        }
    }
}

impl fmt::Display for Retention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Covered { ttl, horizon } => write!(
                f,
                "records kept {}s cover the broker's redelivery horizon of {}s",
                ttl.as_secs(),
                horizon.as_secs()
            ),
            Self::Short { ttl, horizon } => write!(
                f,
                "records kept {}s expire before the broker's last redelivery ({}s after the first): \
                 a late redelivery runs the handler again; raise the TTL or lower max_deliver/ack_wait/backoff",
                ttl.as_secs(),
                horizon.as_secs()
            ),
            Self::Unbounded { ttl } => write!(
                f,
                "the broker redelivers without limit (max_deliver -1) but records are kept {}s: \
                 a redelivery after that runs the handler again; set max_deliver",
                ttl.as_secs()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Retention;
    use crate::outcome::Delays;

    const fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn backoff_entries_replace_ack_wait_and_the_last_one_repeats() {
        let delays = Delays::default().with_storage(secs(1));
        // 5 deliveries with backoff [2, 10]: 2 + 10 + 10 + 10 + 10.
        let retention = Retention::jetstream(secs(60), 5, secs(30), &[secs(2), secs(10)], &delays);
        assert_eq!(
            retention,
            Retention::Covered {
                ttl: secs(60),
                horizon: secs(42)
            }
        );
        let short = Retention::jetstream(secs(40), 5, secs(30), &[secs(2), secs(10)], &delays);
        assert!(short.is_short());
    }

    #[test]
    fn a_longer_nak_delay_stretches_each_wait() {
        let delays = Delays::default().with_in_flight(secs(20));
        let retention = Retention::jetstream(secs(3600), 3, secs(5), &[], &delays);
        assert_eq!(
            retention,
            Retention::Covered {
                ttl: secs(3600),
                horizon: secs(60)
            }
        );
    }

    #[test]
    fn unlimited_deliveries_are_never_covered() {
        let retention = Retention::jetstream(secs(86_400), -1, secs(30), &[], &Delays::default());
        assert_eq!(retention, Retention::Unbounded { ttl: secs(86_400) });
        assert!(retention.is_short());
    }
}
