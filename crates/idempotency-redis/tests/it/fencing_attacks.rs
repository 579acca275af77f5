//! Adversarial review of fencing tokens on real servers (standalone and cluster): stale
//! owners after takeovers, a lost counter, braces in keys, completed keys claimed again,
//! concurrent `set_if_newer`, the counter key under an empty prefix, and tokens near 2^53.

use std::time::Duration;

use crate::common::unique;
use idempotency_core::{
    Claim, Clock, Fence, FencingToken, Lease, RawValue, RecordId, ReservationStore,
};
use idempotency_redis::admin::{Admin, ListFilter};
use idempotency_redis::{ConnectOptions, RedisStore};
use idempotency_testkit::resp::Reply;

const LONG: Duration = Duration::from_secs(30);

fn id(op: &str, key: &str) -> RecordId {
    RecordId::new(op, key).expect("valid identifiers")
}

async fn acquire(store: &RedisStore, rid: &RecordId, lease_for: Duration) -> Lease {
    let lease = Lease::new(rid.clone(), None, Clock::system());
    assert_eq!(
        store.claim(&lease, lease_for).await.expect("claim"),
        Claim::Acquired
    );
    lease
}

async fn token(store: &RedisStore, lease: &Lease) -> Option<u64> {
    store
        .fencing_token(lease)
        .await
        .expect("fencing_token")
        .map(FencingToken::get)
}

/// The fence counter's key of `redis_key`, found on the record's node (same slot).
fn fence_key_of(env: &crate::common::Env, redis_key: &str) -> String {
    let pattern = format!("*fence:{redis_key}");
    match env.raw(redis_key, &[b"KEYS", pattern.as_bytes()]) {
        Reply::Array(items) => {
            let keys: Vec<String> = items
                .iter()
                .filter_map(|r| {
                    r.as_bytes()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                })
                .filter(|k| k.ends_with(&format!("}}fence:{redis_key}")))
                .collect();
            assert_eq!(keys.len(), 1, "one counter for {redis_key}: {keys:?}");
            keys[0].clone()
        }
        other => panic!("KEYS: {other:?}"),
    }
}

// A stale owner whose pending record was made abandoned (no expiry, lease past) and taken
// over gets no token; the new owner's beats the stale one's.
on_both!(a_taken_over_abandoned_owner_gets_no_token, |env| {
    let rid = id("fence.attack", &unique("abandoned"));
    let redis_key = env.store.redis_key(&rid);
    let stale = acquire(&env.store, &rid, LONG).await;
    let a = token(&env.store, &stale)
        .await
        .expect("stale owner's token");
    // The owner's record, its lease two hours past, with no expiry: abandoned.
    let raw = env.raw(&redis_key, &[b"GET", redis_key.as_bytes()]);
    let mut record: serde_json::Value =
        serde_json::from_slice(raw.as_bytes().expect("the record")).expect("json");
    let past = (time::OffsetDateTime::now_utc() - time::Duration::hours(2))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    record["expires_at"] = serde_json::Value::String(past);
    let text = serde_json::to_vec(&record).expect("json");
    env.raw(&redis_key, &[b"SET", redis_key.as_bytes(), &text]);
    assert_eq!(
        env.raw(&redis_key, &[b"PTTL", redis_key.as_bytes()])
            .as_int(),
        Some(-1)
    );
    let fresh = acquire(&env.store, &rid, LONG).await;
    assert_eq!(
        token(&env.store, &stale).await,
        None,
        "stale owner after takeover"
    );
    let b = token(&env.store, &fresh).await.expect("new owner's token");
    assert!(b > a, "{b} > {a}");
    assert_eq!(token(&env.store, &stale).await, None);
    assert_eq!(token(&env.store, &fresh).await, Some(b));
    assert_eq!(
        env.store.release(&fresh).await.expect("release"),
        Fence::Held
    );
});

