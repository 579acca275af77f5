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
//! - **Partitions.** A cluster's entries are partitioned by hash slot (a standalone
//!   server is one partition), so that one master's lost connection flushes and stops
//!   serving only the entries that master holds. Each partition has its own flush epoch,
//!   in the ticket beside the global one, and changed only under the global epoch's
//!   write lock, so the fill fence covers a partition's flush exactly as a whole flush.
//! - **Freshness.** A partition's entries are served only while its `fresh_until` is in
//!   the future. The tracking task moves it forward only after the master serving the
//!   partition answered a check on the tracking connection and every invalidation
//!   received before that answer was applied (they travel on the same connection, in
//!   order), and clears it before it flushes the partition on a connection loss.
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

/// The partitions of a cluster's entries: its hash slots.
pub(crate) const CLUSTER_SLOTS: usize = 16384;

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
    /// The partition the key belongs to.
    part: usize,
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
    part: usize,
    part_epoch: u64,
    stripe: usize,
    generation: u64,
}

/// The local cache of one [`CachedStore`](super::CachedStore).
#[derive(Debug)]
pub(crate) struct Entries {
    map: quick_cache::sync::Cache<Box<str>, Arc<Entry>, ByWeight>,
    epoch: RwLock<u64>,
    /// Per partition: its flush epoch (changed only under `epoch`'s write lock).
    part_epochs: Box<[AtomicU64]>,
    stripes: Box<[Mutex<u64>]>,
    /// Per partition: nanoseconds after `base` until which its entries may be served;
    /// 0: not fresh.
    fresh_until: Box<[AtomicU64]>,
    base: Instant,
    max_ttl: Option<Duration>,
    pub(crate) counters: Counters,
}

