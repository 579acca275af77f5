//! The store through Redis Sentinel: a master, a replica and three sentinels
//! (`idempotency_testkit::sentinel`). The store connects with a `redis-sentinel://` URL,
//! works on the master the sentinels name, and follows a failover to the promoted
//! replica (reconnecting through the sentinels; scripts re-sent after `NOSCRIPT`).

use std::time::{Duration, Instant};

use crate::common::{svc, unique};
use idempotency_core::{
    Claim, Clock, Fence, IdempotencyRepository, Lease, RawValue, RecordId, ReservationStore,
};
use idempotency_redis::{ConnectOptions, RedisStore};
use idempotency_testkit::resp::{self, Reply};
use idempotency_testkit::sentinel::RedisSentinel;

const LONG: Duration = Duration::from_secs(60);

fn id(op: &str, key: &str) -> RecordId {
    RecordId::new(op, key).expect("valid identifiers")
}

async fn connect(deployment: &RedisSentinel) -> RedisStore {
    let options = ConnectOptions::default().with_command_timeout(Duration::from_millis(800));
    RedisStore::connect(&deployment.url(), &options)
        .await
        .expect("connect through the sentinels")
}

fn start() -> RedisSentinel {
    tokio::task::block_in_place(RedisSentinel::start)
}

/// The bytes under `redis_key` on the server at `port`.
fn raw_get(port: u16, redis_key: &str) -> Option<Vec<u8>> {
    match resp::command(port, &["GET", redis_key]).expect("GET") {
        Reply::Bulk(b) => b,
        other => panic!("GET {redis_key}: {other:?}"),
    }
}