// An unreadable value planted over a fenced owner's record is taken over: the old owner
// gets none, the taker a larger token.
on_both!(
    a_takeover_of_an_unreadable_value_issues_a_larger_token,
    |env| {
        let rid = id("fence.attack", &unique("unreadable"));
        let redis_key = env.store.redis_key(&rid);
        let stale = acquire(&env.store, &rid, LONG).await;
        let a = token(&env.store, &stale).await.expect("token");
        env.raw(
            &redis_key,
            &[b"SET", redis_key.as_bytes(), b"\xff\xfenot json"],
        );
        assert_eq!(
            token(&env.store, &stale).await,
            None,
            "unreadable: not ours"
        );
        let fresh = acquire(&env.store, &rid, LONG).await;
        let b = token(&env.store, &fresh).await.expect("token");
        assert!(b > a, "{b} > {a}");
        assert_eq!(token(&env.store, &stale).await, None);
        assert_eq!(
            env.store.release(&fresh).await.expect("release"),
            Fence::Held
        );
    }
);

// The counter lost (its 7-day lifetime, an eviction, a FLUSH of it): the next owner's
// token still beats the last one (the server's clock carries it).
on_both!(a_lost_counter_still_gives_a_larger_token, |env| {
    let rid = id("fence.attack", &unique("lost-counter"));
    let redis_key = env.store.redis_key(&rid);
    let first = acquire(&env.store, &rid, LONG).await;
    let a = token(&env.store, &first).await.expect("token");
    let fence_key = fence_key_of(&env, &redis_key);
    assert_eq!(
        env.store.release(&first).await.expect("release"),
        Fence::Held
    );
    assert_eq!(
        env.raw(&fence_key, &[b"DEL", fence_key.as_bytes()])
            .as_int(),
        Some(1)
    );
    let second = acquire(&env.store, &rid, LONG).await;
    let b = token(&env.store, &second).await.expect("token");
    assert!(b > a, "{b} > {a}");
    // The same owner keeps its token across renewals, also after the counter is lost
    // mid-reservation? No: a lost counter mid-reservation issues a new (larger) one.
    assert_eq!(
        env.store.renew(&second, LONG).await.expect("renew"),
        Fence::Held
    );
    assert_eq!(
        token(&env.store, &second).await,
        Some(b),
        "kept across a renewal"
    );
    assert_eq!(
        env.store.release(&second).await.expect("release"),
        Fence::Held
    );
});

// Record keys full of braces (hash tags that are not, empty ones, unbalanced ones): the
// counter lands in the record's slot (no CROSSSLOT on the cluster) and tokens grow.
on_both!(
    braces_in_keys_and_operations_keep_the_counter_in_the_slot,
    |env| {
        for (op, key) in [
            ("fence.attack", "{a}b"),
            ("{op}", "x"),
            ("fence.attack", "}{"),
            ("{}", "{}{z}"),
            ("{fence}", "{0}fence"),
        ] {
            let rid = id(op, &format!("{key}{}", unique("-br")));
            let first = acquire(&env.store, &rid, LONG).await;
            let a = token(&env.store, &first).await.expect("token");
            assert_eq!(
                env.store.release(&first).await.expect("release"),
                Fence::Held
            );
            let second = acquire(&env.store, &rid, LONG).await;
            let b = token(&env.store, &second).await.expect("token");
            assert!(b > a, "{op}/{key}: {b} > {a}");
            assert_eq!(
                env.store.release(&second).await.expect("release"),
                Fence::Held
            );
        }
    }
);

// A completed key whose record ran out (its TTL) is claimed again: a larger token.
on_both!(
    a_completed_key_claimed_again_after_its_ttl_gets_a_larger_token,
    |env| {
        let rid = id("fence.attack", &unique("ttl"));
        let first = acquire(&env.store, &rid, LONG).await;
        let a = token(&env.store, &first).await.expect("token");
        let raw = RawValue::from_string("1".to_owned()).expect("raw");
        assert_eq!(
            env.store
                .complete(&first, &raw, Duration::from_secs(1))
                .await
                .expect("complete"),
            Fence::Held
        );
        assert_eq!(token(&env.store, &first).await, None, "completed");
        tokio::time::sleep(Duration::from_millis(1_300)).await;
        let second = acquire(&env.store, &rid, LONG).await;
        let b = token(&env.store, &second).await.expect("token");
        assert!(b > a, "{b} > {a}");
        assert_eq!(token(&env.store, &first).await, None);
        assert_eq!(
            env.store.release(&second).await.expect("release"),
            Fence::Held
        );
    }
);

