//! In-process coalescing (`idempotency-coordinator/src/coalesce.rs`) under shuttle's
//! scheduler: lost wake-ups, a follower stranded when its leader is dropped, and more
//! than one leader (one store claim) per key at a time.
//!
//! The shipped module is checked as it is in `coalesce_as_shipped.rs`; this restatement
//! stays for its broken variants (each must fail), which the shipped code cannot be
//! made to show.
//!
//! RESTATED, not the real code: the coalescer's registry uses `std::sync::Mutex` and
//! tokio's `watch` channel, which shuttle cannot schedule, and it lives inside the
//! coordinator's private flow. What is restated here, line for line against the real
//! functions (keep them in step when either changes; each item names its original):
//! - `Coalescer::join`: under the shard lock, a slot with the caller's fingerprint makes
//!   a follower (the channel made on the first follower, starting at `Claiming`/`Held`,
//!   subscribed under the lock); no slot makes a leader, whose slot is inserted;
//! - `Ticket::held`: under the lock, marks the slot held and sends `Held`;
//! - `Ticket::finish` / `Ticket::remove`: the slot leaves the map under the lock, *then*
//!   the phase is sent, only while a receiver is there; the sender is dropped after
//!   (closing the channel);
//! - `Drop for Ticket`: `remove`, then `Vacated`;
//! - `Coordinator::follow`: read the phase (`borrow_and_update`); `Found` replays,
//!   `Vacated` or a closed channel (with a non-terminal phase) joins again; otherwise
//!   wait for a change (`changed`). The follower options (`max_wait`, `InFlight::Raise`,
//!   fingerprints) are not restated.
//!
//! The watch channel is restated as a versioned cell (a send bumps the version; a
//! receiver waits for a version after the one it saw, or for the sender's drop), which
//! is the behaviour of `tokio::sync::watch` the flow relies on.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use shuttle::sync::{Condvar, Mutex};
use shuttle::thread;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Claiming,
    Held,
    /// The leader's record: the value of its execution.
    Found(usize),
    Vacated,
}

/// `tokio::sync::watch`, restated: the value, its version, live receivers, and whether
/// the sender is gone.
struct Cell {
    phase: Phase,
    version: u64,
    receivers: usize,
    closed: bool,
}

struct Channel {
    cell: Mutex<Cell>,
    changed: Condvar,
}

impl Channel {
    fn new(phase: Phase) -> Arc<Self> {
        Arc::new(Self {
            cell: Mutex::new(Cell {
                phase,
                version: 0,
                receivers: 0,
                closed: false,
            }),
            changed: Condvar::new(),
        })
    }

    fn subscribe(self: &Arc<Self>) -> Receiver {
        let mut cell = self.cell.lock().expect("not poisoned");
        cell.receivers += 1;
        Receiver {
            channel: Arc::clone(self),
            seen: cell.version,
        }
    }

    fn send_replace(&self, phase: Phase) {
        let mut cell = self.cell.lock().expect("not poisoned");
        cell.phase = phase;
        cell.version += 1;
        self.changed.notify_all();
    }

    fn receiver_count(&self) -> usize {
        self.cell.lock().expect("not poisoned").receivers
    }

    /// The sender's drop.
    fn close(&self) {
        self.cell.lock().expect("not poisoned").closed = true;
        self.changed.notify_all();
    }
}

struct Receiver {
    channel: Arc<Channel>,
    seen: u64,
}

impl Receiver {
    fn borrow_and_update(&mut self) -> Phase {
        let cell = self.channel.cell.lock().expect("not poisoned");
        self.seen = cell.version;
        cell.phase
    }

    /// `false` when the sender is gone (`changed()` returning `Err`).
    fn changed(&self) -> bool {
        let mut cell = self.channel.cell.lock().expect("not poisoned");
        loop {
            if cell.version != self.seen {
                return true;
            }
            if cell.closed {
                return false;
            }
            cell = self.channel.changed.wait(cell).expect("not poisoned");
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.channel.cell.lock().expect("not poisoned").receivers -= 1;
    }
}

struct Slot {
    held: bool,
    tx: Option<Arc<Channel>>,
}

/// How the restated registry may be broken, to show each check fails.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mutation {
    None,
    /// The ticket's drop forgets to remove the slot (and publish): a leader that fails or
    /// is cancelled strands its followers.
    DropKeepsSlot,
    /// `join` looks for a slot and inserts its own under two locks, not one
    /// (invariant 1 broken): two callers may both lead, and both claim.
    CheckThenInsert,
}

struct Coalescer {
    map: Mutex<HashMap<u8, Slot>>,
    mutation: Mutation,
    /// Leaders at this moment, and the most ever seen at once (one claim at a time).
    leaders: AtomicUsize,
    most_leaders: AtomicUsize,
}

enum Joined<'a> {
    Leader(Ticket<'a>),
    Follower(Receiver),
}

