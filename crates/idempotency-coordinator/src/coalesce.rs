//! In-process coalescing: concurrent calls for the same `(operation, key)` in one process
//! share one store claim. The first caller (the *leader*) claims as it always did; the
//! others (*followers*) wait in memory on the leader's outcome and finish from it.
//!
//! Invariants, each enforced where stated:
//! 1. **One claim per key per process at a time.** A caller becomes the leader only by
//!    inserting its slot into the map while no slot is there ([`Coalescer::join`], under
//!    the shard lock); followers subscribe under the same lock.
//! 2. **A slot leaves the map before its outcome is published** ([`Ticket::finish`],
//!    [`Ticket`]'s `Drop`): a caller arriving after that goes to the store, which by then
//!    holds the outcome (the completed record, or the key released), or holds a pending
//!    record it waits on as it always did. So no follower can join a flight whose
//!    outcome it would miss.
//! 3. **Every flight ends with a terminal phase, whatever happens to the leader.** The
//!    ticket's `Drop` publishes [`Phase::Vacated`] when the leader did not publish
//!    anything else: an error, a release, a lost fence, a panic or the leader's future
//!    being dropped (cancellation) all wake the followers, and one of them claims next
//!    (they re-join: the first becomes the new leader, the others follow it).
//! 4. **Followers share records, never decoded values.** A [`Phase::Found`] carries the
//!    record the leader's claim found or its completion wrote; each follower checks the
//!    fingerprint itself (`KeyReuse`, counted per follower) and decodes the result with
//!    its own adapter and error policy, so followers may want another `T`.
//! 5. **Only callers with the leader's exact fingerprint coalesce.** A caller with
//!    another one goes to the store alone, so whatever the store would answer it (a
//!    `KeyReuse` at once while the leader holds the key) is what it gets.
//! 6. **Followers keep their own options.** `InFlight::Raise` answers `InProgress` as
//!    soon as the leader holds the key (or waits on another process's holder);
//!    `max_wait` counts from the first moment the key is known held; `on_storage_error`
//!    decides what a shared storage failure means for each follower (`Raise`, or a key
//!    known held: that error at once, as for a waiter; `Run`: its own claim, never an
//!    unprotected run on the leader's word).
//! 7. **A flight vouches for the key only while its leader does.** A renewal that fails
//!    or finds the lease lost ends the flight at once (`doubt` in `run_renewing`), so
//!    local callers go back to the store and can take the key over when the lease runs
//!    out, exactly as callers in other processes can.
//!
//! The map is sharded (16 `std` mutexes, each held only to insert, look up or remove a
//! slot; never across an await) and keyed by the identity's seeded hash, computed once
//! per call; two identities with the same 64-bit hash never share a flight (the second
//! goes to the store alone). The uncontended path costs that hash, two short locks, one
//! insert and one remove: the channel followers wait on is made only when a follower
//! arrives.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use idempotency_core::{IdempotencyRecord, RecordId};

// The only primitives used here (see `sync.rs`: the model swaps them for shuttle's).
use crate::sync::{Mutex, MutexGuard, watch};

/// How many independent locks the map is split into.
const SHARDS: usize = 16;

/// Where a flight is, as its followers see it.
#[derive(Clone)]
pub(crate) enum Phase {
    /// The leader's claim is on its way to the store.
    Claiming,
    /// The key is held: the leader runs the action, or waits on a holder in another
    /// process. A follower in `InFlight::Raise` answers `InProgress` now.
    Held,
    /// Terminal: a record every follower checks (fingerprint) and, when it is final,
    /// replays. `waited`: the key was held before this record was there (the outcome is
    /// then `WaitedThenReplayed`, not `Replayed`).
    Found {
        record: Arc<IdempotencyRecord>,
        waited: bool,
    },
    /// Terminal: the leader's claim failed on storage (`message`: its error); `held`
    /// when the key had been found held. A follower that fails closed
    /// (`OnStorageError::Raise`), or that knows a live holder (`held`, as a waiter
    /// does), fails with it at once; one that fails open claims on its own first, as it
    /// would have without coalescing, so no action runs unprotected that would not have.
    StoreDown { message: Arc<str>, held: bool },
    /// Terminal: the leader ended without an outcome to share (its action failed and the
    /// key was released, it gave up waiting, it was cancelled): followers claim again,
    /// one at a time.
    Vacated,
    /// Terminal: the leader got an error that is not about the key's state (a data
    /// fault); every follower goes to the store on its own.
    Alone,
}

/// One in-process claim in flight.
struct Slot {
    /// Whose flight this is (the map's key is only its hash).
    id: RecordId,
    /// The leader's fingerprint: only callers with exactly this one follow (invariant 5).
    fingerprint: Option<Box<str>>,
    /// Whether the leader found the key held (published as [`Phase::Held`]).
    held: bool,
    /// Made when the first follower arrives.
    tx: Option<watch::Sender<Phase>>,
}