// Many owners in a row, each asking from several tasks at once: one token per owner, all
// askers agree, and each owner's beats every earlier one.
on_both!(
    concurrent_askers_of_one_owner_agree_and_owners_grow,
    |env| {
        let rid = id("fence.attack", &unique("race"));
        let mut last = 0u64;
        for _ in 0..20 {
            let lease = acquire(&env.store, &rid, LONG).await;
            let mut tasks = Vec::new();
            for _ in 0..6 {
                let store = env.store.clone();
                let lease = lease.clone();
                tasks.push(tokio::spawn(async move { token(&store, &lease).await }));
            }
            let mut seen = std::collections::BTreeSet::new();
            for t in tasks {
                seen.insert(t.await.expect("task").expect("token"));
            }
            assert_eq!(seen.len(), 1, "one token per owner: {seen:?}");
            let t = *seen.iter().next().expect("one");
            assert!(t > last, "{t} > {last}");
            last = t;
            assert_eq!(
                env.store.release(&lease).await.expect("release"),
                Fence::Held
            );
        }
    }
);

// Concurrent fenced writes: the write of the largest token is the one left, whatever
// order they land in, and an equal token is refused.
on_both!(set_if_newer_keeps_the_largest_token_under_races, |env| {
    let key = unique("fence-attack-target");
    let client = env.store.connection().client_for(&key).clone();
    let mut order: Vec<u64> = (1..=60).collect();
    // A fixed shuffle (no rand dependency).
    order.sort_by_key(|n| (n * 7919) % 61);
    let mut tasks = Vec::new();
    for n in order {
        let client = client.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            idempotency_redis::set_if_newer(&client, &key, &format!("v{n}"), FencingToken::new(n))
                .await
                .expect("set_if_newer")
        }));
    }
    let mut written = 0;
    for t in tasks {
        if t.await.expect("task") {
            written += 1;
        }
    }
    assert!(written >= 1);
    let value = env.raw(&key, &[b"HGET", key.as_bytes(), b"value"]);
    assert_eq!(value.as_bytes(), Some(&b"v60"[..]));
    assert!(
        !idempotency_redis::set_if_newer(&client, &key, "again", FencingToken::new(60))
            .await
            .expect("set_if_newer"),
        "an equal token is refused"
    );
});

// ATTACK: the counter key under an empty key prefix (a configuration the builder
// accepts). keys.rs says the counter "starts with `{`, so a scan of the prefix never
// lists it as a record"; with the prefix "" every key is under the prefix, and
// `{tag}fence:op:key` splits into the operation `{tag}fence` and the key `op:key`.
on_both!(an_empty_prefix_does_not_list_the_fence_counter, |env| {
    let connection = idempotency_redis::connect_client(
        &env.url,
        &ConnectOptions::default().with_command_timeout(Duration::from_secs(2)),
    )
    .await
    .expect("connect");
    let store = RedisStore::builder(connection)
        .key_prefix("")
        .build()
        .expect("an empty prefix is accepted");
    let rid = id("fenceprefix", &unique("k"));
    let redis_key = store.redis_key(&rid);
    let lease = acquire(&store, &rid, LONG).await;
    token(&store, &lease).await.expect("token");
    let fence_key = fence_key_of(&env, &redis_key);
    let (operation, _) = fence_key.split_once(':').expect("a separator");
    let admin = Admin::new(store.clone());
    let mut pages = admin.list(ListFilter::new().operation(operation.to_owned()));
    let mut listed = Vec::new();
    while let Some(page) = pages.next_page().await.expect("page") {
        listed.extend(page.into_iter().map(|f| {
            (
                f.id.operation().to_owned(),
                f.id.key().to_owned(),
                f.status_label(),
            )
        }));
    }
    assert_eq!(store.release(&lease).await.expect("release"), Fence::Held);
    assert!(
        listed.is_empty(),
        "the fence counter {fence_key} is listed by the admin as a record: {listed:?}"
    );
});

