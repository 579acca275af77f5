//! The coordinator's behaviour, each on the in-memory store, standalone Redis and a cluster.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::common::{Runs, unique};
use idempotency_coordinator::{InFlight, JsonAdapter, OnStorageError, VoidAdapter};
use idempotency_core::{
    IdempotencyDomainService, IdempotencyError, IdempotencyRepository, RecordOptions,
};
use idempotency_testkit::error_type;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Order {
    id: u64,
    note: String,
}

type Res<T> = Result<T, IdempotencyError>;

on_all!(no_key_runs_the_action_and_touches_nothing, |env| {
    let coordinator = env.coordinator(|b| b);
    let runs = Runs::default();
    for _ in 0..2 {
        let r = runs.clone();
        let v: u32 = coordinator
            .call("op", None)
            .run(|| async move { Ok::<_, IdempotencyError>(r.tick() as u32) })
            .await
            .expect("run");
        assert!(v > 0);
    }
    assert_eq!(runs.get(), 2);
    assert!(env.metrics.calls().is_empty() && env.metrics.methods().is_empty());
    // A disabled coordinator does the same for every call, keys included.
    let disabled = env.coordinator(|b| b.enabled(false));
    let key = unique("disabled");
    for _ in 0..2 {
        let r = runs.clone();
        let _: usize = disabled
            .call("op", Some(&key))
            .run(|| async move { Ok::<_, IdempotencyError>(r.tick()) })
            .await
            .expect("run");
    }
    assert_eq!(runs.get(), 4);
    assert!(env.metrics.calls().is_empty());
    assert_eq!(
        env.store
            .get(&idempotency_testkit::record_id("op", &key))
            .await
            .expect("get"),
        None
    );
});

on_all!(
    an_invalid_key_or_operation_is_refused_before_the_action,
    |env| {
        let coordinator = env.coordinator(|b| b);
        let runs = Runs::default();
        for (op, key) in [
            ("op", ""),
            ("op", "a:b"),
            ("", "k"),
            ("op", &"k".repeat(256)[..]),
        ] {
            let r = runs.clone();
            let err = coordinator
                .call(op, Some(key))
                .run(|| async move { Ok::<_, IdempotencyError>(r.tick()) })
                .await
                .expect_err("invalid");
            assert!(err.is_validation(), "{op:?}/{key:?}: {err:?}");
        }
        assert_eq!(runs.get(), 0, "never run unprotected");
    }
);

on_all!(
    a_retry_gets_the_stored_value_without_running_the_action,
    |env| {
        let coordinator = env.coordinator(|b| b);
        let key = unique("replay");
        let runs = Runs::default();
        let call = |note: &'static str| {
            let r = runs.clone();
            let coordinator = coordinator.clone();
            let key = key.clone();
            async move {
                coordinator
                    .call("order.create", Some(&key))
                    .run(|| async move {
                        Ok::<_, IdempotencyError>(Order {
                            id: r.tick() as u64,
                            note: note.into(),
                        })
                    })
                    .await
            }
        };
        let first = call("first").await.expect("first");
        let retry = call("retry").await.expect("retry");
        assert_eq!(
            first,
            Order {
                id: 1,
                note: "first".into()
            }
        );
        assert_eq!(retry, first);
        assert_eq!(runs.get(), 1);
        let record = env
            .store
            .get(&idempotency_testkit::record_id("order.create", &key))
            .await
            .expect("get")
            .expect("stored");
        assert!(!record.is_pending());
        assert_eq!(env.metrics.count("miss", ""), 1);
        assert_eq!(env.metrics.count("hit", ""), 1);
    }
);

on_all!(concurrent_duplicates_wait_and_get_the_same_result, |env| {
    let coordinator = env.coordinator(|b| b.in_flight(InFlight::Wait));
    let key = unique("wait");
    let runs = Runs::default();
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let coordinator = coordinator.clone();
            let key = key.clone();
            let r = runs.clone();
            tokio::spawn(async move {
                coordinator
                    .call("order.create", Some(&key))
                    .run(|| async move {
                        r.tick();
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Ok::<_, IdempotencyError>(Order {
                            id: i,
                            note: "once".into(),
                        })
                    })
                    .await
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("task").expect("call"));
    }
    assert_eq!(runs.get(), 1, "the action ran once");
    assert!(results.windows(2).all(|w| w[0] == w[1]), "{results:?}");
    assert!(env.metrics.count("collision", "") >= 1);
});

