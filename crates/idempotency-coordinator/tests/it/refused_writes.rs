//! A Redis that refuses writes but serves reads (`NOREPLICAS`, `OOM`, `MISCONF`,
//! `READONLY`) is not a store that is down: a completed key replays, a held key waits or
//! is in progress, and only an empty key falls to `on_storage_error`. A refusal that means
//! the deployment is wrong (`NOPERM`) always fails closed. Each state is made for real on
//! a redis-server the test owns.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idempotency_coordinator::{Coordinator, InFlight, OnStorageError, Outcome};
use idempotency_core::{Claim, Clock, ErrorClass, IdempotencyError, Lease, ReservationStore};
use idempotency_redis::{ConnectOptions, RedisStore};
use idempotency_testkit::{RedisServer, free_port, record_id};

async fn store(url: &str) -> RedisStore {
    RedisStore::connect(
        url,
        &ConnectOptions::default().with_command_timeout(Duration::from_secs(2)),
    )
    .await
    .expect("connect")
}

fn coordinator(store: RedisStore, on_error: OnStorageError) -> Coordinator<RedisStore> {
    Coordinator::builder(store)
        .on_storage_error(on_error)
        .build()
        .expect("coordinator")
}

/// Runs one call of `op` under `key`, counting runs of the action.
async fn call(
    coordinator: &Coordinator<RedisStore>,
    key: &str,
    runs: &Arc<AtomicUsize>,
    in_flight: InFlight,
) -> Result<(u32, Outcome), IdempotencyError> {
    let runs = Arc::clone(runs);
    coordinator
        .call("op", Some(key))
        .in_flight(in_flight)
        .run_with_outcome(|| async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, IdempotencyError>(7u32)
        })
        .await
}

