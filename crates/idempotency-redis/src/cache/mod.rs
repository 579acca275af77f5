//! An opt-in local cache of finished records in front of a [`RedisStore`], invalidated
//! by the server (feature `local-cache`).
//!
//! [`CachedStore`] wraps a store and implements the same traits, so a coordinator opts in
//! by wrapping its store. Reads (`get`, `get_many`, and `claim` before it goes to Redis)
//! are answered from memory when the cache holds a finished (completed or stored-error)
//! record for the key; the coordinator checks the fingerprint of a cached record exactly
//! as it does a stored one. Pending records and unreadable values are never cached.
//!
//! Invalidation: a dedicated RESP3 connection runs `CLIENT TRACKING ON BCAST PREFIX
//! <key prefix>` on every master, so a write by any client (another process, the Python
//! library, an operator) to a key under the prefix drops its entry. A dropped or
//! re-made connection flushes the entries it covered (on a cluster, that master's hash
//! slots; otherwise everything), and an entry is served only while a check on its
//! master's connection succeeded less than [`CacheConfig::max_staleness`] ago. See
//! `docs/redis.md` ("Local cache") for the design and what staleness remains.
//!
//! # Example
//! ```no_run
//! # async fn run() -> Result<(), idempotency_core::IdempotencyError> {
//! use idempotency_core::{IdempotencyRepository, RecordId};
//! use idempotency_redis::cache::{CacheConfig, CachedStore};
//! use idempotency_redis::{ConnectOptions, RedisStore};
//!
//! let store = RedisStore::connect("redis://127.0.0.1:6379", &ConnectOptions::default()).await?;
//! let cached = CachedStore::new(store, CacheConfig::default()).await?;
//! // Coordinator::builder(cached.clone()) …
//! let found = cached.get(&RecordId::new("order.create", "k1")?).await?;
//! println!("{found:?} {:?}", cached.stats());
//! # Ok(()) }
//! ```

mod config;
mod entries;
mod stats;
mod tracking;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fred::interfaces::ClientLike as _;

use idempotency_core::{
    Batch, BulkRepository, Claim, Fence, FencingToken, Finished, IdempotencyError,
    IdempotencyRecord, IdempotencyRepository, Lease, RecordId, ReservationStore, Result,
    SaveManyOptions,
};

pub use config::CacheConfig;
pub use idempotency_core::LocalCacheStats as CacheStats;

use crate::store::RedisStore;
use crate::wake::RedisWatch;
use entries::{Entries, Ticket};
use stats::Counters;

/// A [`RedisStore`] with a local cache of finished records, invalidated by the server.
///
/// Cheap to clone; clones share the cache and its invalidation connection, which close
/// when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct CachedStore {
    store: RedisStore,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    entries: Arc<Entries>,
    _tracker: tracking::Tracker,
}

impl CachedStore {
    /// Wraps `store`: opens the invalidation connection (RESP3, with the store's
    /// configuration), switches tracking on for the store's key prefix on every master,
    /// and returns once the server confirmed it.
    ///
    /// # Errors
    /// [`IdempotencyError::Storage`] when the connection cannot be made or the server
    /// refuses `CLIENT TRACKING` (Redis before 6.0, or an ACL without it).
    pub async fn new(store: RedisStore, config: CacheConfig) -> Result<Self> {
        let partitions = if store.connection().client().is_clustered() {
            entries::CLUSTER_SLOTS
        } else {
            1
        };
        let entries = Arc::new(Entries::new(&config, partitions));
        let tracker = tracking::start(
            store.connection().client(),
            store.key_prefix(),
            Arc::clone(&entries),
            &config,
        )
        .await
        .map_err(|e| IdempotencyError::storage(None, e))?;
        Ok(Self {
            store,
            shared: Arc::new(Shared {
                entries,
                _tracker: tracker,
            }),
        })
    }

    /// The wrapped store (its writes bypass the local cache, but the server's
    /// invalidation still reaches it).
    pub fn store(&self) -> &RedisStore {
        &self.store
    }

    /// The cache's counters now.
    pub fn stats(&self) -> CacheStats {
        let e = &self.shared.entries;
        let c = &e.counters;
        // Built field by field: the type is core's and `#[non_exhaustive]`.
        let mut stats = CacheStats::default();
        stats.local_hits = c.hits.sum();
        stats.local_misses = c.misses.sum();
        stats.fills = Counters::load(&c.fills);
        stats.fenced_fills = Counters::load(&c.fenced);
        stats.invalidations = Counters::load(&c.invalidations);
        stats.flushes = Counters::load(&c.flushes);
        stats.retracks = Counters::load(&c.retracks);
        stats.server_flushes = Counters::load(&c.server_flushes);
        stats.node_flushes = Counters::load(&c.node_flushes);
        stats.entries = e.len() as u64;
        stats.weight = e.weight();
        stats.fresh = e.is_fresh();
        stats
    }

    /// Drops every local entry.
    pub fn clear(&self) {
        self.shared.entries.flush();
    }

    fn entries(&self) -> &Entries {
        &self.shared.entries
    }

    /// The partition of `id`'s entry: on a cluster its key's hash slot.
    fn part(&self, id: &RecordId) -> usize {
        if self.entries().partitions() == 1 {
            0
        } else {
            usize::from(fred::util::redis_keyslot(
                self.store.redis_key(id).as_bytes(),
            ))
        }
    }