/// The map's hasher: its keys are already seeded hashes.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed here (`write_u64`); kept total for any other.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Shard = HashMap<u64, Slot, BuildHasherDefault<Prehashed>>;

/// The coordinator's registry of in-process flights.
pub(crate) struct Coalescer {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
}

/// What [`Coalescer::join`] made of a caller.
pub(crate) enum Joined<'a> {
    /// No flight for the key: this caller leads one and claims.
    Leader(Ticket<'a>),
    /// A flight with this caller's fingerprint is there: follow it.
    Follower(watch::Receiver<Phase>),
    /// A flight with another fingerprint is there: go to the store alone.
    Alone,
}

impl Coalescer {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Shard> {
        // A panic while a shard was locked cannot leave a slot half-made (every update
        // is one map operation), so a poisoned lock is still consistent.
        self.shards[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Leads a new flight for `id`, or follows the one there (invariants 1 and 5).
    pub(crate) fn join<'a>(&'a self, id: &RecordId, fingerprint: Option<&str>) -> Joined<'a> {
        let hash = self.hasher.hash_one(id);
        // Bits the map's buckets do not use (it takes the low ones and the top seven);
        // the value is under `SHARDS`, so the cast is exact.
        #[allow(clippy::cast_possible_truncation)]
        let shard = ((hash >> 32) % SHARDS as u64) as usize;
        let mut map = self.lock(shard);
        match map.get_mut(&hash) {
            Some(slot) if slot.id == *id && slot.fingerprint.as_deref() == fingerprint => {
                let phase = if slot.held {
                    Phase::Held
                } else {
                    Phase::Claiming
                };
                let rx = match &slot.tx {
                    Some(tx) => tx.subscribe(),
                    None => {
                        let (tx, rx) = watch::channel(phase);
                        slot.tx = Some(tx);
                        rx
                    }
                };
                Joined::Follower(rx)
            }
            // Another fingerprint, or (once in 2^64) another identity with this hash.
            Some(_) => Joined::Alone,
            None => {
                map.insert(
                    hash,
                    Slot {
                        id: id.clone(),
                        fingerprint: fingerprint.map(Box::from),
                        held: false,
                        tx: None,
                    },
                );
                Joined::Leader(Ticket {
                    coalescer: self,
                    hash: Some(hash),
                    shard,
                })
            }
        }
    }
}

/// The leader's hold on its flight. Dropped without [`Ticket::finish`], it removes the
/// slot and publishes [`Phase::Vacated`] (invariant 3).
pub(crate) struct Ticket<'a> {
    coalescer: &'a Coalescer,
    /// The slot's key; `None` once the slot was removed. Only a leader inserts, and only
    /// where no slot is, so the slot under it is this ticket's until it removes it.
    hash: Option<u64>,
    shard: usize,
}

impl Ticket<'_> {
    /// The key is held (by the leader, or by a caller elsewhere the leader now waits on):
    /// tells the followers, and every follower that joins from now on.
    pub(crate) fn held(&mut self) {
        let Some(hash) = self.hash else { return };
        let mut map = self.coalescer.lock(self.shard);
        if let Some(slot) = map.get_mut(&hash)
            && !slot.held
        {
            slot.held = true;
            if let Some(tx) = &slot.tx {
                tx.send_replace(Phase::Held);
            }
        }
    }

    /// Ends the flight with `phase` (built only when someone follows). The slot leaves
    /// the map first (invariant 2).
    pub(crate) fn finish(mut self, phase: impl FnOnce() -> Phase) {
        if let Some(tx) = self.remove() {
            tx.send_replace(phase());
        }
    }

    /// Removes the slot; its channel when followers are waiting on it.
    fn remove(&mut self) -> Option<watch::Sender<Phase>> {
        let hash = self.hash.take()?;
        let slot = self.coalescer.lock(self.shard).remove(&hash);
        // After the removal no follower can subscribe (they do so under the lock), so
        // the count only falls from here.
        slot.and_then(|s| s.tx).filter(|tx| tx.receiver_count() > 0)
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if let Some(tx) = self.remove() {
            tx.send_replace(Phase::Vacated);
        }
    }
}

/// What a caller carries from one flight it followed to the next (or to its own claim).
#[derive(Default)]
pub(crate) struct Prior {
    /// It saw the key held: a replay is then `WaitedThenReplayed`, a claim that acquires
    /// is a takeover.
    pub(crate) waited: bool,
    /// Its collision was counted (once per call, as a waiter's).
    pub(crate) collided: bool,
    /// The end of its `max_wait`, counted from the first moment the key was known held
    /// (as a waiter's is counted from the first pending record it finds).
    pub(crate) deadline: Option<Instant>,
}
