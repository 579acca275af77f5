//! The in-memory store: the embedded default for tests and single-process services.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;

use crate::error::{IdempotencyError, Result};
use crate::identifiers::validate_identifiers;
use crate::record::IdempotencyRecord;
use crate::traits::reservation::{
    Claim, Fence, KeyWatch, Lease, ReservationStore, new_reservation,
};
use crate::traits::storage::{IdempotencyRepository, SaveManyOptions};

/// Writes between two sweeps of expired records.
const SWEEP_EVERY: u64 = 1024;

/// A process-local store with the same semantics as the Redis one: expiry honoured on
/// read, insert-if-absent atomic, fenced reservations, prompt wake-ups of waiters.
///
/// Cheap to clone; clones share the data.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), idempotency_core::IdempotencyError> {
/// use std::time::Duration;
/// use idempotency_core::{Claim, MemoryStore, ReservationStore};
/// let store = MemoryStore::new();
/// let Claim::Acquired(lease) = store.claim("op", "k", Duration::from_secs(30), None).await? else { panic!() };
/// assert!(matches!(store.claim("op", "k", Duration::from_secs(30), None).await?, Claim::Found(r) if r.is_pending()));
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

#[derive(Debug, Default)]
struct State {
    records: HashMap<String, IdempotencyRecord>,
    // Keys somebody watches; removed and notified on completion or release.
    watchers: HashMap<String, Arc<Notify>>,
    writes: u64,
    // The earliest expiry among the records at the last sweep or since: a sweep before it
    // would find nothing, so it is skipped.
    next_expiry: Option<OffsetDateTime>,
}

fn slot(operation: &str, key: &str) -> String {
    let mut s = String::with_capacity(operation.len() + key.len() + 1);
    s.push_str(operation);
    s.push(':');
    s.push_str(key);
    s
}

impl State {
    /// The live record under `slot`; an expired one is removed.
    fn live(&mut self, slot: &str, now: OffsetDateTime) -> Option<&IdempotencyRecord> {
        if self.records.get(slot).is_some_and(|r| r.is_expired_at(now)) {
            self.records.remove(slot);
        }
        self.records.get(slot)
    }

    fn insert(&mut self, slot: String, record: IdempotencyRecord) {
        self.writes += 1;
        if self.writes.is_multiple_of(SWEEP_EVERY) {
            let now = OffsetDateTime::now_utc();
            if self.next_expiry.is_some_and(|t| t <= now) {
                self.records.retain(|_, r| !r.is_expired_at(now));
                self.next_expiry = self
                    .records
                    .values()
                    .map(IdempotencyRecord::expires_at)
                    .min();
            }
        }
        let expires_at = record.expires_at();
        self.next_expiry = Some(self.next_expiry.map_or(expires_at, |t| t.min(expires_at)));
        self.records.insert(slot, record);
    }

