//! Who owns a key (protocol v2): each test reproduces a way the first protocol ran an
//! action twice or left a key stuck, on memory, standalone Redis and a Redis cluster
//! where the fault applies.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::common::{Runs, counted, eventually, port_of, start_holder, unique};
use idempotency_coordinator::{InFlight, OnStorageError};
use idempotency_core::{Clock, ErrorClass, IdempotencyError, IdempotencyRepository};

// Defect 1: a reader whose clock runs ahead (or an owner whose clock runs behind) judged
// a live, renewed reservation expired, deleted it and ran the action again.
on_all!(clock_skew_never_steals_a_live_reservation, |env| {
    clock_skew_round(&env).await;
});

// On Redis the store stamps records with the server's clock, so the skew above reaches
// the records only where the server refuses `TIME`: this run makes it refuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_skew_never_steals_a_live_reservation_without_server_time() {
    let (server, store) = crate::liveness::least_privilege_store().await;
    let env = crate::common::Env {
        store: crate::common::wrap(store),
        metrics: std::sync::Arc::new(idempotency_testkit::RecordingMetrics::default()),
        server: Some(std::sync::Arc::new(server)),
        cluster: None,
    };
    clock_skew_round(&env).await;
}

/// An owner and a peer whose clocks disagree by ten minutes, each way round: the peer
/// waits for the owner's result and replays it, the action runs once.
async fn clock_skew_round<S: idempotency_core::ReservationStore + Clone>(
    env: &crate::common::Env<S>,
) {
    for offset in [-600, 600] {
        let key = unique("skew");
        let skewed = env.coordinator(|b| {
            b.lease(Duration::from_millis(1500))
                .clock(Clock::with_offset(time::Duration::seconds(offset)))
        });
        let honest = env.coordinator(|b| b.lease(Duration::from_millis(1500)));
        let runs = Runs::default();
        // The owner holds the key past two renewals (every lease/3); the peer arrives
        // meanwhile and waits (a waiter waits at most one lease).
        let (owner, peer) = if offset < 0 {
            (&skewed, &honest)
        } else {
            (&honest, &skewed)
        };
        let holder = {
            let owner = owner.clone();
            let key = key.clone();
            let action = counted(&runs, Duration::from_millis(1200), 1);
            tokio::spawn(async move { owner.call("op", Some(&key)).run(action).await })
        };
        while runs.get() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let replay: u32 = peer
            .call("op", Some(&key))
            .run(counted(&runs, Duration::ZERO, 2))
            .await
            .expect("waits and replays");
        assert_eq!(holder.await.expect("task").expect("owner"), 1);
        assert_eq!(
            (replay, runs.get()),
            (1, 1),
            "offset {offset}s: one run, replayed"
        );
    }
}

// Defect 2: a call dropped while its claim was in flight left a pending record nobody
// owned until the lease ran out.
on_all!(a_call_dropped_during_its_claim_leaves_no_orphan, |env| {
    let key = unique("dropped-claim");
    let coordinator = env.coordinator(|b| b.in_flight(InFlight::Raise));
    env.faults().claim_stall.store(true, Ordering::SeqCst);
    let runs = Runs::default();
    let dropped = tokio::time::timeout(
        Duration::from_millis(300),
        coordinator
            .call("op", Some(&key))
            .run(counted(&runs, Duration::ZERO, 1)),
    )
    .await;
    assert!(
        dropped.is_err(),
        "cancelled while the claim's reply was stalled"
    );
    assert_eq!(runs.get(), 0);
    // The guard's release is spawned on drop; give it a moment, far below the lease.
    let retry = eventually(|| {
        coordinator
            .call("op", Some(&key))
            .run(counted(&runs, Duration::ZERO, 2))
    })
    .await;
    assert_eq!(retry.expect("the retry owns the key"), 2);
    assert_eq!(runs.get(), 1);
});

// Defect 3: a claim whose reply was lost after Redis applied it found its own pending
// record and waited out its own lease (or raised in-progress).
on_all!(
    a_lost_claim_reply_does_not_block_the_caller_or_its_retry,
    |env| {
        let key = unique("lost-claim-reply");
        // Fail-open: the caller runs, and its fenced completion lands over its own claim.
        let coordinator = env.coordinator(|b| b.in_flight(InFlight::Raise));
        env.faults().claim_reply_lost.store(true, Ordering::SeqCst);
        let runs = Runs::default();
        let first: u32 = coordinator
            .call("op", Some(&key))
            .run(counted(&runs, Duration::ZERO, 7))
            .await
            .expect("runs despite the lost reply");
        let retry: u32 = coordinator
            .call("op", Some(&key))
            .run(counted(&runs, Duration::ZERO, 8))
            .await
            .expect("replays at once, no in-progress");
        assert_eq!((first, retry, runs.get()), (7, 7, 1));

        // Fail-closed: the caller gets the storage error, and its claim is released.
        let key = unique("lost-claim-reply-closed");
        let closed = env.coordinator(|b| {
            b.in_flight(InFlight::Raise)
                .on_storage_error(OnStorageError::Raise)
        });
        env.faults().claim_reply_lost.store(true, Ordering::SeqCst);
        let err = closed
            .call("op", Some(&key))
            .run(counted(&runs, Duration::ZERO, 9))
            .await
            .expect_err("fail closed");
        assert!(err.is_storage(), "{err}");
        let retry = eventually(|| {
            closed
                .call("op", Some(&key))
                .run(counted(&runs, Duration::ZERO, 10))
        })
        .await;
        assert_eq!(retry.expect("released"), 10);
    }
);

