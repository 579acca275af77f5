//! Waiting for the caller that holds a key: a subscription, a safety poll, a deadline.

use std::time::{Duration, Instant};

use idempotency_core::{KeyWatch, RecordId, ReservationStore};

/// How a waiter learns that the key changed.
enum Watching<W> {
    /// Not subscribed yet: the first wait subscribes and returns at once, so the caller
    /// looks again and a completion between its claim and the subscription is not missed.
    NotYet,
    /// Subscribed: woken by the store's push, or by the safety poll.
    Subscribed(W),
    /// No subscription could be made: poll.
    Polling,
}

/// One caller waiting for the holder of a key, for at most a lease.
pub(crate) struct Waiter<W> {
    /// `None` when the patience is beyond what the clock can represent: no deadline.
    deadline: Option<Instant>,
    watching: Watching<W>,
}

impl<W: KeyWatch> Waiter<W> {
    /// Starts waiting now, for at most `patience`.
    pub(crate) fn new(patience: Duration) -> Self {
        Self {
            // A patience the clock cannot add (`Duration::MAX`) waits as long as it takes,
            // never not at all.
            deadline: Instant::now().checked_add(patience),
            watching: Watching::NotYet,
        }
    }

    /// Waits for a change of the key (or the safety poll); `false` once the deadline has
    /// passed, when the caller should give up.
    pub(crate) async fn wait<S>(&mut self, store: &S, id: &RecordId, poll: Duration) -> bool
    where
        S: ReservationStore<Watch = W>,
    {
        let budget = match self.deadline {
            Some(deadline) => {
                let now = Instant::now();
                if now >= deadline {
                    return false;
                }
                (deadline - now).min(poll)
            }
            None => poll,
        };
        match &mut self.watching {
            Watching::NotYet => {
                // Boxed: subscribing is the rare path and would grow every call's future.
                self.watching = match Box::pin(store.watch(id)).await {
                    Ok(w) => Watching::Subscribed(w),
                    Err(_) => Watching::Polling,
                };
            }
            Watching::Subscribed(w) => {
                w.changed(budget).await;
            }
            Watching::Polling => tokio::time::sleep(budget).await,
        }
        true
    }
}
