//! Adversarial review of `Call::run_fenced` on every store: who gets a token (exactly the
//! runs that hold a confirmed reservation), that tokens grow run after run, that
//! coalesced followers never run, and what happens when the reservation is lost, or the
//! token cannot be read, between the claim and the action's start.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use idempotency_coordinator::{
    Coordinator, FencingToken, IdempotencyError, InFlight, OnStorageError, Outcome,
};
use idempotency_core::{
    Claim, Clock, Fence, Finished, IdempotencyRecord, IdempotencyRepository, Lease, RecordId,
    ReservationStore, Result,
};

use crate::common::unique;

/// Forwards everything, `fencing_token` included, with faults of its own.
#[derive(Debug, Clone)]
struct Fencing<S> {
    inner: S,
    /// Claims fail with a storage error.
    claim_fails: Arc<AtomicBool>,
    /// Renewals fail with a storage error (the owner stalls: its lease runs out).
    renew_fails: Arc<AtomicBool>,
    /// `fencing_token` fails with a storage error.
    fence_fails: Arc<AtomicBool>,
    /// Before answering `fencing_token`, another owner takes the key (once).
    steal_before_fence: Arc<AtomicBool>,
    /// The thief's lease, once it stole.
    thief: Arc<std::sync::Mutex<Option<Lease>>>,
    fences: Arc<AtomicUsize>,
}

impl<S> Fencing<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            claim_fails: Arc::default(),
            renew_fails: Arc::default(),
            fence_fails: Arc::default(),
            steal_before_fence: Arc::default(),
            thief: Arc::default(),
            fences: Arc::default(),
        }
    }
}

fn storage(op: &str) -> IdempotencyError {
    IdempotencyError::storage(Some(op), std::io::Error::other("injected fault"))
}

impl<S: IdempotencyRepository> IdempotencyRepository for Fencing<S> {
    async fn get(&self, id: &RecordId) -> Result<Option<IdempotencyRecord>> {
        self.inner.get(id).await
    }
    async fn save(&self, record: &IdempotencyRecord) -> Result<()> {
        self.inner.save(record).await
    }
    async fn replace(&self, record: &IdempotencyRecord) -> Result<()> {
        self.inner.replace(record).await
    }
    async fn delete(&self, id: &RecordId) -> Result<bool> {
        self.inner.delete(id).await
    }
}

impl<S: ReservationStore> ReservationStore for Fencing<S> {
    type Watch = S::Watch;

    async fn claim(&self, lease: &Lease, duration: Duration) -> Result<Claim> {
        if self.claim_fails.load(Ordering::SeqCst) {
            return Err(storage(lease.operation()));
        }
        self.inner.claim(lease, duration).await
    }
    async fn finish(&self, lease: &Lease, finished: Finished<'_>, ttl: Duration) -> Result<Fence> {
        self.inner.finish(lease, finished, ttl).await
    }
    async fn renew(&self, lease: &Lease, duration: Duration) -> Result<Fence> {
        if self.renew_fails.load(Ordering::SeqCst) {
            return Err(storage(lease.operation()));
        }
        self.inner.renew(lease, duration).await
    }
    async fn release(&self, lease: &Lease) -> Result<Fence> {
        self.inner.release(lease).await
    }
    async fn fencing_token(&self, lease: &Lease) -> Result<Option<FencingToken>> {
        self.fences.fetch_add(1, Ordering::SeqCst);
        if self.fence_fails.load(Ordering::SeqCst) {
            return Err(storage(lease.operation()));
        }
        if self.steal_before_fence.swap(false, Ordering::SeqCst) {
            // The lease is lost (released here, as its expiry would), another owner
            // claims the key and takes its own token.
            assert_eq!(self.inner.release(lease).await?, Fence::Held);
            let thief = Lease::new(lease.id().clone(), None, Clock::system());
            assert_eq!(
                self.inner.claim(&thief, Duration::from_secs(30)).await?,
                Claim::Acquired
            );
            assert!(self.inner.fencing_token(&thief).await?.is_some());
            *self.thief.lock().expect("lock") = Some(thief);
        }
        self.inner.fencing_token(lease).await
    }
    async fn watch(&self, id: &RecordId) -> Result<S::Watch> {
        self.inner.watch(id).await
    }
}

fn store_of<S: Clone>(env: &crate::common::Env<S>) -> Fencing<S> {
    Fencing::new(env.store.inner.clone())
}

type Res<T> = std::result::Result<T, IdempotencyError>;

