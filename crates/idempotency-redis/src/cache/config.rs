//! What bounds the local cache.

use std::time::Duration;

/// The bounds of a [`CachedStore`](super::CachedStore)'s local cache.
///
/// The cache holds at most `max_entries` records and at most `max_bytes` of them
/// (estimated from the record's text); each entry lives no longer than its record (its
/// `expires_at` on the server's clock) nor than `max_ttl`. `max_staleness` bounds how
/// long an entry can be served after another client changed the key while the
/// invalidation connection is silently dead (a black-holed network): the cache is served
/// only while the server confirmed, less than `max_staleness` ago, that this process's
/// tracking connection is alive and tracking, and every invalidation sent before that
/// confirmation has been applied. It is checked four times per `max_staleness`.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use idempotency_redis::cache::CacheConfig;
/// let config = CacheConfig {
///     max_entries: 50_000,
///     max_ttl: Some(Duration::from_secs(60)),
///     ..CacheConfig::default()
/// };
/// assert_eq!(config.max_bytes, 64 * 1024 * 1024);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// The most records held (default 10 000).
    pub max_entries: usize,
    /// The most bytes of records held, estimated from each record's JSON text (default
    /// 64 MiB).
    pub max_bytes: u64,
    /// An optional limit, shorter than the record's own lifetime, on how long an entry is
    /// kept (default: none; the record's `expires_at` alone).
    pub max_ttl: Option<Duration>,
    /// How long the cache is served after the last confirmation that the invalidation
    /// connection works (default 1 s; checked every quarter of it).
    pub max_staleness: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            max_bytes: 64 * 1024 * 1024,
            max_ttl: None,
            max_staleness: Duration::from_secs(1),
        }
    }
}

impl CacheConfig {
    /// The interval of the liveness check of the invalidation connection.
    pub(crate) fn heartbeat(&self) -> Duration {
        (self.max_staleness / 4).max(Duration::from_millis(10))
    }
}
