//! Fenced reservations (protocol v2) against real servers, standalone and cluster: the
//! store contract every store keeps, then what only Redis can have under a key
//! (unreadable bytes, other types) and what only its scripts do (re-sent commands).

use std::sync::Arc;
use std::time::Duration;

use crate::common::{svc, unique};
use idempotency_core::BulkRepository;
use idempotency_core::{
    Claim, Clock, ErrorClass, Fence, IdempotencyRepository, Lease, RawValue, RecordId,
    ReservationStore, SaveManyOptions,
};
use idempotency_testkit::resp::Reply;

const LONG: Duration = Duration::from_secs(30);

fn id(op: &str, key: &str) -> RecordId {
    RecordId::new(op, key).expect("valid identifiers")
}

// The store contract every store keeps (the published `idempotency-contract` suites, a
// line per trait), so a check added there runs here too.
on_both!(the_store_contract, |env| {
    idempotency_contract::repository::all(&env.store).await;
    idempotency_contract::bulk::all(&env.store).await;
    idempotency_contract::reservation::all(&env.store).await;
});

on_both!(the_lease_and_renewal_set_the_redis_ttl, |env| {
    let rid = id("op", &unique("ttl"));
    let redis_key = env.store.redis_key(&rid);
    let lease = Lease::new(rid, None, Clock::system());
    assert_eq!(
        env.store
            .claim(&lease, Duration::from_secs(5))
            .await
            .expect("claim"),
        Claim::Acquired
    );
    let pttl = env
        .raw(&redis_key, &[b"PTTL", redis_key.as_bytes()])
        .as_int()
        .expect("pttl");
    assert!(pttl > 3_000 && pttl <= 5_000, "lease TTL: {pttl}");
    assert_eq!(
        env.store
            .renew(&lease, Duration::from_secs(100))
            .await
            .expect("renew"),
        Fence::Held
    );
    let pttl = env
        .raw(&redis_key, &[b"PTTL", redis_key.as_bytes()])
        .as_int()
        .expect("pttl");
    assert!(pttl > 90_000, "renewal pushed the TTL: {pttl}");
});

on_both!(a_complete_resent_with_the_same_bytes_is_success, |env| {
    // What fred does after a reconnect: the very same EVALSHA again. The first one was
    // applied; the second must report success, not a lost lease.
    let rid = id("op", &unique("resend-complete"));
    let redis_key = env.store.redis_key(&rid);
    let lease = Lease::new(rid, None, Clock::system());
    assert_eq!(
        env.store.claim(&lease, LONG).await.expect("claim"),
        Claim::Acquired
    );
    let result = RawValue::from_string("{\"n\":1}".into()).expect("json");
    assert_eq!(
        env.store
            .complete(&lease, &result, LONG)
            .await
            .expect("complete"),
        Fence::Held
    );
    let stored = env.raw(&redis_key, &[b"GET", redis_key.as_bytes()]);
    let stored = stored.as_bytes().expect("completed bytes").to_vec();
    let script = include_str!("../../lua/complete.lua");
    let again = env.raw(
        &redis_key,
        &[
            b"EVAL",
            script.as_bytes(),
            b"1",
            redis_key.as_bytes(),
            lease.token().as_bytes(),
            &stored,
            b"30000",
        ],
    );
    assert_eq!(
        again.as_int(),
        Some(1),
        "a re-sent completion is success: {again:?}"
    );
});

/// Plants `value` under the key with a TTL, as a buggy writer or an operator would.
fn plant(env: &crate::common::Env, redis_key: &str, value: &[u8]) {
    env.raw(
        redis_key,
        &[b"SET", redis_key.as_bytes(), value, b"EX", b"600"],
    );
}

