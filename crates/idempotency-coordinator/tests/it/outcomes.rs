//! What a call reports (its outcome, on request and on its span), per-call in-flight
//! modes, stored errors, and the metrics a waiter produces.

use std::sync::Mutex;
use std::time::Duration;

use idempotency_coordinator::{InFlight, OnStorageError, Outcome};
use idempotency_core::{IdempotencyError, IdempotencyRepository, RecordStatus};
use serde::{Deserialize, Serialize};

use crate::common::{Runs, counted, start_holder, unique};

on_all!(every_outcome_is_reported_to_the_caller, |env| {
    let coordinator = env.coordinator(|b| b);
    let runs = Runs::default();
    let key = unique("outcome");
    let run = |value| {
        coordinator
            .call("op", Some(&key))
            .run_with_outcome(counted(&runs, Duration::ZERO, value))
    };
    assert_eq!(run(1).await.expect("first"), (1, Outcome::Executed));
    assert_eq!(run(2).await.expect("retry"), (1, Outcome::Replayed));
    let (_, none) = coordinator
        .call("op", None)
        .run_with_outcome(counted(&runs, Duration::ZERO, 3))
        .await
        .expect("no key");
    assert_eq!(none, Outcome::Bypassed);
    assert_eq!(runs.get(), 2, "the replay ran nothing");

    // A duplicate that waits for the holder gets its value, marked as waited for.
    let waited_key = unique("outcome");
    let holder = start_holder(
        &coordinator,
        &waited_key,
        None,
        Duration::from_millis(300),
        Ok(7),
    )
    .await;
    let waited = coordinator
        .call("op", Some(&waited_key))
        .run_with_outcome(counted(&runs, Duration::ZERO, 8))
        .await
        .expect("waited");
    assert_eq!(waited, (7, Outcome::WaitedThenReplayed));
    assert_eq!(holder.await.expect("task").expect("holder"), 7);

    // A holder that fails releases the key: the waiter takes it over and runs.
    let taken_key = unique("outcome");
    let holder = start_holder(
        &coordinator,
        &taken_key,
        None,
        Duration::from_millis(300),
        Err(IdempotencyError::configuration("the holder fails", None)),
    )
    .await;
    let taken = coordinator
        .call("op", Some(&taken_key))
        .run_with_outcome(counted(&runs, Duration::ZERO, 9))
        .await
        .expect("took over");
    assert_eq!(taken, (9, Outcome::TookOver));
    assert!(holder.await.expect("task").is_err());
});

on_all!(
    a_storage_failure_in_run_mode_is_reported_unprotected,
    |env| {
        let coordinator = env.coordinator(|b| b.on_storage_error(OnStorageError::Run));
        env.faults()
            .claim
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let runs = Runs::default();
        let (value, outcome) = coordinator
            .call("op", Some(&unique("unprotected")))
            .run_with_outcome(counted(&runs, Duration::ZERO, 4))
            .await
            .expect("fail open");
        assert_eq!((value, outcome, runs.get()), (4, Outcome::Unprotected, 1));
    }
);

on_all!(a_detached_call_reports_its_outcome_too, |env| {
    let coordinator = env.coordinator(|b| b);
    let key = unique("detached");
    let runs = Runs::default();
    for expected in [Outcome::Executed, Outcome::Replayed] {
        let (value, outcome) = coordinator
            .call("op", Some(&key))
            .run_detached_with_outcome(counted(&runs, Duration::ZERO, 5))
            .await
            .expect("detached");
        assert_eq!((value, outcome), (5, expected));
    }
});

on_all!(a_call_can_raise_where_the_coordinator_waits, |env| {
    let coordinator = env.coordinator(|b| b.in_flight(InFlight::Wait));
    let key = unique("per-call");
    let holder = start_holder(&coordinator, &key, None, Duration::from_secs(2), Ok(1)).await;
    let runs = Runs::default();
    let err = coordinator
        .call("op", Some(&key))
        .in_flight(InFlight::Raise)
        .run(counted(&runs, Duration::ZERO, 2))
        .await
        .expect_err("raised at once");
    assert!(
        matches!(err, IdempotencyError::InProgress { .. }),
        "{err:?}"
    );
    assert!(
        !holder.is_finished(),
        "refused while the holder still ran, not after waiting for it"
    );
    assert_eq!(holder.await.expect("task").expect("holder"), 1);
    assert_eq!(runs.get(), 0);
});

