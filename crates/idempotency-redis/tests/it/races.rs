//! Races the store must win, forced deterministically with the fault proxy between the
//! store and a server of the test's own:
//!
//! - a second local watcher of a key returns only once the subscription it relies on is
//!   confirmed (the first watcher's subscribe is held in the proxy meanwhile);
//! - `save_many`'s rollback deletes only what the batch wrote, and only if unchanged (a
//!   record written over ours between the batch and its rollback stays);
//! - the fallback from the native `SET … NX GET` claim to the script is per store (a
//!   proxy plays a server without it for one store; the other keeps the native claim).
//!
//! Not here: an unsubscribe racing a new watcher. fred resolves `SUNSUBSCRIBE` without
//! waiting for the server's reply, so the proxy cannot hold the unsubscribe open; the
//! window (between the watcher count check and the write) cannot be forced from outside.
//!
//! Wake-ups are asserted with a generous timeout and no polling: a lost message is never
//! seen, whatever the machine's load, so a failure means the message was lost.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::common::{svc, unique};
use idempotency_core::{
    BulkRepository, Claim, Clock, IdempotencyRepository, KeyWatch, Lease, ReservationStore,
    SaveManyOptions,
};
use idempotency_redis::{ConnectOptions, RedisStore};
use idempotency_testkit::proxy::{Mode, Proxy, Rewrite};
use idempotency_testkit::resp::{self, Reply};
use idempotency_testkit::{RedisServer, record_id};

/// Long enough for any delivered message on a loaded machine; a lost one never comes.
const WAKE: Duration = Duration::from_secs(5);
/// How long the proxy holds traffic: ample time for the store's next step to go out.
const HOLD: Duration = Duration::from_millis(300);

async fn store_through(proxy: &Proxy) -> RedisStore {
    RedisStore::connect(
        &proxy.url(),
        &ConnectOptions::default().with_command_timeout(Duration::from_secs(10)),
    )
    .await
    .expect("connect")
}

/// Publishes on `channel` directly on the server (not through the proxy), as a
/// completion does: sharded, as the store subscribes on a server that has it.
fn publish(server: &RedisServer, channel: &str) {
    let reply = resp::command(server.port(), &["SPUBLISH", channel, "done"]).expect("publish");
    assert!(matches!(reply, Reply::Int(_)), "{reply:?}");
}

/// Starts the store's subscriber connection (made by the first watch) and lets the
/// warm-up watch's unsubscribe finish, so only the test's own traffic is held later.
async fn warm_up(store: &RedisStore) {
    drop(
        store
            .watch(&record_id("op", &unique("warm-up")))
            .await
            .expect("watch"),
    );
    tokio::time::sleep(HOLD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_watcher_returns_only_once_the_subscription_is_confirmed() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.addr());
    let store = store_through(&proxy).await;
    warm_up(&store).await;
    let id = record_id("op", &unique("second-watcher"));
    let channel = store.redis_key(&id);
    // The first watcher's SSUBSCRIBE is held in the proxy: not confirmed.
    proxy.set_mode(Mode::Freeze);
    let first = tokio::spawn({
        let (store, id) = (store.clone(), id.clone());
        async move { store.watch(&id).await.expect("first watch") }
    });
    tokio::time::sleep(HOLD).await;
    // The second watcher must wait for that confirmation: a message published as soon as
    // its watch returns must reach it. (Returning at once, it would publish before the
    // subscription reached the server, and the message would be lost.)
    let second = tokio::spawn({
        let (store, server_port) = (store.clone(), server.port());
        let channel = channel.clone();
        async move {
            let mut watch = store.watch(&id).await.expect("second watch");
            let reply = resp::command(server_port, &["SPUBLISH", &channel, "done"]);
            assert!(matches!(reply, Ok(Reply::Int(_))), "{reply:?}");
            watch.changed(WAKE).await
        }
    });
    tokio::time::sleep(HOLD).await;
    proxy.set_mode(Mode::Pass);
    assert!(
        second.await.expect("second"),
        "the second watcher missed a change published after its watch returned"
    );
    let mut first = first.await.expect("first");
    publish(&server, &channel);
    assert!(first.changed(WAKE).await, "the first watcher is woken too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_spares_a_record_written_over_the_batch_meanwhile() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.addr());
    let store = store_through(&proxy).await;
    let run = unique("rollback-race");
    let (ours, overwritten, taken) = (
        format!("{run}-ours"),
        format!("{run}-overwritten"),
        format!("{run}-taken"),
    );
    let existing = svc().create_record("op", &taken, &0).expect("record");
    store.save(&existing).await.expect("save");
    let batch = vec![
        svc().create_record("op", &ours, &1).expect("record"),
        svc().create_record("op", &overwritten, &2).expect("record"),
        svc().create_record("op", &taken, &3).expect("record"),
    ];
    // Every chunk through the proxy waits 300 ms: the batch's reply comes back, and the
    // rollback goes out, only after that; another writer acts in between.
    proxy.set_mode(Mode::Delay(HOLD));
    let save = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .save_many(&batch, SaveManyOptions::rollback_on_error())
                .await
        }
    });
    let overwritten_key = store.redis_key(&record_id("op", &overwritten));
    let theirs = svc()
        .create_record("op", &overwritten, &"theirs")
        .expect("record")
        .to_json();
    tokio::task::block_in_place(|| {
        // The batch was applied once its record is there; write over it at once (the
        // rollback is at least two proxy delays away).
        while resp::command(server.port(), &["EXISTS", &overwritten_key])
            .expect("exists")
            .as_int()
            != Some(1)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        resp::command(server.port(), &["SET", &overwritten_key, &theirs]).expect("overwrite");
    });
    let err = save.await.expect("save task").expect_err("a collision");
    assert!(err.is_collision(), "{err}");
    proxy.set_mode(Mode::Pass);
    let held = resp::command(server.port(), &["GET", &overwritten_key]).expect("get");
    assert_eq!(
        held.as_bytes(),
        Some(theirs.as_bytes()),
        "the record written over the batch's survives its rollback"
    );
    assert_eq!(
        store.get(&record_id("op", &ours)).await.expect("get"),
        None,
        "what the batch wrote and nobody changed is rolled back"
    );
    assert_eq!(
        store.get(&record_id("op", &taken)).await.expect("get"),
        Some(existing),
        "the record the batch collided with stays"
    );
}