on_all!(raise_mode_refuses_a_duplicate_in_flight, |env| {
    let coordinator = env.coordinator(|b| b.in_flight(InFlight::Raise));
    let key = unique("raise");
    let owner =
        crate::common::start_holder(&coordinator, &key, None, Duration::from_millis(300), Ok(1))
            .await;
    let err = coordinator
        .call("op", Some(&key))
        .run(|| async { Ok::<_, IdempotencyError>(2u32) })
        .await
        .expect_err("in progress");
    assert!(
        matches!(err, IdempotencyError::InProgress { .. }),
        "{err:?}"
    );
    assert_eq!(err.http_status(), 409);
    assert_eq!(owner.await.expect("task").expect("owner"), 1);
    let after: u32 = coordinator
        .call("op", Some(&key))
        .run(|| async { Ok::<_, IdempotencyError>(3) })
        .await
        .expect("replay");
    assert_eq!(after, 1);
});

on_all!(run_mode_reads_runs_and_adopts_the_winner, |env| {
    let coordinator = env.coordinator(|b| b.in_flight(InFlight::Run));
    let key = unique("runmode");
    let first: u32 = coordinator
        .call("op", Some(&key))
        .run(|| async { Ok::<_, IdempotencyError>(1) })
        .await
        .expect("first");
    let retry: u32 = coordinator
        .call("op", Some(&key))
        .run(|| async { Ok::<_, IdempotencyError>(2) })
        .await
        .expect("retry");
    assert_eq!((first, retry), (1, 1));
    // Two racing callers: both run, the loser returns the winner's stored value.
    let key = unique("runrace");
    let gate = Arc::new(tokio::sync::Barrier::new(2));
    let tasks: Vec<_> = (0..2u32)
        .map(|i| {
            let coordinator = coordinator.clone();
            let key = key.clone();
            let gate = Arc::clone(&gate);
            tokio::spawn(async move {
                coordinator
                    .call("op", Some(&key))
                    .run(|| async move {
                        gate.wait().await;
                        tokio::time::sleep(Duration::from_millis(u64::from(i) * 100)).await;
                        Ok::<_, IdempotencyError>(i + 10)
                    })
                    .await
            })
        })
        .collect();
    let mut values = Vec::new();
    for t in tasks {
        values.push(t.await.expect("task").expect("call"));
    }
    assert_eq!(
        values,
        vec![10, 10],
        "the later writer adopted the stored value"
    );
    assert!(env.metrics.count("collision", "") >= 1);
});

on_all!(a_waiter_takes_over_when_the_owner_fails, |env| {
    let coordinator = env.coordinator(|b| b.in_flight(InFlight::Wait));
    let key = unique("takeover");
    let owner = crate::common::start_holder(
        &coordinator,
        &key,
        None,
        Duration::from_millis(200),
        Err(IdempotencyError::in_progress("app", "boom")),
    )
    .await;
    let waiter: u32 = coordinator
        .call("op", Some(&key))
        .run(|| async { Ok::<_, IdempotencyError>(7) })
        .await
        .expect("waiter runs");
    assert_eq!(waiter, 7);
    assert!(owner.await.expect("task").is_err());
});

on_all!(the_reservation_is_renewed_while_the_action_runs, |env| {
    let coordinator =
        env.coordinator(|b| b.lease(Duration::from_secs(1)).in_flight(InFlight::Raise));
    let key = unique("renew");
    let owner = {
        let coordinator = coordinator.clone();
        let key = key.clone();
        tokio::spawn(async move {
            coordinator
                .call("op", Some(&key))
                .run(|| async {
                    tokio::time::sleep(Duration::from_millis(2500)).await;
                    Ok::<_, IdempotencyError>(1u32)
                })
                .await
        })
    };
    // Well past one lease, the key is still held.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let err = coordinator
        .call("op", Some(&key))
        .run(|| async { Ok::<_, IdempotencyError>(2u32) })
        .await
        .expect_err("held");
    assert!(
        matches!(err, IdempotencyError::InProgress { .. }),
        "{err:?}"
    );
    assert_eq!(owner.await.expect("task").expect("owner"), 1);
    assert_eq!(env.metrics.count("error", error_type::STORAGE_RENEW), 0);
});