// Concurrent fenced calls of one key in one process: one run, with a token; the others
// share its value (coalesced or replayed), never running the action.
on_all!(coalesced_fenced_calls_run_once_with_one_token, |env| {
    let store = store_of(&env);
    let coordinator = Coordinator::builder(store.clone())
        .build()
        .expect("coordinator");
    let key = unique("fence-coalesce");
    let runs = Arc::new(AtomicUsize::new(0));
    let mut calls = Vec::new();
    for _ in 0..8 {
        let coordinator = coordinator.clone();
        let key = key.clone();
        let runs = runs.clone();
        calls.push(tokio::spawn(async move {
            coordinator
                .call("fence.coalesce", Some(&key))
                .run_fenced_with_outcome(|fence: Option<FencingToken>| async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<_, IdempotencyError>(fence.map(FencingToken::get))
                })
                .await
        }));
    }
    let mut values = std::collections::BTreeSet::new();
    let mut executed = 0;
    for c in calls {
        let (value, outcome) = c.await.expect("task").expect("call");
        values.insert(value);
        executed += usize::from(outcome == Outcome::Executed);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "one run");
    assert_eq!(executed, 1);
    assert_eq!(values.len(), 1, "one value: {values:?}");
    assert!(
        values.iter().next().expect("one").is_some(),
        "the run had a token"
    );
});

// Run after run of one key (each run's error is not stored, so the next call runs
// again): every run's token beats the one before, then a success is replayed unrun.
on_all!(every_new_run_of_a_key_gets_a_larger_token, |env| {
    let store = store_of(&env);
    let coordinator = Coordinator::builder(store.clone())
        .build()
        .expect("coordinator");
    let key = unique("fence-runs");
    let mut last = 0u64;
    for _ in 0..5 {
        let seen = Arc::new(AtomicUsize::new(0));
        let s = seen.clone();
        let got: Res<u64> = coordinator
            .call("fence.runs", Some(&key))
            .run_fenced(|fence: Option<FencingToken>| async move {
                s.store(
                    usize::try_from(fence.expect("a token").get()).expect("fits"),
                    Ordering::SeqCst,
                );
                Err(IdempotencyError::validation(Vec::new()))
            })
            .await;
        assert!(got.is_err());
        let t = seen.load(Ordering::SeqCst) as u64;
        assert!(t > last, "{t} > {last}");
        last = t;
    }
    let (value, outcome) = coordinator
        .call("fence.runs", Some(&key))
        .run_fenced_with_outcome(|fence: Option<FencingToken>| async move {
            Ok::<_, IdempotencyError>(fence.expect("a token").get())
        })
        .await
        .expect("call");
    assert_eq!(outcome, Outcome::Executed);
    assert!(value > last);
    let (again, outcome) = coordinator
        .call("fence.runs", Some(&key))
        .run_fenced_with_outcome(|_fence: Option<FencingToken>| async move {
            Ok::<_, IdempotencyError>(0)
        })
        .await
        .expect("call");
    assert_eq!((again, outcome), (value, Outcome::Replayed));
});

// Runs without a confirmed reservation get `None`: a disabled coordinator, no key, a
// second caller under `InFlight::Run`, fail-open after a failed claim.
on_all!(unprotected_runs_get_no_token, |env| {
    let store = store_of(&env);
    let fenced = |c: Coordinator<Fencing<_>>, key: Option<String>| async move {
        c.call("fence.unprotected", key.as_deref())
            .run_fenced_with_outcome(|fence: Option<FencingToken>| async move {
                Ok::<_, IdempotencyError>(fence.map(FencingToken::get))
            })
            .await
            .expect("call")
    };
    let disabled = Coordinator::builder(store.clone())
        .enabled(false)
        .build()
        .expect("coordinator");
    let (v, _) = fenced(disabled, Some(unique("fence-off"))).await;
    assert_eq!(v, None, "a disabled coordinator");
    let plain = Coordinator::builder(store.clone())
        .build()
        .expect("coordinator");
    let (v, _) = fenced(plain.clone(), None).await;
    assert_eq!(v, None, "no key");

    // InFlight::Run: a holder has the key; the second caller runs unprotected.
    let key = unique("fence-run-mode");
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (finish_tx, finish_rx) = tokio::sync::oneshot::channel::<()>();
    let holder = {
        let plain = plain.clone();
        let key = key.clone();
        tokio::spawn(async move {
            plain
                .call("fence.unprotected", Some(&key))
                .run_fenced(|fence: Option<FencingToken>| async move {
                    started_tx.send(()).expect("send");
                    finish_rx.await.expect("finish");
                    Ok::<_, IdempotencyError>(fence.map(FencingToken::get))
                })
                .await
        })
    };
    started_rx.await.expect("started");
    let runner = Coordinator::builder(store.clone())
        .in_flight(InFlight::Run)
        .build()
        .expect("coordinator");
    let (v, outcome) = fenced(runner, Some(key.clone())).await;
    assert_eq!(v, None, "InFlight::Run beside a holder ({outcome:?})");
    finish_tx.send(()).expect("finish");
    let held = holder.await.expect("task").expect("holder");
    assert!(held.is_some(), "the holder had a token");

    // Fail-open after a failed claim.
    store.claim_fails.store(true, Ordering::SeqCst);
    let open = Coordinator::builder(store.clone())
        .on_storage_error(OnStorageError::Run)
        .build()
        .expect("coordinator");
    let (v, outcome) = fenced(open, Some(unique("fence-open"))).await;
    store.claim_fails.store(false, Ordering::SeqCst);
    assert_eq!(outcome, Outcome::Unprotected);
    assert_eq!(v, None, "fail-open");
});