impl Coalescer {
    fn join(&self, key: u8) -> Joined<'_> {
        let mut map = self.map.lock().expect("not poisoned");
        if self.mutation == Mutation::CheckThenInsert && !map.contains_key(&key) {
            drop(map);
            thread::yield_now();
            map = self.map.lock().expect("not poisoned");
            map.remove(&key);
        }
        if let Some(slot) = map.get_mut(&key) {
            let phase = if slot.held {
                Phase::Held
            } else {
                Phase::Claiming
            };
            let tx = slot.tx.get_or_insert_with(|| Channel::new(phase));
            return Joined::Follower(tx.subscribe());
        }
        map.insert(
            key,
            Slot {
                held: false,
                tx: None,
            },
        );
        let now = self.leaders.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_leaders.fetch_max(now, Ordering::SeqCst);
        Joined::Leader(Ticket {
            coalescer: self,
            key: Some(key),
        })
    }
}

struct Ticket<'a> {
    coalescer: &'a Coalescer,
    key: Option<u8>,
}

impl Ticket<'_> {
    fn held(&mut self) {
        let Some(key) = self.key else { return };
        let mut map = self.coalescer.map.lock().expect("not poisoned");
        if let Some(slot) = map.get_mut(&key)
            && !slot.held
        {
            slot.held = true;
            if let Some(tx) = &slot.tx {
                tx.send_replace(Phase::Held);
            }
        }
    }

    fn finish(mut self, phase: Phase) {
        self.end(phase);
    }

    /// `remove` and the send that follows it (`finish`, or the drop's `Vacated`).
    fn end(&mut self, phase: Phase) {
        let Some(key) = self.key.take() else { return };
        self.coalescer.leaders.fetch_sub(1, Ordering::SeqCst);
        let slot = self
            .coalescer
            .map
            .lock()
            .expect("not poisoned")
            .remove(&key);
        if let Some(tx) = slot.and_then(|s| s.tx) {
            if tx.receiver_count() > 0 {
                tx.send_replace(phase);
            }
            tx.close();
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.coalescer.mutation == Mutation::DropKeepsSlot {
            if self.key.take().is_some() {
                self.coalescer.leaders.fetch_sub(1, Ordering::SeqCst);
            }
            return;
        }
        self.end(Phase::Vacated);
    }
}

/// The store behind the flights: the first leader to finish stores its value; a later
/// leader's claim finds it (as a claim finds the completed record).
#[derive(Default)]
struct Store {
    value: Mutex<Option<usize>>,
}

/// One call: lead (claim, then store the value or fail) or follow; `fails`: this
/// caller's action fails (or its future is dropped) the first time it leads.
fn call(coalescer: &Coalescer, store: &Store, me: usize, fails: bool) -> usize {
    let mut failed_once = false;
    loop {
        match coalescer.join(0) {
            Joined::Leader(mut ticket) => {
                if let Some(v) = *store.value.lock().expect("not poisoned") {
                    ticket.finish(Phase::Found(v));
                    return v;
                }
                ticket.held();
                thread::yield_now(); // the action runs
                if fails && !failed_once {
                    failed_once = true;
                    drop(ticket); // failed, released, or cancelled: no outcome
                    continue;
                }
                *store.value.lock().expect("not poisoned") = Some(me);
                ticket.finish(Phase::Found(me));
                return me;
            }
            Joined::Follower(mut rx) => loop {
                match rx.borrow_and_update() {
                    Phase::Found(v) => return v,
                    Phase::Vacated => break,
                    Phase::Claiming | Phase::Held => {}
                }
                if !rx.changed() && !matches!(rx.borrow_and_update(), Phase::Found(_)) {
                    // Closed with no terminal phase read: claim to be sure (`follow`).
                    break;
                }
            },
        }
    }
}

fn scenario(mutation: Mutation) {
    let coalescer = Arc::new(Coalescer {
        map: Mutex::new(HashMap::new()),
        mutation,
        leaders: AtomicUsize::new(0),
        most_leaders: AtomicUsize::new(0),
    });
    let store = Arc::new(Store::default());
    let handles: Vec<_> = (0..3)
        .map(|me| {
            let (coalescer, store) = (Arc::clone(&coalescer), Arc::clone(&store));
            // Caller 0's first flight ends without an outcome (its leader is dropped).
            thread::spawn(move || call(&coalescer, &store, me, me == 0))
        })
        .collect();
    let values: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("no panic"))
        .collect();
    let most = coalescer.most_leaders.load(Ordering::SeqCst);
    assert_eq!(most, 1, "most_leaders at once");
    let stored = store.value.lock().expect("not poisoned").expect("a value");
    assert!(values.iter().all(|v| *v == stored), "{values:?}");
    assert!(coalescer.map.lock().expect("not poisoned").is_empty());
}

#[test]
fn followers_are_woken_by_every_outcome_and_one_leader_claims_at_a_time() {
    shuttle::check_random_with_seed(|| scenario(Mutation::None), crate::SHUTTLE_SEED, 2000);
}

#[test]
#[should_panic(expected = "deadlock")]
fn a_dropped_leader_that_keeps_its_slot_strands_its_followers() {
    shuttle::check_random_with_seed(
        || scenario(Mutation::DropKeepsSlot),
        crate::SHUTTLE_SEED,
        2000,
    );
}

#[test]
#[should_panic(expected = "most_leaders")]
fn a_join_that_looks_and_inserts_under_two_locks_makes_two_leaders() {
    shuttle::check_random_with_seed(
        || scenario(Mutation::CheckThenInsert),
        crate::SHUTTLE_SEED,
        2000,
    );
}