on_all!(a_failed_action_caches_nothing_and_the_retry_runs, |env| {
    let coordinator = env.coordinator(|b| b);
    let key = unique("fails");
    let err = coordinator
        .call("op", Some(&key))
        .run(|| async { Err::<u32, _>(IdempotencyError::in_progress("app", "failure")) })
        .await
        .expect_err("fails");
    assert!(
        matches!(err, IdempotencyError::InProgress { ref operation, .. } if operation == "app")
    );
    assert_eq!(
        env.store
            .get(&idempotency_testkit::record_id("op", &key))
            .await
            .expect("get"),
        None,
        "released"
    );
    let v: u32 = coordinator
        .call("op", Some(&key))
        .run(|| async { Ok::<_, IdempotencyError>(5) })
        .await
        .expect("retry");
    assert_eq!(v, 5);
});

on_all!(a_dropped_call_releases_its_reservation, |env| {
    let coordinator = env.coordinator(|b| b.in_flight(InFlight::Raise));
    let key = unique("cancel");
    let call = coordinator.call("op", Some(&key)).run(|| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok::<_, IdempotencyError>(1u32)
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(200), call)
            .await
            .is_err(),
        "timed out"
    );
    // The release runs in the background right after the drop.
    let mut free = false;
    for _ in 0..100 {
        if env
            .store
            .get(&idempotency_testkit::record_id("op", &key))
            .await
            .expect("get")
            .is_none()
        {
            free = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        free,
        "the reservation was released, not left to its 30 s lease"
    );
    let v: u32 = coordinator
        .call("op", Some(&key))
        .run(|| async { Ok::<_, IdempotencyError>(2) })
        .await
        .expect("retry runs");
    assert_eq!(v, 2);
});

on_all!(a_key_reused_for_another_request_is_refused, |env| {
    let coordinator = env.coordinator(|b| b);
    let key = unique("reuse");
    let v: u32 = coordinator
        .call("op", Some(&key))
        .fingerprint("A")
        .run(|| async { Ok::<_, IdempotencyError>(1) })
        .await
        .expect("first");
    assert_eq!(v, 1);
    let err = coordinator
        .call("op", Some(&key))
        .fingerprint("B")
        .run(|| async { Ok::<_, IdempotencyError>(2u32) })
        .await
        .expect_err("reuse");
    assert!(
        matches!(err, IdempotencyError::KeyReuse { ref stored, ref given, .. } if stored == "A" && given == "B")
    );
    assert_eq!(err.http_status(), 422);
    let same: u32 = coordinator
        .call("op", Some(&key))
        .fingerprint("A")
        .run(|| async { Ok::<_, IdempotencyError>(3) })
        .await
        .expect("same");
    let none: u32 = coordinator
        .call("op", Some(&key))
        .run(|| async { Ok::<_, IdempotencyError>(4) })
        .await
        .expect("no fingerprint");
    assert_eq!((same, none), (1, 1));
    assert_eq!(env.metrics.count("error", error_type::KEY_REUSE), 1);
    // The replay path of run mode refuses it too.
    let run_mode = env.coordinator(|b| b.in_flight(InFlight::Run));
    assert!(matches!(
        run_mode
            .call("op", Some(&key))
            .fingerprint("B")
            .run(|| async { Ok::<_, IdempotencyError>(5u32) })
            .await,
        Err(IdempotencyError::KeyReuse { .. })
    ));
});