    fn wake(&mut self, slot: &str) {
        if let Some(notify) = self.watchers.get(slot) {
            notify.notify_waiters();
            if Arc::strong_count(notify) == 1 {
                self.watchers.remove(slot);
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
        let now = OffsetDateTime::now_utc();
        self.lock().records.retain(|_, r| !r.is_expired_at(now));
    }

    fn check_writable(record: &IdempotencyRecord) -> Result<()> {
        if record.is_expired() {
            return Err(IdempotencyError::invalid_field(
                "expires_at",
                "expired",
                "cannot save an already expired record",
            ));
        }
        Ok(())
    }
}

impl IdempotencyRepository for MemoryStore {
    async fn get(&self, operation: &str, key: &str) -> Result<Option<IdempotencyRecord>> {
        let (operation, key) = validate_identifiers(operation, key)?;
        Ok(self
            .lock()
            .live(&slot(operation, key), OffsetDateTime::now_utc())
            .cloned())
    }

    async fn save(&self, record: &IdempotencyRecord) -> Result<()> {
        Self::check_writable(record)?;
        let slot = slot(record.operation(), record.idempotency_key());
        let mut state = self.lock();
        // Invariant: the check and the insert happen under one lock, so of any number of
        // concurrent saves of one key exactly one succeeds.
        if state.live(&slot, OffsetDateTime::now_utc()).is_some() {
            return Err(IdempotencyError::collision(
                record.operation(),
                record.idempotency_key(),
            ));
        }
        state.insert(slot, record.clone());
        Ok(())
    }

    async fn replace(&self, record: &IdempotencyRecord) -> Result<()> {
        Self::check_writable(record)?;
        let slot = slot(record.operation(), record.idempotency_key());
        let mut state = self.lock();
        state.insert(slot.clone(), record.clone());
        if !record.is_pending() {
            state.wake(&slot);
        }
        Ok(())
    }

    async fn delete(&self, operation: &str, key: &str) -> Result<bool> {
        let (operation, key) = validate_identifiers(operation, key)?;
        let slot = slot(operation, key);
        let mut state = self.lock();
        let live = state.live(&slot, OffsetDateTime::now_utc()).is_some();
        state.records.remove(&slot);
        state.wake(&slot);
        Ok(live)
    }

    async fn get_many<K: AsRef<str> + Sync>(
        &self,
        operation: &str,
        keys: &[K],
    ) -> Result<HashMap<String, IdempotencyRecord>> {
        let validated = validate_all(operation, keys)?;
        let now = OffsetDateTime::now_utc();
        let mut state = self.lock();
        let mut found = HashMap::with_capacity(validated.len());
        for (operation, key) in validated {
            if let Some(r) = state.live(&slot(operation, key), now) {
                found.insert(key.to_owned(), r.clone());
            }
        }
        Ok(found)
    }

    async fn save_many(
        &self,
        records: &[IdempotencyRecord],
        options: SaveManyOptions,
    ) -> Result<()> {
        let Some(first) = records.first() else {
            return Ok(());
        };
        let mut collisions = Vec::new();
        let mut invalid = Vec::new();
        let mut saved = Vec::new();
        let mut saved_slots = Vec::new();
        {
            let now = OffsetDateTime::now_utc();
            let mut state = self.lock();
            for record in records {
                if let Err(e) = Self::check_writable(record) {
                    invalid.push((record.idempotency_key().to_owned(), e));
                    continue;
                }
                let slot = slot(record.operation(), record.idempotency_key());
                if state.live(&slot, now).is_some() {
                    collisions.push(record.idempotency_key().to_owned());
                } else {
                    state.insert(slot.clone(), record.clone());
                    saved.push(record.idempotency_key().to_owned());
                    saved_slots.push(slot);
                }
            }
            if options.rollback_on_error && (!collisions.is_empty() || !invalid.is_empty()) {
                for slot in &saved_slots {
                    state.records.remove(slot);
                }
            }
        }
        bulk_outcome(first.operation(), collisions, invalid, saved, options)
    }

    async fn delete_many<K: AsRef<str> + Sync>(&self, operation: &str, keys: &[K]) -> Result<u64> {
        let validated = validate_all(operation, keys)?;
        let now = OffsetDateTime::now_utc();
        let mut state = self.lock();
        let mut deleted = 0;
        for (operation, key) in validated {
            let slot = slot(operation, key);
            if state.live(&slot, now).is_some() {
                deleted += 1;
            }
            state.records.remove(&slot);
            state.wake(&slot);
        }
        Ok(deleted)
    }
}

/// Validates every key of a bulk call before any I/O, reporting every problem; returns
/// the trimmed `(operation, key)` pairs.
///
/// # Errors
/// [`IdempotencyError::Validation`] with the problems of every invalid key.
pub fn validate_all<'a, K: AsRef<str>>(
    operation: &'a str,
    keys: &'a [K],
) -> Result<Vec<(&'a str, &'a str)>> {
    let mut out = Vec::with_capacity(keys.len());
    let mut problems = Vec::new();
    for key in keys {
        match validate_identifiers(operation, key.as_ref()) {
            Ok(pair) => out.push(pair),
            Err(IdempotencyError::Validation { problems: p }) => problems.extend(p.0),
            Err(e) => return Err(e),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        problems.dedup();
        Err(IdempotencyError::validation(problems))
    }
}

/// The error (or not) of a bulk save, from what happened to each record: the colliding
/// keys, the invalid records with why, and the idempotency keys this call saved.
pub fn bulk_outcome(
    operation: &str,
    collisions: Vec<String>,
    invalid: Vec<(String, IdempotencyError)>,
    saved: Vec<String>,
    options: SaveManyOptions,
) -> Result<()> {
    if collisions.is_empty() && invalid.is_empty() {
        return Ok(());
    }
    if invalid.is_empty() && (options.rollback_on_error || saved.is_empty()) {
        return Err(IdempotencyError::KeyCollision {
            operation: operation.to_owned(),
            keys: collisions,
        });
    }
    Err(IdempotencyError::BulkSave {
        operation: operation.to_owned(),
        collisions,
        invalid,
        saved,
        rolled_back: options.rollback_on_error,
    })
}

/// A watch on a memory store key.
#[derive(Debug)]
pub struct MemoryWatch {
    store: MemoryStore,
    slot: String,
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
            .get(&self.slot)
            .is_some_and(|n| Arc::ptr_eq(n, &self.notify) && Arc::strong_count(n) == 2)
        {
            state.watchers.remove(&self.slot);
        }
    }
}

impl ReservationStore for MemoryStore {
    type Watch = MemoryWatch;