on_all!(a_call_can_wait_where_the_coordinator_raises, |env| {
    let coordinator = env.coordinator(|b| b.in_flight(InFlight::Raise));
    let key = unique("per-call");
    let holder = start_holder(&coordinator, &key, None, Duration::from_millis(300), Ok(3)).await;
    let value: u32 = coordinator
        .call("op", Some(&key))
        .in_flight(InFlight::Wait)
        .run(|| async { Ok::<_, IdempotencyError>(4) })
        .await
        .expect("waited for the holder");
    assert_eq!(value, 3);
    holder.await.expect("task").expect("holder");
});

on_all!(max_wait_bounds_a_waiter_below_the_lease, |env| {
    let coordinator = env.coordinator(|b| b.lease(Duration::from_secs(30)));
    let key = unique("max-wait");
    let holder = start_holder(&coordinator, &key, None, Duration::from_secs(4), Ok(1)).await;
    let runs = Runs::default();
    let err = coordinator
        .call("op", Some(&key))
        .max_wait(Duration::from_millis(200))
        .run(counted(&runs, Duration::ZERO, 2))
        .await
        .expect_err("gave up after max_wait");
    assert!(
        matches!(err, IdempotencyError::InProgress { .. }),
        "{err:?}"
    );
    assert!(
        !holder.is_finished(),
        "gave up while the holder ran: bounded by max_wait, not by the holder"
    );
    assert_eq!(runs.get(), 0);
    holder.await.expect("task").expect("holder");
});

/// An application error with an idempotency variant, as the crate docs recommend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum ChargeError {
    Declined { reason: String },
    Unavailable,
    Idempotency(String),
}

impl From<IdempotencyError> for ChargeError {
    fn from(e: IdempotencyError) -> Self {
        Self::Idempotency(e.to_string())
    }
}

fn declined() -> ChargeError {
    ChargeError::Declined {
        reason: "insufficient funds".to_owned(),
    }
}

on_all!(
    a_stored_error_is_replayed_and_the_action_not_run_again,
    |env| {
        let coordinator = env.coordinator(|b| b);
        let key = unique("stored-error");
        let runs = Runs::default();
        let charge = |result: Result<u64, ChargeError>| {
            let runs = runs.clone();
            coordinator
                .call("op", Some(&key))
                .store_errors(|e: &ChargeError| matches!(e, ChargeError::Declined { .. }))
                .run_with_outcome(move || async move {
                    runs.tick();
                    result
                })
        };
        assert_eq!(charge(Err(declined())).await, Err(declined()));
        assert_eq!(
            charge(Ok(1999)).await,
            Err(declined()),
            "the retry replays the stored error"
        );
        assert_eq!(runs.get(), 1, "the action ran once");
        let stored = env
            .store
            .get(&idempotency_testkit::record_id("op", &key))
            .await
            .expect("get")
            .expect("stored");
        assert_eq!(stored.status(), RecordStatus::StoredError);
        assert!(stored.is_stored_error() && !stored.is_pending());
        assert_eq!(
            env.metrics.count("hit", ""),
            1,
            "the replay counts as a hit"
        );
    }
);

on_all!(
    an_error_the_policy_does_not_select_releases_the_key,
    |env| {
        let coordinator = env.coordinator(|b| b);
        let key = unique("stored-error");
        let runs = Runs::default();
        let charge = |result: Result<u64, ChargeError>| {
            let runs = runs.clone();
            coordinator
                .call("op", Some(&key))
                .store_errors(|e: &ChargeError| matches!(e, ChargeError::Declined { .. }))
                .run(move || async move {
                    runs.tick();
                    result
                })
        };
        assert_eq!(
            charge(Err(ChargeError::Unavailable)).await,
            Err(ChargeError::Unavailable)
        );
        assert_eq!(charge(Ok(1999)).await, Ok(1999), "the retry runs again");
        assert_eq!(charge(Ok(5)).await, Ok(1999), "and its result is stored");
        assert_eq!(runs.get(), 2);
    }
);

on_all!(
    a_stored_error_is_never_run_over_by_a_call_without_the_policy,
    |env| {
        let coordinator = env.coordinator(|b| b);
        let key = unique("stored-error");
        let stored: Result<u64, ChargeError> = coordinator
            .call("op", Some(&key))
            .store_errors(|_: &ChargeError| true)
            .run(|| async { Err(declined()) })
            .await;
        assert_eq!(stored, Err(declined()));
        let runs = Runs::default();
        let err = coordinator
            .call("op", Some(&key))
            .run(counted(&runs, Duration::ZERO, 1))
            .await
            .expect_err("a data error, not a run");
        assert_eq!(err.class(), idempotency_core::ErrorClass::Data, "{err:?}");
        assert_eq!(runs.get(), 0);
    }
);