on_all!(
    a_waiter_with_another_fingerprint_is_refused_at_once,
    |env| {
        let coordinator = env.coordinator(|b| b.in_flight(InFlight::Wait));
        let key = unique("reusewait");
        let owner = crate::common::start_holder(
            &coordinator,
            &key,
            Some("A"),
            Duration::from_millis(300),
            Ok(1),
        )
        .await;
        let err = coordinator
            .call("op", Some(&key))
            .fingerprint("B")
            .run(|| async { Ok::<_, IdempotencyError>(2u32) })
            .await
            .expect_err("reuse");
        assert!(matches!(err, IdempotencyError::KeyReuse { .. }));
        assert!(owner.is_finished() || owner.await.is_ok());
    }
);

on_all!(
    storage_failure_before_the_action_runs_it_unprotected_by_default,
    |env| {
        let coordinator = env.coordinator(|b| b);
        env.faults().claim.store(true, Ordering::SeqCst);
        let key = unique("degrade");
        let runs = Runs::default();
        let r = runs.clone();
        let v: usize = coordinator
            .call("op", Some(&key))
            .run(|| async move { Ok::<_, IdempotencyError>(r.tick()) })
            .await
            .expect("degraded");
        assert_eq!((v, runs.get()), (1, 1));
        assert_eq!(env.metrics.count("error", error_type::STORAGE_RESERVE), 1);
    }
);

on_all!(
    storage_failure_before_the_action_fails_closed_in_raise_mode,
    |env| {
        let coordinator = env.coordinator(|b| b.on_storage_error(OnStorageError::Raise));
        env.faults().claim.store(true, Ordering::SeqCst);
        let runs = Runs::default();
        let r = runs.clone();
        let err = coordinator
            .call("op", Some(&unique("closed")))
            .run(|| async move { Ok::<_, IdempotencyError>(r.tick()) })
            .await
            .expect_err("fail closed");
        assert!(err.is_storage());
        assert_eq!(err.http_status(), 503);
        assert_eq!(runs.get(), 0);
        // Run mode reads first: its read failing also fails closed.
        env.faults().get.store(true, Ordering::SeqCst);
        let run_mode = env.coordinator(|b| {
            b.in_flight(InFlight::Run)
                .on_storage_error(OnStorageError::Raise)
        });
        let r = runs.clone();
        assert!(
            run_mode
                .call("op", Some(&unique("closed")))
                .run(|| async move { Ok::<_, IdempotencyError>(r.tick()) })
                .await
                .expect_err("closed")
                .is_storage()
        );
        assert_eq!(runs.get(), 0);
    }
);

