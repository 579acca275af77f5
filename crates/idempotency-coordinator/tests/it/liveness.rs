//! Who decides that a reservation is alive: clocks that run behind, a server refusing
//! `TIME`, takeovers that give up, orphans of dropped claims on a pool. Scenarios that broke "the
//! action runs at most once per key, every caller that gets a value gets that execution's
//! value, no key stays stuck" in its first cut (an owner's clock far behind, a result
//! stamped by a slow clock, a server refusing `TIME`, a takeover loop giving up after
//! writing, a pool sending a release on another connection). Each test states the
//! guarantee it checks and failed before its fix.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::{Runs, counted, port_of, unique};
use idempotency_coordinator::{Coordinator, InFlight};
use idempotency_core::{Clock, IdempotencyError, IdempotencyRepository, RecordId};
use idempotency_redis::{ConnectOptions, RedisStore};
use idempotency_testkit::{RedisServer, ServerOptions, shared_server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Starts `coordinator`'s call on `key` (action: counted, holding `hold`, value 1) and
/// returns once its action runs.
async fn hold_key<S>(
    coordinator: &Coordinator<S>,
    key: &str,
    runs: &Runs,
    hold: Duration,
) -> tokio::task::JoinHandle<Result<u32, IdempotencyError>>
where
    S: idempotency_core::ReservationStore + Clone + Send + Sync + 'static,
    S::Watch: Send,
{
    let before = runs.get();
    let task = {
        let coordinator = coordinator.clone();
        let key = key.to_owned();
        let action = counted(runs, hold, 1);
        tokio::spawn(async move { coordinator.call("op", Some(&key)).run(action).await })
    };
    while runs.get() == before {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    task
}

const TWO_HOURS_BEHIND: time::Duration = time::Duration::hours(-2);

// Finding 1. `is_abandoned` compares the pending record's `expires_at`, stamped by the
// OWNER's clock, with the server's clock. An owner whose clock runs more than
// lease + ABANDONED_AFTER (1 h) behind writes reservations that look abandoned the moment
// they are written: the next claimer takes the live reservation over and runs the action
// a second time. A client clock decides liveness again (issue 10, defect 1).
on_all!(
    an_owner_two_hours_behind_keeps_its_live_reservation,
    |env| {
        let key = unique("behind-claim");
        let behind = env.coordinator(|b| {
            b.lease(Duration::from_secs(3))
                .clock(Clock::with_offset(TWO_HOURS_BEHIND))
        });
        let honest = env.coordinator(|b| b.lease(Duration::from_secs(3)));
        let runs = Runs::default();
        let holder = hold_key(&behind, &key, &runs, Duration::from_millis(800)).await;
        let peer: u32 = honest
            .call("op", Some(&key))
            .run(counted(&runs, Duration::ZERO, 2))
            .await
            .expect("waits for the owner and replays");
        assert_eq!(holder.await.expect("task").expect("owner"), 1);
        assert_eq!(
            (peer, runs.get()),
            (1, 1),
            "the live reservation of an owner whose clock is 2 h behind was taken over"
        );
    }
);

// Finding 1 (the read path). A repository `get` (a Python service of the mixed fleet, a
// dashboard, `InFlight::Run`) deletes such a reservation as "abandoned" while its owner
// runs (`decode_found` → `delete_if_equal`): something other than its owner's release or
// Redis's expiry removes a live pending record. (Redis only: the memory store's `get`
// leaves pending records alone.)
mod a_read_never_deletes_a_live_reservation {
    use super::*;

    async fn body(env: crate::common::Env<RedisStore>) {
        let key = unique("behind-get");
        let behind = env.coordinator(|b| {
            b.lease(Duration::from_secs(3))
                .clock(Clock::with_offset(TWO_HOURS_BEHIND))
        });
        let runs = Runs::default();
        let holder = hold_key(&behind, &key, &runs, Duration::from_millis(800)).await;
        let redis_key = env
            .store
            .inner
            .redis_key(&RecordId::new("op", &key).expect("valid"));
        let _ = env
            .store
            .inner
            .get(&idempotency_testkit::record_id("op", &key))
            .await
            .expect("get");
        let exists =
            idempotency_testkit::resp::command(port_of(&env, &redis_key), &["EXISTS", &redis_key])
                .expect("exists")
                .as_int();
        assert_eq!(holder.await.expect("task").expect("owner"), 1);
        assert_eq!(
            exists,
            Some(1),
            "a read deleted the live reservation of a running owner"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn standalone() {
        body(crate::common::standalone().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cluster() {
        body(crate::common::cluster().await).await;
    }
}

// Finding 2. A completed record's `expires_at` is stamped by the WRITER's clock; `get`
// judges it (on the server's / store's clock) and deletes it while Redis's TTL still
// keeps it. A writer 2 h behind with a 30 min TTL writes results that the first read
// deletes, and the retry after that read runs the action again. docs/redis.md says
// client clocks "may disagree ... by any amount: they only stamp created_at/expires_at,
// which the claim path does not read" — but the read path deletes what the claim path
// would have replayed.
on_all!(a_result_written_by_a_clock_behind_survives_a_read, |env| {
    let key = unique("behind-complete");
    let ttl = Duration::from_secs(1800);
    let behind = env.coordinator(|b| b.clock(Clock::with_offset(TWO_HOURS_BEHIND)));
    let honest = env.coordinator(|b| b);
    let runs = Runs::default();
    let first: u32 = behind
        .call("op", Some(&key))
        .ttl(ttl)
        .run(counted(&runs, Duration::ZERO, 1))
        .await
        .expect("runs");
    // Anyone reads the key (a Python service, a dashboard, `InFlight::Run`).
    let _ = env
        .store
        .inner
        .get(&idempotency_testkit::record_id("op", &key))
        .await
        .expect("get");
    let retry: u32 = honest
        .call("op", Some(&key))
        .ttl(ttl)
        .run(counted(&runs, Duration::ZERO, 2))
        .await
        .expect("replays");
    assert_eq!(
        (first, retry, runs.get()),
        (1, 1, 1),
        "a read deleted a stored result within its TTL; the retry ran the action again"
    );
});

// Finding 3. A claim that finds another owner's pending record asks the server's clock
// (`TIME`) to judge abandonment. When `TIME` fails, the claim fails with a storage error
// although its reply already proved the key is held by a live owner, and the default
// fail-open mode runs the action next to that owner. A least-privilege ACL
// (`+@read +@write +@scripting +@pubsub +@connection`) has no `TIME` (it is only in
// `@fast`), so there every duplicate runs, and every `get` of an existing record fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_found_a_live_owner_never_fails_open_into_a_duplicate() {
    let (_server, store) = least_privilege_store().await;
    let coordinator = Coordinator::builder(store.clone())
        .lease(Duration::from_secs(3))
        .build()
        .expect("coordinator");
    let key = unique("no-time");
    let runs = Runs::default();
    let holder = hold_key(&coordinator, &key, &runs, Duration::from_millis(800)).await;
    let peer = coordinator
        .call("op", Some(&key))
        .run(counted(&runs, Duration::ZERO, 2))
        .await;
    assert_eq!(holder.await.expect("task").expect("owner"), 1);
    assert_eq!(
        (peer.as_ref().ok(), runs.get()),
        (Some(&1), 1),
        "the peer ran next to a live owner: {peer:?}"
    );
}

// Without a sample of the server's clock (`TIME` refused), a read must not judge a
// record's `expires_at` with the reader's clock: a result written by a clock behind the
// reader's (here: stamped in 2020) that Redis still holds is shown, not hidden.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_server_time_a_read_shows_what_redis_holds() {
    let (server, store) = least_privilege_store().await;
    let key = unique("no-time-stale");
    let rid = idempotency_testkit::record_id("op", &key);
    let redis_key = store.redis_key(&rid);
    let stale = format!(
        r#"{{"operation":"op","idempotency_key":"{key}","result":7,"created_at":"2020-01-01T00:00:00+00:00","expires_at":"2020-01-01T01:00:00+00:00","status":"completed","fingerprint":null}}"#
    );
    idempotency_testkit::resp::command(server.port(), &["SET", &redis_key, &stale, "EX", "600"])
        .expect("plant");
    let read = store.get(&rid).await.expect("get");
    assert!(
        read.is_some(),
        "a record Redis holds was judged expired by the reader's clock"
    );
}

/// A server with a least-privilege ACL user `app` (no `TIME`), and a store as that user.
pub(crate) async fn least_privilege_store() -> (RedisServer, RedisStore) {
    let server = RedisServer::start_with(&ServerOptions {
        args: [
            "--user",
            "app",
            "on",
            ">app-pass",
            "~*",
            "&*",
            "+@read",
            "+@write",
            "+@scripting",
            "+@pubsub",
            "+@connection",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect(),
        ..ServerOptions::default()
    });
    let url = format!("redis://app:app-pass@127.0.0.1:{}", server.port());
    let store = RedisStore::connect(
        &url,
        &ConnectOptions::default().with_command_timeout(Duration::from_secs(2)),
    )
    .await
    .expect("the ACL user connects");
    (server, store)
}

// Finding 3 (the read path): the same user cannot `get` any existing record any more
// (`decode_found` always asks `TIME`), a regression from before protocol v2 that also
// makes `InFlight::Run` fail open and run the action again over a stored result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_of_a_stored_record_needs_no_time_permission() {
    let (_server, store) = least_privilege_store().await;
    let coordinator = Coordinator::builder(store.clone())
        .build()
        .expect("coordinator");
    let key = unique("no-time-get");
    let runs = Runs::default();
    let first: u32 = coordinator
        .call("op", Some(&key))
        .run(counted(&runs, Duration::ZERO, 1))
        .await
        .expect("runs");
    assert_eq!(first, 1);
    let read = store.get(&idempotency_testkit::record_id("op", &key)).await;
    assert!(
        matches!(&read, Ok(Some(r)) if !r.is_pending()),
        "get of a stored record fails without TIME: {read:?}"
    );
    let unreserved = Coordinator::builder(store)
        .in_flight(InFlight::Run)
        .build()
        .expect("coordinator");
    let retry: u32 = unreserved
        .call("op", Some(&key))
        .run(counted(&runs, Duration::ZERO, 2))
        .await
        .expect("replays");
    assert_eq!(
        (retry, runs.get()),
        (1, 1),
        "InFlight::Run ran a stored call again"
    );
}

// Finding 4. `claim` tries TAKEOVER_ROUNDS takeovers but never reads the reply of the
// last one: when the last takeover script succeeds (it wrote our pending record), the
// claim still returns `InProgress`, a non-storage error, so the coordinator disarms the
// release guard. The key then holds a reservation nobody owns for a whole lease: every
// retry gets in-progress (or waits the lease out). Here a proxy re-plants an unreadable
// value before the first two takeovers (a writer racing the claim), never after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_gives_up_on_takeovers_leaves_no_reservation_behind() {
    let server = shared_server();
    let probe = RedisStore::connect(&server.url(), &ConnectOptions::default())
        .await
        .expect("connect");
    let key = unique("takeover-rounds");
    let id = RecordId::new("op", &key).expect("valid");
    let redis_key = probe.redis_key(&id);
    plant(server.port(), &redis_key, "garbage-0");
    let plants = Arc::new(AtomicUsize::new(0));
    let proxy_port = planting_proxy(server.port(), redis_key.clone(), Arc::clone(&plants), 2).await;
    let store = RedisStore::connect(
        &format!("redis://127.0.0.1:{proxy_port}"),
        &ConnectOptions::default(),
    )
    .await
    .expect("connect through the proxy");
    let coordinator = Coordinator::builder(store)
        .in_flight(InFlight::Raise)
        .build()
        .expect("coordinator");
    let runs = Runs::default();
    let first = coordinator
        .call("op", Some(&key))
        .run(counted(&runs, Duration::ZERO, 1))
        .await;
    assert_eq!(plants.load(Ordering::SeqCst), 2, "the scenario happened");
    // Whatever the first call answered, it must not leave a reservation behind that
    // nobody will complete or release.
    let mut retry = Err(IdempotencyError::in_progress("op", &key));
    for _ in 0..25 {
        retry = coordinator
            .call("op", Some(&key))
            .run(counted(&runs, Duration::ZERO, 2))
            .await;
        if retry.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left =
        idempotency_testkit::resp::command(server.port(), &["GET", &redis_key]).expect("get");
    let left = left
        .as_bytes()
        .map(|b| String::from_utf8_lossy(b).into_owned());
    assert!(
        first.is_ok() || retry.is_ok(),
        "first call: {first:?}; the key is stuck with an orphaned reservation for a whole \
         lease: retry {retry:?}; key holds {left:?}"
    );
    assert!(runs.get() <= 1, "{} runs", runs.get());
}

fn plant(port: u16, redis_key: &str, value: &str) {
    idempotency_testkit::resp::command(port, &["SET", redis_key, value, "EX", "600"])
        .expect("plant");
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// What a [`hooked_proxy`] does with each chunk a client sends, before forwarding it.
type Hook =
    Arc<dyn Fn(Vec<u8>) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A proxy to `target` that awaits `hook` on every chunk a client sends before forwarding
/// it; replies pass straight through.
async fn hooked_proxy(target: u16, hook: Hook) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                return;
            };
            let (mut client_rx, mut client_tx) = client.into_split();
            let (mut server_rx, mut server_tx) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_rx, &mut client_tx).await;
            });
            let hook = Arc::clone(&hook);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let n = match client_rx.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    hook(buf[..n].to_vec()).await;
                    if server_tx.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// A proxy to `target` that, each time a client sends a script call (`EVAL`/`EVALSHA`)
/// carrying the value currently planted under `redis_key` (`garbage-{n}`), plants
/// `garbage-{n+1}` first, at most `max` times: another writer racing the takeover.
async fn planting_proxy(
    target: u16,
    redis_key: String,
    plants: Arc<AtomicUsize>,
    max: usize,
) -> u16 {
    let hook: Hook = Arc::new(move |chunk| {
        let redis_key = redis_key.clone();
        let plants = Arc::clone(&plants);
        Box::pin(async move {
            let k = plants.load(Ordering::SeqCst);
            if k < max
                && contains(&chunk, b"EVAL")
                && contains(&chunk, format!("garbage-{k}").as_bytes())
            {
                let next = format!("garbage-{}", k + 1);
                tokio::task::spawn_blocking(move || plant(target, &redis_key, &next))
                    .await
                    .expect("planted");
                plants.store(k + 1, Ordering::SeqCst);
            }
        })
    });
    hooked_proxy(target, hook).await
}

// Finding 5. The release guard assumes its release reaches Redis after the claim it
// undoes. With a `Pool` (`ConnectOptions::with_pool_size`), `Connection::client()` hands
// the release to the next pool client, whose connection is not the one the claim is
// stuck on: the release overtakes the claim, finds nothing, and the claim lands after it.
// The key then holds a reservation of a call that is gone, for a whole lease (issue 10,
// defect 2, back through the pool). Here the claim's connection is slow (600 ms), the
// caller gives up after 150 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_dropped_during_its_claim_leaves_no_orphan_with_a_pool() {
    let server = shared_server();
    let key = unique("pool-orphan");
    let probe = RedisStore::connect(&server.url(), &ConnectOptions::default())
        .await
        .expect("connect");
    let redis_key = probe.redis_key(&RecordId::new("op", &key).expect("valid"));
    let delayed = Arc::new(AtomicUsize::new(0));
    let proxy_port = delaying_proxy(
        server.port(),
        redis_key.clone(),
        Arc::clone(&delayed),
        Duration::from_millis(600),
    )
    .await;
    let store = RedisStore::connect(
        &format!("redis://127.0.0.1:{proxy_port}"),
        &ConnectOptions::default().with_pool_size(2),
    )
    .await
    .expect("connect through the proxy");
    let coordinator = Coordinator::builder(store)
        .in_flight(InFlight::Raise)
        .build()
        .expect("coordinator");
    let runs = Runs::default();
    let dropped = tokio::time::timeout(
        Duration::from_millis(150),
        coordinator
            .call("op", Some(&key))
            .run(counted(&runs, Duration::ZERO, 1)),
    )
    .await;
    assert!(dropped.is_err(), "cancelled while the claim was slow");
    // The slow claim lands at 600 ms; the guard's release had a whole second.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(delayed.load(Ordering::SeqCst), 1, "the scenario happened");
    let retry = coordinator
        .call("op", Some(&key))
        .run(counted(&runs, Duration::ZERO, 2))
        .await;
    let left =
        idempotency_testkit::resp::command(server.port(), &["GET", &redis_key]).expect("get");
    let left = left
        .as_bytes()
        .map(|b| String::from_utf8_lossy(b).into_owned());
    assert_eq!(
        retry.as_ref().ok(),
        Some(&2),
        "the dropped call's claim outlived its release: retry {retry:?}; key holds {left:?}"
    );
}

/// A proxy to `target` that holds the first `SET` of `redis_key` (a claim) for `delay`
/// before forwarding it; other connections pass at once.
async fn delaying_proxy(
    target: u16,
    redis_key: String,
    delayed: Arc<AtomicUsize>,
    delay: Duration,
) -> u16 {
    let hook: Hook = Arc::new(move |chunk| {
        let first = contains(&chunk, b"\r\nSET\r\n")
            && contains(&chunk, redis_key.as_bytes())
            && delayed
                .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok();
        Box::pin(async move {
            if first {
                tokio::time::sleep(delay).await;
            }
        })
    });
    hooked_proxy(target, hook).await
}
