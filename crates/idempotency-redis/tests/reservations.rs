//! Fenced reservations and wake-ups against real servers, standalone and cluster.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{svc, unique};
use idempotency_core::{Claim, Fence, IdempotencyRepository, KeyWatch, ReservationStore};

on_both!(sixty_four_concurrent_claims_get_exactly_one_owner, |env| {
    let key = unique("claim64");
    let store = Arc::new(env.store.clone());
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let store = Arc::clone(&store);
            let key = key.clone();
            tokio::spawn(async move {
                store
                    .claim("op", &key, Duration::from_secs(30), Some("fp"))
                    .await
            })
        })
        .collect();
    let mut owners = 0;
    for t in tasks {
        match t.await.expect("task").expect("claim") {
            Claim::Acquired(lease) => {
                owners += 1;
                assert_eq!(lease.fingerprint(), Some("fp"));
            }
            Claim::Found(record) => {
                assert!(record.is_pending());
                assert_eq!(record.fingerprint(), Some("fp"));
            }
        }
    }
    assert_eq!(owners, 1);
});

on_both!(a_claim_on_a_completed_key_returns_the_record, |env| {
    let key = unique("claimhit");
    let record = svc()
        .create_record("op", &key, &serde_json::json!({"v": 1}))
        .expect("r");
    env.store.save(&record).await.expect("save");
    let claim = env
        .store
        .claim("op", &key, Duration::from_secs(30), None)
        .await
        .expect("claim");
    assert_eq!(claim, Claim::Found(record));
});

on_both!(
    a_pending_record_lives_its_lease_in_redis_and_carries_an_owner,
    |env| {
        let key = unique("lease");
        let lease = env
            .store
            .claim("op", &key, Duration::from_secs(7), None)
            .await
            .expect("claim")
            .into_lease()
            .expect("free key");
        let redis_key = env.store.redis_key("op", &key);
        let pttl = env
            .raw(&redis_key, &[b"PTTL", redis_key.as_bytes()])
            .as_int()
            .expect("pttl");
        assert!((6_000..=7_000).contains(&pttl), "{pttl}");
        let stored = env
            .store
            .get("op", &key)
            .await
            .expect("get")
            .expect("pending");
        assert!(stored.is_pending());
        assert_eq!(stored.owner(), Some(lease.token()));
        assert_eq!(stored.result().get(), "null");
    }
);

on_both!(complete_renew_and_release_work_for_the_owner, |env| {
    let key = unique("owner");
    let lease = env
        .store
        .claim("op", &key, Duration::from_secs(5), None)
        .await
        .expect("claim")
        .into_lease()
        .expect("free key");
    let redis_key = env.store.redis_key("op", &key);
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
    assert!(pttl > 90_000, "renew pushed the Redis TTL: {pttl}");
    let renewed = env
        .store
        .get("op", &key)
        .await
        .expect("get")
        .expect("pending");
    assert!(
        renewed.remaining_ttl() > Duration::from_secs(90),
        "and the expires_at field"
    );
    assert_eq!(
        env.store.release(&lease).await.expect("release"),
        Fence::Held
    );
    assert_eq!(env.store.get("op", &key).await.expect("get"), None);
    let lease = env
        .store
        .claim("op", &key, Duration::from_secs(5), None)
        .await
        .expect("claim")
        .into_lease()
        .expect("released key is free");
    let done = svc().create_record("op", &key, &"done").expect("r");
    assert_eq!(
        env.store.complete(&lease, &done).await.expect("complete"),
        Fence::Held
    );
    assert_eq!(env.store.get("op", &key).await.expect("get"), Some(done));
    let ttl = env
        .raw(&redis_key, &[b"TTL", redis_key.as_bytes()])
        .as_int()
        .expect("ttl");
    assert!(ttl > 500, "the completed record has its TTL: {ttl}");
});

