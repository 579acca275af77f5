//! Draining detached calls before a shutdown: stop taking new ones, let the running ones
//! finish up to a deadline, and cut (and release) what is left while the runtime still
//! runs, so no reservation is left pending for a lease by a deploy.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::AbortHandle;

/// How long a drain waits, after its deadline, for the releases of the calls it cut.
const RELEASE_GRACE: Duration = Duration::from_secs(2);

/// What a drain did.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let coordinator = idempotency_coordinator::Coordinator::in_memory();
/// let drained = coordinator.drain(std::time::Duration::from_secs(5)).await;
/// assert_eq!((drained.finished, drained.cut), (0, 0));
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Drained {
    /// Detached calls that were running when the drain began and ended by themselves
    /// before the deadline (with a value or an error).
    pub finished: usize,
    /// Detached calls still running at the deadline: cut, and their reservations
    /// released, so a retry runs the action again (whether it had its effect is unknown).
    pub cut: usize,
}

/// The detached calls of one coordinator (and the background releases, which a drain
/// waits for too).
///
/// Invariants, enforced here: `running` counts every live [`Running`] ticket (a detached
/// call's task, or a background release); `tasks` holds an entry for exactly the live
/// tickets of detached calls (inserted by [`Detached::enter`], removed by the ticket's
/// drop), so a drain never aborts a finished task and never misses a running one; once
/// `closing` is set no detached call starts.
#[derive(Debug)]
pub(crate) struct Detached {
    /// At most this many detached calls run at once (`CoordinatorBuilder::max_detached`).
    max: usize,
    closing: AtomicBool,
    running: AtomicUsize,
    idle: tokio::sync::Notify,
    next: AtomicU64,
    tasks: Mutex<HashMap<u64, Option<AbortHandle>>>,
}

/// Why a detached call was not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// A drain has begun.
    Draining,
    /// `max` detached calls run already.
    Full(usize),
}

/// Held while one detached call (or one background release) runs.
#[derive(Debug)]
pub(crate) struct Running {
    detached: Arc<Detached>,
    id: Option<u64>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.detached.tasks().remove(&id);
        }
        if self.detached.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.detached.idle.notify_waiters();
        }
    }
}

impl Detached {
    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Option<AbortHandle>>> {
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// No more than `max` detached calls at once.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            closing: AtomicBool::new(false),
            running: AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
            next: AtomicU64::new(0),
            tasks: Mutex::default(),
        }
    }

    /// A ticket for a new detached call, unless a drain has begun or `max` run already.
    pub(crate) fn enter(self: &Arc<Self>) -> Result<Running, Refused> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut tasks = self.tasks();
        // Checked under the lock a drain takes to collect the tasks it cuts, and that
        // every entry and exit takes: `tasks.len()` is exact here.
        if self.closing.load(Ordering::Acquire) {
            return Err(Refused::Draining);
        }
        if tasks.len() >= self.max {
            return Err(Refused::Full(self.max));
        }
        tasks.insert(id, None);
        self.running.fetch_add(1, Ordering::AcqRel);
        Ok(Running {
            detached: Arc::clone(self),
            id: Some(id),
        })
    }

    /// Records the task of `ticket`'s call, so a drain can cut it (nothing if it ended).
    pub(crate) fn register(&self, ticket_id: u64, task: AbortHandle) {
        if let Some(slot) = self.tasks().get_mut(&ticket_id) {
            *slot = Some(task);
        }
    }

    /// A ticket for a background release: taken even while draining.
    pub(crate) fn release_ticket(self: &Arc<Self>) -> Running {
        self.running.fetch_add(1, Ordering::AcqRel);
        Running {
            detached: Arc::clone(self),
            id: None,
        }
    }

    async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.running.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Stops new detached calls, waits for the running ones up to `deadline`, cuts the
    /// rest and waits (briefly) for their releases: see `Coordinator::drain`.
    pub(crate) async fn drain(&self, deadline: Duration) -> Drained {
        let started = {
            let tasks = self.tasks();
            self.closing.store(true, Ordering::Release);
            tasks.len()
        };
        if tokio::time::timeout(deadline, self.idle()).await.is_ok() {
            return Drained {
                finished: started,
                cut: 0,
            };
        }
        let left: Vec<AbortHandle> = self.tasks().values().flatten().cloned().collect();
        for task in &left {
            task.abort();
        }
        if !left.is_empty() {
            tracing::warn!(
                cut = left.len(),
                "drain deadline passed: cutting detached calls; their keys are released and retries run again"
            );
        }
        // The cut calls release their reservations in the background: wait for those.
        let _ = tokio::time::timeout(RELEASE_GRACE, self.idle()).await;
        Drained {
            finished: started.saturating_sub(left.len()),
            cut: left.len(),
        }
    }
}

impl Running {
    /// The call's id, for [`Detached::register`].
    pub(crate) fn id(&self) -> u64 {
        self.id.unwrap_or(u64::MAX)
    }
}
