//! Per-call modes, outcomes, stored errors, the background release of a failed
//! completion and the record-created hook. Tests marked "Finding" failed before their
//! fix; the others pin guarantees that had no test of their own.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idempotency_coordinator::{Coordinator, InFlight, OnStorageError, Outcome};
use idempotency_core::{
    Claim, ErrorClass, Fence, Finished, IdempotencyError, IdempotencyRecord, IdempotencyRepository,
    Lease, RawValue, RecordId, RecordStatus, ReservationStore, Result as CoreResult, Unfenced,
};
use serde::{Deserialize, Serialize};

use crate::common::{Env, Faulty, Runs, unique};

/// Generous: every wait in these tests ends long before it on a healthy machine.
const DEADLINE: Duration = Duration::from_secs(30);

/// An application error with the library's errors folded in by kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Charge {
    Declined,
    Lib(String),
}

impl From<IdempotencyError> for Charge {
    fn from(e: IdempotencyError) -> Self {
        let kind = match &e {
            IdempotencyError::KeyReuse { .. } => "key_reuse",
            IdempotencyError::InProgress { .. } => "in_progress",
            e if e.is_storage() => "storage",
            e if e.class() == ErrorClass::Data => "data",
            _ => "other",
        };
        Self::Lib(kind.to_owned())
    }
}

fn lib(kind: &str) -> Charge {
    Charge::Lib(kind.to_owned())
}

fn store_declines(e: &Charge) -> bool {
    *e == Charge::Declined
}

/// A store around the env's (faulty) store whose releases can be held back, counted, and
/// whose stored-error completion can lose its reply.
#[derive(Debug, Clone)]
struct Gate<S> {
    inner: Faulty<S>,
    /// Held by the test: every release waits for it.
    release_gate: Arc<tokio::sync::Mutex<()>>,
    releases_done: Arc<AtomicUsize>,
    /// The next `complete_with_error` is applied, then its reply is lost.
    error_reply_lost: Arc<AtomicBool>,
}