on_all!(a_lost_completion_reply_still_replays, |env| {
    let key = unique("lost-complete-reply");
    let coordinator = env.coordinator(|b| b);
    env.faults()
        .complete_reply_lost
        .store(true, Ordering::SeqCst);
    let runs = Runs::default();
    let first: u32 = coordinator
        .call("op", Some(&key))
        .run(counted(&runs, Duration::ZERO, 3))
        .await
        .expect("value returned");
    let retry: u32 = coordinator
        .call("op", Some(&key))
        .run(counted(&runs, Duration::ZERO, 4))
        .await
        .expect("replay");
    assert_eq!(
        (first, retry, runs.get()),
        (3, 3, 1),
        "the applied completion stands"
    );
});

// Defect 6: dropping a call after its action's side effect released the key, and the
// retry ran the side effect again. Detached, the action finishes and its result is stored.
on_all!(a_detached_call_survives_its_caller, |env| {
    let key = unique("detached");
    let coordinator = env.coordinator(|b| b);
    let runs = Runs::default();
    let finished = Arc::new(tokio::sync::Notify::new());
    let action = {
        let runs = runs.clone();
        let finished = Arc::clone(&finished);
        move || async move {
            runs.tick();
            tokio::time::sleep(Duration::from_millis(300)).await;
            finished.notify_one();
            Ok::<u32, IdempotencyError>(11)
        }
    };
    let call = coordinator.call("op", Some(&key)).run_detached(action);
    let dropped = tokio::time::timeout(Duration::from_millis(100), call).await;
    assert!(dropped.is_err(), "the caller went away mid-action");
    finished.notified().await;
    let replay = eventually(|| {
        coordinator
            .call("op", Some(&key))
            .run(counted(&runs, Duration::ZERO, 12))
    })
    .await;
    assert_eq!(replay.expect("replay"), 11);
    assert_eq!(runs.get(), 1, "the side effect happened once");
});

on_all!(
    a_cancelled_attached_call_releases_the_key_at_least_once,
    |env| {
        // Documented: without `run_detached`, a call cancelled mid-action releases its key,
        // so the retry runs the action again (at least once).
        let key = unique("attached-cancel");
        let coordinator = env.coordinator(|b| b.in_flight(InFlight::Raise));
        let runs = Runs::default();
        let dropped = tokio::time::timeout(
            Duration::from_millis(100),
            coordinator
                .call("op", Some(&key))
                .run(counted(&runs, Duration::from_secs(5), 1)),
        )
        .await;
        assert!(dropped.is_err());
        let retry = eventually(|| {
            coordinator
                .call("op", Some(&key))
                .run(counted(&runs, Duration::ZERO, 2))
        })
        .await;
        assert_eq!(retry.expect("released"), 2);
        assert_eq!(runs.get(), 2);
    }
);

on_all!(
    an_owner_holding_the_key_makes_duplicates_wait_not_run,
    |env| {
        let coordinator = env.coordinator(|b| b);
        let key = unique("holder");
        let holder =
            start_holder(&coordinator, &key, None, Duration::from_millis(300), Ok(5)).await;
        let runs = Runs::default();
        let waited: u32 = coordinator
            .call("op", Some(&key))
            .run(counted(&runs, Duration::ZERO, 6))
            .await
            .expect("waits");
        assert_eq!((waited, runs.get()), (5, 0));
        assert_eq!(holder.await.expect("task").expect("owner"), 5);
        assert!(
            env.store
                .get(&idempotency_testkit::record_id("op", &key))
                .await
                .expect("get")
                .is_some()
        );
    }
);

// Defect 4 (Redis only: the memory store cannot hold foreign bytes). Unreadable values
// made every concurrent caller run the action unprotected.
mod unreadable {
    use super::*;
    use idempotency_testkit::resp::command_bytes;

