//! Operator tools over a [`PostgresStore`]: look at one key, list and count records, evict
//! a poisoned record, wait for a key. The `idempotency` command-line tool runs them for
//! `postgres://` URLs, as it runs `idempotency_redis::admin` for Redis ones; the
//! operations, their names and their outcomes mirror that module's, with what a row
//! holds in place of what a Redis key holds (a fence, the row's size on disk, the
//! lifetime left by the server's clock).
//!
//! - [`Admin::inspect`]: one row, expired or not: status, owner, fence, timestamps, the
//!   lifetime left, size, fingerprint, result.
//! - [`Admin::list`]: keyset pages in key order, filtered by operation and status, up to a
//!   limit; each page is one index range scan.
//! - [`Admin::evict`]: removes a finished, expired or unreadable row, a live reservation
//!   only when forced; the `DELETE` is conditional on the fence and record text inspected,
//!   and wakes the key's waiters.
//! - [`Admin::stats`]: exact counts by operation and status, a lifetime histogram, the
//!   rows' and the table's size (one grouped query: no sampling).
//! - [`Admin::watch`]: waits for a key to complete or be released: woken by `LISTEN`/
//!   `NOTIFY` (the store's wake-ups), with a one-second poll as a safety net (a lease that
//!   runs out sends no notification).
//!
//! # Examples
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use idempotency_core::RecordId;
//! use idempotency_postgres::PostgresStore;
//! use idempotency_postgres::admin::Admin;
//!
//! let pool = sqlx::PgPool::connect("postgres://app@127.0.0.1/app").await?;
//! let admin = Admin::new(PostgresStore::new(pool));
//! if let Some(found) = admin.inspect(&RecordId::new("order.create", "k1")?).await? {
//!     println!("{} {} fence {}", found.status_label(), found.owner_label(), found.fence);
//! }
//! # Ok(()) }
//! ```

mod evict;
mod inspect;
mod list;
mod stats;
mod watch;

use crate::store::PostgresStore;

pub use evict::Eviction;
pub use inspect::{Content, Inspection};
pub use list::{ListFilter, Lister};
pub use stats::{Stats, StatsOptions, TTL_BUCKETS};
pub use watch::WatchOutcome;

/// The admin operations on one store (its pool and key prefix).
///
/// Cheap to clone.
///
/// # Examples
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use idempotency_postgres::{PostgresStore, admin::Admin};
/// let pool = sqlx::PgPool::connect("postgres://app@127.0.0.1/app").await?;
/// let admin = Admin::new(PostgresStore::new(pool));
/// assert_eq!(admin.store().config().key_prefix(), "idempotency:");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Admin {
    store: PostgresStore,
}

impl Admin {
    /// Admin operations on `store`'s pool, under its key prefix.
    pub fn new(store: PostgresStore) -> Self {
        Self { store }
    }

    /// The store.
    pub fn store(&self) -> &PostgresStore {
        &self.store
    }

    /// The storage key of `id` under the store's prefix (`prefix` `operation:key`), as
    /// messages name a record.
    pub fn storage_key(&self, id: &idempotency_core::RecordId) -> String {
        self.store.storage_key(id)
    }
}
