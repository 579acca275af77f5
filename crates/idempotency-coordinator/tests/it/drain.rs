//! Draining before a shutdown: running detached calls finish and are stored, those past
//! the deadline are cut and their keys released (not left pending for a lease), and new
//! detached calls are refused.

use std::time::Duration;

use idempotency_coordinator::{InFlight, Outcome};
use idempotency_core::IdempotencyError;
use idempotency_testkit::unique_key;

use crate::common::Runs;

on_all!(
    a_drain_finishes_what_it_can_and_releases_what_it_cuts,
    |env| {
        let coordinator = env.coordinator(|b| b);
        let (quick, slow) = (unique_key("drain-quick"), unique_key("drain-slow"));
        let runs = Runs::default();
        let start = |key: String, hold: Duration| {
            let coordinator = coordinator.clone();
            let runs = runs.clone();
            tokio::spawn(async move {
                coordinator
                    .call("op", Some(&key))
                    .run_detached(move || async move {
                        runs.tick();
                        tokio::time::sleep(hold).await;
                        Ok::<_, IdempotencyError>(7u32)
                    })
                    .await
            })
        };
        let quick_call = start(quick.clone(), Duration::from_millis(200));
        let slow_call = start(slow.clone(), Duration::from_secs(30));
        // Both actions running.
        for _ in 0..200 {
            if runs.get() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(runs.get(), 2);

        let drained = coordinator.drain(Duration::from_secs(1)).await;
        assert_eq!((drained.finished, drained.cut), (1, 1), "{drained:?}");
        assert_eq!(quick_call.await.expect("task").expect("finished"), 7);
        assert!(matches!(
            slow_call.await.expect("task"),
            Err(IdempotencyError::Cancelled { .. })
        ));

        // New detached calls are refused without running.
        let refused = coordinator
            .call("op", Some(&unique_key("drain-new")))
            .run_detached(|| async { Ok::<_, IdempotencyError>(1u32) })
            .await;
        assert!(
            matches!(refused, Err(IdempotencyError::Cancelled { .. })),
            "{refused:?}"
        );
        assert_eq!(runs.get(), 2);

        // Another process (a fresh coordinator on the same store) finds the quick key
        // stored and the cut key free at once, not held for a lease.
        let other = env.coordinator(|b| b.in_flight(InFlight::Raise));
        let replay = other
            .call("op", Some(&quick))
            .run_with_outcome(|| async { Ok::<_, IdempotencyError>(0u32) })
            .await
            .expect("stored");
        assert_eq!(replay, (7, Outcome::Replayed));
        let rerun = other
            .call("op", Some(&slow))
            .run_with_outcome(|| async { Ok::<_, IdempotencyError>(8u32) })
            .await
            .expect("the cut key was released");
        assert_eq!(rerun, (8, Outcome::Executed));
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detached_calls_past_the_bound_are_refused_without_running() {
    let coordinator = crate::common::memory().coordinator(|b| b.max_detached(2));
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let runs = Runs::default();
    let mut held = Vec::new();
    for i in 0..2 {
        let (coordinator, gate, runs) = (coordinator.clone(), gate.clone(), runs.clone());
        held.push(tokio::spawn(async move {
            coordinator
                .call("op", Some(&format!("held-{i}")))
                .run_detached(move || async move {
                    runs.tick();
                    let _pass = gate.acquire().await;
                    Ok::<_, IdempotencyError>(1u32)
                })
                .await
        }));
    }
    for _ in 0..200 {
        if runs.get() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(runs.get(), 2);
    let refused = {
        let runs = runs.clone();
        coordinator
            .call("op", Some("third"))
            .run_detached(move || async move {
                runs.tick();
                Ok::<_, IdempotencyError>(1u32)
            })
            .await
    };
    match refused {
        Err(e @ IdempotencyError::Overloaded { limit: 2, .. }) => assert_eq!(e.http_status(), 503),
        other => panic!("past the bound: {other:?}"),
    }
    assert_eq!(runs.get(), 2, "the refused action ran");
    gate.add_permits(2);
    for call in held {
        assert_eq!(call.await.expect("task").expect("value"), 1);
    }
    let after = coordinator
        .call("op", Some("fourth"))
        .run_detached(|| async { Ok::<_, IdempotencyError>(4u32) })
        .await;
    assert_eq!(after.expect("room again"), 4);
}

/// What a runtime shut down without a drain leaves: the detached action is cut
/// mid-way, nothing is released, and the key stays held until its lease ends (a duplicate
/// meanwhile is in progress, never a second run beside the first); then a retry runs it
/// again. This is the case `Coordinator::drain` exists for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_shut_down_without_a_drain_holds_the_key_for_its_lease() {
    let env = crate::common::memory();
    let coordinator = env.coordinator(|b| b.lease(Duration::from_secs(1)));
    let key = unique_key("shutdown");
    let runs = Runs::default();
    let other = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    {
        let (coordinator, runs, key) = (coordinator.clone(), runs.clone(), key.clone());
        other.spawn(async move {
            let _ = coordinator
                .call("op", Some(&key))
                .run_detached(move || async move {
                    runs.tick();
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Ok::<_, IdempotencyError>(1u32)
                })
                .await;
        });
    }
    for _ in 0..200 {
        if runs.get() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(runs.get(), 1);
    other.shutdown_background();
    let held = coordinator
        .call("op", Some(&key))
        .in_flight(InFlight::Raise)
        .run(|| async { Ok::<_, IdempotencyError>(2u32) })
        .await;
    assert!(
        matches!(held, Err(IdempotencyError::InProgress { .. })),
        "{held:?}"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let rerun = coordinator
        .call("op", Some(&key))
        .run_with_outcome(|| async { Ok::<_, IdempotencyError>(2u32) })
        .await
        .expect("the lease ended");
    assert_eq!(rerun, (2, Outcome::Executed));
}
