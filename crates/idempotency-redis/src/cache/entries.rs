//! The local map of finished records, and the fences that keep it consistent with the
//! invalidations the server sends.
//!
//! # Concurrency invariants
//! - **Fill fence.** A reader takes a [`Ticket`] (the flush epoch and its key's stripe
//!   generation) *before* it sends its read to Redis, and may insert what it read only if
//!   both are unchanged. The check and the insert happen under the epoch's read lock and
//!   the stripe's lock; an invalidation bumps the stripe generation and removes the key
//!   under the same stripe lock, a flush bumps the epoch and clears the map under the
//!   epoch's write lock. So an invalidation or flush that is applied after the read was
//!   sent always wins: either it removes the inserted entry, or the insert sees the bumped
//!   counter and is dropped. (An invalidation applied before the read was sent concerns a
//!   write the server applied before it ran our read, so the read saw that write.)
//! - **Freshness.** Entries are served only while `fresh_until` is in the future. The
//!   tracking task moves it forward only after the server answered a check on the
//!   tracking connection and every invalidation received before that answer was applied
//!   (they travel on the same connection, in order), and clears it before it flushes on a
//!   connection loss.
//! - Pending records are never inserted (checked in [`Entries::insert`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use idempotency_core::IdempotencyRecord;
use quick_cache::Weighter;
use time::OffsetDateTime;

use super::CacheConfig;
use super::stats::Counters;

/// Stripes of invalidation generations: a key's invalidation only fences fills of keys
/// in its stripe.
const STRIPES: usize = 1024;

/// Bytes a record costs beyond its text fields (timestamps, status, the map's own
/// bookkeeping), in the weight estimate.
const RECORD_OVERHEAD: u64 = 160;

/// One cached record.
#[derive(Debug)]
pub(crate) struct Entry {
    record: IdempotencyRecord,
    /// When the entry stops being served (the record's expiry, or the configured maximum).
    deadline: Instant,
    /// The estimated bytes of the record.
    bytes: u64,
}

/// Weighs an entry at least `floor` (= `max_bytes / max_entries`), so that a map bounded
/// by `max_bytes` of weight also holds at most `max_entries` entries.
#[derive(Debug, Clone, Copy)]
struct ByWeight {
    floor: u64,
}

impl Weighter<Box<str>, Arc<Entry>> for ByWeight {
    fn weight(&self, key: &Box<str>, entry: &Arc<Entry>) -> u64 {
        (entry.bytes + key.len() as u64).max(self.floor)
    }
}

/// What a reader saw before it sent its read: see the fill fence.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    epoch: u64,
    stripe: usize,
    generation: u64,
}

/// The local cache of one [`CachedStore`](super::CachedStore).
#[derive(Debug)]
pub(crate) struct Entries {
    map: quick_cache::sync::Cache<Box<str>, Arc<Entry>, ByWeight>,
    epoch: RwLock<u64>,
    stripes: Box<[Mutex<u64>]>,
    /// Nanoseconds after `base` until which entries may be served; 0: not fresh.
    fresh_until: AtomicU64,
    base: Instant,
    max_ttl: Option<Duration>,
    pub(crate) counters: Counters,
}

impl Entries {
    pub(crate) fn new(config: &CacheConfig) -> Self {
        let max_entries = config.max_entries.max(1);
        let floor = (config.max_bytes / max_entries as u64).max(1);
        Self {
            map: quick_cache::sync::Cache::with_weighter(
                max_entries,
                config.max_bytes.max(1),
                ByWeight { floor },
            ),
            epoch: RwLock::new(0),
            stripes: (0..STRIPES).map(|_| Mutex::new(0)).collect(),
            fresh_until: AtomicU64::new(0),
            base: Instant::now(),
            max_ttl: config.max_ttl,
            counters: Counters::default(),
        }
    }

    fn stripe(id: &str) -> usize {
        // FNV-1a: cheap, and only spreads keys over stripes (a collision costs a fill).
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in id.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        (h as usize) % STRIPES
    }

    /// Whether the cache may be served now (see the freshness invariant).
    pub(crate) fn is_fresh(&self) -> bool {
        self.is_fresh_at(Instant::now())
    }