impl<S> Gate<S> {
    fn new(inner: Faulty<S>) -> Self {
        Self {
            inner,
            release_gate: Arc::new(tokio::sync::Mutex::new(())),
            releases_done: Arc::new(AtomicUsize::new(0)),
            error_reply_lost: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl<S: ReservationStore> IdempotencyRepository for Gate<S> {
    async fn get(&self, id: &RecordId) -> CoreResult<Option<IdempotencyRecord>> {
        self.inner.get(id).await
    }
    async fn save(&self, record: &IdempotencyRecord) -> CoreResult<()> {
        self.inner.save(record).await
    }
    async fn replace(&self, record: &IdempotencyRecord) -> CoreResult<()> {
        self.inner.replace(record).await
    }
    async fn delete(&self, id: &RecordId) -> CoreResult<bool> {
        self.inner.delete(id).await
    }
}

impl<S: ReservationStore> ReservationStore for Gate<S> {
    type Watch = S::Watch;

    async fn claim(&self, lease: &Lease, duration: Duration) -> CoreResult<Claim> {
        self.inner.claim(lease, duration).await
    }
    async fn finish(
        &self,
        lease: &Lease,
        finished: Finished<'_>,
        ttl: Duration,
    ) -> CoreResult<Fence> {
        let fence = self.inner.finish(lease, finished, ttl).await?;
        // The lost reply is a stored error's completion only.
        if matches!(finished, Finished::Error(_))
            && self.error_reply_lost.swap(false, Ordering::SeqCst)
        {
            return Err(IdempotencyError::storage(
                Some(lease.operation()),
                std::io::Error::other("injected: reply lost after the command was applied"),
            ));
        }
        Ok(fence)
    }
    async fn renew(&self, lease: &Lease, duration: Duration) -> CoreResult<Fence> {
        self.inner.renew(lease, duration).await
    }
    async fn release(&self, lease: &Lease) -> CoreResult<Fence> {
        let _open = self.release_gate.lock().await;
        let released = self.inner.release(lease).await;
        self.releases_done.fetch_add(1, Ordering::SeqCst);
        released
    }
    async fn watch(&self, id: &RecordId) -> CoreResult<S::Watch> {
        self.inner.watch(id).await
    }
}

/// What the record-created hook saw: (key, status) per call.
type Created = Arc<Mutex<Vec<(String, RecordStatus)>>>;

/// A coordinator on a [`Gate`] around the env's store, with the env's metrics.
fn gated<S: ReservationStore + Clone>(
    env: &Env<S>,
    lease: Duration,
    hook: Option<Created>,
) -> (Coordinator<Gate<S>>, Gate<S>) {
    let gate = Gate::new(env.store.clone());
    let mut builder = Coordinator::builder(gate.clone())
        .metrics(env.metrics.clone())
        .lease(lease)
        .on_storage_error(OnStorageError::Run);
    if let Some(created) = hook {
        builder = builder.on_record_created(move |r| {
            created
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((r.idempotency_key.to_owned(), r.status));
        });
    }
    (builder.build().expect("coordinator"), gate)
}

/// A call on `key` whose action runs (counted) until `go` fires, then returns `outcome`;
/// returns once the action runs.
async fn gated_holder<S>(
    coordinator: &Coordinator<S>,
    key: &str,
    runs: &Runs,
    outcome: Result<u64, Charge>,
) -> (
    tokio::task::JoinHandle<Result<(u64, Outcome), Charge>>,
    tokio::sync::oneshot::Sender<()>,
)
where
    S: ReservationStore + Clone + Send + Sync + 'static,
    S::Watch: Send,
{
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let coordinator = coordinator.clone();
    let key = key.to_owned();
    let runs = runs.clone();
    let task = tokio::spawn(async move {
        coordinator
            .call("op", Some(&key))
            .store_errors(store_declines)
            .run_with_outcome(move || async move {
                runs.tick();
                let _ = started_tx.send(());
                let _ = go_rx.await;
                outcome
            })
            .await
    });
    tokio::time::timeout(DEADLINE, started_rx)
        .await
        .expect("the holder started in time")
        .expect("the holder started");
    (task, go_tx)
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn stored<S: ReservationStore>(store: &S, key: &str) -> Option<IdempotencyRecord> {
    store
        .get(&idempotency_testkit::record_id("op", key))
        .await
        .expect("get")
}

// Finding 1. A waiter has seen a live holder (its first claim found the pending record).
// When one of its re-claims then fails with a storage error (a blip, a timeout), the
// default fail-open mode (`OnStorageError::Run`) runs the action right next to that live
// holder: two runs for one key, although the call's own reply proved the key was held.
// The same rule as liveness.rs ("a claim that found a live owner never fails
// open") must hold for every re-claim of a waiter.
on_all!(a_waiter_never_fails_open_next_to_a_live_holder, |env| {
    let (coordinator, _gate) = gated(&env, Duration::from_secs(30), None);
    let key = unique("waiter-fail-open");
    let runs = Runs::default();
    let (holder, go) = gated_holder(&coordinator, &key, &runs, Ok(1)).await;
    env.metrics.clear();
    let waiter = {
        let coordinator = coordinator.clone();
        let key = key.clone();
        let runs = runs.clone();
        tokio::spawn(async move {
            coordinator
                .call("op", Some(&key))
                .store_errors(store_declines)
                .run_with_outcome(move || async move {
                    runs.tick();
                    Ok::<u64, Charge>(2)
                })
                .await
        })
    };
    // The waiter saw the holder (one collision), then the store blips on its re-claims.
    until("the waiter to find the holder", || {
        env.metrics.count("collision", "") == 1
    })
    .await;
    env.faults().claim.store(true, Ordering::SeqCst);
    let outcome = tokio::time::timeout(DEADLINE, waiter)
        .await
        .expect("the waiter finished")
        .expect("task");
    env.faults().claim.store(false, Ordering::SeqCst);
    assert_eq!(
        runs.get(),
        1,
        "the waiter ran its action next to the live holder: {outcome:?}"
    );
    assert_eq!(outcome, Err(lib("storage")), "fails closed");
    go.send(()).expect("holder waits");
    assert_eq!(holder.await.expect("task"), Ok((1, Outcome::Executed)));
    let replay = coordinator
        .call("op", Some(&key))
        .store_errors(store_declines)
        .run_with_outcome(|| async { Ok::<u64, Charge>(3) })
        .await;
    assert_eq!(replay, Ok((1, Outcome::Replayed)));
});

// Finding 2. `max_wait(Duration::MAX)` (or any wait the monotonic clock cannot add) is
// "wait as long as it takes"; the waiter's deadline overflowed into "now" and the call
// gave up at once with `InProgress`, without waiting at all.
on_all!(an_unbounded_max_wait_waits_for_the_holder, |env| {
    let (coordinator, _gate) = gated(&env, Duration::from_secs(30), None);
    let key = unique("max-wait-max");
    let runs = Runs::default();
    let (holder, go) = gated_holder(&coordinator, &key, &runs, Ok(7)).await;
    let waiter = {
        let coordinator = coordinator.clone();
        let key = key.clone();
        tokio::spawn(async move {
            coordinator
                .call("op", Some(&key))
                .store_errors(store_declines)
                .max_wait(Duration::MAX)
                .run_with_outcome(|| async { Ok::<u64, Charge>(8) })
                .await
        })
    };
    // Still waiting well after its first look at the key.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        !waiter.is_finished(),
        "gave up while the holder ran: {:?}",
        waiter.await
    );
    go.send(()).expect("holder waits");
    assert_eq!(holder.await.expect("task"), Ok((7, Outcome::Executed)));
    let outcome = tokio::time::timeout(DEADLINE, waiter)
        .await
        .expect("the waiter finished")
        .expect("task");
    assert_eq!(outcome, Ok((7, Outcome::WaitedThenReplayed)));
    assert_eq!(runs.get(), 1);
});

/// The fence for stored errors, both ways: a stale owner (its lease ran out while its
/// renewals failed, and a waiter took the key over and finished) cannot write its final
/// record (`stale`) over the newer owner's (`newer`).
async fn stale_owner_loses<S: ReservationStore + Clone>(
    env: &Env<S>,
    stale: Result<u64, Charge>,
    newer: Result<u64, Charge>,
) {
    let created = Arc::new(Mutex::new(Vec::new()));
    let (coordinator, _gate) = gated(env, Duration::from_secs(1), Some(Arc::clone(&created)));
    let key = unique("stale-owner");
    let runs = Runs::default();
    env.faults().renew.store(true, Ordering::SeqCst);
    let (stale_owner, stale_go) = gated_holder(&coordinator, &key, &runs, stale.clone()).await;
    env.metrics.clear();
    // The newer owner waits (longer than the lease) and takes the expired key over.
    let newer_call = {
        let runs = runs.clone();
        let newer = newer.clone();
        coordinator
            .call("op", Some(&key))
            .store_errors(store_declines)
            .max_wait(DEADLINE)
            .run_with_outcome(move || async move {
                runs.tick();
                newer
            })
    };
    let newer_got = tokio::time::timeout(DEADLINE, newer_call)
        .await
        .expect("the newer owner finished");
    match &newer {
        Ok(v) => assert_eq!(newer_got, Ok((*v, Outcome::TookOver))),
        Err(e) => assert_eq!(newer_got.as_ref().map_err(Clone::clone), Err(e.clone())),
    }
    assert_eq!(env.metrics.count("miss", ""), 1, "the takeover is a miss");
    stale_go.send(()).expect("stale owner waits");
    let stale_got = stale_owner.await.expect("task");
    env.faults().renew.store(false, Ordering::SeqCst);
    // The stale owner gets its own result; the newer record stands.
    match &stale {
        Ok(v) => assert_eq!(stale_got, Ok((*v, Outcome::Executed))),
        Err(e) => assert_eq!(stale_got, Err(e.clone())),
    }
    assert_eq!(env.metrics.count("error", "lease_lost"), 1);
    let record = stored(&env.store, &key).await.expect("a record");
    let expected_status = if newer.is_ok() {
        RecordStatus::Completed
    } else {
        RecordStatus::StoredError
    };
    assert_eq!(
        record.status(),
        expected_status,
        "the stale owner wrote over"
    );
    let replay = coordinator
        .call("op", Some(&key))
        .store_errors(store_declines)
        .run(|| async { Ok::<u64, Charge>(99) })
        .await;
    assert_eq!(replay, newer, "every retry gets the newer owner's result");
    assert_eq!(runs.get(), 2);
    let created = created
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    assert_eq!(
        created,
        [(key, expected_status)],
        "the hook saw the newer owner's write only"
    );
}

on_all!(
    a_stale_owner_cannot_store_an_error_over_a_newer_result,
    |env| {
        stale_owner_loses(&env, Err(Charge::Declined), Ok(2)).await;
    }
);

on_all!(
    a_stale_owner_cannot_store_a_result_over_a_newer_stored_error,
    |env| {
        stale_owner_loses(&env, Ok(1), Err(Charge::Declined)).await;
    }
);

// Stored errors are answers by fingerprint, on every path: reserved, waiting, run mode,
// detached.
on_all!(
    a_stored_error_is_replayed_by_fingerprint_on_every_path,
    |env| {
        let (coordinator, _gate) = gated(&env, Duration::from_secs(30), None);
        let key = unique("stored-fp");
        let runs = Runs::default();
        let call = |fingerprint: Option<&str>, mode: InFlight| {
            let runs = runs.clone();
            coordinator
                .call("op", Some(&key))
                .maybe_fingerprint(fingerprint.map(str::to_owned))
                .in_flight(mode)
                .store_errors(store_declines)
                .run_with_outcome(move || async move {
                    runs.tick();
                    Ok::<u64, Charge>(5)
                })
        };
        let first: Result<(u64, Outcome), Charge> = coordinator
            .call("op", Some(&key))
            .fingerprint("a")
            .store_errors(store_declines)
            .run_with_outcome(|| async { Err(Charge::Declined) })
            .await;
        assert_eq!(first, Err(Charge::Declined));
        for mode in [InFlight::Wait, InFlight::Raise, InFlight::Run] {
            assert_eq!(
                call(Some("a"), mode).await,
                Err(Charge::Declined),
                "{mode:?}"
            );
            assert_eq!(call(None, mode).await, Err(Charge::Declined), "{mode:?}");
            assert_eq!(
                call(Some("b"), mode).await,
                Err(lib("key_reuse")),
                "{mode:?}"
            );
        }
        // A caller without an error policy never runs over it, in any mode.
        for mode in [InFlight::Wait, InFlight::Raise, InFlight::Run] {
            let no_policy: Result<u64, Charge> = coordinator
                .call("op", Some(&key))
                .in_flight(mode)
                .run(counted_charge(&runs))
                .await;
            assert_eq!(no_policy, Err(lib("data")), "{mode:?}");
        }
        let detached = coordinator
            .call("op", Some(&key))
            .fingerprint("a")
            .store_errors(store_declines)
            .run_detached_with_outcome(counted_charge(&runs))
            .await;
        assert_eq!(detached, Err(Charge::Declined));
        assert_eq!(runs.get(), 0, "no retry ran its action");
        let record = stored(&env.store, &key).await.expect("a record");
        assert_eq!(record.status(), RecordStatus::StoredError);
        assert_eq!(
            env.metrics.count("hit", ""),
            7,
            "each replay of the error is a hit (2 per mode, the detached one); a key reuse or a data error is none"
        );
    }
);

fn counted_charge(
    runs: &Runs,
) -> impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = Result<u64, Charge>> + Send>> + Send + 'static
{
    let runs = runs.clone();
    move || {
        Box::pin(async move {
            runs.tick();
            Ok(6)
        })
    }
}

// Mixed per-call modes on one key while the holder runs and then stores an error: the
// action runs once; `Raise` and a short `max_wait` refuse, long waiters (attached and
// detached, fail-closed or not) get the stored error, a waiter without the policy a data
// error.
on_all!(
    mixed_modes_on_one_key_run_once_and_share_the_stored_error,
    |env| {
        let (coordinator, _gate) = gated(&env, Duration::from_secs(30), None);
        let key = unique("mixed");
        let runs = Runs::default();
        let (holder, go) = gated_holder(&coordinator, &key, &runs, Err(Charge::Declined)).await;
        let raise = coordinator
            .call("op", Some(&key))
            .in_flight(InFlight::Raise)
            .store_errors(store_declines)
            .run(counted_charge(&runs))
            .await;
        assert_eq!(raise, Err(lib("in_progress")));
        let short = coordinator
            .call("op", Some(&key))
            .in_flight(InFlight::Wait)
            .max_wait(Duration::from_millis(100))
            .store_errors(store_declines)
            .run(counted_charge(&runs))
            .await;
        assert_eq!(short, Err(lib("in_progress")));
        let mut waiters = Vec::new();
        for (storage, detached) in [
            (OnStorageError::Run, false),
            (OnStorageError::Raise, false),
            (OnStorageError::Run, true),
            (OnStorageError::Raise, true),
        ] {
            let coordinator = coordinator.clone();
            let key = key.clone();
            let action = counted_charge(&runs);
            waiters.push(tokio::spawn(async move {
                let call = coordinator
                    .call("op", Some(&key))
                    .in_flight(InFlight::Wait)
                    .max_wait(DEADLINE)
                    .on_storage_error(storage)
                    .store_errors(store_declines);
                if detached {
                    call.run_detached(action).await
                } else {
                    call.run(action).await
                }
            }));
        }
        let no_policy = {
            let coordinator = coordinator.clone();
            let key = key.clone();
            let action = counted_charge(&runs);
            tokio::spawn(async move {
                coordinator
                    .call("op", Some(&key))
                    .max_wait(DEADLINE)
                    .run(action)
                    .await
            })
        };
        until("every waiter to find the holder", || {
            env.metrics.count("collision", "") >= 7
        })
        .await;
        go.send(()).expect("holder waits");
        assert_eq!(holder.await.expect("task"), Err(Charge::Declined));
        for waiter in waiters {
            let got = tokio::time::timeout(DEADLINE, waiter)
                .await
                .expect("in time")
                .expect("task");
            assert_eq!(got, Err(Charge::Declined));
        }
        let got = tokio::time::timeout(DEADLINE, no_policy)
            .await
            .expect("in time")
            .expect("task");
        assert_eq!(got, Err(lib("data")));
        assert_eq!(runs.get(), 1, "only the holder ran");
    }
);

// Guarantee 4. A completion the store failed is released in the background. While that
// release is held back, the lease runs out and a waiter takes the key over; the late
// release then runs and must not delete the newer owner's reservation (a third caller
// would run next to it).
on_all!(
    a_late_background_release_never_deletes_a_newer_owner,
    |env| {
        let (coordinator, gate) = gated(&env, Duration::from_secs(1), None);
        let key = unique("late-release");
        let runs = Runs::default();
        let held_back = gate.release_gate.lock().await;
        env.faults().complete.store(true, Ordering::SeqCst);
        let first = coordinator
            .call("op", Some(&key))
            .store_errors(store_declines)
            .run_with_outcome(move || async { Ok::<u64, Charge>(1) })
            .await;
        env.faults().complete.store(false, Ordering::SeqCst);
        assert_eq!(first, Ok((1, Outcome::Executed)), "returned, not stored");
        runs.tick();
        // The newer owner takes the key over once the first lease ran out.
        let (newer, newer_go) = {
            let coordinator = coordinator.clone();
            let key = key.clone();
            let runs = runs.clone();
            let (started_tx, started_rx) = tokio::sync::oneshot::channel();
            let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(async move {
                coordinator
                    .call("op", Some(&key))
                    .store_errors(store_declines)
                    .max_wait(DEADLINE)
                    .run_with_outcome(move || async move {
                        runs.tick();
                        let _ = started_tx.send(());
                        let _ = go_rx.await;
                        Ok::<u64, Charge>(2)
                    })
                    .await
            });
            tokio::time::timeout(DEADLINE, started_rx)
                .await
                .expect("took over in time")
                .expect("started");
            (task, go_tx)
        };
        // Now the first call's release goes.
        let before = gate.releases_done.load(Ordering::SeqCst);
        drop(held_back);
        until("the late release", || {
            gate.releases_done.load(Ordering::SeqCst) > before
        })
        .await;
        let third = coordinator
            .call("op", Some(&key))
            .in_flight(InFlight::Raise)
            .store_errors(store_declines)
            .run(counted_charge(&runs))
            .await;
        assert_eq!(
            third,
            Err(lib("in_progress")),
            "the late release freed the newer owner's key"
        );
        newer_go.send(()).expect("newer owner waits");
        assert_eq!(newer.await.expect("task"), Ok((2, Outcome::TookOver)));
        let replay = coordinator
            .call("op", Some(&key))
            .store_errors(store_declines)
            .run(counted_charge(&runs))
            .await;
        assert_eq!(replay, Ok(2));
        assert_eq!(runs.get(), 2, "the first call and the newer owner");
    }
);

// A stored error whose write landed but whose reply was lost: the background release
// finds the stored error and leaves it; every retry replays it; the hook is not called
// (the write was never confirmed).
on_all!(
    a_stored_error_with_a_lost_reply_still_answers_retries,
    |env| {
        let created = Arc::new(Mutex::new(Vec::new()));
        let (coordinator, gate) = gated(&env, Duration::from_secs(30), Some(Arc::clone(&created)));
        let key = unique("error-reply-lost");
        let runs = Runs::default();
        gate.error_reply_lost.store(true, Ordering::SeqCst);
        let first = coordinator
            .call("op", Some(&key))
            .store_errors(store_declines)
            .run(|| async { Err::<u64, Charge>(Charge::Declined) })
            .await;
        assert_eq!(first, Err(Charge::Declined));
        until("the background release", || {
            gate.releases_done.load(Ordering::SeqCst) == 1
        })
        .await;
        for _ in 0..2 {
            let retry = coordinator
                .call("op", Some(&key))
                .in_flight(InFlight::Raise)
                .store_errors(store_declines)
                .run(counted_charge(&runs))
                .await;
            assert_eq!(retry, Err(Charge::Declined));
        }
        assert_eq!(runs.get(), 0);
        assert!(
            created
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_empty(),
            "the hook saw an unconfirmed write"
        );
    }
);

// The hook fires once per confirmed write on the other paths: run mode (value and stored
// error), a fail-open run over a failed claim, a waiter's takeover.
on_all!(the_hook_fires_once_per_write_on_every_path, |env| {
    let created = Arc::new(Mutex::new(Vec::new()));
    let (coordinator, _gate) = gated(&env, Duration::from_secs(30), Some(Arc::clone(&created)));
    let (run_ok, run_err, open, taken) = (
        unique("hook-run"),
        unique("hook-run"),
        unique("hook-open"),
        unique("hook-taken"),
    );
    let runs = Runs::default();
    for (key, result) in [(&run_ok, Ok(1)), (&run_err, Err(Charge::Declined))] {
        for _ in 0..2 {
            let result = result.clone();
            let _ = coordinator
                .call("op", Some(key))
                .in_flight(InFlight::Run)
                .store_errors(store_declines)
                .run(move || async move { result })
                .await;
        }
    }
    env.faults().claim.store(true, Ordering::SeqCst);
    let unprotected = coordinator
        .call("op", Some(&open))
        .store_errors(store_declines)
        .run_with_outcome(|| async { Ok::<u64, Charge>(3) })
        .await;
    env.faults().claim.store(false, Ordering::SeqCst);
    assert_eq!(unprotected, Ok((3, Outcome::Unprotected)));
    // A holder that fails (not stored) gives the key to a waiter.
    let (holder, go) = gated_holder(&coordinator, &taken, &runs, Err(lib("other"))).await;
    let waiter = {
        let coordinator = coordinator.clone();
        let taken = taken.clone();
        tokio::spawn(async move {
            coordinator
                .call("op", Some(&taken))
                .store_errors(store_declines)
                .run_with_outcome(|| async { Ok::<u64, Charge>(4) })
                .await
        })
    };
    until("the waiter to find the holder", || {
        env.metrics.count("collision", "") >= 1
    })
    .await;
    go.send(()).expect("holder waits");
    assert_eq!(holder.await.expect("task"), Err(lib("other")));
    assert_eq!(
        tokio::time::timeout(DEADLINE, waiter)
            .await
            .expect("in time")
            .expect("task"),
        Ok((4, Outcome::TookOver))
    );
    let mut created = created
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    created.sort_by(|a, b| a.0.cmp(&b.0));
    let mut expected = vec![
        (run_ok, RecordStatus::Completed),
        (run_err, RecordStatus::StoredError),
        (open, RecordStatus::Completed),
        (taken, RecordStatus::Completed),
    ];
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(created, expected);
});

// Cancellation at every await (a sweep of timeouts across claim, action and completion):
// a dropped call never leaves the key stuck, a retry gets either the stored answer
// (nothing ran again) or runs once more, and every later caller agrees with it.
on_all!(a_call_cancelled_anywhere_leaves_a_usable_key, |env| {
    let (coordinator, _gate) = gated(&env, Duration::from_secs(30), None);
    let runs_total = Runs::default();
    for step in 0..24u64 {
        let key = unique("cancel-sweep");
        let runs = Runs::default();
        let answer: Result<u64, Charge> = if step % 2 == 0 {
            Ok(step)
        } else {
            Err(Charge::Declined)
        };
        let action = {
            let runs = runs.clone();
            let answer = answer.clone();
            move || async move {
                runs.tick();
                tokio::time::sleep(Duration::from_millis(20)).await;
                answer
            }
        };
        let cut = Duration::from_micros(step * 1500);
        let first = tokio::time::timeout(
            cut,
            coordinator
                .call("op", Some(&key))
                .store_errors(store_declines)
                .run_with_outcome(action),
        )
        .await;
        let retry = tokio::time::timeout(
            DEADLINE,
            coordinator
                .call("op", Some(&key))
                .store_errors(store_declines)
                .max_wait(DEADLINE)
                .run_with_outcome({
                    let runs = runs.clone();
                    move || async move {
                        runs.tick();
                        Ok::<u64, Charge>(1000 + step)
                    }
                }),
        )
        .await
        .expect("the key was stuck");
        match &first {
            Ok(done) => {
                assert_eq!(
                    done.as_ref().map(|(v, _)| *v).map_err(Clone::clone),
                    answer,
                    "step {step}"
                );
                assert_eq!(runs.get(), 1, "step {step}: a finished call ran again");
                match &answer {
                    Ok(v) => assert_eq!(retry, Ok((*v, Outcome::Replayed)), "step {step}"),
                    Err(e) => assert_eq!(retry, Err(e.clone()), "step {step}"),
                }
            }
            Err(_cancelled) => {
                assert!(runs.get() <= 2, "step {step}");
                let Ok((value, outcome)) = &retry else {
                    // The cancelled call's stored error landed before the cut.
                    assert_eq!(retry, Err(Charge::Declined), "step {step}");
                    assert_eq!(runs.get(), 1, "step {step}");
                    continue;
                };
                if outcome.ran_action() {
                    assert_eq!(*value, 1000 + step, "step {step}");
                } else {
                    assert_eq!(Ok(*value), answer, "step {step}");
                    assert_eq!(runs.get(), 1, "step {step}");
                }
            }
        }
        // Every later caller agrees with what the retry got.
        let later = coordinator
            .call("op", Some(&key))
            .in_flight(InFlight::Raise)
            .store_errors(store_declines)
            .run(counted_charge(&runs_total))
            .await;
        assert_eq!(
            later,
            retry.map(|(v, _)| v),
            "step {step}: a later caller disagreed"
        );
    }
    assert_eq!(runs_total.get(), 0);
});

// `Unfenced` (memory behind it): a stored error is replayed, refused to another
// fingerprint, and a stale owner's stored error loses to the newer owner's result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfenced_stores_and_fences_errors() {
    use idempotency_core::{Clock, MemoryStore};
    let store = Unfenced::new(MemoryStore::new());
    let coordinator = Coordinator::builder(store.clone())
        .build()
        .expect("coordinator");
    let key = unique("unfenced");
    let runs = Runs::default();
    let call = |fingerprint: &str| {
        coordinator
            .call("op", Some(&key))
            .fingerprint(fingerprint)
            .store_errors(store_declines)
    };
    let first = call("a")
        .run(|| async { Err::<u64, Charge>(Charge::Declined) })
        .await;
    assert_eq!(first, Err(Charge::Declined));
    assert_eq!(
        call("a").run(counted_charge(&runs)).await,
        Err(Charge::Declined)
    );
    assert_eq!(
        call("b").run(counted_charge(&runs)).await,
        Err(lib("key_reuse"))
    );
    assert_eq!(runs.get(), 0);
    // The store level: a stale lease's stored error loses to a completed record.
    let id = RecordId::new("op", &unique("unfenced")).expect("id");
    let stale = Lease::new(id.clone(), None, Clock::system());
    assert_eq!(
        store
            .claim(&stale, Duration::from_secs(1))
            .await
            .expect("claim"),
        Claim::Acquired
    );
    let newer = Lease::new(id.clone(), None, Clock::system());
    store.release(&stale).await.expect("release");
    assert_eq!(
        store
            .claim(&newer, Duration::from_secs(5))
            .await
            .expect("claim"),
        Claim::Acquired
    );
    let value = RawValue::from_string("2".to_owned()).expect("json");
    let error = RawValue::from_string("\"Declined\"".to_owned()).expect("json");
    let ttl = Duration::from_secs(60);
    assert_eq!(
        store
            .complete_with_error(&stale, &error, ttl)
            .await
            .expect("stale"),
        Fence::Lost,
        "over the newer reservation"
    );
    assert_eq!(
        store.complete(&newer, &value, ttl).await.expect("newer"),
        Fence::Held
    );
    assert_eq!(
        store
            .complete_with_error(&stale, &error, ttl)
            .await
            .expect("stale"),
        Fence::Lost,
        "over the newer result"
    );
    let record = store.get(&id).await.expect("get").expect("record");
    assert_eq!(record.status(), RecordStatus::Completed);
}

// Redis reads of a stored error: `get` and `get_many`, standalone and cluster.
async fn redis_reads_a_stored_error(url: &str) {
    use idempotency_core::BulkRepository;
    use idempotency_redis::{ConnectOptions, RedisStore};
    let connection = idempotency_redis::connect_client(url, &ConnectOptions::default())
        .await
        .expect("connect");
    let store = RedisStore::builder(connection).build().expect("store");
    let coordinator = Coordinator::builder(store.clone())
        .build()
        .expect("coordinator");
    let keys: Vec<String> = (0..6).map(|_| unique("redis-read")).collect();
    for (i, key) in keys.iter().enumerate() {
        let answer = if i % 2 == 0 {
            Err(Charge::Declined)
        } else {
            Ok(u64::try_from(i).expect("small"))
        };
        let _ = coordinator
            .call("op", Some(key))
            .store_errors(store_declines)
            .run(move || async move { answer })
            .await;
    }
    let found = store.get_many("op", &keys).await.expect("get_many");
    assert_eq!(found.len(), keys.len());
    for (i, key) in keys.iter().enumerate() {
        let expected = if i % 2 == 0 {
            RecordStatus::StoredError
        } else {
            RecordStatus::Completed
        };
        assert_eq!(found[key].status(), expected, "get_many {key}");
        let one = store
            .get(&RecordId::new("op", key).expect("id"))
            .await
            .expect("get")
            .expect("record");
        assert_eq!(one.status(), expected, "get {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_get_and_get_many_read_stored_errors_standalone() {
    redis_reads_a_stored_error(&idempotency_testkit::shared_server().url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_get_and_get_many_read_stored_errors_cluster() {
    redis_reads_a_stored_error(&idempotency_testkit::shared_cluster().url()).await;
}

// Guarantee 4, the other half: when the completion and then the background release both
// fail, the key is held for at most the lease (a retry meanwhile runs nothing), then a
// waiter takes it over and runs (the result was never stored).
on_all!(
    a_failed_completion_and_release_hold_the_key_one_lease_at_most,
    |env| {
        let (coordinator, gate) = gated(&env, Duration::from_secs(1), None);
        let key = unique("stuck");
        let runs = Runs::default();
        env.faults().complete.store(true, Ordering::SeqCst);
        env.faults().release.store(true, Ordering::SeqCst);
        let first = coordinator
            .call("op", Some(&key))
            .store_errors(store_declines)
            .run_with_outcome(counted_charge(&runs))
            .await;
        assert_eq!(first, Ok((6, Outcome::Executed)));
        until("the failed background release", || {
            gate.releases_done.load(Ordering::SeqCst) == 1
        })
        .await;
        env.faults().complete.store(false, Ordering::SeqCst);
        env.faults().release.store(false, Ordering::SeqCst);
        assert_eq!(env.metrics.count("error", "storage_release_error"), 1);
        let started = Instant::now();
        let retry = coordinator
            .call("op", Some(&key))
            .store_errors(store_declines)
            .max_wait(DEADLINE)
            .run_with_outcome(|| async { Ok::<u64, Charge>(7) })
            .await;
        // Took over after a wait, or (a slow machine) found the lease already gone.
        assert!(
            matches!(retry, Ok((7, Outcome::TookOver | Outcome::Executed))),
            "{retry:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "held far beyond the 1 s lease: {:?}",
            started.elapsed()
        );
        assert_eq!(runs.get(), 1);
    }
);

// A detached call dropped while its action runs (a client gone): the action finishes in
// the task and its result, or its stored error, answers every retry; nothing runs twice.
on_all!(a_dropped_detached_call_still_stores_its_answer, |env| {
    let (coordinator, _gate) = gated(&env, Duration::from_secs(30), None);
    for answer in [Ok(11), Err(Charge::Declined)] {
        let key = unique("detached-drop");
        let runs = Runs::default();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let detached = {
            let runs = runs.clone();
            let answer = answer.clone();
            coordinator
                .call("op", Some(&key))
                .store_errors(store_declines)
                .run_detached(move || async move {
                    runs.tick();
                    let _ = started_tx.send(());
                    let _ = go_rx.await;
                    answer
                })
        };
        tokio::select! {
            early = detached => panic!("finished before its action was let go: {early:?}"),
            started = started_rx => started.expect("the action started"),
        }
        // The caller's future is gone; the action is let go now.
        go_tx.send(()).expect("the action still waits");
        let retry = tokio::time::timeout(
            DEADLINE,
            coordinator
                .call("op", Some(&key))
                .store_errors(store_declines)
                .max_wait(DEADLINE)
                .run_with_outcome(counted_charge(&runs)),
        )
        .await
        .expect("in time");
        match &answer {
            Ok(v) => assert!(
                matches!(retry, Ok((got, Outcome::Replayed | Outcome::WaitedThenReplayed)) if got == *v),
                "{retry:?}"
            ),
            Err(e) => assert_eq!(retry, Err(e.clone())),
        }
        assert_eq!(runs.get(), 1, "the retry ran the action again");
    }
});