on_all!(
    storage_failures_after_the_action_never_fail_the_call,
    |env| {
        let coordinator = env.coordinator(|b| b.lease(Duration::from_secs(1)));
        let key = unique("after");
        env.faults().renew.store(true, Ordering::SeqCst);
        env.faults().complete.store(true, Ordering::SeqCst);
        let v: u32 = coordinator
            .call("op", Some(&key))
            .run(|| async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                Ok::<_, IdempotencyError>(9)
            })
            .await
            .expect("the value despite storage trouble");
        assert_eq!(v, 9);
        assert_eq!(env.metrics.count("error", error_type::STORAGE_SAVE), 1);
        assert!(env.metrics.count("error", error_type::STORAGE_RENEW) >= 1);
        // Not stored, and the reservation is released in the background (the store just
        // failed, so the caller does not wait for it): wait for it to land before the
        // release fault below is switched on.
        let id = idempotency_testkit::record_id("op", &key);
        let mut released = false;
        for _ in 0..250 {
            if env.store.get(&id).await.expect("get").is_none() {
                released = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(released, "the background release freed the key");
        env.faults().complete.store(false, Ordering::SeqCst);
        env.faults().release.store(true, Ordering::SeqCst);
        let err_key = unique("after-release");
        let e = coordinator
            .call("op", Some(&err_key))
            .run(|| async { Err::<u32, _>(IdempotencyError::in_progress("app", "x")) })
            .await;
        assert!(e.is_err());
        assert_eq!(env.metrics.count("error", error_type::STORAGE_RELEASE), 1);
        let retry: u32 = coordinator
            .call("op", Some(&key))
            .run(|| async { Ok::<_, IdempotencyError>(10) })
            .await
            .expect("retry");
        assert_eq!(retry, 10);
    }
);

on_all!(
    an_undecodable_stored_result_is_an_error_and_never_a_second_run,
    |env| {
        // The action ran once and stored a result this caller's type cannot hold: running it
        // again would be the double execution the library exists to prevent.
        let coordinator = env.coordinator(|b| b);
        let key = unique("undecodable");
        let text: String = coordinator
            .call("op", Some(&key))
            .run(|| async { Ok::<_, IdempotencyError>("text".to_owned()) })
            .await
            .expect("seed");
        assert_eq!(text, "text");
        let runs = Runs::default();
        let number: Result<u32, IdempotencyError> = coordinator
            .call("op", Some(&key))
            .run(|| {
                let runs = runs.clone();
                async move {
                    runs.tick();
                    Ok(42)
                }
            })
            .await;
        let err = number.expect_err("cannot replay a string as a number");
        assert_eq!(err.class(), idempotency_core::ErrorClass::Data, "{err}");
        assert_eq!(runs.get(), 0, "the action did not run again");
        assert_eq!(env.metrics.count("error", error_type::DECODE), 1);
        let again: String = coordinator
            .call("op", Some(&key))
            .run(|| async { Ok::<_, IdempotencyError>("other".to_owned()) })
            .await
            .expect("replay");
        assert_eq!(again, "text", "the stored result stands");
    }
);

on_all!(
    an_unencodable_result_is_returned_and_never_run_again,
    |env| {
        let coordinator = env.coordinator(|b| b);
        let key = unique("unencodable");
        let make = || {
            let mut m = HashMap::new();
            m.insert((1u8, 2u8), 3u8);
            m
        };
        let v: HashMap<(u8, u8), u8> = coordinator
            .call("op", Some(&key))
            .run(|| async { Ok::<_, IdempotencyError>(make()) })
            .await
            .expect("value");
        assert_eq!(v, make());
        assert_eq!(env.metrics.count("error", error_type::RECORD_VALIDATION), 1);
        // The key keeps that the action ran and its result could not be stored.
        let kept = env
            .store
            .get(&idempotency_testkit::record_id("op", &key))
            .await
            .expect("get")
            .expect("a record");
        assert!(kept.is_stored_error());
        assert!(idempotency_core::unstorable_reason(kept.result()).is_some());
        let retry: Result<HashMap<(u8, u8), u8>, IdempotencyError> = coordinator
            .call("op", Some(&key))
            .run(|| async { panic!("the action ran again") })
            .await;
        assert!(
            matches!(retry, Err(IdempotencyError::ResultNotStorable { .. })),
            "{retry:?}"
        );
    }
);

on_all!(ttl_precedence_is_override_then_call_then_default, |env| {
    let coordinator = env.coordinator(|b| b.operation_ttl("pinned", Duration::from_secs(120)));
    let ttl_of = |op: &'static str, key: String| {
        let store = env.store.clone();
        async move {
            let record = store
                .get(&idempotency_testkit::record_id(op, &key))
                .await
                .expect("get")
                .expect("stored");
            // The TTL the record was written with, exact whatever the machine's load: the
            // remaining time would drift with the seconds a loaded CI spends between calls.
            (record.expires_at() - record.created_at()).whole_milliseconds()
        }
    };
    let (a, b, c) = (unique("ttl"), unique("ttl"), unique("ttl"));
    let _: u8 = coordinator
        .call("pinned", Some(&a))
        .ttl(Duration::from_secs(600))
        .run(|| async { Ok::<_, IdempotencyError>(1) })
        .await
        .expect("a");
    let _: u8 = coordinator
        .call("free", Some(&b))
        .ttl(Duration::from_secs(600))
        .run(|| async { Ok::<_, IdempotencyError>(1) })
        .await
        .expect("b");
    let _: u8 = coordinator
        .call("free", Some(&c))
        .run(|| async { Ok::<_, IdempotencyError>(1) })
        .await
        .expect("c");
    assert_eq!(
        ttl_of("pinned", a).await,
        120_000,
        "the operation's override wins"
    );
    assert_eq!(ttl_of("free", b).await, 600_000, "then the call's TTL");
    assert_eq!(ttl_of("free", c).await, 1_800_000, "then the default");
    let err = coordinator
        .call("free", Some(&unique("ttl")))
        .ttl(Duration::from_secs(5))
        .run(|| async { Ok::<_, IdempotencyError>(1u8) })
        .await
        .expect_err("too short");
    assert!(matches!(err, IdempotencyError::InvalidTtl { .. }));
});

