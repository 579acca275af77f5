//! The storage trait against real redis-server processes, standalone and cluster.

use std::time::Duration;

use crate::common::{svc, unique};
use idempotency_core::BulkRepository;
use idempotency_core::{IdempotencyError, IdempotencyRepository, RecordOptions, SaveManyOptions};
use idempotency_testkit::resp::Reply;

on_both!(save_get_replace_delete, |env| {
    let key = unique("basic");
    let store = &env.store;
    assert_eq!(
        store
            .get(&idempotency_testkit::record_id("user.create", &key))
            .await
            .expect("get"),
        None
    );
    let record = svc()
        .create_record("user.create", &key, &serde_json::json!({"id": 1}))
        .expect("record");
    store.save(&record).await.expect("save");
    assert_eq!(
        store
            .get(&idempotency_testkit::record_id("user.create", &key))
            .await
            .expect("get"),
        Some(record.clone())
    );
    let err = store.save(&record).await.expect_err("collision");
    assert!(
        matches!(err, IdempotencyError::KeyCollision { ref keys, .. } if keys == std::slice::from_ref(&key))
    );
    let newer = svc()
        .create_record("user.create", &key, &2)
        .expect("record");
    store.replace(&newer).await.expect("replace");
    assert_eq!(
        store
            .get(&idempotency_testkit::record_id("user.create", &key))
            .await
            .expect("get"),
        Some(newer)
    );
    assert!(
        store
            .delete(&idempotency_testkit::record_id("user.create", &key))
            .await
            .expect("delete")
    );
    assert!(
        !store
            .delete(&idempotency_testkit::record_id("user.create", &key))
            .await
            .expect("delete again")
    );
    assert_eq!(
        store
            .get(&idempotency_testkit::record_id("user.create", &key))
            .await
            .expect("get"),
        None
    );
    assert!(env.metrics.methods().contains(&"delete".to_owned()));
});

on_both!(invalid_keys_are_refused_before_any_io, |env| {
    let before = env.metrics.calls().len();
    // Single-key calls take a `RecordId`, which an invalid pair cannot become.
    assert!(
        idempotency_core::RecordId::new("op", "a:b")
            .expect_err("colon")
            .is_validation()
    );
    assert!(
        idempotency_core::RecordId::new(" ", "k")
            .expect_err("blank")
            .is_validation()
    );
    assert!(
        env.store
            .get_many("op", &["fine", ""])
            .await
            .expect_err("blank")
            .is_validation()
    );
    assert!(
        env.store
            .delete_many("op", &["x".repeat(256)])
            .await
            .expect_err("long")
            .is_validation()
    );
    assert_eq!(
        env.metrics.calls().len(),
        before,
        "no storage call was made"
    );
});

on_both!(redis_ttl_is_the_remaining_lifetime_rounded_up, |env| {
    let key = unique("ttl");
    let started = std::time::Instant::now();
    let record = svc()
        .create_record_with("op", &key, &1, &RecordOptions::new().ttl_minutes(2))
        .expect("record");
    env.store.save(&record).await.expect("save");
    let redis_key = env
        .store
        .redis_key(&idempotency_testkit::record_id("op", &key));
    let pttl = env
        .raw(&redis_key, &[b"PTTL", redis_key.as_bytes()])
        .as_int()
        .expect("pttl");
    // Rounded up to the next millisecond: PTTL counts whole milliseconds down.
    let elapsed = i64::try_from(started.elapsed().as_millis()).expect("ms") + 1;
    assert!(pttl <= 120_000, "never longer than the record: {pttl}");
    // Rounded up, Redis holds 120 s minus the time spent since; rounded down it would hold at
    // most 119 s minus that time. Judged against the measured time, so a loaded machine cannot
    // fail it (it can only stop it from telling the two apart, when a second is lost here).
    assert!(
        pttl >= 120_000 - elapsed,
        "rounded up, not down: {pttl} ms after {elapsed} ms"
    );
});

on_both!(an_expired_record_cannot_be_saved, |env| {
    let key = unique("expired");
    let record = svc()
        .create_record("op", &key, &1)
        .expect("r")
        .with_expires_at(time::OffsetDateTime::now_utc());
    assert!(
        env.store
            .save(&record)
            .await
            .expect_err("expired")
            .is_validation()
    );
    assert_eq!(
        env.store
            .get(&idempotency_testkit::record_id("op", &key))
            .await
            .expect("get"),
        None
    );
});

on_both!(
    a_record_expired_by_its_own_clock_is_a_miss_and_is_deleted,
    |env| {
        let key = unique("stale");
        let redis_key = env
            .store
            .redis_key(&idempotency_testkit::record_id("op", &key));
        let raw = format!(
            r#"{{"operation":"op","idempotency_key":"{key}","result":1,"created_at":"2020-01-01T00:00:00Z","expires_at":"2020-01-01T00:00:30Z","status":"completed","fingerprint":null}}"#
        );
        env.raw(
            &redis_key,
            &[b"SET", redis_key.as_bytes(), raw.as_bytes(), b"EX", b"60"],
        );
        assert_eq!(
            env.store
                .get(&idempotency_testkit::record_id("op", &key))
                .await
                .expect("get"),
            None
        );
        assert_eq!(
            env.raw(&redis_key, &[b"EXISTS", redis_key.as_bytes()])
                .as_int(),
            Some(0)
        );
    }
);

