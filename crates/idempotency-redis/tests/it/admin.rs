//! The admin API (`idempotency_redis::admin`) on a standalone server and on a cluster.

use std::collections::BTreeSet;
use std::time::Duration;

use idempotency_core::{
    Claim, Clock, IdempotencyRepository, Lease, RawValue, RecordStatus, ReservationStore,
};
use idempotency_redis::RedisStore;
use idempotency_redis::admin::{
    Admin, Content, Eviction, ListFilter, NO_OWNER_LABEL, StatsOptions, WatchOutcome,
};
use idempotency_testkit::record_id;

use crate::common::{Env, svc, unique};

async fn claim(store: &RedisStore, operation: &str, key: &str) -> Lease {
    let lease = Lease::new(record_id(operation, key), None, Clock::system());
    let claimed = store
        .claim(&lease, Duration::from_secs(120))
        .await
        .expect("claim");
    assert!(matches!(claimed, Claim::Acquired));
    lease
}

/// A record the Python library 0.5.0 wrote (conformance data).
fn python_raw(name: &str) -> String {
    let cases: serde_json::Value =
        serde_json::from_str(&idempotency_testkit::conformance::text("records.json"))
            .expect("records.json");
    cases
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .and_then(|c| c["raw"].as_str())
        .expect("the case exists")
        .to_owned()
}

fn set_raw(env: &Env, redis_key: &str, value: &str) {
    env.raw(
        redis_key,
        &[
            b"SET",
            redis_key.as_bytes(),
            value.as_bytes(),
            b"EX",
            b"600",
        ],
    );
}

fn exists(env: &Env, redis_key: &str) -> bool {
    env.raw(redis_key, &[b"EXISTS", redis_key.as_bytes()])
        .as_int()
        == Some(1)
}

on_both!(
    admin_inspect_reads_both_libraries_and_unreadable_values,
    |env| {
        let admin = Admin::new(env.store.clone());
        let ours = unique("adm-ours");
        let lease = claim(&env.store, "order.create", &ours).await;
        let found = admin
            .inspect(&record_id("order.create", &ours))
            .await
            .expect("inspect")
            .expect("found");
        assert_eq!(found.status_label(), "pending");
        assert_eq!(found.owner_label(), lease.token());
        assert!(found.is_live_reservation());
        assert!(found.pttl.is_some_and(|t| t <= Duration::from_secs(120)));

        let py_done = unique("adm-py-done");
        let py_pending = unique("adm-py-pending");
        set_raw(
            &env,
            &format!("idempotency:user.create:{py_done}"),
            &python_raw("completed_dict"),
        );
        set_raw(
            &env,
            &format!("idempotency:user.create:{py_pending}"),
            &python_raw("pending_no_fingerprint"),
        );
        let done = admin
            .inspect(&record_id("user.create", &py_done))
            .await
            .expect("inspect")
            .expect("found");
        assert_eq!(done.status_label(), "completed");
        assert_eq!(
            done.to_json()["result"],
            serde_json::json!({"id": 1, "status": "ok"})
        );
        let pending = admin
            .inspect(&record_id("user.create", &py_pending))
            .await
            .expect("inspect")
            .expect("found");
        assert_eq!(pending.owner_label(), NO_OWNER_LABEL);

        // A failure stored by this kit (`stored_error`) is a record, not an unreadable value.
        let failed = unique("adm-stored-error");
        let stored = svc()
            .create_record(
                "order.create",
                &failed,
                &serde_json::json!({"error": "declined"}),
            )
            .expect("record")
            .to_json()
            .replace("\"status\":\"completed\"", "\"status\":\"stored_error\"");
        set_raw(&env, &format!("idempotency:order.create:{failed}"), &stored);
        let failure = admin
            .inspect(&record_id("order.create", &failed))
            .await
            .expect("inspect")
            .expect("found");
        assert_eq!(failure.status_label(), "stored_error", "{failure:?}");

        let corrupt = unique("adm-corrupt");
        let ck = format!("idempotency:order.create:{corrupt}");
        set_raw(&env, &ck, "[1, 2");
        let bad = admin
            .inspect(&record_id("order.create", &corrupt))
            .await
            .expect("an unreadable value is not an error")
            .expect("found");
        assert!(matches!(bad.content, Content::Unreadable { .. }), "{bad:?}");
        assert_eq!(bad.raw, b"[1, 2");

        let shaped = unique("adm-shape");
        set_raw(
            &env,
            &format!("idempotency:order.create:{shaped}"),
            r#"{"status": 3}"#,
        );
        let shape = admin
            .inspect(&record_id("order.create", &shaped))
            .await
            .expect("inspect")
            .expect("found");
        assert_eq!(shape.status_label(), "unreadable");

        let hashed = unique("adm-hash");
        let hk = format!("idempotency:order.create:{hashed}");
        env.raw(&hk, &[b"HSET", hk.as_bytes(), b"f", b"v"]);
        let hash = admin
            .inspect(&record_id("order.create", &hashed))
            .await
            .expect("a wrong type is not an error")
            .expect("found");
        assert!(matches!(hash.content, Content::WrongType));
        assert_eq!(hash.redis_type, "hash");

        assert!(
            admin
                .inspect(&record_id("order.create", &unique("adm-none")))
                .await
                .expect("inspect")
                .is_none()
        );
    }
);

