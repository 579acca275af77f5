//! The in-memory store: the embedded default for tests and single-process services.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use crate::batch::{Batch, SaveManyOptions, bulk_outcome};
use crate::claim::{Claim, Fence, Finished};
use crate::error::{IdempotencyError, Result};
use crate::fencing::FencingToken;
use crate::identity::RecordId;
use crate::lease::{Lease, completion_fence, holds_lease};
use crate::record::IdempotencyRecord;
use crate::sync::{Mutex, MutexGuard, Notify, OwnedNotified, timeout};
use crate::traits::bulk::BulkRepository;
use crate::traits::reservation::{KeyWatch, ReservationStore};
use crate::traits::storage::IdempotencyRepository;

/// `now + ttl`, or as far as the monotonic clock goes (a TTL beyond it never ends).
fn deadline_after(now: Instant, ttl: Duration) -> Instant {
    now.checked_add(ttl)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}

/// How much a [`MemoryStore`] holds at most.
///
/// When a write would go over either limit, the store first drops expired records, then
/// evicts finished records (completed or stored errors), soonest to expire first, and
/// counts each ([`MemoryStore::evicted`]; a retry of an evicted key runs its action
/// again, as after its TTL). A live reservation is never evicted: when only reservations
/// are left, a new claim is refused with [`IdempotencyError::StorageRefused`] (code
/// `FULL`; the coordinator's storage-error mode decides), while a completion is always
/// written (its action ran), possibly going over the limit until records expire.
///
/// # Examples
/// ```
/// use idempotency_core::{MemoryLimits, MemoryStore};
/// let store = MemoryStore::with_limits(MemoryLimits::new(10_000, 16 << 20));
/// assert!(store.is_empty());
/// assert_eq!(MemoryLimits::default(), MemoryLimits::new(100_000, 64 << 20));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimits {
    max_entries: usize,
    max_bytes: usize,
}

impl MemoryLimits {
    /// At most `max_entries` records and about `max_bytes` of records (their JSON size).
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            max_entries: max_entries.max(1),
            max_bytes: max_bytes.max(1),
        }
    }
}

impl Default for MemoryLimits {
    /// 100,000 records, 64 MiB.
    fn default() -> Self {
        Self::new(100_000, 64 << 20)
    }
}

/// The bytes a record is counted for: its JSON text, about.
fn size_of(record: &IdempotencyRecord) -> usize {
    160 + record.result().get().len()
        + record.operation().len()
        + record.idempotency_key().len()
        + record.fingerprint().map_or(0, str::len)
        + record.owner().map_or(0, str::len)
}

/// A process-local store with the same semantics as the Redis one: a TTL per key kept
/// apart from the record (as Redis keeps it), insert-if-absent atomic, fenced
/// reservations, prompt wake-ups of waiters; bounded by [`MemoryLimits`].
///
/// Liveness is the store's own: each key lives until its deadline on the monotonic
/// clock, set from the TTL of the write, whatever the timestamps inside the record say.
/// Expired records are dropped as writes come, each at a cost proportional to the
/// records that expire (a deadline index), never by a pass over the whole store.
/// Cheap to clone; clones share the data.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), idempotency_core::IdempotencyError> {
/// use std::time::Duration;
/// use idempotency_core::{Claim, Clock, Lease, MemoryStore, RecordId, ReservationStore};
/// let store = MemoryStore::new();
/// let id = RecordId::new("op", "k")?;
/// let lease = Lease::new(id.clone(), None, Clock::system());
/// assert_eq!(store.claim(&lease, Duration::from_secs(30)).await?, Claim::Acquired);
/// let other = Lease::new(id, None, Clock::system());
/// assert!(matches!(store.claim(&other, Duration::from_secs(30)).await?, Claim::Found(r) if r.is_pending()));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    state: Mutex<State>,
}

#[derive(Debug)]
struct Entry {
    record: IdempotencyRecord,
    // When the store forgets the key: its TTL, the store's notion of liveness.
    deadline: Instant,
    // This write's place in the deadline index, and the bytes it is counted for.
    seq: u64,
    size: usize,
    // The fencing token issued to the pending record's owner, if one was asked for; kept
    // while that owner's reservation is renewed.
    fence: Option<u64>,
}

/// Invariants, enforced by `put` and `remove` (the only writers of `records`; `renew`
/// re-puts): every entry has exactly one `(deadline, seq)` in `deadlines`, `bytes` is the
/// sum of the entries' sizes and `pending` the number of pending entries.
#[derive(Debug, Default)]
struct State {
    records: HashMap<RecordId, Entry>,
    deadlines: BTreeMap<(Instant, u64), RecordId>,
    bytes: usize,
    // How many entries are reservations (never evicted).
    pending: usize,
    seq: u64,
    // The last fencing token issued, for any key: tokens of one key then grow with every
    // owner (a store-wide counter is monotonic per key too).
    fences: u64,
    limits: MemoryLimits,
    evicted: u64,
    // Keys somebody watches; notified on completion or release.
    watchers: HashMap<RecordId, Arc<Notify>>,
}