    async fn five_callers_on_a_planted_value(
        env: &crate::common::Env<idempotency_redis::RedisStore>,
        value: &[u8],
        hash: bool,
    ) -> (Runs, Vec<Result<u32, IdempotencyError>>) {
        let key = unique("planted");
        let id = idempotency_core::RecordId::new("op", &key).expect("valid");
        let redis_key = env.store.inner.redis_key(&id);
        let port = port_of(env, &redis_key);
        let planted = if hash {
            command_bytes(port, &[b"HSET", redis_key.as_bytes(), b"f", value])
        } else {
            command_bytes(port, &[b"SET", redis_key.as_bytes(), value, b"EX", b"600"])
        };
        planted.expect("plant");
        let coordinator = env.coordinator(|b| b);
        let runs = Runs::default();
        let tasks: Vec<_> = (0..5)
            .map(|i| {
                let coordinator = coordinator.clone();
                let key = key.clone();
                let action = counted(&runs, Duration::from_millis(200), 100 + i);
                tokio::spawn(async move { coordinator.call("op", Some(&key)).run(action).await })
            })
            .collect();
        let mut outcomes = Vec::new();
        for t in tasks {
            outcomes.push(t.await.expect("task"));
        }
        (runs, outcomes)
    }

    async fn corrupt_values_run_the_action_once(
        env: crate::common::Env<idempotency_redis::RedisStore>,
    ) {
        let naive = br#"{"operation":"op","idempotency_key":"k","result":1,"created_at":"2026-01-01T00:00:00","expires_at":"2099-01-01T00:00:00","status":"completed","fingerprint":null}"#;
        for value in [&b"{not json"[..], b"", b"[]", br#"{"status":"pending"}"#] {
            let (runs, outcomes) = five_callers_on_a_planted_value(&env, value, false).await;
            assert_eq!(
                runs.get(),
                1,
                "{value:?}: one caller takes the key over and runs"
            );
            let values: Vec<u32> = outcomes.into_iter().map(|o| o.expect("value")).collect();
            assert!(
                values.windows(2).all(|w| w[0] == w[1]),
                "{value:?}: everyone gets the one value: {values:?}"
            );
        }
        // A finished record no client can read (its expiry has no timezone): its action
        // ran, so it is refused, never taken over and run again.
        let (runs, outcomes) = five_callers_on_a_planted_value(&env, naive, false).await;
        assert_eq!(runs.get(), 0, "a completed record was taken over");
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, Err(e) if e.class() == idempotency_core::ErrorClass::Data)),
            "{outcomes:?}"
        );
    }

    async fn wrong_types_never_run_the_action(
        env: crate::common::Env<idempotency_redis::RedisStore>,
    ) {
        let (runs, outcomes) = five_callers_on_a_planted_value(&env, b"v", true).await;
        assert_eq!(runs.get(), 0, "fail-open does not apply to a data fault");
        for outcome in outcomes {
            let err = outcome.expect_err("data error");
            assert_eq!(err.class(), ErrorClass::Data, "{err}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn corrupt_values_standalone() {
        corrupt_values_run_the_action_once(crate::common::standalone().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn corrupt_values_cluster() {
        corrupt_values_run_the_action_once(crate::common::cluster().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wrong_types_standalone() {
        wrong_types_never_run_the_action(crate::common::standalone().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wrong_types_cluster() {
        wrong_types_never_run_the_action(crate::common::cluster().await).await;
    }
}

// Defect 3 for real: the proxy forwards the claim to Redis and throws its reply away,
// closing the connection; fred reconnects and sends the claim again, which finds the
// pending record the first one wrote.
mod cut_replies {
    use super::*;
    use idempotency_coordinator::Coordinator;
    use idempotency_redis::{ConnectOptions, RedisStore};
    use idempotency_testkit::proxy::{Mode, Proxy};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_claim_resent_after_its_reply_was_cut_owns_the_key() {
        let server = idempotency_testkit::RedisServer::start();
        let proxy = Proxy::start(server.addr());
        let store = RedisStore::connect(
            &proxy.url(),
            &ConnectOptions::default()
                .with_command_timeout(Duration::from_secs(5))
                .with_reconnect_max_delay(Duration::from_millis(50)),
        )
        .await
        .expect("connect");
        let coordinator = Coordinator::builder(store)
            .lease(Duration::from_secs(3))
            .in_flight(InFlight::Raise)
            .build()
            .expect("coordinator");
        let runs = Runs::default();
        let key = unique("cut");
        proxy.set_mode(Mode::CutReplies);
        let call = {
            let coordinator = coordinator.clone();
            let key = key.clone();
            let action = counted(&runs, Duration::ZERO, 21);
            tokio::spawn(async move { coordinator.call("op", Some(&key)).run(action).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        proxy.set_mode(Mode::Pass);
        let started = std::time::Instant::now();
        let value = call
            .await
            .expect("task")
            .expect("the caller owns its own reservation");
        assert_eq!(value, 21);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "no lease waited out"
        );
        let replay: u32 = coordinator
            .call("op", Some(&key))
            .run(counted(&runs, Duration::ZERO, 22))
            .await
            .expect("replay");
        assert_eq!((replay, runs.get()), (21, 1));
    }
}