on_both!(
    a_stale_owner_cannot_complete_renew_or_release_over_a_newer_one,
    |env| {
        let key = unique("stale");
        let stale = env
            .store
            .claim("op", &key, Duration::from_secs(1), None)
            .await
            .expect("claim")
            .into_lease()
            .expect("free key");
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let fresh = env
            .store
            .claim("op", &key, Duration::from_secs(30), None)
            .await
            .expect("claim")
            .into_lease()
            .expect("the lease ran out");
        let late = svc().create_record("op", &key, &"stale").expect("r");
        assert_eq!(
            env.store.complete(&stale, &late).await.expect("complete"),
            Fence::Lost
        );
        assert_eq!(
            env.store
                .renew(&stale, Duration::from_secs(60))
                .await
                .expect("renew"),
            Fence::Lost
        );
        assert_eq!(
            env.store.release(&stale).await.expect("release"),
            Fence::Lost
        );
        let current = env
            .store
            .get("op", &key)
            .await
            .expect("get")
            .expect("fresh pending");
        assert_eq!(current.owner(), Some(fresh.token()));
        let done = svc().create_record("op", &key, &"fresh").expect("r");
        assert_eq!(
            env.store.complete(&fresh, &done).await.expect("complete"),
            Fence::Held
        );
        assert_eq!(
            env.store.complete(&stale, &late).await.expect("complete"),
            Fence::Lost
        );
        assert_eq!(
            env.store.release(&fresh).await.expect("release"),
            Fence::Lost,
            "a completed record is not released"
        );
        assert_eq!(env.store.get("op", &key).await.expect("get"), Some(done));
    }
);

on_both!(complete_writes_into_an_empty_key, |env| {
    let key = unique("vanished");
    let lease = env
        .store
        .claim("op", &key, Duration::from_secs(30), None)
        .await
        .expect("claim")
        .into_lease()
        .expect("free key");
    env.store.delete("op", &key).await.expect("delete");
    let done = svc().create_record("op", &key, &1).expect("r");
    assert_eq!(
        env.store.complete(&lease, &done).await.expect("complete"),
        Fence::Held
    );
    assert_eq!(env.store.get("op", &key).await.expect("get"), Some(done));
});

on_both!(scripts_survive_a_flushed_script_cache, |env| {
    let key = unique("noscript");
    let lease = env
        .store
        .claim("op", &key, Duration::from_secs(30), None)
        .await
        .expect("claim")
        .into_lease()
        .expect("free key");
    let redis_key = env.store.redis_key("op", &key);
    env.raw(&redis_key, &[b"SCRIPT", b"FLUSH"]);
    assert_eq!(
        env.store
            .renew(&lease, Duration::from_secs(30))
            .await
            .expect("renew after flush"),
        Fence::Held
    );
    env.raw(&redis_key, &[b"SCRIPT", b"FLUSH"]);
    let done = svc().create_record("op", &key, &1).expect("r");
    assert_eq!(
        env.store
            .complete(&lease, &done)
            .await
            .expect("complete after flush"),
        Fence::Held
    );
});

on_both!(a_waiter_is_woken_by_completion_without_polling, |env| {
    let key = unique("wake");
    let lease = env
        .store
        .claim("op", &key, Duration::from_secs(30), None)
        .await
        .expect("claim")
        .into_lease()
        .expect("free key");
    let mut watch = env.store.watch("op", &key).await.expect("watch");
    let store = env.store.clone();
    let k = key.clone();
    let completer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        store
            .complete(&lease, &svc().create_record("op", &k, &1).expect("r"))
            .await
    });
    // Woken by the published message: with a 20 s timeout a poll would not return.
    assert!(
        watch.changed(Duration::from_secs(20)).await,
        "woken by the push"
    );
    assert_eq!(
        completer.await.expect("task").expect("complete"),
        Fence::Held
    );
    assert!(
        env.store
            .get("op", &key)
            .await
            .expect("get")
            .is_some_and(|r| !r.is_pending())
    );
});

on_both!(a_waiter_is_woken_by_release, |env| {
    let key = unique("wakerel");
    let lease = env
        .store
        .claim("op", &key, Duration::from_secs(30), None)
        .await
        .expect("claim")
        .into_lease()
        .expect("free key");
    let mut first = env.store.watch("op", &key).await.expect("watch");
    let mut second = env
        .store
        .watch("op", &key)
        .await
        .expect("second watch of the same key");
    env.store.release(&lease).await.expect("release");
    assert!(first.changed(Duration::from_secs(20)).await);
    assert!(second.changed(Duration::from_secs(20)).await);
});

on_both!(a_watch_without_a_change_times_out, |env| {
    let key = unique("quiet");
    let mut watch = env.store.watch("op", &key).await.expect("watch");
    assert!(!watch.changed(Duration::from_millis(50)).await);
});
