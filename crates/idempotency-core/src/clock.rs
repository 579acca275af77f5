//! The wall clock records are stamped with.

use time::OffsetDateTime;

/// The wall clock a coordinator or store stamps records with: the system clock, or the
/// system clock shifted by a fixed offset (for tests that run peers with clocks that
/// disagree).
///
/// Since protocol v2 no client clock decides whether a reservation is alive (Redis's TTL
/// does), so a wrong clock changes the timestamps written into records, never who runs
/// the action. The in-memory store is its own server: its clock decides expiry there.
///
/// # Examples
/// ```
/// use idempotency_core::Clock;
/// let ahead = Clock::with_offset(time::Duration::seconds(5));
/// assert!(ahead.now() > Clock::system().now());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Clock {
    offset: time::Duration,
}

impl Clock {
    /// The system clock.
    pub const fn system() -> Self {
        Self {
            offset: time::Duration::ZERO,
        }
    }

    /// The system clock shifted by `offset` (positive: ahead).
    pub const fn with_offset(offset: time::Duration) -> Self {
        Self { offset }
    }

    /// The offset from the system clock.
    pub const fn offset(self) -> time::Duration {
        self.offset
    }

    /// Now, in UTC, truncated to microseconds (what a record can hold).
    pub fn now(self) -> OffsetDateTime {
        crate::wire::timestamp::to_micros(OffsetDateTime::now_utc() + self.offset)
    }
}