on_both!(corrupted_bytes_give_a_typed_error_and_stay, |env| {
    let key = unique("corrupt");
    let redis_key = env
        .store
        .redis_key(&idempotency_testkit::record_id("op", &key));
    for bytes in [
        &b"not json"[..],
        b"\xff\xfe\x00",
        b"{\"operation\":",
        b"[]",
        b"null",
        b"{}",
    ] {
        env.raw(&redis_key, &[b"SET", redis_key.as_bytes(), bytes]);
        let err = env
            .store
            .get(&idempotency_testkit::record_id("op", &key))
            .await
            .expect_err("corrupt");
        assert!(
            matches!(
                err,
                IdempotencyError::CorruptedRecord { .. } | IdempotencyError::InvalidRecord { .. }
            ),
            "{bytes:?}: {err:?}"
        );
        assert!(!err.is_storage());
        let err = env
            .store
            .get_many("op", &[&key])
            .await
            .expect_err("corrupt");
        assert!(!err.is_storage(), "{err:?}");
        assert_eq!(
            env.raw(&redis_key, &[b"EXISTS", redis_key.as_bytes()])
                .as_int(),
            Some(1)
        );
    }
    assert!(
        env.metrics
            .calls()
            .iter()
            .any(|(k, _, d)| k == "error" && d == "validation_error")
    );
});

on_both!(a_key_of_the_wrong_redis_type_is_a_data_error, |env| {
    let key = unique("wrongtype");
    let redis_key = env
        .store
        .redis_key(&idempotency_testkit::record_id("op", &key));
    env.raw(&redis_key, &[b"HSET", redis_key.as_bytes(), b"f", b"v"]);
    let err = env
        .store
        .get(&idempotency_testkit::record_id("op", &key))
        .await
        .expect_err("wrongtype");
    // A permanent fault of the data under the key, never an outage that fail-open mode
    // would run the action over.
    assert!(!err.is_storage(), "{err:?}");
    assert_eq!(err.class(), idempotency_core::ErrorClass::Data, "{err:?}");
    assert!(err.to_string().contains(&key), "names the key: {err}");
    let source = std::error::Error::source(&err).expect("cause").to_string();
    assert!(source.contains("WRONGTYPE"), "{source}");
    assert!(
        env.metrics
            .calls()
            .iter()
            .any(|(k, _, d)| k == "error" && d == "response_error")
    );
});

on_both!(bulk_operations_span_every_slot, |env| {
    let prefix = unique("bulk");
    let keys: Vec<String> = (0..300).map(|i| format!("{prefix}-{i}")).collect();
    let records: Vec<_> = keys
        .iter()
        .map(|k| svc().create_record("bulk.op", k, &k).expect("r"))
        .collect();
    env.store
        .save_many(&records, SaveManyOptions::default())
        .await
        .expect("save_many");
    env.metrics.clear();
    let mut asked = keys.clone();
    asked.push(format!("{prefix}-missing"));
    let found = env
        .store
        .get_many("bulk.op", &asked)
        .await
        .expect("get_many");
    assert_eq!(found.len(), 300);
    assert_eq!(found[&keys[7]].result().get(), format!("\"{}\"", keys[7]));
    let calls = env.metrics.calls();
    assert!(
        calls.contains(&("bulk_hit".into(), "bulk.op".into(), "300".into())),
        "{calls:?}"
    );
    assert!(
        calls.contains(&("bulk_miss".into(), "bulk.op".into(), "1".into())),
        "{calls:?}"
    );
    assert_eq!(
        env.store
            .delete_many("bulk.op", &asked)
            .await
            .expect("delete_many"),
        300
    );
    assert!(
        env.store
            .get_many("bulk.op", &keys)
            .await
            .expect("get_many")
            .is_empty()
    );
    let methods = env.metrics.methods();
    assert!(
        methods.contains(&"get_many".to_owned()) && methods.contains(&"delete_many".to_owned()),
        "{methods:?}"
    );
});

