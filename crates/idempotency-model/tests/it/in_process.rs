//! The in-process fence, wake-up and release guard under shuttle's scheduler.
//!
//! Shuttle cannot instrument `std::sync::Mutex` or tokio's `Notify` inside the real
//! `MemoryStore`, so this is the memory store's logic restated on shuttle's primitives:
//! the claim/complete/release fence under one lock (as `MemoryStore` does), a watch that
//! takes its wake-up ticket *before* the caller re-reads the key (as `MemoryStore::watch`
//! creates its `Notified` before returning), and a release guard that releases on drop
//! unless disarmed (`ReleaseGuard`; the flow releases and then disarms when there is
//! nothing to write, as `run_owned` does). Checked: exactly one claimer acquires, a
//! waiter is never left asleep after a completion (a lost wake-up shows as a deadlock),
//! and no lease is released twice: every release *call* is counted, one that finds
//! nothing included. Variants that take the ticket after the re-read, or forget to
//! disarm after the explicit release, are shown to fail.
//!
//! The shipped memory store is checked as it is in `memory_as_shipped.rs` (a build with
//! `--cfg shuttle`); this restatement stays for its broken variants and the release guard.
//!
//! RESTATED, not the real code (keep in step with `idempotency-core/src/memory.rs` and
//! `idempotency-coordinator/src/lease.rs`): the fence's three decisions, the change
//! counter that stands for `Notify`, and the guard's arm/disarm/drop.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use shuttle::sync::{Condvar, Mutex};
use shuttle::thread;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Value {
    Pending(usize),
    Completed(usize),
}

#[derive(Default)]
struct Store {
    state: Mutex<(Option<Value>, u64)>,
    changed: Condvar,
    /// Release calls per token, whatever each found.
    releases: [AtomicUsize; 3],
}

impl Store {
    /// Our pending record if the key is free (or already ours); otherwise what holds it.
    fn claim(&self, token: usize) -> Option<Value> {
        let mut state = self.state.lock().expect("not poisoned");
        match state.0 {
            None => {
                state.0 = Some(Value::Pending(token));
                None
            }
            Some(Value::Pending(t)) if t == token => None,
            found => found,
        }
    }

    fn complete(&self, token: usize) -> bool {
        let mut state = self.state.lock().expect("not poisoned");
        let ours = state.0.is_none() || state.0 == Some(Value::Pending(token));
        if ours {
            state.0 = Some(Value::Completed(token));
            state.1 += 1;
            self.changed.notify_all();
        }
        ours
    }

    fn release(&self, token: usize) -> bool {
        // Counted before the fence: a second release is a bug even when it finds nothing.
        self.releases[token].fetch_add(1, Ordering::SeqCst);
        let mut state = self.state.lock().expect("not poisoned");
        if state.0 != Some(Value::Pending(token)) {
            return false;
        }
        state.0 = None;
        state.1 += 1;
        self.changed.notify_all();
        true
    }

    /// A wake-up ticket: the change count now.
    fn watch(&self) -> u64 {
        self.state.lock().expect("not poisoned").1
    }

    /// Sleeps until a change after `ticket` (no timeout: a lost wake-up deadlocks).
    fn changed(&self, ticket: u64) {
        let mut state = self.state.lock().expect("not poisoned");
        while state.1 == ticket {
            state = self.changed.wait(state).expect("not poisoned");
        }
    }
}

/// Releases on drop unless disarmed (the coordinator's `ReleaseGuard`).
struct Guard<'a> {
    store: &'a Store,
    token: usize,
    armed: bool,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.store.release(self.token);
        }
    }
}

/// How one call ends once it holds the key.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Completes with its value.
    Complete,
    /// Dropped mid-call: the guard releases.
    Cancel,
    /// Fails with nothing to write: releases, then disarms.
    Fail,
    /// Fails, releases, and forgets to disarm (the bug: the drop releases again).
    FailNoDisarm,
}

/// One call: claim, then run-and-complete, or wait for the holder and look again.
fn call(store: &Store, token: usize, ending: Ending, ticket_first: bool) -> Option<usize> {
    let mut guard = Guard {
        store,
        token,
        armed: true,
    };
    loop {
        let ticket = ticket_first.then(|| store.watch());
        match store.claim(token) {
            None => match ending {
                Ending::Cancel => return None, // dropped mid-call: the guard releases
                Ending::Fail | Ending::FailNoDisarm => {
                    store.release(token);
                    if ending == Ending::Fail {
                        guard.armed = false;
                    }
                    return None;
                }
                Ending::Complete => {
                    store.complete(token);
                    guard.armed = false;
                    return Some(token);
                }
            },
            Some(Value::Completed(v)) => {
                guard.armed = false;
                return Some(v);
            }
            Some(Value::Pending(_)) => {
                let ticket = ticket.unwrap_or_else(|| store.watch());
                store.changed(ticket);
            }
        }
    }
}

fn scenario(ticket_first: bool, fail: Ending) {
    let store = Arc::new(Store::default());
    let handles: Vec<_> = [Ending::Cancel, fail, Ending::Complete]
        .into_iter()
        .enumerate()
        .map(|(token, ending)| {
            let store = Arc::clone(&store);
            thread::spawn(move || call(&store, token, ending, ticket_first))
        })
        .collect();
    let values: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("no panic"))
        .collect();
    let state = store.state.lock().expect("not poisoned").0;
    let Some(Value::Completed(v)) = state else {
        panic!("the key ended as {state:?}");
    };
    // Every caller that returned a value returned the one stored value.
    assert!(values.iter().flatten().all(|x| *x == v), "{values:?}");
    // Each lease is released at most once (the completing caller's never).
    let releases: Vec<_> = store
        .releases
        .iter()
        .map(|r| r.load(Ordering::SeqCst))
        .collect();
    assert!(
        releases.iter().all(|n| *n <= 1),
        "release calls {releases:?}"
    );
}

#[test]
fn one_owner_no_lost_wake_up_no_double_release() {
    shuttle::check_random_with_seed(|| scenario(true, Ending::Fail), crate::SHUTTLE_SEED, 3000);
}

#[test]
#[should_panic(expected = "release calls")]
fn a_guard_left_armed_after_the_release_releases_twice() {
    shuttle::check_random_with_seed(
        || scenario(true, Ending::FailNoDisarm),
        crate::SHUTTLE_SEED,
        3000,
    );
}

#[test]
#[should_panic(expected = "deadlock")]
fn a_ticket_taken_after_the_re_read_loses_wake_ups() {
    shuttle::check_random_with_seed(|| scenario(false, Ending::Fail), crate::SHUTTLE_SEED, 3000);
}
