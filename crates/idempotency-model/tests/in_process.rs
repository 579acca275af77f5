//! The in-process fence, wake-up and release guard under shuttle's scheduler.
//!
//! Shuttle cannot instrument `std::sync::Mutex` or tokio's `Notify` inside the real
//! `MemoryStore`, so this is the memory store's logic restated on shuttle's primitives:
//! the claim/complete/release fence under one lock (as `MemoryStore` does), a watch that
//! takes its wake-up ticket *before* the caller re-reads the key (as `MemoryStore::watch`
//! creates its `Notified` before returning), and a release guard that releases on drop
//! unless disarmed. Checked: exactly one claimer acquires, a waiter is never left asleep
//! after a completion (a lost wake-up shows as a deadlock), and no lease is released
//! twice. A variant that takes the ticket after the re-read is shown to lose wake-ups.

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
    releases: AtomicUsize,
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
        let mut state = self.state.lock().expect("not poisoned");
        if state.0 != Some(Value::Pending(token)) {
            return false;
        }
        state.0 = None;
        state.1 += 1;
        self.releases.fetch_add(1, Ordering::SeqCst);
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

/// One call: claim, then run-and-complete, or wait for the holder and look again.
fn call(store: &Store, token: usize, cancel: bool, ticket_first: bool) -> Option<usize> {
    let mut guard = Guard {
        store,
        token,
        armed: true,
    };
    loop {
        let ticket = ticket_first.then(|| store.watch());
        match store.claim(token) {
            None => {
                if cancel {
                    return None; // dropped mid-call: the guard releases
                }
                store.complete(token);
                guard.armed = false;
                return Some(token);
            }
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

fn scenario(ticket_first: bool) {
    let store = Arc::new(Store::default());
    let handles: Vec<_> = (0..3)
        .map(|token| {
            let store = Arc::clone(&store);
            thread::spawn(move || call(&store, token, token == 0, ticket_first))
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
    // Only the cancelled caller's guard releases, at most once.
    assert!(store.releases.load(Ordering::SeqCst) <= 1);
}

#[test]
fn one_owner_no_lost_wake_up_no_double_release() {
    shuttle::check_random(|| scenario(true), 3000);
}

#[test]
#[should_panic(expected = "deadlock")]
fn a_ticket_taken_after_the_re_read_loses_wake_ups() {
    shuttle::check_random(|| scenario(false), 3000);
}