    fn is_fresh_at(&self, now: Instant) -> bool {
        let now = now.saturating_duration_since(self.base).as_nanos() as u64;
        now < self.fresh_until.load(Ordering::Acquire)
    }

    /// Serves the cache until `sent + staleness`, `sent` being when the confirming check
    /// was sent.
    pub(crate) fn fresh_until(&self, sent: Instant, staleness: Duration) {
        // A staleness the clock cannot add serves until the counter's end.
        let until = sent.checked_add(staleness).map_or(Duration::MAX, |end| {
            end.saturating_duration_since(self.base)
        });
        self.fresh_until.store(
            u64::try_from(until.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Release,
        );
    }

    /// Stops serving until the next confirmation.
    pub(crate) fn unfresh(&self) {
        self.fresh_until.store(0, Ordering::Release);
    }

    /// The cached record of `id` (the `operation:key` text), if it is fresh and alive.
    pub(crate) fn get(&self, id: &str) -> Option<IdempotencyRecord> {
        let now = Instant::now();
        if !self.is_fresh_at(now) {
            return None;
        }
        let entry = self.map.get(id)?;
        if entry.deadline <= now {
            // Only this very entry: a newer one filled meanwhile stays.
            self.map.remove_if(id, |e| Arc::ptr_eq(e, &entry));
            return None;
        }
        Some(entry.record.clone())
    }

    /// Taken before the read it fences is sent.
    pub(crate) fn ticket(&self, id: &str) -> Ticket {
        let epoch = *self.epoch.read().unwrap_or_else(PoisonError::into_inner);
        let stripe = Self::stripe(id);
        let generation = *self.stripes[stripe]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Ticket {
            epoch,
            stripe,
            generation,
        }
    }

    /// Caches a finished record read under `ticket`, living until its `expires_at` on the
    /// server's clock (`server_now` is that clock's time now) or `max_ttl`. Pending
    /// records, expired ones and fills fenced off by an invalidation are dropped.
    pub(crate) fn insert(
        &self,
        ticket: Ticket,
        id: &str,
        record: &IdempotencyRecord,
        server_now: OffsetDateTime,
    ) {
        if record.is_pending() || !self.is_fresh() {
            return;
        }
        let left = record.expires_at() - server_now;
        let Ok(mut left) = Duration::try_from(left) else {
            return; // already past its expiry on the server's clock
        };
        if let Some(max) = self.max_ttl {
            left = left.min(max);
        }
        if left.is_zero() {
            return;
        }
        let bytes = RECORD_OVERHEAD
            + (record.result().get().len()
                + record.operation().len()
                + record.idempotency_key().len()
                + record.fingerprint().map_or(0, str::len)
                + record.owner().map_or(0, str::len)) as u64;
        let entry = Arc::new(Entry {
            record: record.clone(),
            deadline: Instant::now() + left,
            bytes,
        });
        // Invariant (fill fence): checked and inserted under both locks.
        let epoch = self.epoch.read().unwrap_or_else(PoisonError::into_inner);
        if *epoch != ticket.epoch {
            self.counters.fenced.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let generation = self.stripes[ticket.stripe]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *generation != ticket.generation {
            self.counters.fenced.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.map.insert(id.into(), entry);
        self.counters.fills.fetch_add(1, Ordering::Relaxed);
    }

    /// Drops the entry of `id` and fences the fills of reads sent before now.
    pub(crate) fn invalidate(&self, id: &str) {
        let mut generation = self.stripes[Self::stripe(id)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *generation = generation.wrapping_add(1);
        self.map.remove(id);
    }

    /// Drops every entry and fences every fill of a read sent before now.
    pub(crate) fn flush(&self) {
        let mut epoch = self.epoch.write().unwrap_or_else(PoisonError::into_inner);
        *epoch = epoch.wrapping_add(1);
        self.map.clear();
        self.counters.flushes.fetch_add(1, Ordering::Relaxed);
    }

    /// Entries held now (expired ones included until evicted or read).
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The weight held now (at least the estimated bytes).
    pub(crate) fn weight(&self) -> u64 {
        self.map.weight()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use idempotency_core::{Clock, IdempotencyDomainService, IdempotencyRecord, Lease, RecordId};
    use time::OffsetDateTime;

    use super::{CacheConfig, Entries};

    fn record(key: &str) -> IdempotencyRecord {
        IdempotencyDomainService::default()
            .create_record("op", key, &1)
            .expect("record")
    }

    fn fresh(config: &CacheConfig) -> Entries {
        let entries = Entries::new(config);
        entries.fresh_until(std::time::Instant::now(), Duration::from_secs(600));
        entries
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    #[test]
    fn a_fill_read_before_an_invalidation_of_its_key_is_dropped() {
        let entries = fresh(&CacheConfig::default());
        let ticket = entries.ticket("op:a");
        let other = entries.ticket("op:b");
        entries.invalidate("op:a");
        entries.insert(ticket, "op:a", &record("a"), now());
        assert!(entries.get("op:a").is_none());
        // A key of another stripe is not fenced by it.
        assert_ne!(Entries::stripe("op:a"), Entries::stripe("op:b"));
        entries.insert(other, "op:b", &record("b"), now());
        assert!(entries.get("op:b").is_some());
        // A ticket taken after the invalidation fills.
        entries.insert(entries.ticket("op:a"), "op:a", &record("a"), now());
        assert!(entries.get("op:a").is_some());
    }

    #[test]
    fn a_flush_fences_every_earlier_read_and_empties_the_map() {
        let entries = fresh(&CacheConfig::default());
        entries.insert(entries.ticket("op:a"), "op:a", &record("a"), now());
        let ticket = entries.ticket("op:b");
        entries.flush();
        entries.insert(ticket, "op:b", &record("b"), now());
        assert_eq!(entries.len(), 0);
        assert!(entries.get("op:a").is_none());
    }

    #[test]
    fn nothing_is_served_or_filled_while_not_fresh() {
        let entries = fresh(&CacheConfig::default());
        entries.insert(entries.ticket("op:a"), "op:a", &record("a"), now());
        entries.unfresh();
        assert!(entries.get("op:a").is_none());
        entries.insert(entries.ticket("op:b"), "op:b", &record("b"), now());
        entries.fresh_until(std::time::Instant::now(), Duration::from_secs(600));
        assert!(entries.get("op:b").is_none());
        assert!(entries.get("op:a").is_some());
    }

    #[test]
    fn pending_and_expired_records_are_never_filled() {
        let entries = fresh(&CacheConfig::default());
        let lease = Lease::new(RecordId::new("op", "p").expect("id"), None, Clock::system());
        let pending = lease
            .pending_record(Duration::from_secs(30))
            .expect("pending");
        entries.insert(entries.ticket("op:p"), "op:p", &pending, now());
        assert_eq!(entries.len(), 0);
        // Past its `expires_at` on the server's clock (an hour ahead of ours).
        let late = now() + time::Duration::hours(1);
        entries.insert(entries.ticket("op:e"), "op:e", &record("e"), late);
        assert_eq!(entries.len(), 0);
    }

    #[test]
    fn an_entry_lives_no_longer_than_max_ttl() {
        let entries = fresh(&CacheConfig {
            max_ttl: Some(Duration::from_millis(50)),
            ..CacheConfig::default()
        });
        entries.insert(entries.ticket("op:a"), "op:a", &record("a"), now());
        assert!(entries.get("op:a").is_some());
        std::thread::sleep(Duration::from_millis(80));
        assert!(entries.get("op:a").is_none());
    }

    #[test]
    fn the_weight_floor_bounds_the_entries() {
        let entries = fresh(&CacheConfig {
            max_entries: 10,
            max_bytes: 1 << 20,
            ..CacheConfig::default()
        });
        for i in 0..1000 {
            let key = format!("op:k{i}");
            entries.insert(entries.ticket(&key), &key, &record(&format!("k{i}")), now());
        }
        assert!(entries.len() <= 10, "{}", entries.len());
        assert!(entries.weight() <= 1 << 20);
    }
}