    /// The cached record of `id` (a local hit), or the fill ticket for the read that
    /// goes to Redis instead (a local miss, taken before that read is sent); the key's
    /// partition is computed once for both.
    fn local(&self, id: &RecordId) -> Lookup {
        let part = self.part(id);
        if let Some(record) = self.entries().get(id.as_str(), part) {
            self.entries().counters.hits.add();
            Lookup::Hit(record)
        } else {
            self.entries().counters.misses.add();
            Lookup::Miss(self.entries().ticket(id.as_str(), part))
        }
    }

    /// Caches a record read under `ticket`, judged on the server's clock (nothing is
    /// cached while the store has no fresh sample of it).
    fn fill(&self, ticket: Ticket, id: &RecordId, record: &IdempotencyRecord) {
        if record.is_pending() {
            return;
        }
        if let Some(server_now) = self.store.inner.server_clock.estimate() {
            self.entries()
                .insert(ticket, id.as_str(), record, server_now);
        }
    }

    fn invalidate(&self, id: &RecordId) {
        self.entries().invalidate(id.as_str());
    }
}

/// What the local cache answers for a key.
enum Lookup {
    /// The cached record.
    Hit(IdempotencyRecord),
    /// Not served from memory: the ticket for filling what the read from Redis finds.
    Miss(Ticket),
}

impl IdempotencyRepository for CachedStore {
    async fn get(&self, id: &RecordId) -> Result<Option<IdempotencyRecord>> {
        let ticket = match self.local(id) {
            Lookup::Hit(record) => return Ok(Some(record)),
            Lookup::Miss(ticket) => ticket,
        };
        let found = self.store.get(id).await?;
        if let Some(record) = &found {
            self.fill(ticket, id, record);
        }
        Ok(found)
    }

    async fn save(&self, record: &IdempotencyRecord) -> Result<()> {
        let saved = self.store.save(record).await;
        // After the write, whatever it returned: a read sent before it must not fill.
        self.invalidate(record.id());
        saved
    }

    async fn replace(&self, record: &IdempotencyRecord) -> Result<()> {
        let replaced = self.store.replace(record).await;
        self.invalidate(record.id());
        replaced
    }

    async fn delete(&self, id: &RecordId) -> Result<bool> {
        let deleted = self.store.delete(id).await;
        self.invalidate(id);
        deleted
    }
}

impl BulkRepository for CachedStore {
    async fn get_by_ids(&self, ids: &[RecordId]) -> Result<HashMap<String, IdempotencyRecord>> {
        let Some(operation) = ids.first().map(RecordId::operation) else {
            return Ok(HashMap::new());
        };
        let mut found = HashMap::with_capacity(ids.len());
        // The misses, and the fill tickets taken for them before the read (index-aligned).
        let (mut missed, mut tickets) = (Vec::new(), Vec::new());
        for id in ids {
            match self.local(id) {
                Lookup::Hit(record) => {
                    found.insert(id.key().to_owned(), record);
                }
                Lookup::Miss(ticket) => {
                    tickets.push(ticket);
                    missed.push(id.clone());
                }
            }
        }
        if !found.is_empty() {
            // The store's bulk series counts every hit, wherever it was answered from.
            self.store
                .inner
                .metrics
                .record_bulk_hit(operation, found.len() as u64);
        }
        if missed.is_empty() {
            return Ok(found);
        }
        let read = self.store.get_by_ids(&missed).await?;
        for (id, ticket) in missed.iter().zip(tickets) {
            if let Some(record) = read.get(id.key()) {
                self.fill(ticket, id, record);
            }
        }
        found.extend(read);
        Ok(found)
    }

    async fn save_batch(&self, batch: Batch<'_>, options: SaveManyOptions) -> Result<()> {
        let saved = self.store.save_batch(batch, options).await;
        for record in batch.records() {
            self.invalidate(record.id());
        }
        saved
    }

    async fn delete_by_ids(&self, ids: &[RecordId]) -> Result<u64> {
        let deleted = self.store.delete_by_ids(ids).await;
        for id in ids {
            self.invalidate(id);
        }
        deleted
    }
}

impl ReservationStore for CachedStore {
    type Watch = RedisWatch;

    async fn claim(&self, lease: &Lease, duration: Duration) -> Result<Claim> {
        let id = lease.id();
        // A finished record under the key is what the claim would find (its `SET NX`
        // writes nothing over it); the coordinator checks its fingerprint either way.
        let ticket = match self.local(id) {
            Lookup::Hit(record) => return Ok(Claim::Found(record)),
            Lookup::Miss(ticket) => ticket,
        };
        let claim = self.store.claim(lease, duration).await?;
        if let Claim::Found(record) = &claim {
            self.fill(ticket, id, record);
        }
        Ok(claim)
    }

    async fn finish(&self, lease: &Lease, finished: Finished<'_>, ttl: Duration) -> Result<Fence> {
        let fence = self.store.finish(lease, finished, ttl).await;
        self.invalidate(lease.id());
        fence
    }

    async fn renew(&self, lease: &Lease, duration: Duration) -> Result<Fence> {
        self.store.renew(lease, duration).await
    }

    async fn release(&self, lease: &Lease) -> Result<Fence> {
        let fence = self.store.release(lease).await;
        self.invalidate(lease.id());
        fence
    }

    async fn fencing_token(&self, lease: &Lease) -> Result<Option<FencingToken>> {
        self.store.fencing_token(lease).await
    }

    async fn watch(&self, id: &RecordId) -> Result<RedisWatch> {
        self.store.watch(id).await
    }
}
