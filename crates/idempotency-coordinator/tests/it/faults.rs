//! Faults on real redis-server processes the tests own: killed, restarted empty,
//! slowed, black-holed; and fencing of a stalled owner.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use idempotency_coordinator::{Coordinator, InFlight, OnStorageError};
use idempotency_core::{IdempotencyError, IdempotencyRepository};
use idempotency_redis::{ConnectOptions, RedisStore};
use idempotency_testkit::RedisServer;
use idempotency_testkit::proxy::{Mode, Proxy};
use idempotency_testkit::{RecordingMetrics, error_type};

const TIMEOUT: Duration = Duration::from_millis(500);

async fn store(url: &str) -> RedisStore {
    RedisStore::connect(
        url,
        &ConnectOptions::default().with_command_timeout(TIMEOUT),
    )
    .await
    .expect("connect")
}

fn coordinator(
    store: RedisStore,
    metrics: &Arc<RecordingMetrics>,
    on_error: OnStorageError,
) -> Coordinator<RedisStore> {
    Coordinator::builder(store)
        .metrics(metrics.clone())
        .on_storage_error(on_error)
        .build()
        .expect("coordinator")
}

async fn wait_until_up(store: &RedisStore) {
    for _ in 0..100 {
        if store
            .get(&idempotency_testkit::record_id("probe", "up"))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the store did not come back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_action_degrades_in_run_mode_and_recovers() {
    let mut server = RedisServer::start();
    let metrics = Arc::new(RecordingMetrics::default());
    let coordinator = coordinator(store(&server.url()).await, &metrics, OnStorageError::Run);
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
    let call = {
        let coordinator = coordinator.clone();
        tokio::spawn(async move {
            coordinator
                .call("op", Some("k"))
                .run(|| async move {
                    let _ = started_tx.send(());
                    let _ = kill_rx.await;
                    Ok::<_, IdempotencyError>(1u32)
                })
                .await
        })
    };
    started_rx.await.expect("started");
    server.kill();
    let _ = kill_tx.send(());
    assert_eq!(call.await.expect("task").expect("the call completes"), 1);
    assert_eq!(
        metrics.count("error", error_type::STORAGE_SAVE),
        1,
        "{:?}",
        metrics.calls()
    );
    // While down, calls still run (unprotected) and say so in the metrics.
    let v: u32 = coordinator
        .call("op", Some("k2"))
        .run(|| async { Ok::<_, IdempotencyError>(2) })
        .await
        .expect("degraded");
    assert_eq!(v, 2);
    assert!(metrics.count("error", error_type::STORAGE_RESERVE) >= 1);
    server.restart();
    wait_until_up(coordinator.store()).await;
    let first: u32 = coordinator
        .call("op", Some("k3"))
        .run(|| async { Ok::<_, IdempotencyError>(3) })
        .await
        .expect("after restart");
    let replay: u32 = coordinator
        .call("op", Some("k3"))
        .run(|| async { Ok::<_, IdempotencyError>(4) })
        .await
        .expect("replay");
    assert_eq!(
        (first, replay),
        (3, 3),
        "the same coordinator works again without being rebuilt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_in_raise_mode_refuses_calls_before_their_action() {
    let mut server = RedisServer::start();
    let metrics = Arc::new(RecordingMetrics::default());
    let coordinator = coordinator(store(&server.url()).await, &metrics, OnStorageError::Raise);
    server.kill();
    let runs = Arc::new(AtomicUsize::new(0));
    for i in 0..5 {
        let r = Arc::clone(&runs);
        let err = coordinator
            .call("op", Some(&format!("k{i}")))
            .run(|| async move {
                r.fetch_add(1, Ordering::SeqCst);
                Ok::<_, IdempotencyError>(0u32)
            })
            .await
            .expect_err("fail closed");
        assert!(err.is_storage(), "{err:?}");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    server.restart();
    wait_until_up(coordinator.store()).await;
    let v: u32 = coordinator
        .call("op", Some("back"))
        .run(|| async { Ok::<_, IdempotencyError>(1) })
        .await
        .expect("back");
    assert_eq!(v, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_makes_keys_new() {
    let mut server = RedisServer::start();
    let metrics = Arc::new(RecordingMetrics::default());
    let coordinator = coordinator(store(&server.url()).await, &metrics, OnStorageError::Run);
    let first: u32 = coordinator
        .call("op", Some("k"))
        .run(|| async { Ok::<_, IdempotencyError>(1) })
        .await
        .expect("first");
    server.restart();
    wait_until_up(coordinator.store()).await;
    let again: u32 = coordinator
        .call("op", Some("k"))
        .run(|| async { Ok::<_, IdempotencyError>(2) })
        .await
        .expect("again");
    assert_eq!(
        (first, again),
        (1, 2),
        "the data was lost with the restart: the key is new"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_connection_returns_within_the_timeout_and_leaks_no_task() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.addr());
    let metrics = Arc::new(RecordingMetrics::default());
    let coordinator = coordinator(store(&proxy.url()).await, &metrics, OnStorageError::Raise);
    let _: u32 = coordinator
        .call("op", Some("warm"))
        .run(|| async { Ok::<_, IdempotencyError>(1) })
        .await
        .expect("warm");
    let alive_before = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    for mode in [
        Mode::Freeze,
        Mode::Delay(Duration::from_secs(3)),
        Mode::Drop,
    ] {
        proxy.set_mode(mode);
        let started = Instant::now();
        let err = coordinator
            .call("op", Some(&format!("k-{mode:?}")))
            .run(|| async { Ok::<_, IdempotencyError>(2u32) })
            .await
            .expect_err("unreachable");
        assert!(err.is_storage(), "{mode:?}: {err:?}");
        let took = started.elapsed();
        assert!(
            took < TIMEOUT * 2 + Duration::from_millis(500),
            "{mode:?}: took {took:?}"
        );
        proxy.set_mode(Mode::Pass);
        // Recover before the next fault.
        let mut ok = false;
        for _ in 0..100 {
            if coordinator
                .store()
                .get(&idempotency_testkit::record_id("probe", "up"))
                .await
                .is_ok()
            {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ok, "{mode:?}: recovered");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let alive_after = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    assert!(
        alive_after <= alive_before,
        "tasks before {alive_before}, after {alive_after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_owners_late_writes_change_nothing() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.addr());
    let stalled_metrics = Arc::new(RecordingMetrics::default());
    // The stalled owner talks through the proxy; the second caller talks directly.
    let stalled = Coordinator::builder(store(&proxy.url()).await)
        .metrics(stalled_metrics.clone())
        .lease(Duration::from_secs(1))
        .build()
        .expect("coordinator");
    let direct = Coordinator::builder(store(&server.url()).await)
        .lease(Duration::from_secs(1))
        .in_flight(InFlight::Wait)
        .build()
        .expect("coordinator");
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (resume_tx, resume_rx) = tokio::sync::oneshot::channel::<()>();
    let owner = {
        let stalled = stalled.clone();
        tokio::spawn(async move {
            stalled
                .call("op", Some("fenced"))
                .run(|| async move {
                    let _ = started_tx.send(());
                    let _ = resume_rx.await;
                    Ok::<_, IdempotencyError>("stalled".to_owned())
                })
                .await
        })
    };
    started_rx.await.expect("owner started");
    // Its renewals are frozen on the wire: the lease runs out.
    proxy.set_mode(Mode::Freeze);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let newer: String = direct
        .call("op", Some("fenced"))
        .run(|| async { Ok::<_, IdempotencyError>("newer".to_owned()) })
        .await
        .expect("takes over");
    assert_eq!(newer, "newer");
    proxy.set_mode(Mode::Pass);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let _ = resume_tx.send(());
    assert_eq!(
        owner
            .await
            .expect("task")
            .expect("the stalled call returns its value"),
        "stalled"
    );
    let record = direct
        .store()
        .get(&idempotency_testkit::record_id("op", "fenced"))
        .await
        .expect("get")
        .expect("record");
    assert_eq!(
        record.result().get(),
        "\"newer\"",
        "the newer record stands"
    );
    assert_eq!(
        stalled_metrics.count("error", error_type::LEASE_LOST),
        1,
        "{:?}",
        stalled_metrics.calls()
    );
}

/// While Redis cannot be reached, calls stop waiting out a command timeout each: after
/// three unanswered commands the store fails fast (a storage error whose cause is
/// `Unreachable`, naming the last driver error), and a background probe lets calls
/// through again once the server answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_be_reached_fails_fast_and_recovers_by_itself() {
    let mut server = RedisServer::start();
    let metrics = Arc::new(RecordingMetrics::default());
    let coordinator = coordinator(store(&server.url()).await, &metrics, OnStorageError::Raise);
    let call = |key: &'static str| {
        let coordinator = coordinator.clone();
        async move {
            coordinator
                .call("op", Some(key))
                .run(|| async { Ok::<_, IdempotencyError>(1u32) })
                .await
        }
    };
    assert_eq!(call("before").await.expect("up"), 1);
    server.kill();
    let mut causes = Vec::new();
    for _ in 0..3 {
        let e = call("down").await.expect_err("down");
        assert!(e.is_storage(), "{e}");
        causes.push(e.full_message());
    }
    // Open now: the cause is typed, and names what the driver saw.
    let e = call("down").await.expect_err("down");
    let source = std::error::Error::source(&e).expect("a cause");
    let open = source
        .downcast_ref::<idempotency_redis::Unreachable>()
        .unwrap_or_else(|| {
            panic!(
                "not failing fast: {} (before: {causes:?})",
                e.full_message()
            )
        });
    assert!(open.failures >= 3, "{open}");
    assert!(!open.cause.is_empty(), "{open}");
    server.restart();
    // The probe closes the breaker without any call going through first.
    let mut back = None;
    for _ in 0..100 {
        match call("after").await {
            Ok(v) => {
                back = Some(v);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert_eq!(back, Some(1), "calls did not come back after the restart");
}