on_all!(stored_errors_work_in_run_mode_too, |env| {
    let coordinator = env.coordinator(|b| b.in_flight(InFlight::Run));
    let key = unique("stored-error");
    let runs = Runs::default();
    for _ in 0..2 {
        let runs = runs.clone();
        let got: Result<u64, ChargeError> = coordinator
            .call("op", Some(&key))
            .store_errors(|_: &ChargeError| true)
            .run(move || async move {
                runs.tick();
                Err(declined())
            })
            .await;
        assert_eq!(got, Err(declined()));
    }
    assert_eq!(runs.get(), 1);
});

on_all!(
    a_waiters_re_reads_are_not_reserve_latencies_and_a_takeover_is_a_miss,
    |env| {
        let coordinator = env.coordinator(|b| b);
        let key = unique("metrics");
        let holder = start_holder(
            &coordinator,
            &key,
            None,
            Duration::from_millis(1200),
            Err(IdempotencyError::configuration("the holder fails", None)),
        )
        .await;
        env.metrics.clear();
        let (_, outcome) = coordinator
            .call("op", Some(&key))
            .run_with_outcome(|| async { Ok::<_, IdempotencyError>(1u32) })
            .await
            .expect("took over");
        assert!(holder.await.expect("task").is_err());
        assert_eq!(outcome, Outcome::TookOver);
        let reserves = env
            .metrics
            .methods()
            .iter()
            .filter(|m| *m == "reserve")
            .count();
        // The waiter was woken or polled (250 ms) several times in 1.2 s; its call made one
        // reservation round trip of its own.
        assert_eq!(reserves, 1, "one reserve observation for the waiter's call");
        assert_eq!(env.metrics.count("collision", ""), 1);
        assert_eq!(env.metrics.count("miss", ""), 1, "the takeover ran: a miss");
    }
);

/// Captures the `outcome` recorded on `idempotency` spans.
#[derive(Default)]
struct Outcomes(std::sync::Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Outcomes {
    fn on_record(
        &self,
        _: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Visit<'a>(&'a Mutex<Vec<String>>);
        impl tracing::field::Visit for Visit<'_> {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "outcome" {
                    self.0
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(value.to_owned());
                }
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        values.record(&mut Visit(&self.0));
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_outcome_is_a_field_of_the_calls_span() {
    use tracing_subscriber::layer::SubscriberExt;
    let seen = Outcomes::default();
    let recorded = std::sync::Arc::clone(&seen.0);
    let subscriber = tracing_subscriber::registry().with(seen);
    let _default = tracing::subscriber::set_default(subscriber);
    // Tests on other threads may have registered the span's callsite while no subscriber
    // of theirs was interested (tracing caches that per callsite): ask again now that
    // this thread's subscriber is in place, or its spans may go unrecorded.
    tracing::callsite::rebuild_interest_cache();
    let coordinator =
        idempotency_coordinator::Coordinator::builder(idempotency_core::MemoryStore::new())
            .in_flight(InFlight::Raise)
            .build()
            .expect("coordinator");
    let key = unique("span");
    let ok = || async { Ok::<_, IdempotencyError>(1u8) };
    let call = || {
        coordinator
            .call("op", Some(&key))
            .fingerprint("one request")
    };
    call().run(ok).await.expect("run");
    call().run(ok).await.expect("replay");
    coordinator
        .call("op", Some(&key))
        .fingerprint("another request")
        .run(ok)
        .await
        .expect_err("key reuse");
    let waiting = unique("span");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let holder = {
        let coordinator = coordinator.clone();
        let waiting = waiting.clone();
        tokio::spawn(async move {
            coordinator
                .call("op", Some(&waiting))
                .run(|| async move {
                    let _ = started_tx.send(());
                    let _ = rx.await;
                    Ok::<_, IdempotencyError>(2u8)
                })
                .await
        })
    };
    started_rx.await.expect("the holder runs");
    let conflict = coordinator.call("op", Some(&waiting)).run(ok).await;
    assert!(matches!(conflict, Err(IdempotencyError::InProgress { .. })));
    tx.send(()).expect("holder waits");
    holder.await.expect("task").expect("holder");
    let recorded = recorded
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    assert_eq!(
        recorded,
        ["executed", "replayed", "key_reuse", "conflict", "executed"]
    );
}

on_all!(a_call_sets_its_own_storage_failure_mode, |env| {
    let open = env.coordinator(|b| b.on_storage_error(OnStorageError::Run));
    let closed = env.coordinator(|b| b.on_storage_error(OnStorageError::Raise));
    env.faults()
        .claim
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let runs = Runs::default();
    let err = open
        .call("op", Some(&unique("storage-mode")))
        .on_storage_error(OnStorageError::Raise)
        .run(counted(&runs, Duration::ZERO, 1))
        .await
        .expect_err("this call fails closed");
    assert!(err.is_storage(), "{err:?}");
    assert_eq!(runs.get(), 0, "the action did not run");
    let (_, outcome) = closed
        .call("op", Some(&unique("storage-mode")))
        .on_storage_error(OnStorageError::Run)
        .run_with_outcome(counted(&runs, Duration::ZERO, 2))
        .await
        .expect("this call fails open");
    assert_eq!((outcome, runs.get()), (Outcome::Unprotected, 1));
});

on_all!(
    a_failed_completion_releases_without_holding_up_the_caller,
    |env| {
        let coordinator = env.coordinator(|b| b);
        let faults = env.faults();
        faults
            .complete
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // A release that takes 20 s stands for a store that times out again.
        faults
            .release_delay_ms
            .store(20_000, std::sync::atomic::Ordering::SeqCst);
        let started = std::time::Instant::now();
        let value: u32 = coordinator
            .call("op", Some(&unique("slow-release")))
            .run(|| async { Ok::<_, IdempotencyError>(1) })
            .await
            .expect("the value, though it was not stored");
        assert_eq!(value, 1);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the caller waited for the release: {:?}",
            started.elapsed()
        );
    }
);

