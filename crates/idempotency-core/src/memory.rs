//! The in-memory store: the embedded default for tests and single-process services.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;

use crate::error::{IdempotencyError, Result};
use crate::identifiers::RecordId;
use crate::record::IdempotencyRecord;
use crate::traits::bulk::{Batch, BulkRepository, bulk_outcome};
use crate::traits::reservation::{
    Claim, Fence, Finished, KeyWatch, Lease, ReservationStore, completion_fence, holds_lease,
};
use crate::traits::storage::{IdempotencyRepository, SaveManyOptions};

/// `now + ttl`, or as far as the monotonic clock goes (a TTL beyond it never ends).
fn deadline_after(now: Instant, ttl: Duration) -> Instant {
    now.checked_add(ttl)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}

/// Writes between two sweeps of expired records.
const SWEEP_EVERY: u64 = 1024;

/// A process-local store with the same semantics as the Redis one: a TTL per key kept
/// apart from the record (as Redis keeps it), insert-if-absent atomic, fenced
/// reservations, prompt wake-ups of waiters.
///
/// Liveness is the store's own: each key lives until its deadline on the monotonic
/// clock, set from the TTL of the write, whatever the timestamps inside the record say.
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
}

#[derive(Debug, Default)]
struct State {
    records: HashMap<RecordId, Entry>,
    // Keys somebody watches; notified on completion or release.
    watchers: HashMap<RecordId, Arc<Notify>>,
    writes: u64,
    // The earliest deadline among the entries at the last sweep or since: a sweep before
    // it would find nothing, so it is skipped.
    next_deadline: Option<Instant>,
}

impl State {
    /// The live entry under `id`; one past its deadline is removed.
    fn live(&mut self, id: &RecordId, now: Instant) -> Option<&mut Entry> {
        if self.records.get(id).is_some_and(|e| e.deadline <= now) {
            self.records.remove(id);
        }
        self.records.get_mut(id)
    }

    fn insert(&mut self, id: RecordId, record: IdempotencyRecord, ttl: Duration) {
        let now = Instant::now();
        self.writes += 1;
        if self.writes.is_multiple_of(SWEEP_EVERY) && self.next_deadline.is_some_and(|t| t <= now) {
            self.records.retain(|_, e| e.deadline > now);
            self.next_deadline = self.records.values().map(|e| e.deadline).min();
        }
        let deadline = deadline_after(now, ttl);
        self.next_deadline = Some(self.next_deadline.map_or(deadline, |t| t.min(deadline)));
        self.records.insert(id, Entry { record, deadline });
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
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
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
        let now = Instant::now();
        self.lock().records.retain(|_, e| e.deadline > now);
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
        let id = record.id();
        let mut state = self.lock();
        // Invariant: the check and the insert happen under one lock, so of any number of
        // concurrent saves of one key exactly one succeeds.
        if state.live(&id, Instant::now()).is_some() {
            return Err(IdempotencyError::collision(id.operation(), id.key()));
        }
        state.insert(id, record.clone(), ttl);
        Ok(())
    }

    async fn replace(&self, record: &IdempotencyRecord) -> Result<()> {
        let ttl = Self::write_ttl(record)?;
        let id = record.id();
        let mut state = self.lock();
        state.insert(id.clone(), record.clone(), ttl);
        if !record.is_pending() {
            state.wake(&id);
        }
        Ok(())
    }

    async fn delete(&self, id: &RecordId) -> Result<bool> {
        let mut state = self.lock();
        let live = state.live(id, Instant::now()).is_some();
        state.records.remove(id);
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
                let checked = Self::write_ttl(record).map(|ttl| (ttl, record.id()));
                let (ttl, id) = match checked {
                    Ok(pair) => pair,
                    Err(e) => {
                        invalid.push((record.idempotency_key().to_owned(), e));
                        continue;
                    }
                };
                if state.live(&id, now).is_some() {
                    collisions.push(record.idempotency_key().to_owned());
                } else {
                    state.insert(id.clone(), record.clone(), ttl);
                    saved.push(record.idempotency_key().to_owned());
                    saved_ids.push(id);
                }
            }
            // Invariant: the rollback runs under the same lock as the writes, so it
            // removes exactly what this call wrote.
            if options.rollback_on_error && (!collisions.is_empty() || !invalid.is_empty()) {
                for id in &saved_ids {
                    state.records.remove(id);
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
            state.records.remove(id);
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
    async fn changed(&mut self, timeout: Duration) -> bool {
        let notified = self
            .notified
            .get_or_insert_with(|| Box::pin(Arc::clone(&self.notify).notified_owned()));
        let woken = tokio::time::timeout(timeout, notified.as_mut())
            .await
            .is_ok();
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
        state.insert(lease.id().clone(), pending, duration);
        Ok(Claim::Acquired)
    }

    async fn finish(&self, lease: &Lease, finished: Finished<'_>, ttl: Duration) -> Result<Fence> {
        let record = lease.finished_record_at(lease.clock().now(), finished, ttl)?;
        let mut state = self.lock();
        // Invariant: the owner check and the write happen under one lock (the fence).
        let found = state.live(lease.id(), Instant::now()).map(|e| &e.record);
        let fence = completion_fence(found, lease);
        if fence != Fence::Lost {
            state.insert(lease.id().clone(), record, ttl);
            state.wake(lease.id());
        }
        Ok(fence)
    }

    async fn renew(&self, lease: &Lease, duration: Duration) -> Result<Fence> {
        let renewed = lease.pending_record(duration)?;
        let mut state = self.lock();
        match state.live(lease.id(), Instant::now()) {
            Some(e) if holds_lease(&e.record, lease.token()) => {
                e.record = renewed;
                e.deadline = deadline_after(Instant::now(), duration);
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
        state.records.remove(lease.id());
        state.wake(lease.id());
        Ok(Fence::Held)
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