/// Why a write needs room.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Room {
    /// A new claim: refused when only live reservations could make room.
    Claim,
    /// Anything else (a completion, a saved record): written in any case.
    Write,
}

impl State {
    /// The live entry under `id`; one past its deadline is removed.
    fn live(&mut self, id: &RecordId, now: Instant) -> Option<&mut Entry> {
        if self.records.get(id).is_some_and(|e| e.deadline <= now) {
            self.remove(id);
        }
        self.records.get_mut(id)
    }

    fn remove(&mut self, id: &RecordId) -> Option<Entry> {
        let entry = self.records.remove(id)?;
        self.deadlines.remove(&(entry.deadline, entry.seq));
        self.bytes -= entry.size;
        self.pending -= usize::from(entry.record.is_pending());
        Some(entry)
    }

    /// Drops every record past its deadline: the front of the index, nothing else.
    fn sweep(&mut self, now: Instant) {
        while let Some(((deadline, _), id)) = self.deadlines.first_key_value() {
            if *deadline > now {
                break;
            }
            let id = id.clone();
            self.remove(&id);
        }
    }

    /// Makes room for a record of `size` bytes under `id` (whose current entry, if any,
    /// it replaces): expired records go, then finished ones, soonest deadline first.
    fn make_room(&mut self, id: &RecordId, size: usize, why: Room) -> Result<()> {
        self.sweep(Instant::now());
        let replaced = self.records.get(id).map_or(0, |e| e.size);
        let adds = usize::from(!self.records.contains_key(id));
        let over = |s: &Self| {
            s.records.len() + adds > s.limits.max_entries
                || s.bytes - replaced + size > s.limits.max_bytes
        };
        // Evict only where it can help: never for a claim the reservations alone leave no
        // room for, never for a record bigger than the whole limit (written over it).
        let reservations_fill = self.pending + 1 > self.limits.max_entries;
        if why == Room::Claim && reservations_fill {
            return Err(IdempotencyError::storage_refused(
                Some(id.operation()),
                "FULL",
                "the in-memory store is full of live reservations (MemoryLimits)",
            ));
        }
        if size > self.limits.max_bytes {
            return Ok(());
        }
        while over(self) {
            let victim = self
                .deadlines
                .values()
                .find(|v| *v != id && self.records.get(v).is_some_and(|e| !e.record.is_pending()))
                .cloned();
            match victim {
                Some(victim) => {
                    self.remove(&victim);
                    self.evicted += 1;
                }
                None if why == Room::Claim => {
                    return Err(IdempotencyError::storage_refused(
                        Some(id.operation()),
                        "FULL",
                        "the in-memory store is full of live reservations (MemoryLimits)",
                    ));
                }
                None => return Ok(()),
            }
        }
        Ok(())
    }

    fn put(&mut self, id: RecordId, record: IdempotencyRecord, ttl: Duration) {
        let now = Instant::now();
        // A renewal keeps its owner's token; any other write ends it.
        let fence = self
            .records
            .get(&id)
            .filter(|e| record.is_pending() && e.record.is_pending())
            .filter(|e| e.record.owner().is_some() && e.record.owner() == record.owner())
            .and_then(|e| e.fence);
        self.remove(&id);
        let deadline = deadline_after(now, ttl);
        self.seq += 1;
        let size = size_of(&record);
        self.deadlines.insert((deadline, self.seq), id.clone());
        self.bytes += size;
        self.pending += usize::from(record.is_pending());
        self.records.insert(
            id,
            Entry {
                record,
                deadline,
                seq: self.seq,
                size,
                fence,
            },
        );
    }

    /// Room, then the write.
    fn insert(
        &mut self,
        id: RecordId,
        record: IdempotencyRecord,
        ttl: Duration,
        why: Room,
    ) -> Result<()> {
        self.make_room(&id, size_of(&record), why)?;
        self.put(id, record, ttl);
        Ok(())
    }

    fn wake(&mut self, id: &RecordId) {
        if let Some(notify) = self.watchers.get(id) {
            notify.notify_waiters();
            if Arc::strong_count(notify) == 1 {
                self.watchers.remove(id);
            }
        }
    }
}

impl MemoryStore {
    /// An empty store with the default [`MemoryLimits`].
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store with these limits.
    pub fn with_limits(limits: MemoryLimits) -> Self {
        let store = Self::default();
        store.lock().limits = limits;
        store
    }