impl Entries {
    /// An empty cache of `partitions` partitions (1, or [`CLUSTER_SLOTS`]).
    pub(crate) fn new(config: &CacheConfig, partitions: usize) -> Self {
        let partitions = partitions.max(1);
        let max_entries = config.max_entries.max(1);
        let floor = (config.max_bytes / max_entries as u64).max(1);
        Self {
            map: quick_cache::sync::Cache::with_weighter(
                max_entries,
                config.max_bytes.max(1),
                ByWeight { floor },
            ),
            epoch: RwLock::new(0),
            part_epochs: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            stripes: (0..STRIPES).map(|_| Mutex::new(0)).collect(),
            fresh_until: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
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

    /// How many partitions the entries have.
    pub(crate) fn partitions(&self) -> usize {
        self.fresh_until.len()
    }

    /// Whether every partition may be served now (see the freshness invariant).
    pub(crate) fn is_fresh(&self) -> bool {
        let now = Instant::now();
        (0..self.partitions()).all(|part| self.is_fresh_at(part, now))
    }

    fn is_fresh_at(&self, part: usize, now: Instant) -> bool {
        let now = now.saturating_duration_since(self.base).as_nanos() as u64;
        self.fresh_until
            .get(part)
            .is_some_and(|until| now < until.load(Ordering::Acquire))
    }

    /// Serves `parts` until `sent + staleness`, `sent` being when the confirming check
    /// was sent.
    pub(crate) fn fresh_until(&self, parts: &[usize], sent: Instant, staleness: Duration) {
        // A staleness the clock cannot add serves until the counter's end.
        let until = sent.checked_add(staleness).map_or(Duration::MAX, |end| {
            end.saturating_duration_since(self.base)
        });
        let until = u64::try_from(until.as_nanos()).unwrap_or(u64::MAX);
        for &part in parts {
            if let Some(fresh) = self.fresh_until.get(part) {
                fresh.store(until, Ordering::Release);
            }
        }
    }

    /// Serves every partition until `sent + staleness`.
    #[cfg(test)]
    pub(crate) fn all_fresh_until(&self, sent: Instant, staleness: Duration) {
        let all: Vec<usize> = (0..self.partitions()).collect();
        self.fresh_until(&all, sent, staleness);
    }

    /// Stops serving `parts` until their next confirmation.
    pub(crate) fn unfresh(&self, parts: &[usize]) {
        for &part in parts {
            if let Some(fresh) = self.fresh_until.get(part) {
                fresh.store(0, Ordering::Release);
            }
        }
    }

    /// Stops serving every partition until its next confirmation.
    pub(crate) fn unfresh_all(&self) {
        for fresh in &self.fresh_until {
            fresh.store(0, Ordering::Release);
        }
    }

    /// The cached record of `id` (the `operation:key` text, in partition `part`), if its
    /// partition is fresh and the entry alive.
    pub(crate) fn get(&self, id: &str, part: usize) -> Option<IdempotencyRecord> {
        let now = Instant::now();
        if !self.is_fresh_at(part, now) {
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

    /// Taken before the read it fences is sent (`part`: the key's partition).
    pub(crate) fn ticket(&self, id: &str, part: usize) -> Ticket {
        let (epoch, part_epoch) = {
            let epoch = self.epoch.read().unwrap_or_else(PoisonError::into_inner);
            let part_epoch = self
                .part_epochs
                .get(part)
                .map_or(0, |e| e.load(Ordering::Relaxed));
            (*epoch, part_epoch)
        };
        let stripe = Self::stripe(id);
        let generation = *self.stripes[stripe]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Ticket {
            epoch,
            part,
            part_epoch,
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
        if record.is_pending() || !self.is_fresh_at(ticket.part, Instant::now()) {
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
            part: ticket.part,
        });
        // Invariant (fill fence): checked and inserted under both locks (the partition's
        // epoch changes only under the global epoch's write lock).
        let epoch = self.epoch.read().unwrap_or_else(PoisonError::into_inner);
        let part_epoch = self
            .part_epochs
            .get(ticket.part)
            .map(|e| e.load(Ordering::Relaxed));
        if *epoch != ticket.epoch || part_epoch != Some(ticket.part_epoch) {
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

    /// Drops the entries of `parts` and fences every fill of a read of theirs sent
    /// before now; the other partitions keep theirs.
    pub(crate) fn flush_parts(&self, parts: &[usize]) {
        if parts.is_empty() {
            return;
        }
        let mut doomed = vec![false; self.partitions()];
        // Invariant (fill fence): the partitions' epochs change under the write lock.
        let epoch = self.epoch.write().unwrap_or_else(PoisonError::into_inner);
        for &part in parts {
            if let (Some(part_epoch), Some(d)) = (self.part_epochs.get(part), doomed.get_mut(part))
            {
                part_epoch.fetch_add(1, Ordering::Relaxed);
                *d = true;
            }
        }
        self.map
            .retain(|_, entry| !doomed.get(entry.part).copied().unwrap_or(true));
        drop(epoch);
        self.counters.node_flushes.fetch_add(1, Ordering::Relaxed);
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
        let entries = Entries::new(config, 1);
        entries.all_fresh_until(std::time::Instant::now(), Duration::from_secs(600));
        entries
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    #[test]
    fn a_fill_read_before_an_invalidation_of_its_key_is_dropped() {
        let entries = fresh(&CacheConfig::default());
        let ticket = entries.ticket("op:a", 0);
        let other = entries.ticket("op:b", 0);
        entries.invalidate("op:a");
        entries.insert(ticket, "op:a", &record("a"), now());
        assert!(entries.get("op:a", 0).is_none());
        // A key of another stripe is not fenced by it.
        assert_ne!(Entries::stripe("op:a"), Entries::stripe("op:b"));
        entries.insert(other, "op:b", &record("b"), now());
        assert!(entries.get("op:b", 0).is_some());
        // A ticket taken after the invalidation fills.
        entries.insert(entries.ticket("op:a", 0), "op:a", &record("a"), now());
        assert!(entries.get("op:a", 0).is_some());
    }

    #[test]
    fn a_flush_fences_every_earlier_read_and_empties_the_map() {
        let entries = fresh(&CacheConfig::default());
        entries.insert(entries.ticket("op:a", 0), "op:a", &record("a"), now());
        let ticket = entries.ticket("op:b", 0);
        entries.flush();
        entries.insert(ticket, "op:b", &record("b"), now());
        assert_eq!(entries.len(), 0);
        assert!(entries.get("op:a", 0).is_none());
    }

    #[test]
    fn nothing_is_served_or_filled_while_not_fresh() {
        let entries = fresh(&CacheConfig::default());
        entries.insert(entries.ticket("op:a", 0), "op:a", &record("a"), now());
        entries.unfresh_all();
        assert!(entries.get("op:a", 0).is_none());
        entries.insert(entries.ticket("op:b", 0), "op:b", &record("b"), now());
        entries.all_fresh_until(std::time::Instant::now(), Duration::from_secs(600));
        assert!(entries.get("op:b", 0).is_none());
        assert!(entries.get("op:a", 0).is_some());
    }

    #[test]
    fn a_partition_flush_spares_the_other_partitions() {
        let entries = Entries::new(&CacheConfig::default(), 3);
        entries.all_fresh_until(std::time::Instant::now(), Duration::from_secs(600));
        entries.insert(entries.ticket("op:a", 0), "op:a", &record("a"), now());
        entries.insert(entries.ticket("op:b", 1), "op:b", &record("b"), now());
        let in_flight = entries.ticket("op:c", 1);
        let elsewhere = entries.ticket("op:d", 2);
        entries.unfresh(&[1]);
        entries.flush_parts(&[1]);
        // Partition 1 is emptied, its earlier read fenced, and nothing of it served or
        // filled until it is confirmed again; partitions 0 and 2 go on.
        assert!(entries.get("op:a", 0).is_some());
        assert!(entries.get("op:b", 1).is_none());
        entries.insert(elsewhere, "op:d", &record("d"), now());
        assert!(entries.get("op:d", 2).is_some());
        entries.insert(entries.ticket("op:e", 1), "op:e", &record("e"), now());
        entries.fresh_until(&[1], std::time::Instant::now(), Duration::from_secs(600));
        entries.insert(in_flight, "op:c", &record("c"), now());
        assert!(entries.get("op:b", 1).is_none());
        assert!(entries.get("op:c", 1).is_none());
        assert!(entries.get("op:e", 1).is_none());
        assert_eq!(entries.len(), 2);
        entries.insert(entries.ticket("op:b", 1), "op:b", &record("b"), now());
        assert!(entries.get("op:b", 1).is_some());
    }

    #[test]
    fn pending_and_expired_records_are_never_filled() {
        let entries = fresh(&CacheConfig::default());
        let lease = Lease::new(RecordId::new("op", "p").expect("id"), None, Clock::system());
        let pending = lease
            .pending_record(Duration::from_secs(30))
            .expect("pending");
        entries.insert(entries.ticket("op:p", 0), "op:p", &pending, now());
        assert_eq!(entries.len(), 0);
        // Past its `expires_at` on the server's clock (an hour ahead of ours).
        let late = now() + time::Duration::hours(1);
        entries.insert(entries.ticket("op:e", 0), "op:e", &record("e"), late);
        assert_eq!(entries.len(), 0);
    }

    #[test]
    fn an_entry_lives_no_longer_than_max_ttl() {
        let entries = fresh(&CacheConfig {
            max_ttl: Some(Duration::from_millis(50)),
            ..CacheConfig::default()
        });
        entries.insert(entries.ticket("op:a", 0), "op:a", &record("a"), now());
        assert!(entries.get("op:a", 0).is_some());
        std::thread::sleep(Duration::from_millis(80));
        assert!(entries.get("op:a", 0).is_none());
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
            entries.insert(
                entries.ticket(&key, 0),
                &key,
                &record(&format!("k{i}")),
                now(),
            );
        }
        assert!(entries.len() <= 10, "{}", entries.len());
        assert!(entries.weight() <= 1 << 20);
    }
}