on_both!(
    an_unreadable_value_is_taken_over_by_exactly_one_claimer,
    |env| {
        for (name, value) in [
            ("garbage", &b"\x00not json at all"[..]),
            ("empty", &b""[..]),
            (
                "truncated",
                &br#"{"operation":"op","idempotency_key":"k","result":"#[..],
            ),
            ("array", &b"[1,2,3]"[..]),
        ] {
            let rid = id("op", &unique(name));
            let redis_key = env.store.redis_key(&rid);
            plant(&env, &redis_key, value);
            let store = Arc::new(env.store.clone());
            let leases: Vec<Lease> = (0..8)
                .map(|_| Lease::new(rid.clone(), None, Clock::system()))
                .collect();
            let tasks: Vec<_> = leases
                .iter()
                .cloned()
                .map(|lease| {
                    let store = Arc::clone(&store);
                    tokio::spawn(async move { store.claim(&lease, LONG).await })
                })
                .collect();
            let mut owners = Vec::new();
            for (lease, task) in leases.iter().zip(tasks) {
                match task.await.expect("task").expect("claim") {
                    Claim::Acquired => owners.push(lease.clone()),
                    Claim::Found(record) => assert!(record.is_pending(), "{name}: {record:?}"),
                }
            }
            assert_eq!(
                owners.len(),
                1,
                "{name}: exactly one caller takes the key over"
            );
            // It holds the key fenced: its completion lands, a stranger's does not.
            let stranger = Lease::new(rid.clone(), None, Clock::system());
            let one = RawValue::from_string("1".into()).expect("json");
            assert_eq!(
                env.store
                    .complete(&stranger, &one, LONG)
                    .await
                    .expect("complete"),
                Fence::Lost
            );
            assert_eq!(
                env.store
                    .complete(&owners[0], &one, LONG)
                    .await
                    .expect("complete"),
                Fence::Held
            );
        }
    }
);

// Liveness is Redis's: a pending record past its `expires_at` by hours (a Python writer
// whose clock runs behind stamps such records) is a live reservation as long as Redis
// expires the key; only one Redis will never expire is taken over as abandoned.
on_both!(
    an_abandoned_reservation_is_taken_over_only_when_redis_never_expires_it,
    |env| {
        let key = unique("abandoned");
        let rid = id("op", &key);
        let redis_key = env.store.redis_key(&rid);
        let stale = format!(
            r#"{{"operation":"op","idempotency_key":"{key}","result":null,"created_at":"2020-01-01T00:00:00+00:00","expires_at":"2020-01-01T00:00:30+00:00","status":"pending","fingerprint":null}}"#
        );
        plant(&env, &redis_key, stale.as_bytes());
        let lease = Lease::new(rid.clone(), None, Clock::system());
        match env.store.claim(&lease, LONG).await.expect("claim") {
            Claim::Found(record) => assert!(record.is_pending(), "{record:?}"),
            Claim::Acquired => panic!("a reservation Redis still expires was taken over"),
        }
        let held = env.raw(&redis_key, &[b"GET", redis_key.as_bytes()]);
        assert_eq!(held.as_bytes(), Some(stale.as_bytes()), "left as it was");
        // A read hides it but leaves it to Redis's TTL.
        assert_eq!(env.store.get(&rid).await.expect("get"), None);
        let held = env.raw(&redis_key, &[b"GET", redis_key.as_bytes()]);
        assert_eq!(
            held.as_bytes(),
            Some(stale.as_bytes()),
            "a read deleted a reservation Redis still expires"
        );
        // The same bytes with no expiry: nobody would ever free the key.
        env.raw(&redis_key, &[b"PERSIST", redis_key.as_bytes()]);
        let lease = Lease::new(rid, None, Clock::system());
        assert_eq!(
            env.store.claim(&lease, LONG).await.expect("claim"),
            Claim::Acquired,
            "a reservation Redis never expires, abandoned for years, is taken over"
        );
    }
);

on_both!(
    a_value_of_another_type_is_a_data_error_naming_the_key,
    |env| {
        let key = unique("wrongtype");
        let rid = id("op", &key);
        let redis_key = env.store.redis_key(&rid);
        env.raw(&redis_key, &[b"HSET", redis_key.as_bytes(), b"f", b"v"]);
        let lease = Lease::new(rid, None, Clock::system());
        let err = env
            .store
            .claim(&lease, LONG)
            .await
            .expect_err("not a record");
        assert_eq!(err.class(), ErrorClass::Data, "{err}");
        assert!(!err.is_storage(), "never a fail-open storage error: {err}");
        assert!(err.to_string().contains(&key), "names the key: {err}");
        let err = env
            .store
            .get(&idempotency_testkit::record_id("op", &key))
            .await
            .expect_err("not a record");
        assert_eq!(err.class(), ErrorClass::Data, "{err}");
        // Nothing was written over it.
        let kind = env.raw(&redis_key, &[b"TYPE", redis_key.as_bytes()]);
        assert_eq!(kind, Reply::Status("hash".into()));
    }
);