on_all!(
    the_record_created_hook_sees_each_stored_record_once,
    |env| {
        let created = std::sync::Arc::new(Mutex::new(Vec::new()));
        let seen = std::sync::Arc::clone(&created);
        let coordinator = env.coordinator(|b| {
            b.on_record_created(move |r| {
                seen.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push((r.idempotency_key.to_owned(), r.status, r.ttl));
            })
        });
        let (ok, failed, unstored) = (unique("hook"), unique("hook"), unique("hook"));
        let run = || async { Ok::<_, IdempotencyError>(1u32) };
        coordinator
            .call("op", Some(&ok))
            .run(run)
            .await
            .expect("run");
        coordinator
            .call("op", Some(&ok))
            .run(run)
            .await
            .expect("replay");
        let _: Result<u64, ChargeError> = coordinator
            .call("op", Some(&failed))
            .ttl(Duration::from_secs(120))
            .store_errors(|_: &ChargeError| true)
            .run(|| async { Err(declined()) })
            .await;
        env.faults()
            .complete
            .store(true, std::sync::atomic::Ordering::SeqCst);
        coordinator
            .call("op", Some(&unstored))
            .run(run)
            .await
            .expect("returned, not stored");
        let created = created
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        assert_eq!(
            created,
            [
                (ok, RecordStatus::Completed, Duration::from_secs(1800)),
                (failed, RecordStatus::StoredError, Duration::from_secs(120)),
            ],
            "once per stored record; not for the replay nor the failed write"
        );
    }
);

on_all!(
    a_result_stored_after_the_lease_ran_out_counts_a_lost_lease,
    |env| {
        // Renewals fail (a storage error, not a lost fence), so the 1 s lease runs out while
        // the owner's action runs; a second caller runs meanwhile and gives the key up (its
        // action fails). The owner then stores its result into the empty key: two runs, and
        // the checker's rule "double runs ≤ counted lease losses" needs this loss counted.
        let coordinator = env.coordinator(|b| b.lease(Duration::from_secs(1)));
        // Another process's coordinator on the same store.
        let other = env.coordinator(|b| b.lease(Duration::from_secs(1)));
        env.faults()
            .renew
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let key = unique("vacated");
        let owner = start_holder(&coordinator, &key, None, Duration::from_secs(4), Ok(1)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let runs = Runs::default();
        let second = {
            let runs = runs.clone();
            other
                .call("op", Some(&key))
                .run(move || async move {
                    runs.tick();
                    Err::<u32, _>(IdempotencyError::configuration("the duplicate fails", None))
                })
                .await
        };
        assert!(second.is_err());
        assert_eq!(runs.get(), 1, "the duplicate ran: the lease had run out");
        assert_eq!(owner.await.expect("task").expect("owner"), 1);
        assert_eq!(
            env.metrics
                .count("error", idempotency_testkit::error_type::LEASE_LOST),
            1,
            "the owner's completion found its reservation gone: a lost lease"
        );
        let replay: u32 = coordinator
            .call("op", Some(&key))
            .run(|| async { Ok::<_, IdempotencyError>(9) })
            .await
            .expect("replay");
        assert_eq!(replay, 1, "the owner's result stands");
    }
);