    /// How many finished records were evicted before their TTL to respect the limits.
    pub fn evicted(&self) -> u64 {
        self.lock().evicted
    }

    /// About how many bytes the records take (their JSON size).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere cannot leave a record half-written: every update is one insert.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// How many records (expired ones not yet swept included) the store holds.
    pub fn len(&self) -> usize {
        self.lock().records.len()
    }

    /// Whether the store holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes expired records now.
    pub fn purge_expired(&self) {
        self.lock().sweep(Instant::now());
    }

    /// The TTL of a record written through the repository API: its remaining lifetime
    /// rounded up to whole seconds, as the Redis store (and the Python library) set it.
    fn write_ttl(record: &IdempotencyRecord) -> Result<Duration> {
        match record.remaining_ttl_secs_ceil() {
            0 => Err(IdempotencyError::invalid_field(
                "expires_at",
                "expired",
                "cannot save an already expired record",
            )),
            secs => Ok(Duration::from_secs(secs)),
        }
    }

    /// What a repository read makes of an entry: the record while its deadline (the
    /// store's own clock) has not passed, whatever the timestamps inside say, so a record
    /// stamped by a clock that runs behind is neither hidden nor deleted early.
    fn read(state: &mut State, id: &RecordId, now: Instant) -> Option<IdempotencyRecord> {
        state.live(id, now).map(|e| e.record.clone())
    }
}

impl IdempotencyRepository for MemoryStore {
    async fn get(&self, id: &RecordId) -> Result<Option<IdempotencyRecord>> {
        Ok(Self::read(&mut self.lock(), id, Instant::now()))
    }

    async fn save(&self, record: &IdempotencyRecord) -> Result<()> {
        let ttl = Self::write_ttl(record)?;
        let id = record.id().clone();
        let mut state = self.lock();
        // Invariant: the check and the insert happen under one lock, so of any number of
        // concurrent saves of one key exactly one succeeds.
        if state.live(&id, Instant::now()).is_some() {
            return Err(IdempotencyError::collision(id.operation(), id.key()));
        }
        state.insert(id, record.clone(), ttl, Room::Write)
    }

    async fn replace(&self, record: &IdempotencyRecord) -> Result<()> {
        let ttl = Self::write_ttl(record)?;
        let id = record.id().clone();
        let mut state = self.lock();
        state.insert(id.clone(), record.clone(), ttl, Room::Write)?;
        if !record.is_pending() {
            state.wake(&id);
        }
        Ok(())
    }

    async fn delete(&self, id: &RecordId) -> Result<bool> {
        let mut state = self.lock();
        let live = state.live(id, Instant::now()).is_some();
        state.remove(id);
        state.wake(id);
        Ok(live)
    }
}

impl BulkRepository for MemoryStore {
    async fn get_by_ids(&self, ids: &[RecordId]) -> Result<HashMap<String, IdempotencyRecord>> {
        let now = Instant::now();
        let mut state = self.lock();
        let mut found = HashMap::with_capacity(ids.len());
        for id in ids {
            if let Some(r) = Self::read(&mut state, id, now) {
                found.insert(id.key().to_owned(), r);
            }
        }
        Ok(found)
    }

    async fn save_batch(&self, batch: Batch<'_>, options: SaveManyOptions) -> Result<()> {
        let mut collisions = Vec::new();
        let mut invalid = Vec::new();
        let mut saved = Vec::new();
        let mut saved_ids = Vec::new();
        {
            let now = Instant::now();
            let mut state = self.lock();
            for record in batch.records() {
                let checked = Self::write_ttl(record).map(|ttl| (ttl, record.id().clone()));
                let (ttl, id) = match checked {
                    Ok(pair) => pair,
                    Err(e) => {
                        invalid.push((record.idempotency_key().to_owned(), e));
                        continue;
                    }
                };
                if state.live(&id, now).is_some() {
                    collisions.push(record.idempotency_key().to_owned());
                } else if let Err(e) = state.insert(id.clone(), record.clone(), ttl, Room::Write) {
                    invalid.push((record.idempotency_key().to_owned(), e));
                } else {
                    saved.push(record.idempotency_key().to_owned());
                    saved_ids.push(id);
                }
            }
            // Invariant: the rollback runs under the same lock as the writes, so it
            // removes exactly what this call wrote.
            if options.rollback_on_error && (!collisions.is_empty() || !invalid.is_empty()) {
                for id in &saved_ids {
                    state.remove(id);
                }
            }
        }
        bulk_outcome(batch.operation(), collisions, invalid, saved, options)
    }

    async fn delete_by_ids(&self, ids: &[RecordId]) -> Result<u64> {
        let now = Instant::now();
        let mut state = self.lock();
        let mut deleted = 0;
        for id in ids {
            if state.live(id, now).is_some() {
                deleted += 1;
            }
            state.remove(id);
            state.wake(id);
        }
        Ok(deleted)
    }
}