on_all!(a_lost_lease_keeps_the_newer_record_and_is_counted, |env| {
    let coordinator =
        env.coordinator(|b| b.lease(Duration::from_secs(1)).in_flight(InFlight::Raise));
    let key = unique("lost");
    env.faults().renew.store(true, Ordering::SeqCst);
    let stalled = {
        let coordinator = coordinator.clone();
        let key = key.clone();
        tokio::spawn(async move {
            coordinator
                .call("op", Some(&key))
                .run(|| async {
                    tokio::time::sleep(Duration::from_millis(2000)).await;
                    Ok::<_, IdempotencyError>("stalled".to_owned())
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let newer: String = coordinator
        .call("op", Some(&key))
        .run(|| async { Ok::<_, IdempotencyError>("newer".to_owned()) })
        .await
        .expect("took over");
    assert_eq!(newer, "newer");
    assert_eq!(
        stalled
            .await
            .expect("task")
            .expect("stalled returns its value"),
        "stalled"
    );
    assert_eq!(env.metrics.count("error", error_type::LEASE_LOST), 1);
    let stored = env
        .store
        .get(&idempotency_testkit::record_id("op", &key))
        .await
        .expect("get")
        .expect("record");
    assert_eq!(stored.result().get(), "\"newer\"");
});

on_all!(json_and_void_adapters_round_trip, |env| {
    let coordinator = env.coordinator(|b| b);
    let key = unique("json");
    let v = serde_json::json!({"z": 1, "a": [1.5, null]});
    let first = coordinator
        .call("op", Some(&key))
        .adapter(JsonAdapter)
        .run(|| {
            let v = v.clone();
            async move { Ok::<_, IdempotencyError>(v) }
        })
        .await
        .expect("json");
    let again = coordinator
        .call("op", Some(&key))
        .adapter(JsonAdapter)
        .run(|| async { Ok::<_, IdempotencyError>(serde_json::Value::Null) })
        .await
        .expect("replay");
    assert_eq!((first, again), (v.clone(), v));
    let key = unique("void");
    let runs = Runs::default();
    for _ in 0..2 {
        let r = runs.clone();
        coordinator
            .call("op", Some(&key))
            .adapter(VoidAdapter)
            .run(|| async move {
                r.tick();
                Ok::<_, IdempotencyError>(())
            })
            .await
            .expect("void");
    }
    assert_eq!(runs.get(), 1);
    assert_eq!(
        env.store
            .get(&idempotency_testkit::record_id("op", &key))
            .await
            .expect("get")
            .expect("stored")
            .result()
            .get(),
        "null"
    );
});

#[tokio::test]
async fn a_stored_null_is_unusable_for_a_non_option_type() {
    let env = crate::common::memory();
    let coordinator = env.coordinator(|b| b);
    let record = IdempotencyDomainService::default()
        .create_record_with("op", "k", &serde_json::Value::Null, &RecordOptions::new())
        .expect("r");
    env.store.save(&record).await.expect("save");
    let v: Res<u32> = coordinator
        .call("op", Some("k"))
        .run(|| async { Ok(5) })
        .await;
    assert!(
        v.is_err(),
        "a stored null is no u32, and the action does not run again"
    );
    let opt: Option<u32> = coordinator
        .call("op", Some("k2"))
        .run(|| async { Ok::<_, IdempotencyError>(None) })
        .await
        .expect("none");
    let replay: Option<u32> = coordinator
        .call("op", Some("k2"))
        .run(|| async { Ok::<_, IdempotencyError>(Some(1)) })
        .await
        .expect("replay");
    assert_eq!((opt, replay), (None, None));
}