on_both!(get_never_deletes_a_live_pending_record, |env| {
    // A reservation written by a peer whose clock runs ten minutes behind (a Python
    // writer: ours stamp with the server's clock): `get` calls it no record (the Python
    // library's answer), but leaves it to its owner and its TTL.
    let rid = id("op", &unique("get-pending"));
    let redis_key = env.store.redis_key(&rid);
    let behind = Lease::new(
        rid.clone(),
        None,
        Clock::with_offset(time::Duration::seconds(-600)),
    );
    let json = behind.pending_record(LONG).expect("pending").to_json();
    env.raw(
        &redis_key,
        &[
            b"SET",
            redis_key.as_bytes(),
            json.as_bytes(),
            b"PX",
            b"30000",
        ],
    );
    assert_eq!(env.store.get(&rid).await.expect("get"), None);
    assert_eq!(
        env.raw(&redis_key, &[b"EXISTS", redis_key.as_bytes()])
            .as_int(),
        Some(1),
        "the reservation is still there"
    );
    // And a claim still finds it alive.
    let other = Lease::new(rid, None, Clock::system());
    assert!(
        matches!(env.store.claim(&other, LONG).await.expect("claim"), Claim::Found(r) if r.is_pending())
    );
});

on_both!(a_rollback_deletes_only_what_the_batch_wrote, |env| {
    let run = unique("rollback");
    let (a, taken) = (format!("{run}-a"), format!("{run}-taken"));
    let existing = svc().create_record("op", &taken, &0).expect("record");
    env.store.save(&existing).await.expect("save");
    let batch = vec![
        svc().create_record("op", &a, &1).expect("record"),
        svc().create_record("op", &taken, &2).expect("record"),
    ];
    let err = env
        .store
        .save_many(&batch, SaveManyOptions::rollback_on_error())
        .await
        .expect_err("collision");
    assert!(err.is_collision(), "{err}");
    assert_eq!(
        env.store
            .get(&idempotency_testkit::record_id("op", &a))
            .await
            .expect("get"),
        None,
        "ours rolled back"
    );
    assert_eq!(
        env.store
            .get(&idempotency_testkit::record_id("op", &taken))
            .await
            .expect("get"),
        Some(existing),
        "the other writer's record stays"
    );
});

/// Every script is in the server's cache once the store is built, and again after the
/// server restarts empty, before any call: the first fenced write after a restart is one
/// round trip, not `EVALSHA`, `NOSCRIPT`, `EVAL`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_are_loaded_on_connect_and_after_a_restart() {
    let mut server = idempotency_testkit::RedisServer::start();
    let _store = idempotency_redis::RedisStore::connect(
        &server.url(),
        &idempotency_redis::ConnectOptions::default(),
    )
    .await
    .expect("connect");
    let shas: Vec<String> = [
        include_str!("../../lua/claim.lua"),
        include_str!("../../lua/complete.lua"),
        include_str!("../../lua/renew.lua"),
        include_str!("../../lua/release.lua"),
        include_str!("../../lua/takeover.lua"),
        include_str!("../../lua/delete_if_equal.lua"),
    ]
    .iter()
    .map(|source| fred::util::sha1_hash(source))
    .collect();
    let all_cached = |server: &idempotency_testkit::RedisServer| {
        let mut args = vec!["SCRIPT", "EXISTS"];
        args.extend(shas.iter().map(String::as_str));
        match server.cmd(&args) {
            Reply::Array(flags) => flags.iter().all(|f| f.as_int() == Some(1)),
            _ => false,
        }
    };
    let mut loaded = false;
    for _ in 0..200 {
        loaded = all_cached(&server);
        if loaded {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        loaded,
        "the scripts were not loaded when the store was built"
    );

    server.restart();
    let mut reloaded = false;
    for _ in 0..500 {
        reloaded = all_cached(&server);
        if reloaded {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        reloaded,
        "the scripts were not loaded again after the reconnect"
    );
}
