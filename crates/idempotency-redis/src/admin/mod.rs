//! Operator tools over a [`RedisStore`]: look at one key, list and count records, evict a
//! poisoned record, wait for a key. The `idempotency` command-line tool is built on this
//! module; applications can call it too (an admin endpoint, a health check).
//!
//! Every operation reads records as either library writes them (this kit's, with an
//! `owner` token on reservations, and the Python idempotency-kit 0.5.0's, without one)
//! and reports a value it cannot read (not JSON, not a record, another Redis type) as
//! such instead of failing.
//!
//! - [`Admin::inspect`]: one key: status, owner, timestamps, the TTL Redis holds, size,
//!   fingerprint, result (one atomic script call, so the parts belong together).
//! - [`Admin::list`]: `SCAN … MATCH` over every master of a cluster (never `KEYS`), page by
//!   page, filtered by operation and status, up to a limit.
//! - [`Admin::evict`]: removes a completed or unreadable record, a live reservation only
//!   when forced; the removal is conditional on the very bytes inspected.
//! - [`Admin::stats`]: counts by operation and status, a TTL histogram, memory; sampled
//!   (and saying so) past a number of keys.
//! - [`Admin::watch`]: waits for a key to complete or be released (push wake-ups, with a
//!   poll as a safety net for writers that do not publish).
//!
//! # Examples
//! ```no_run
//! # async fn run() -> Result<(), idempotency_core::IdempotencyError> {
//! use idempotency_core::RecordId;
//! use idempotency_redis::admin::Admin;
//! use idempotency_redis::{ConnectOptions, RedisStore};
//!
//! let store = RedisStore::connect("redis://127.0.0.1:6379", &ConnectOptions::default()).await?;
//! let admin = Admin::new(store);
//! if let Some(found) = admin.inspect(&RecordId::new("order.create", "k1")?).await? {
//!     println!("{} {}", found.status_label(), found.owner_label());
//! }
//! # Ok(()) }
//! ```

mod evict;
mod inspect;
mod list;
mod stats;
mod watch;

use crate::store::RedisStore;

pub use evict::Eviction;
pub use inspect::{Content, Inspection, NO_OWNER_LABEL};
pub use list::{ListFilter, Lister};
pub use stats::{Stats, StatsOptions, TTL_BUCKETS};
pub use watch::WatchOutcome;

/// The admin operations on one store (its connection and key prefix).
///
/// Cheap to clone.
///
/// # Examples
/// ```no_run
/// # async fn run() -> Result<(), idempotency_core::IdempotencyError> {
/// use idempotency_redis::{ConnectOptions, RedisStore, admin::Admin};
/// let store = RedisStore::connect("redis://127.0.0.1:6379", &ConnectOptions::default()).await?;
/// let admin = Admin::new(store.clone());
/// assert_eq!(admin.store().key_prefix(), "idempotency:");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Admin {
    store: RedisStore,
}

impl Admin {
    /// Admin operations on `store`'s connection, under its key prefix.
    pub fn new(store: RedisStore) -> Self {
        Self { store }
    }

    /// The store.
    pub fn store(&self) -> &RedisStore {
        &self.store
    }
}

/// Escapes the glob characters of `text` for a `SCAN … MATCH` pattern.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::glob_escape;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("svc:[a]*?\\"), "svc:\\[a\\]\\*\\?\\\\");
        assert_eq!(glob_escape("idempotency:"), "idempotency:");
    }
}