/// Claims and completes `rid` with `result`; retries storage errors until `deadline`
/// (the client may still be reconnecting after a failover).
async fn claim_and_complete(store: &RedisStore, rid: &RecordId, result: &str, deadline: Instant) {
    let result = RawValue::from_string(result.to_owned()).expect("json");
    loop {
        let lease = Lease::new(rid.clone(), None, Clock::system());
        let attempt = async {
            assert_eq!(store.claim(&lease, LONG).await?, Claim::Acquired);
            store.complete(&lease, &result, LONG).await
        };
        match attempt.await {
            Ok(fence) => {
                assert_eq!(fence, Fence::Held);
                return;
            }
            Err(e) if e.is_storage() && Instant::now() < deadline => {
                // A claim that reached the server before the error stays until its lease
                // ends; a fresh key keeps the retry simple.
                let _ = store.release(&lease).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("claim/complete of {rid:?}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_works_through_sentinel() {
    let deployment = start();
    let store = connect(&deployment).await;
    let master = deployment.master_port();

    // The repository: save, get, delete; the record lands on the master the sentinels name.
    let key = unique("sentinel-repo");
    let record = svc()
        .create_record("sentinel.op", &key, &serde_json::json!({"n": 1}))
        .expect("record");
    store.save(&record).await.expect("save");
    let rid = id("sentinel.op", &key);
    let found = store.get(&rid).await.expect("get").expect("found");
    assert_eq!(found.result().get(), "{\"n\":1}");
    assert!(
        raw_get(master, &store.redis_key(&rid)).is_some(),
        "the record is on the master the sentinels name (port {master})"
    );
    assert!(store.delete(&rid).await.expect("delete"));

    // Reservations: claim, complete, and the completed record read back.
    let rid = id("sentinel.op", &unique("sentinel-claim"));
    claim_and_complete(&store, &rid, "{\"done\":true}", Instant::now()).await;
    let done = store.get(&rid).await.expect("get").expect("completed");
    assert!(!done.is_pending());
    assert_eq!(done.result().get(), "{\"done\":true}");

    // And the whole store contract, through sentinel.
    idempotency_contract::repository::all(&store).await;
    idempotency_contract::bulk::all(&store).await;
    idempotency_contract::reservation::all(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_follows_a_failover_to_the_promoted_replica() {
    let mut deployment = start();
    let store = connect(&deployment).await;
    let old_master = deployment.master_port();
    let replica = deployment.replica_port();

    // A completed record, confirmed on the replica before the master dies (`WAIT`): it
    // must survive the failover.
    let kept = id("sentinel.op", &unique("kept"));
    claim_and_complete(&store, &kept, "{\"kept\":1}", Instant::now()).await;
    let acked = deployment.master_cmd(&["WAIT", "1", "5000"]);
    assert_eq!(acked, Reply::Int(1), "the replica acknowledged the writes");
    // The scripts were loaded on the master only (Redis replicates their effects, not the
    // scripts): after the failover the new master answers NOSCRIPT, and the store must
    // fall back to EVAL.
    let complete_sha =
        idempotency_redis::fred::util::sha1_hash(include_str!("../../lua/complete.lua"));
    let exists = |port: u16| match resp::command(port, &["SCRIPT", "EXISTS", &complete_sha]) {
        Ok(Reply::Array(v)) => v.first().and_then(Reply::as_int) == Some(1),
        other => panic!("SCRIPT EXISTS on {port}: {other:?}"),
    };
    assert!(exists(old_master), "complete.lua is cached on the master");
    assert!(
        !exists(replica),
        "complete.lua is not cached on the replica"
    );

    let killed = tokio::task::block_in_place(|| deployment.kill_master());
    assert_eq!(killed, old_master);
    let new_master = tokio::task::block_in_place(|| {
        deployment.wait_failover(old_master, Duration::from_secs(60))
    });
    assert_eq!(new_master, replica, "the replica was promoted");

    // The store reconnects through the sentinels by itself: the kept record replays...
    let deadline = Instant::now() + Duration::from_secs(60);
    let found = loop {
        match store.get(&kept).await {
            Ok(found) => break found,
            Err(e) if e.is_storage() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("get after the failover: {e}"),
        }
    };
    let found = found.expect("the acknowledged and replicated record survived the failover");
    assert_eq!(found.result().get(), "{\"kept\":1}");
    // ... a completed record stays final on the new master ...
    let late = Lease::new(kept.clone(), None, Clock::system());
    match store.claim(&late, LONG).await.expect("claim") {
        Claim::Found(record) => assert!(!record.is_pending()),
        Claim::Acquired => panic!("a completed record was claimed again after the failover"),
    }
    // ... and new keys are claimed and completed on the new master (EVALSHA → NOSCRIPT →
    // EVAL for the completion script), stamped with its clock.
    let fresh = id("sentinel.op", &unique("after-failover"));
    claim_and_complete(&store, &fresh, "{\"after\":true}", deadline).await;
    assert!(
        raw_get(new_master, &store.redis_key(&fresh)).is_some(),
        "the new key is on the new master"
    );
    assert!(exists(new_master), "the EVAL fallback cached complete.lua");
    let record = store.get(&fresh).await.expect("get").expect("completed");
    let server_now = match resp::command(new_master, &["TIME"]).expect("TIME") {
        Reply::Array(parts) => parts[0]
            .as_bytes()
            .and_then(|s| String::from_utf8_lossy(s).parse::<i64>().ok())
            .expect("seconds"),
        other => panic!("TIME: {other:?}"),
    };
    let stamped = record.created_at().unix_timestamp();
    assert!(
        (server_now - stamped).abs() < 120,
        "stamped {stamped}, the new master says {server_now}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_master_is_replaced_and_comes_back_as_a_replica() {
    let deployment = start();
    let store = connect(&deployment).await;
    let old_master = deployment.master_port();
    let replica = deployment.replica_port();
    let before = id("sentinel.op", &unique("before-stall"));
    claim_and_complete(&store, &before, "{\"n\":0}", Instant::now()).await;
    assert_eq!(deployment.master_cmd(&["WAIT", "1", "5000"]), Reply::Int(1));

    // Unresponsive long enough for the sentinels to call it down and promote the replica.
    let stalled = deployment.stall_master(Duration::from_secs(15));
    assert_eq!(stalled, old_master);
    let new_master = tokio::task::block_in_place(|| {
        deployment.wait_failover(old_master, Duration::from_secs(60))
    });
    assert_eq!(new_master, replica);

    // When the old master wakes up, the sentinels make it a replica of the new one (and
    // close its client connections, so the store reconnects through them).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let role = resp::command(old_master, &["ROLE"]);
        if matches!(&role, Ok(Reply::Array(items))
            if items.first() == Some(&Reply::Bulk(Some(b"slave".to_vec()))))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old master did not become a replica: {role:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let after = id("sentinel.op", &unique("after-stall"));
    claim_and_complete(&store, &after, "{\"n\":1}", deadline).await;
    assert!(raw_get(new_master, &store.redis_key(&after)).is_some());
    let found = store.get(&before).await.expect("get").expect("kept");
    assert_eq!(found.result().get(), "{\"n\":0}");
}