on_both!(
    admin_evict_refuses_a_live_reservation_unless_forced,
    |env| {
        let admin = Admin::new(env.store.clone());
        let key = unique("adm-evict-live");
        let id = record_id("order.create", &key);
        let redis_key = env.store.redis_key(&id);
        let lease = claim(&env.store, "order.create", &key).await;
        match admin.evict(&id, false).await.expect("evict") {
            Eviction::LiveReservation(found) => assert_eq!(found.owner_label(), lease.token()),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(exists(&env, &redis_key), "nothing removed");
        match admin.evict(&id, true).await.expect("evict") {
            Eviction::Removed { removed, forced } => {
                assert!(forced);
                assert_eq!(removed.owner_label(), lease.token());
            }
            other => panic!("expected a removal, got {other:?}"),
        }
        assert!(!exists(&env, &redis_key));
        assert!(matches!(
            admin.evict(&id, false).await.expect("evict"),
            Eviction::NotFound { .. }
        ));
    }
);

on_both!(admin_evict_removes_only_the_bytes_it_inspected, |env| {
    let admin = Admin::new(env.store.clone());
    // A completed record, inspected, then replaced by another writer.
    let key = unique("adm-evict-changed");
    let id = record_id("order.create", &key);
    let redis_key = env.store.redis_key(&id);
    env.store
        .save(
            &svc()
                .create_record("order.create", &key, &1)
                .expect("record"),
        )
        .await
        .expect("save");
    let found = admin.inspect(&id).await.expect("inspect").expect("found");
    let newer = svc()
        .create_record("order.create", &key, &2)
        .expect("record");
    env.store.replace(&newer).await.expect("replace");
    assert!(matches!(
        admin.evict_inspected(found, false).await.expect("evict"),
        Eviction::Changed(_)
    ));
    let kept = env.store.get(&id).await.expect("get").expect("still there");
    assert_eq!(kept.result().get(), "2", "the newer record was not removed");

    // The same with a value of another type: its DUMP decides.
    let hashed = unique("adm-evict-hash");
    let hid = record_id("order.create", &hashed);
    let hk = env.store.redis_key(&hid);
    env.raw(&hk, &[b"HSET", hk.as_bytes(), b"f", b"v"]);
    let found = admin.inspect(&hid).await.expect("inspect").expect("found");
    env.raw(&hk, &[b"HSET", hk.as_bytes(), b"g", b"w"]);
    assert!(matches!(
        admin.evict_inspected(found, false).await.expect("evict"),
        Eviction::Changed(_)
    ));
    assert!(exists(&env, &hk));
    match admin.evict(&hid, false).await.expect("evict") {
        Eviction::Removed { removed, forced } => {
            assert!(!forced);
            assert_eq!(removed.status_label(), "wrong-type");
        }
        other => panic!("expected a removal, got {other:?}"),
    }
    assert!(!exists(&env, &hk));

    // Unchanged: removed, and the removal returns what it was.
    match admin.evict(&id, false).await.expect("evict") {
        Eviction::Removed { removed, forced } => {
            assert!(!forced);
            assert_eq!(
                removed.record().map(|r| r.result().get().to_owned()),
                Some("2".into())
            );
        }
        other => panic!("expected a removal, got {other:?}"),
    }
    assert!(!exists(&env, &redis_key));
});

on_both!(admin_list_finds_every_record_of_an_operation, |env| {
    let admin = Admin::new(env.store.clone());
    let op = unique("adm-list");
    let mut expected = BTreeSet::new();
    for i in 0..20 {
        let key = format!("k{i}");
        env.store
            .save(&svc().create_record(&op, &key, &i).expect("record"))
            .await
            .expect("save");
        expected.insert(key);
    }
    let _p = claim(&env.store, &op, "pending-1").await;
    expected.insert("pending-1".to_owned());
    // Another operation sharing the prefix of this one's name is not listed.
    env.store
        .save(
            &svc()
                .create_record(&format!("{op}x"), "other", &0)
                .expect("record"),
        )
        .await
        .expect("save");
    if let Some(cluster) = &env.cluster {
        let masters: BTreeSet<u16> = expected
            .iter()
            .map(|k| cluster.owner_port(&format!("idempotency:{op}:{k}")))
            .collect();
        assert!(masters.len() >= 2, "the records span masters: {masters:?}");
    }

    let collect = |filter: ListFilter| {
        let admin = admin.clone();
        async move {
            let mut pages = admin.list(filter.page_size(5));
            let mut keys = Vec::new();
            while let Some(page) = pages.next_page().await.expect("page") {
                keys.extend(page.into_iter().map(|f| f.id.key().to_owned()));
            }
            keys
        }
    };
    let all: BTreeSet<String> = collect(ListFilter::new().operation(op.clone()))
        .await
        .into_iter()
        .collect();
    assert_eq!(all, expected);
    let pending = collect(
        ListFilter::new()
            .operation(op.clone())
            .status(RecordStatus::Pending),
    )
    .await;
    assert_eq!(pending, vec!["pending-1".to_owned()]);
    let limited = collect(ListFilter::new().operation(op.clone()).limit(7)).await;
    assert_eq!(limited.len(), 7);
});

on_both!(admin_stats_count_and_sample, |env| {
    let admin = Admin::new(env.store.clone());
    let op = unique("adm-stats");
    for i in 0..4 {
        env.store
            .save(
                &svc()
                    .create_record(&op, &format!("c{i}"), &i)
                    .expect("record"),
            )
            .await
            .expect("save");
    }
    let _p = claim(&env.store, &op, "p").await;
    let stats = admin
        .stats(&StatsOptions::new().operation(op.clone()))
        .await
        .expect("stats");
    assert!(!stats.sampled);
    assert_eq!(stats.examined, 5);
    assert_eq!(stats.counts[&op]["completed"], 4);
    assert_eq!(stats.counts[&op]["pending"], 1);
    assert_eq!(stats.total_with_status("pending"), 1);
    assert_eq!(stats.ttl_histogram.iter().map(|(_, n)| n).sum::<u64>(), 5);
    assert!(stats.memory_bytes > 0);
    assert!(stats.db_keys.is_some_and(|n| n >= 5));

    let exact = admin
        .stats(&StatsOptions::new().operation(op.clone()).max_keys(5))
        .await
        .expect("stats");
    assert!(!exact.sampled, "exactly the limit is the whole keyspace");
    let sampled = admin
        .stats(&StatsOptions::new().operation(op.clone()).max_keys(3))
        .await
        .expect("stats");
    assert!(sampled.sampled);
    assert_eq!(sampled.examined, 3);
});

on_both!(
    admin_watch_returns_when_the_owner_completes_or_releases,
    |env| {
        let admin = Admin::new(env.store.clone());
        let key = unique("adm-watch");
        let id = record_id("order.create", &key);
        let lease = claim(&env.store, "order.create", &key).await;
        let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
        let watcher = {
            let admin = admin.clone();
            let id = id.clone();
            tokio::spawn(async move {
                let mut seen = Some(seen_tx);
                admin
                    .watch_with(&id, Duration::from_secs(120), move |found| {
                        if let Some(tx) = seen.take() {
                            let _ = tx.send(found.owner_label());
                        }
                    })
                    .await
            })
        };
        // The watch saw the reservation before the owner completes.
        assert_eq!(seen_rx.await.expect("saw pending"), lease.token());
        let raw = RawValue::from_string("{\"ok\":1}".to_owned()).expect("raw");
        env.store
            .complete(&lease, &raw, Duration::from_secs(600))
            .await
            .expect("complete");
        match watcher.await.expect("joined").expect("watch") {
            WatchOutcome::Completed(found) => {
                assert_eq!(found.to_json()["result"], serde_json::json!({"ok": 1}));
            }
            other => panic!("expected completed, got {other:?}"),
        }

        let released = unique("adm-watch-rel");
        let rid = record_id("order.create", &released);
        let lease = claim(&env.store, "order.create", &released).await;
        let (seen_tx, seen_rx) = tokio::sync::oneshot::channel::<()>();
        let watcher = {
            let admin = admin.clone();
            let rid = rid.clone();
            tokio::spawn(async move {
                let mut seen = Some(seen_tx);
                admin
                    .watch_with(&rid, Duration::from_secs(120), move |_| {
                        if let Some(tx) = seen.take() {
                            let _ = tx.send(());
                        }
                    })
                    .await
            })
        };
        seen_rx.await.expect("saw pending");
        env.store.release(&lease).await.expect("release");
        assert!(matches!(
            watcher.await.expect("joined").expect("watch"),
            WatchOutcome::Released
        ));

        let stuck = unique("adm-watch-stuck");
        let _held = claim(&env.store, "order.create", &stuck).await;
        assert!(matches!(
            admin
                .watch(
                    &record_id("order.create", &stuck),
                    Duration::from_millis(300)
                )
                .await
                .expect("watch"),
            WatchOutcome::TimedOut(_)
        ));
        assert!(matches!(
            admin
                .watch(
                    &record_id("order.create", &unique("adm-watch-none")),
                    Duration::from_secs(5)
                )
                .await
                .expect("watch"),
            WatchOutcome::NotFound
        ));
    }
);