on_both!(save_many_names_every_collision_and_keeps_the_rest, |env| {
    let prefix = unique("coll");
    let taken: Vec<String> = (0..3).map(|i| format!("{prefix}-taken-{i}")).collect();
    for k in &taken {
        env.store
            .save(&svc().create_record("op", k, &0).expect("r"))
            .await
            .expect("save");
    }
    let fresh: Vec<String> = (0..5).map(|i| format!("{prefix}-fresh-{i}")).collect();
    let batch: Vec<_> = taken
        .iter()
        .chain(&fresh)
        .map(|k| svc().create_record("op", k, &1).expect("r"))
        .collect();
    let err = env
        .store
        .save_many(&batch, SaveManyOptions::default())
        .await
        .expect_err("collisions");
    match err {
        IdempotencyError::BulkSave {
            collisions,
            saved,
            rolled_back,
            ..
        } => {
            assert_eq!(collisions, taken);
            assert_eq!(saved, fresh);
            assert!(!rolled_back);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        env.store
            .get_many("op", &fresh)
            .await
            .expect("get_many")
            .len(),
        5
    );
});

on_both!(
    save_many_with_rollback_deletes_exactly_what_it_wrote,
    |env| {
        let prefix = unique("rollback");
        let existing = svc()
            .create_record("op", &format!("{prefix}-2"), &"old")
            .expect("r");
        env.store.save(&existing).await.expect("save");
        let keys: Vec<String> = (0..20).map(|i| format!("{prefix}-{i}")).collect();
        let batch: Vec<_> = keys
            .iter()
            .map(|k| svc().create_record("op", k, &"new").expect("r"))
            .collect();
        let err = env
            .store
            .save_many(&batch, SaveManyOptions::rollback_on_error())
            .await
            .expect_err("collision");
        assert!(
            matches!(err, IdempotencyError::KeyCollision { ref keys, .. } if keys == &[format!("{prefix}-2")])
        );
        let left = env.store.get_many("op", &keys).await.expect("get_many");
        assert_eq!(left.len(), 1);
        assert_eq!(left[&format!("{prefix}-2")], existing);
    }
);

on_both!(save_many_reports_invalid_records_with_the_rest, |env| {
    let prefix = unique("invalid");
    let good = svc()
        .create_record("op", &format!("{prefix}-good"), &1)
        .expect("r");
    let bad = svc()
        .create_record("op", &format!("{prefix}-bad"), &1)
        .expect("r")
        .with_expires_at(time::OffsetDateTime::now_utc());
    let err = env
        .store
        .save_many(&[good.clone(), bad], SaveManyOptions::default())
        .await
        .expect_err("invalid");
    match err {
        IdempotencyError::BulkSave {
            invalid,
            saved,
            collisions,
            ..
        } => {
            assert_eq!(invalid.len(), 1);
            assert!(invalid[0].1.is_validation());
            assert_eq!(saved, [format!("{prefix}-good")]);
            assert!(collisions.is_empty());
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        env.store
            .get(&idempotency_testkit::record_id(
                "op",
                good.idempotency_key()
            ))
            .await
            .expect("get"),
        Some(good)
    );
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_gives_a_storage_error_within_the_timeout_and_the_store_recovers() {
    let mut server = idempotency_testkit::RedisServer::start();
    let options = idempotency_redis::ConnectOptions::default()
        .with_command_timeout(Duration::from_millis(500));
    let store = idempotency_redis::RedisStore::connect(&server.url(), &options)
        .await
        .expect("connect");
    let key = unique("outage");
    store
        .save(&svc().create_record("op", &key, &1).expect("r"))
        .await
        .expect("save");
    server.kill();
    let started = std::time::Instant::now();
    let err = store
        .get(&idempotency_testkit::record_id("op", &key))
        .await
        .expect_err("server down");
    assert!(err.is_storage(), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by the command timeout"
    );
    server.restart();
    // The store reconnects by itself; the restarted server is empty.
    let mut recovered = None;
    for _ in 0..50 {
        match store.get(&idempotency_testkit::record_id("op", &key)).await {
            Ok(found) => {
                recovered = Some(found);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(recovered, Some(None));
    store
        .save(&svc().create_record("op", &key, &2).expect("r"))
        .await
        .expect("save after restart");
    assert_eq!(
        server.cmd(&[
            "EXISTS",
            &store.redis_key(&idempotency_testkit::record_id("op", &key))
        ]),
        Reply::Int(1)
    );
}

#[tokio::test]
async fn connecting_to_nothing_is_an_error_at_start_up() {
    let port = idempotency_testkit::free_port();
    let options = idempotency_redis::ConnectOptions::default()
        .with_connect_timeout(Duration::from_millis(300))
        .with_command_timeout(Duration::from_millis(300));
    let err =
        idempotency_redis::RedisStore::connect(&format!("redis://127.0.0.1:{port}"), &options)
            .await
            .expect_err("nothing listens");
    assert!(err.is_storage());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_serves_the_store_like_a_client() {
    let server = idempotency_testkit::RedisServer::start();
    let options = idempotency_redis::ConnectOptions::default().with_pool_size(3);
    let connection = idempotency_redis::connect_client(&server.url(), &options)
        .await
        .expect("pool");
    assert!(matches!(connection, idempotency_redis::Connection::Pool(_)));
    let store = idempotency_redis::RedisStore::builder(connection)
        .key_prefix("pooled:")
        .build()
        .expect("store");
    let records: Vec<_> = (0..30)
        .map(|i| svc().create_record("op", &format!("k{i}"), &i).expect("r"))
        .collect();
    for r in &records {
        store.save(r).await.expect("save through the pool");
    }
    assert_eq!(
        store
            .get_many("op", &(0..30).map(|i| format!("k{i}")).collect::<Vec<_>>())
            .await
            .expect("get_many")
            .len(),
        30
    );
    assert_eq!(server.cmd(&["EXISTS", "pooled:op:k7"]), Reply::Int(1));
}
