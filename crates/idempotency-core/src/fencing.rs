//! Fencing tokens: a number per run of an action that grows with every new owner of its
//! key, so a downstream write can refuse an owner that stalled past its lease.

use std::fmt;

/// The fencing token of one owner of a key: larger than the token of every earlier owner
/// of the same key on the same store (on Redis: while the store keeps the key's counter,
/// see `docs/redis.md`; on `PostgreSQL`: always, from a sequence).
///
/// An action makes its downstream writes conditional on it: the write carries the token
/// and the target refuses a token not larger than the one it last accepted, for example
/// `UPDATE accounts SET balance = $1, fence = $2 WHERE id = $3 AND fence < $2`. An owner
/// that stalled past its lease (a paused process, a long GC) and was taken over then
/// cannot overwrite the newer owner's effect: its token is smaller.
///
/// # Examples
/// ```
/// use idempotency_core::FencingToken;
/// let older = FencingToken::new(7);
/// let newer = FencingToken::new(8);
/// assert!(newer > older);
/// // What a downstream target decides, given the token it last accepted:
/// assert!(newer.admits(Some(older)));
/// assert!(!older.admits(Some(newer)));
/// assert!(older.admits(None));
/// assert_eq!(newer.as_i64(), 8);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(u64);

impl FencingToken {
    /// A token of value `value` (stores make them; tests and targets read them back).
    pub const fn new(value: u64) -> Self {
        Self(value)
    }

    /// The token's value.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The value for a signed 64-bit column (a `PostgreSQL` `bigint`): tokens stay below
    /// `i64::MAX` (a store would need 2^63 owners of one key to pass it); saturates.
    pub fn as_i64(self) -> i64 {
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }

    /// Whether a target that last accepted `accepted` (or none) takes a write carrying
    /// this token: only a larger token is admitted.
    pub fn admits(self, accepted: Option<Self>) -> bool {
        accepted.is_none_or(|last| self > last)
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