/// A watch on a memory store key.
#[derive(Debug)]
pub struct MemoryWatch {
    store: MemoryStore,
    id: RecordId,
    notify: Arc<Notify>,
    notified: Option<std::pin::Pin<Box<OwnedNotified>>>,
}

impl KeyWatch for MemoryWatch {
    async fn changed(&mut self, wait: Duration) -> bool {
        let notified = self
            .notified
            .get_or_insert_with(|| Box::pin(Arc::clone(&self.notify).notified_owned()));
        let woken = timeout(wait, notified.as_mut()).await.is_ok();
        if woken {
            // Re-armed at once, so a change after this wake-up and before the next call
            // (while the caller re-reads the key) is not missed.
            self.notified = Some(Box::pin(Arc::clone(&self.notify).notified_owned()));
        }
        woken
    }
}

impl Drop for MemoryWatch {
    fn drop(&mut self) {
        self.notified = None;
        let mut state = self.store.lock();
        // Only the map and this watch hold the Notify: nobody else waits on the key.
        if state
            .watchers
            .get(&self.id)
            .is_some_and(|n| Arc::ptr_eq(n, &self.notify) && Arc::strong_count(n) == 2)
        {
            state.watchers.remove(&self.id);
        }
    }
}

impl ReservationStore for MemoryStore {
    type Watch = MemoryWatch;

    async fn claim(&self, lease: &Lease, duration: Duration) -> Result<Claim> {
        let mut state = self.lock();
        // Invariant: read and insert under one lock, so exactly one claimer acquires.
        if let Some(found) = state.live(lease.id(), Instant::now()) {
            // Our own pending record (a repeated claim) is ours; anything else holds the
            // key, whatever its timestamps say: liveness is the deadline's.
            return Ok(if holds_lease(&found.record, lease.token()) {
                Claim::Acquired
            } else {
                Claim::Found(found.record.clone())
            });
        }
        // Built only when the key is free: a hit makes no pending record.
        let pending = lease.pending_record(duration)?;
        state.insert(lease.id().clone(), pending, duration, Room::Claim)?;
        Ok(Claim::Acquired)
    }

    async fn finish(&self, lease: &Lease, finished: Finished<'_>, ttl: Duration) -> Result<Fence> {
        let record = lease.finished_record_at(lease.clock().now(), finished, ttl)?;
        let mut state = self.lock();
        // Invariant: the owner check and the write happen under one lock (the fence).
        let found = state.live(lease.id(), Instant::now()).map(|e| &e.record);
        let fence = completion_fence(found, lease);
        if fence != Fence::Lost {
            // Room::Write: a completion is never refused (its action ran).
            state.insert(lease.id().clone(), record, ttl, Room::Write)?;
            state.wake(lease.id());
        }
        Ok(fence)
    }

    async fn renew(&self, lease: &Lease, duration: Duration) -> Result<Fence> {
        let renewed = lease.pending_record(duration)?;
        let mut state = self.lock();
        match state.live(lease.id(), Instant::now()) {
            Some(e) if holds_lease(&e.record, lease.token()) => {
                // Re-put: the deadline index and the byte count follow the new entry.
                state.put(lease.id().clone(), renewed, duration);
                Ok(Fence::Held)
            }
            _ => Ok(Fence::Lost),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<Fence> {
        let mut state = self.lock();
        let ours = state
            .live(lease.id(), Instant::now())
            .is_some_and(|e| holds_lease(&e.record, lease.token()));
        if !ours {
            return Ok(Fence::Lost);
        }
        state.remove(lease.id());
        state.wake(lease.id());
        Ok(Fence::Held)
    }

    async fn fencing_token(&self, lease: &Lease) -> Result<Option<FencingToken>> {
        let mut state = self.lock();
        // Invariant: the owner check and the issue happen under one lock, so a token is
        // only ever issued to the key's current owner, and a later owner's is larger.
        let next = state.fences + 1;
        let issued = match state.live(lease.id(), Instant::now()) {
            Some(e) if holds_lease(&e.record, lease.token()) => *e.fence.get_or_insert(next),
            _ => return Ok(None),
        };
        state.fences = state.fences.max(issued);
        Ok(Some(FencingToken::new(issued)))
    }

    async fn watch(&self, id: &RecordId) -> Result<MemoryWatch> {
        let notify = Arc::clone(self.lock().watchers.entry(id.clone()).or_default());
        // Created before returning, so a wake-up after this point is never missed.
        let notified = Some(Box::pin(Arc::clone(&notify).notified_owned()));
        Ok(MemoryWatch {
            store: self.clone(),
            id: id.clone(),
            notify,
            notified,
        })
    }
}