    async fn claim(
        &self,
        operation: &str,
        key: &str,
        lease: Duration,
        fingerprint: Option<&str>,
    ) -> Result<Claim> {
        let (operation, key) = validate_identifiers(operation, key)?;
        let slot = slot(operation, key);
        let mut state = self.lock();
        // Invariant: read and insert under one lock, so exactly one claimer acquires.
        if let Some(found) = state.live(&slot, OffsetDateTime::now_utc()) {
            return Ok(Claim::Found(found.clone()));
        }
        let (record, held) = new_reservation(operation, key, lease, fingerprint)?;
        state.insert(slot, record);
        Ok(Claim::Acquired(held))
    }

    async fn complete(&self, lease: &Lease, record: &IdempotencyRecord) -> Result<Fence> {
        let slot = slot(lease.operation(), lease.key());
        let mut state = self.lock();
        // Invariant: the owner check and the write happen under one lock (the fence).
        let ours = match state.live(&slot, OffsetDateTime::now_utc()) {
            None => true,
            Some(r) => r.is_pending() && r.owner() == Some(lease.token()),
        };
        if !ours {
            return Ok(Fence::Lost);
        }
        state.insert(slot.clone(), record.clone());
        state.wake(&slot);
        Ok(Fence::Held)
    }

    async fn renew(&self, lease: &Lease, duration: Duration) -> Result<Fence> {
        let slot = slot(lease.operation(), lease.key());
        let mut state = self.lock();
        let now = OffsetDateTime::now_utc();
        match state.records.get_mut(&slot) {
            Some(r)
                if !r.is_expired_at(now) && r.is_pending() && r.owner() == Some(lease.token()) =>
            {
                *r = r.clone().with_expires_at(now + duration);
                Ok(Fence::Held)
            }
            _ => Ok(Fence::Lost),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<Fence> {
        let slot = slot(lease.operation(), lease.key());
        let mut state = self.lock();
        let ours = state
            .live(&slot, OffsetDateTime::now_utc())
            .is_some_and(|r| r.is_pending() && r.owner() == Some(lease.token()));
        if !ours {
            return Ok(Fence::Lost);
        }
        state.records.remove(&slot);
        state.wake(&slot);
        Ok(Fence::Held)
    }

    async fn watch(&self, operation: &str, key: &str) -> Result<MemoryWatch> {
        let (operation, key) = validate_identifiers(operation, key)?;
        let slot = slot(operation, key);
        let notify = Arc::clone(self.lock().watchers.entry(slot.clone()).or_default());
        // Created before returning, so a wake-up after this point is never missed.
        let notified = Some(Box::pin(Arc::clone(&notify).notified_owned()));
        Ok(MemoryWatch {
            store: self.clone(),
            slot,
            notify,
            notified,
        })
    }
}
