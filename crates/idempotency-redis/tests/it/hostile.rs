//! Hostile keys and bytes through real Redis: characters that matter to Redis, Lua and
//! JSON; Unicode at the length limits; arbitrary bytes under a key.

use crate::common::{svc, unique};
use idempotency_core::BulkRepository;
use idempotency_core::{
    Claim, Clock, Fence, IdempotencyError, IdempotencyRepository, Lease, RawValue, RecordId,
    ReservationStore,
};
use proptest::prelude::*;

const ODD_KEYS: &[&str] = &[
    "with space",
    "quote\"d",
    "single'quote",
    "back\\slash",
    "{hash}tag",
    "}{",
    "line\nbreak",
    "tab\tin",
    "nul\u{0}byte",
    "lua]]end--[[",
    "%s%d",
    "ключ-名前-🚀",
    "\"owner\"=\"deadbeef\"",
];

on_both!(odd_keys_are_stored_and_read_back, |env| {
    let suffix = unique("odd");
    let mut keys: Vec<String> = ODD_KEYS.iter().map(|k| format!("{k}-{suffix}")).collect();
    keys.push("🚀".repeat(255));
    keys.push("é".repeat(255));
    for key in &keys {
        let record = svc()
            .create_record("odd.op", key, &serde_json::json!({"key": key}))
            .expect("valid key");
        env.store.save(&record).await.expect("save");
        assert_eq!(
            env.store
                .get(&idempotency_testkit::record_id("odd.op", key))
                .await
                .expect("get"),
            Some(record),
            "{key:?}"
        );
        // The fenced scripts handle the same keys.
        env.store
            .delete(&idempotency_testkit::record_id("odd.op", key))
            .await
            .expect("delete");
        let lease = Lease::new(
            RecordId::new("odd.op", key).expect("valid key"),
            None,
            Clock::system(),
        );
        assert_eq!(
            env.store
                .claim(&lease, std::time::Duration::from_secs(5))
                .await
                .expect("claim"),
            Claim::Acquired,
            "free key {key:?}"
        );
        let done = RawValue::from_string("1".into()).expect("json");
        assert_eq!(
            env.store
                .complete(&lease, &done, std::time::Duration::from_secs(60))
                .await
                .expect("complete"),
            Fence::Held,
            "{key:?}"
        );
    }
    let found = env.store.get_many("odd.op", &keys).await.expect("get_many");
    assert_eq!(found.len(), keys.len());
    assert_eq!(
        env.store
            .delete_many("odd.op", &keys)
            .await
            .expect("delete_many"),
        keys.len() as u64
    );
});

on_both!(
    a_fingerprint_spelling_an_owner_fragment_cannot_fake_ownership,
    |env| {
        // The stored JSON spells the stranger's owner fragment inside the fingerprint;
        // the scripts decode the record and compare the owner field exactly.
        let rid = RecordId::new("op", &unique("fake")).expect("valid key");
        let stranger = Lease::new(rid.clone(), None, Clock::system());
        let fingerprint = format!("\"owner\":\"{}\"", stranger.token());
        let owner = Lease::new(rid.clone(), Some(&fingerprint), Clock::system());
        let lease = std::time::Duration::from_secs(30);
        assert_eq!(
            env.store.claim(&owner, lease).await.expect("claim"),
            Claim::Acquired
        );
        assert_eq!(
            env.store.release(&stranger).await.expect("release"),
            Fence::Lost
        );
        assert_eq!(
            env.store.renew(&stranger, lease).await.expect("renew"),
            Fence::Lost
        );
        let done = RawValue::from_string("1".into()).expect("json");
        assert_eq!(
            env.store
                .complete(&stranger, &done, lease)
                .await
                .expect("complete"),
            Fence::Lost
        );
        assert!(
            env.store
                .get(&idempotency_testkit::record_id("op", rid.key()))
                .await
                .expect("get")
                .is_some_and(|r| r.is_pending())
        );
    }
);

/// A server, a runtime to block on (proptest bodies are synchronous) and a store.
fn blocking_store() -> (
    idempotency_testkit::RedisServer,
    tokio::runtime::Runtime,
    idempotency_redis::RedisStore,
) {
    let server = idempotency_testkit::RedisServer::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let store = runtime
        .block_on(idempotency_redis::RedisStore::connect(
            &server.url(),
            &idempotency_redis::ConnectOptions::default(),
        ))
        .expect("connect");
    (server, runtime, store)
}

#[test]
fn arbitrary_bytes_under_a_key_give_a_record_or_a_typed_error() {
    let (server, runtime, store) = blocking_store();
    let redis_key = store.redis_key(&RecordId::new("op", "bytes").expect("valid key"));
    proptest!(ProptestConfig::with_cases(200), |(bytes in prop::collection::vec(any::<u8>(), 0..256))| {
        idempotency_testkit::resp::command_bytes(server.port(), &[b"SET", redis_key.as_bytes(), &bytes]).expect("set");
        match runtime.block_on(store.get(&idempotency_testkit::record_id("op", "bytes"))) {
            Ok(_) => {}
            Err(e) => prop_assert!(matches!(e, IdempotencyError::CorruptedRecord { .. } | IdempotencyError::InvalidRecord { .. }), "{e:?}"),
        }
    });
}

#[test]
fn arbitrary_valid_identifiers_round_trip_through_redis() {
    let (_server, runtime, store) = blocking_store();
    proptest!(ProptestConfig::with_cases(200), |(operation in "\\PC{1,40}", key in "\\PC{1,120}")| {
        let Ok(record) = svc().create_record(&operation, &key, &serde_json::json!([operation, key])) else {
            return Ok(()); // validation decided: nothing to store
        };
        runtime.block_on(store.replace(&record)).expect("replace");
        let back = runtime.block_on(store.get(&idempotency_testkit::record_id(&operation, &key))).expect("get");
        prop_assert_eq!(back, Some(record));
    });
}