/// Completes `done`, holds `held` under another owner's live lease, then puts the server
/// in the refusing state with `refuse` and checks every answer.
async fn refusing_writes_keeps_the_promise(refuse: impl FnOnce(&RedisServer)) {
    let server = RedisServer::start();
    let open = coordinator(store(&server.url()).await, OnStorageError::Run);
    let closed = coordinator(store(&server.url()).await, OnStorageError::Raise);
    let runs = Arc::new(AtomicUsize::new(0));
    let first = call(&open, "done", &runs, InFlight::Wait)
        .await
        .expect("first call");
    assert_eq!(first, (7, Outcome::Executed));
    let holder = store(&server.url()).await;
    let lease = Lease::new(record_id("op", "held"), None, Clock::system());
    let held = holder
        .claim(&lease, Duration::from_secs(60))
        .await
        .expect("claim");
    assert!(matches!(held, Claim::Acquired));

    refuse(&server);
    // The state is real: a plain write is refused, a read still served.
    let write = server.cmd(&["SET", "probe", "1"]);
    assert!(
        write.is_error(),
        "the server still accepts writes: {write:?}"
    );
    assert!(!server.cmd(&["GET", "probe"]).is_error());

    for attempt in 0..3 {
        let replay = call(&open, "done", &runs, InFlight::Wait).await;
        assert_eq!(
            replay.expect("a completed key replays"),
            (7, Outcome::Replayed),
            "attempt {attempt}"
        );
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the completed key ran again"
    );

    let in_progress = call(&open, "held", &runs, InFlight::Raise).await;
    assert!(
        matches!(in_progress, Err(IdempotencyError::InProgress { .. })),
        "a held key is in progress, never run: {in_progress:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the held key ran");

    // Only an empty key falls to the mode: run unprotected, or the refusal itself.
    let open_run = call(&open, "empty", &runs, InFlight::Wait).await;
    assert_eq!(open_run.expect("fail-open runs"), (7, Outcome::Unprotected));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    let closed_run = call(&closed, "empty-2", &runs, InFlight::Wait).await;
    match closed_run {
        Err(e @ IdempotencyError::StorageRefused { .. }) => {
            assert_eq!(e.class(), ErrorClass::Storage);
            assert!(!e.is_unreachable(), "{e}");
        }
        other => panic!("fail-closed answers with the refusal: {other:?}"),
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noreplicas_replays_completed_keys() {
    refusing_writes_keeps_the_promise(|server| {
        assert!(
            !server
                .cmd(&["CONFIG", "SET", "min-replicas-to-write", "1"])
                .is_error()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_under_noeviction_replays_completed_keys() {
    refusing_writes_keeps_the_promise(|server| {
        assert!(
            !server
                .cmd(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
                .is_error()
        );
        assert!(!server.cmd(&["CONFIG", "SET", "maxmemory", "1"]).is_error());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_replica_replays_completed_keys() {
    refusing_writes_keeps_the_promise(|server| {
        // A replica of a master nobody runs keeps its data, serves reads, refuses writes.
        let port = free_port().to_string();
        assert!(!server.cmd(&["REPLICAOF", "127.0.0.1", &port]).is_error());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misconf_after_a_failed_save_replays_completed_keys() {
    refusing_writes_keeps_the_promise(|server| {
        // The server's directory removed under it: the background save fails, and with
        // a save point set the server refuses writes with MISCONF.
        assert!(!server.cmd(&["CONFIG", "SET", "save", "3600 1"]).is_error());
        assert!(
            !server
                .cmd(&["CONFIG", "SET", "stop-writes-on-bgsave-error", "yes"])
                .is_error()
        );
        std::fs::remove_dir_all(server.dir()).expect("rmdir");
        assert!(!server.cmd(&["BGSAVE"]).is_error());
        for _ in 0..200 {
            let info = server.cmd(&["INFO", "persistence"]);
            let text = String::from_utf8_lossy(info.as_bytes().unwrap_or_default()).into_owned();
            if text.contains("rdb_last_bgsave_status:err") {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("the background save did not fail");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noperm_fails_closed_even_in_run_mode() {
    let server = RedisServer::start();
    assert!(
        !server
            .cmd(&[
                "ACL", "SETUSER", "limited", "on", ">pw", "~*", "+@all", "-set"
            ])
            .is_error()
    );
    let url = format!("redis://limited:pw@127.0.0.1:{}", server.port());
    let open = coordinator(store(&url).await, OnStorageError::Run);
    let runs = Arc::new(AtomicUsize::new(0));
    let refused = call(&open, "k", &runs, InFlight::Wait).await;
    match refused {
        Err(e) => assert_eq!(e.class(), ErrorClass::Configuration, "{e}"),
        Ok(ok) => panic!("a NOPERM claim ran the action: {ok:?}"),
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0, "the action ran unprotected");
}

/// Many callers while the server flaps between accepting and refusing writes: the
/// completed keys never run again and no call on them runs unprotected; new keys run at
/// most once each, or fail-open (counted) only while refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_refusal_under_load_never_reruns_a_completed_key() {
    let server = RedisServer::start();
    let coordinator = coordinator(store(&server.url()).await, OnStorageError::Run);
    let runs = Arc::new(AtomicUsize::new(0));
    let completed: Vec<String> = (0..5).map(|i| format!("done-{i}")).collect();
    for key in &completed {
        call(&coordinator, key, &runs, InFlight::Wait)
            .await
            .expect("first");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 5);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flapper = {
        let (stop, port) = (Arc::clone(&stop), server.port());
        std::thread::spawn(move || {
            let mut on = false;
            while !stop.load(Ordering::SeqCst) {
                on = !on;
                let value = if on { "1" } else { "0" };
                let _ = idempotency_testkit::resp::command(
                    port,
                    &["CONFIG", "SET", "min-replicas-to-write", value],
                );
                std::thread::sleep(Duration::from_millis(15));
            }
            let _ = idempotency_testkit::resp::command(
                port,
                &["CONFIG", "SET", "min-replicas-to-write", "0"],
            );
        })
    };
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (coordinator, runs, completed) =
            (coordinator.clone(), Arc::clone(&runs), completed.clone());
        tasks.push(tokio::spawn(async move {
            let mut unprotected_on_completed = 0;
            for i in 0..15 {
                let key = &completed[(t + i) % completed.len()];
                if let Ok((_, Outcome::Unprotected)) =
                    call(&coordinator, key, &runs, InFlight::Wait).await
                {
                    unprotected_on_completed += 1;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            unprotected_on_completed
        }));
    }
    let mut unprotected = 0;
    for task in tasks {
        unprotected += task.await.expect("task");
    }
    stop.store(true, Ordering::SeqCst);
    flapper.join().expect("flapper");
    assert_eq!(unprotected, 0, "calls ran unprotected over completed keys");
    assert_eq!(runs.load(Ordering::SeqCst), 5, "a completed key ran again");
}