/// Whether a command is the native claim: `SET … NX … GET`.
fn is_native_claim(args: &[Vec<u8>]) -> bool {
    let has = |word: &[u8]| args.iter().skip(3).any(|a| a.eq_ignore_ascii_case(word));
    args.first()
        .is_some_and(|name| name.eq_ignore_ascii_case(b"SET"))
        && has(b"NX")
        && has(b"GET")
}

/// The names of the commands a proxy passed (`SET NX GET` as such); when `refuse_native`,
/// the proxy plays a server without `SET … NX GET` (an extra argument makes Redis answer
/// it with a syntax error, as a server before 7.0 does).
fn recorder(log: &Arc<Mutex<Vec<String>>>, refuse_native: bool) -> Rewrite {
    let log = Arc::clone(log);
    Arc::new(move |mut args: Vec<Vec<u8>>| {
        let native = is_native_claim(&args);
        let name = if native {
            "SET NX GET".to_owned()
        } else {
            String::from_utf8_lossy(args.first().map_or(&[][..], Vec::as_slice)).to_uppercase()
        };
        log.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(name);
        if native && refuse_native {
            args.push(b"OLD-SERVER".to_vec());
        }
        args
    })
}

fn taken(log: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
    std::mem::take(&mut *log.lock().unwrap_or_else(PoisonError::into_inner))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_native_claim_fallback_is_per_store() {
    let server = RedisServer::start();
    let (old_log, new_log) = (Arc::default(), Arc::default());
    let old_proxy = Proxy::start_rewriting(server.addr(), recorder(&old_log, true));
    let new_proxy = Proxy::start_rewriting(server.addr(), recorder(&new_log, false));
    let old = store_through(&old_proxy).await;
    let new = store_through(&new_proxy).await;
    let claim = |store: RedisStore| async move {
        let lease = Lease::new(record_id("op", &unique("native")), None, Clock::system());
        store
            .claim(&lease, Duration::from_secs(30))
            .await
            .expect("claim")
    };
    // The store behind the "old server" tries the native claim once, and falls back.
    taken(&old_log);
    assert_eq!(claim(old.clone()).await, Claim::Acquired);
    let first = taken(&old_log);
    assert_eq!(
        first.iter().filter(|c| *c == "SET NX GET").count(),
        1,
        "{first:?}"
    );
    assert!(
        first.iter().any(|c| c.starts_with("EVAL")),
        "the script claimed: {first:?}"
    );
    assert_eq!(claim(old.clone()).await, Claim::Acquired);
    let second = taken(&old_log);
    assert!(
        !second.iter().any(|c| c == "SET NX GET"),
        "downgraded for good: {second:?}"
    );
    // The other store, on a server that has it, keeps the native claim.
    taken(&new_log);
    assert_eq!(claim(new.clone()).await, Claim::Acquired);
    let native = taken(&new_log);
    assert!(
        native.iter().any(|c| c == "SET NX GET") && !native.iter().any(|c| c.starts_with("EVAL")),
        "the native command, no script: {native:?}"
    );
}