// ATTACK: Lua numbers near 2^53. A counter already at 2^53 + 1 (only hostile or corrupt
// state gets there: the server clock in µs reaches 2^53 in the year 2255) makes the next
// owner's token `last + 1` computed in doubles: 2^53 + 2 rounds to itself, fine, but
// 2^53 + 1 read back is 2^53 and `+ 1` rounds to 2^53: smaller than the counter's text.
on_both!(
    a_counter_above_2_pow_53_fails_closed_and_never_issues_a_smaller_token,
    |env| {
        let rid = id("fence.attack", &unique("precision"));
        let redis_key = env.store.redis_key(&rid);
        let first = acquire(&env.store, &rid, LONG).await;
        token(&env.store, &first).await.expect("token");
        let fence_key = fence_key_of(&env, &redis_key);
        assert_eq!(
            env.store.release(&first).await.expect("release"),
            Fence::Held
        );
        let planted: u64 = (1 << 53) + 1;
        env.raw(
            &fence_key,
            &[
                b"HSET",
                fence_key.as_bytes(),
                b"n",
                planted.to_string().as_bytes(),
            ],
        );
        let second = acquire(&env.store, &rid, LONG).await;
        // Past 2^53 a Lua number cannot grow by one: the script refuses (no token, so no
        // fenced action runs) rather than issue a token that does not beat the last.
        match env.store.fencing_token(&second).await {
            Err(e) => assert!(e.is_storage(), "a storage error: {e:?}"),
            Ok(Some(b)) => assert!(
                b.get() > planted,
                "a token after {planted} must beat it: got {b}"
            ),
            Ok(None) => panic!("the owner holds the key"),
        }
        assert_eq!(
            env.store.release(&second).await.expect("release"),
            Fence::Held
        );
    }
);

#[cfg(feature = "local-cache")]
mod cached {
    use super::*;
    use idempotency_core::IdempotencyRepository;

    // A coordinator over the caching store: the run gets a token, the replay (served by the
    // cache) runs nothing, and once another store deletes the record (the caches are told),
    // the next run gets a larger token; a prefix with a hash tag keeps the counter in slot.
    on_both!(a_caching_store_fences_runs_after_an_invalidation, |env| {
        use idempotency_coordinator::{Coordinator, Outcome};
        use idempotency_redis::cache::{CacheConfig, CachedStore};
        let prefix = format!("{{{}}}:", unique("fence-cache"));
        let (cached, writer) =
            crate::cache::pair_at(&env.url, &prefix, CacheConfig::default()).await;
        let coordinator = Coordinator::builder(cached.clone())
            .build()
            .expect("coordinator");
        let key = unique("k");
        let run = |coordinator: Coordinator<CachedStore>, key: String| async move {
            coordinator
                .call("fence.cached", Some(&key))
                .run_fenced_with_outcome(|fence: Option<FencingToken>| async move {
                    Ok::<_, idempotency_core::IdempotencyError>(fence.map(FencingToken::get))
                })
                .await
                .expect("call")
        };
        let (a, outcome) = run(coordinator.clone(), key.clone()).await;
        assert_eq!(outcome, Outcome::Executed);
        let a = a.expect("a token");
        let (again, outcome) = run(coordinator.clone(), key.clone()).await;
        assert_eq!((again, outcome), (Some(a), Outcome::Replayed));
        assert!(
            writer
                .delete(&id("fence.cached", &key))
                .await
                .expect("delete")
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (b, outcome) = run(coordinator.clone(), key.clone()).await;
            if outcome == Outcome::Executed {
                let b = b.expect("a token");
                assert!(b > a, "{b} > {a}");
                break;
            }
            assert_eq!(b, Some(a), "a replay holds the first run's value");
            assert!(
                std::time::Instant::now() < deadline,
                "the cache was never told"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}