// The reservation lost between the claim and the token (another owner took the key):
// the action does not run, the call fails with InProgress, and the newer owner's
// reservation is left alone (our release is fenced).
on_all!(
    a_reservation_lost_before_the_start_does_not_run_the_action,
    |env| {
        let store = store_of(&env);
        let coordinator = Coordinator::builder(store.clone())
            .build()
            .expect("coordinator");
        let key = unique("fence-stolen");
        store.steal_before_fence.store(true, Ordering::SeqCst);
        let ran = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        let got: Res<u32> = coordinator
            .call("fence.stolen", Some(&key))
            .run_fenced(|_fence: Option<FencingToken>| async move {
                r.store(true, Ordering::SeqCst);
                Ok(1)
            })
            .await;
        assert!(!ran.load(Ordering::SeqCst), "the action must not run");
        assert!(
            matches!(got, Err(IdempotencyError::InProgress { .. })),
            "{got:?}"
        );
        let thief = store.thief.lock().expect("lock").clone().expect("stolen");
        assert!(
            store
                .inner
                .fencing_token(&thief)
                .await
                .expect("token")
                .is_some(),
            "the newer owner still holds the key"
        );
        assert_eq!(
            store.inner.release(&thief).await.expect("release"),
            Fence::Held
        );
    }
);

// The token cannot be read (a storage error after a successful claim) while the policy
// is fail-open: the action does not run (fail-closed: no token, no run), and the
// reservation is released at once, so the next call runs without waiting for the lease.
on_all!(a_failed_token_read_releases_the_reservation, |env| {
    let store = store_of(&env);
    let coordinator = Coordinator::builder(store.clone())
        .on_storage_error(OnStorageError::Run)
        .lease(Duration::from_secs(30))
        .build()
        .expect("coordinator");
    let key = unique("fence-fails");
    store.fence_fails.store(true, Ordering::SeqCst);
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let got: Res<Option<u64>> = coordinator
        .call("fence.fails", Some(&key))
        .run_fenced(|fence: Option<FencingToken>| async move {
            r.store(true, Ordering::SeqCst);
            Ok(fence.map(FencingToken::get))
        })
        .await;
    store.fence_fails.store(false, Ordering::SeqCst);
    assert!(!ran.load(Ordering::SeqCst), "ran without a token: {got:?}");
    assert!(got.is_err(), "{got:?}");
    let start = Instant::now();
    let (v, outcome) = coordinator
        .call("fence.fails", Some(&key))
        .run_fenced_with_outcome(|fence: Option<FencingToken>| async move {
            Ok::<_, IdempotencyError>(fence.map(FencingToken::get))
        })
        .await
        .expect("call");
    // The release of the failed call may still be on its way: the next call then waits
    // for it and takes the key (TookOver), without waiting out the lease.
    assert!(
        matches!(outcome, Outcome::Executed | Outcome::TookOver),
        "{outcome:?}"
    );
    assert!(v.is_some());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
});

// Two coordinators (two processes) on one store: the first owner's renewals fail, its
// lease runs out while its action still runs, the second caller takes the key over with
// a larger token; the stale owner's later completion does not stand. Detached calls.
on_all!(a_stalled_owner_is_outnumbered_by_the_taker, |env| {
    let stalled_store = store_of(&env);
    stalled_store.renew_fails.store(true, Ordering::SeqCst);
    let stalled = Coordinator::builder(stalled_store.clone())
        .lease(Duration::from_secs(1))
        .build()
        .expect("coordinator");
    let taker = Coordinator::builder(store_of(&env))
        .lease(Duration::from_secs(1))
        .build()
        .expect("coordinator");
    let key = unique("fence-stall");
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let first = {
        let key = key.clone();
        tokio::spawn(async move {
            stalled
                .call("fence.stall", Some(&key))
                .run_detached_fenced(|fence: Option<FencingToken>| async move {
                    let fence = fence.expect("a token").get();
                    started_tx.send(fence).expect("send");
                    let _ = go_rx.await;
                    Ok::<_, IdempotencyError>(fence)
                })
                .await
        })
    };
    let a = started_rx.await.expect("started");
    let (b, outcome) = taker
        .call("fence.stall", Some(&key))
        .max_wait(Duration::from_secs(20))
        .run_detached_fenced(|fence: Option<FencingToken>| async move {
            Ok::<_, IdempotencyError>(fence.expect("a token").get())
        })
        .await
        .expect("taker");
    assert!(
        matches!(outcome, Outcome::Executed | Outcome::TookOver),
        "{outcome:?}"
    );
    assert!(b > a, "the taker's token {b} beats the stalled owner's {a}");
    go_tx.send(()).expect("go");
    let _ = first.await.expect("task");
    let (replayed, outcome) = taker
        .call("fence.stall", Some(&key))
        .run_fenced_with_outcome(|_fence: Option<FencingToken>| async move {
            Ok::<_, IdempotencyError>(0)
        })
        .await
        .expect("replay");
    assert_eq!(
        (replayed, outcome),
        (b, Outcome::Replayed),
        "the taker's value stands"
    );
});
