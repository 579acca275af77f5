//! The in-memory store's semantics: the same contract as the Redis store.

use std::time::Duration;

use idempotency_core::BulkRepository;
use idempotency_core::{
    Claim, Clock, Fence, IdempotencyDomainService, IdempotencyError, IdempotencyRepository, Lease,
    MemoryStore, RecordId, RecordOptions, ReservationStore, SaveManyOptions, Unfenced,
};

fn svc() -> IdempotencyDomainService {
    IdempotencyDomainService::new(
        Duration::from_secs(60),
        Duration::from_secs(1),
        Duration::from_secs(3600),
    )
    .expect("policy")
}

#[tokio::test]
async fn save_get_replace_delete() {
    let store = MemoryStore::new();
    let r1 = svc().create_record("op", "k", &1).expect("record");
    assert_eq!(
        store
            .get(&idempotency_testkit::record_id("op", "k"))
            .await
            .expect("get"),
        None
    );
    store.save(&r1).await.expect("save");
    assert_eq!(
        store
            .get(&idempotency_testkit::record_id("op", " k "))
            .await
            .expect("get"),
        Some(r1.clone())
    );
    let err = store.save(&r1).await.expect_err("collision");
    assert!(matches!(err, IdempotencyError::KeyCollision { ref keys, .. } if keys == &["k"]));
    let r2 = svc().create_record("op", "k", &2).expect("record");
    store.replace(&r2).await.expect("replace");
    assert_eq!(
        store
            .get(&idempotency_testkit::record_id("op", "k"))
            .await
            .expect("get"),
        Some(r2)
    );
    assert!(
        store
            .delete(&idempotency_testkit::record_id("op", "k"))
            .await
            .expect("delete")
    );
    assert!(
        !store
            .delete(&idempotency_testkit::record_id("op", "k"))
            .await
            .expect("delete again")
    );
    assert_eq!(
        store
            .get(&idempotency_testkit::record_id("op", "k"))
            .await
            .expect("get"),
        None
    );
}

#[tokio::test]
async fn invalid_identifiers_are_refused_before_touching_the_store() {
    // Single-key calls take a `RecordId`, which an invalid pair cannot become.
    assert!(
        RecordId::new("op", "a:b")
            .expect_err("colon")
            .is_validation()
    );
    assert!(RecordId::new("", "k").expect_err("empty").is_validation());
    let store = MemoryStore::new();
    assert!(
        store
            .get_many("op", &["ok", ""])
            .await
            .expect_err("one bad")
            .is_validation()
    );
}

#[tokio::test]
async fn the_same_key_under_two_operations_is_two_records() {
    let store = MemoryStore::new();
    store
        .save(&svc().create_record("user.create", "k", &1).expect("r"))
        .await
        .expect("save");
    store
        .save(
            &svc()
                .create_record("identifier.attach", "k", &2)
                .expect("r"),
        )
        .await
        .expect("save");
    assert_eq!(
        store
            .get(&idempotency_testkit::record_id("user.create", "k"))
            .await
            .expect("get")
            .expect("found")
            .result()
            .get(),
        "1"
    );
    assert_eq!(
        store
            .get(&idempotency_testkit::record_id("identifier.attach", "k"))
            .await
            .expect("get")
            .expect("found")
            .result()
            .get(),
        "2"
    );
}

#[tokio::test]
async fn expired_records_are_misses_and_free_the_key() {
    let store = MemoryStore::new();
    let record = svc()
        .create_record_with(
            "op",
            "k",
            &1,
            &RecordOptions::new().ttl(Duration::from_secs(1)),
        )
        .expect("r");
    store.save(&record).await.expect("save");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        store
            .get(&idempotency_testkit::record_id("op", "k"))
            .await
            .expect("get"),
        None
    );
    assert!(
        store
            .get_many("op", &["k"])
            .await
            .expect("get_many")
            .is_empty()
    );
    store
        .save(
            &record
                .clone()
                .with_expires_at(time::OffsetDateTime::now_utc() + time::Duration::minutes(1)),
        )
        .await
        .expect("key is free");
}

#[tokio::test]
async fn an_expired_record_cannot_be_saved() {
    let store = MemoryStore::new();
    let record = svc()
        .create_record("op", "k", &1)
        .expect("r")
        .with_expires_at(time::OffsetDateTime::now_utc());
    assert!(
        store
            .save(&record)
            .await
            .expect_err("expired")
            .is_validation()
    );
    assert!(store.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_saves_of_one_key_have_exactly_one_winner() {
    let store = MemoryStore::new();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let record = svc().create_record("op", "contended", &i).expect("r");
            store.save(&record).await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(()) => wins += 1,
            Err(e) => assert!(e.is_collision()),
        }
    }
    assert_eq!(wins, 1);
}

#[tokio::test]
async fn get_many_returns_only_found_records_by_key() {
    let store = MemoryStore::new();
    for k in ["a", "b"] {
        store
            .save(&svc().create_record("op", k, &k).expect("r"))
            .await
            .expect("save");
    }
    let found = store
        .get_many("op", &["a", "b", "c"])
        .await
        .expect("get_many");
    let mut keys: Vec<_> = found.keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["a", "b"]);
    assert_eq!(found["a"].result().get(), "\"a\"");
}

#[tokio::test]
async fn save_many_reports_every_collision_and_keeps_the_rest_without_rollback() {
    let store = MemoryStore::new();
    store
        .save(&svc().create_record("op", "k2", &0).expect("r"))
        .await
        .expect("save");
    store
        .save(&svc().create_record("op", "k4", &0).expect("r"))
        .await
        .expect("save");
    let batch: Vec<_> = (1..=4)
        .map(|i| svc().create_record("op", &format!("k{i}"), &i).expect("r"))
        .collect();
    let err = store
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
            assert_eq!(collisions, ["k2", "k4"]);
            assert_eq!(saved, ["k1", "k3"]);
            assert!(!rolled_back);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        store
            .get(&idempotency_testkit::record_id("op", "k1"))
            .await
            .expect("get")
            .is_some()
    );
    assert!(
        store
            .get(&idempotency_testkit::record_id("op", "k3"))
            .await
            .expect("get")
            .is_some()
    );
}

#[tokio::test]
async fn save_many_with_rollback_deletes_exactly_what_it_wrote() {
    let store = MemoryStore::new();
    let existing = svc().create_record("op", "k2", &0).expect("r");
    store.save(&existing).await.expect("save");
    let batch: Vec<_> = (1..=3)
        .map(|i| svc().create_record("op", &format!("k{i}"), &i).expect("r"))
        .collect();
    let err = store
        .save_many(&batch, SaveManyOptions::rollback_on_error())
        .await
        .expect_err("collision");
    assert!(matches!(err, IdempotencyError::KeyCollision { ref keys, .. } if keys == &["k2"]));
    assert_eq!(
        store
            .get(&idempotency_testkit::record_id("op", "k1"))
            .await
            .expect("get"),
        None
    );
    assert_eq!(
        store
            .get(&idempotency_testkit::record_id("op", "k3"))
            .await
            .expect("get"),
        None
    );
    assert_eq!(
        store
            .get(&idempotency_testkit::record_id("op", "k2"))
            .await
            .expect("get"),
        Some(existing)
    );
}

#[tokio::test]
async fn save_many_reports_invalid_records_with_what_happened_to_the_rest() {
    let store = MemoryStore::new();
    let expired = svc()
        .create_record("op", "old", &0)
        .expect("r")
        .with_expires_at(time::OffsetDateTime::now_utc());
    let batch = vec![svc().create_record("op", "new", &1).expect("r"), expired];
    let err = store
        .save_many(&batch, SaveManyOptions::default())
        .await
        .expect_err("invalid");
    match err {
        IdempotencyError::BulkSave { invalid, saved, .. } => {
            assert_eq!(invalid.len(), 1);
            assert_eq!(invalid[0].0, "old");
            assert_eq!(saved, ["new"]);
        }
        other => panic!("unexpected {other:?}"),
    }
    store
        .save_many(&[], SaveManyOptions::default())
        .await
        .expect("empty batch");
}

#[tokio::test]
async fn delete_many_counts_what_it_deleted() {
    let store = MemoryStore::new();
    for k in ["a", "b", "c"] {
        store
            .save(&svc().create_record("op", k, &1).expect("r"))
            .await
            .expect("save");
    }
    assert_eq!(
        store
            .delete_many("op", &["a", "c", "zz"])
            .await
            .expect("delete_many"),
        2
    );
    assert_eq!(store.len(), 1);
}

// The store contract, the same suites every store runs (`idempotency-contract`).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_store_keeps_the_store_contract() {
    let store = MemoryStore::new();
    idempotency_contract::repository::all(&store).await;
    idempotency_contract::bulk::all(&store).await;
    idempotency_contract::reservation::all(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unfenced_fallback_keeps_what_it_can_of_the_contract() {
    // Its owner check and its write are two steps, so it cannot fence concurrent
    // writers; what holds one step at a time, it keeps. (Its TTLs come from the records'
    // timestamps, through `save`, so a skewed clock does change its TTLs.)
    let store = Unfenced::new(MemoryStore::new());
    idempotency_contract::repository::all(&store).await;
    idempotency_contract::bulk::all(&store).await;
    idempotency_contract::reservation::concurrent_claims_get_exactly_one_owner(&store).await;
    idempotency_contract::reservation::a_repeated_claim_is_acquired_by_its_own_lease(&store).await;
    idempotency_contract::reservation::a_claim_on_a_completed_key_returns_the_record(&store).await;
    idempotency_contract::reservation::a_stale_owner_cannot_complete_renew_or_release_over_a_newer_one(
        &store,
    )
    .await;
    idempotency_contract::reservation::the_owner_check_ignores_look_alike_text_in_the_result(
        &store,
    )
    .await;
    idempotency_contract::reservation::complete_writes_into_an_empty_key(&store).await;
}

#[tokio::test]
async fn a_renewed_reservation_outlives_its_first_lease() {
    let store = MemoryStore::new();
    let id = RecordId::new("op", "renewed").expect("valid");
    let lease = Lease::new(id.clone(), None, Clock::system());
    assert_eq!(
        store
            .claim(&lease, Duration::from_secs(1))
            .await
            .expect("claim"),
        Claim::Acquired
    );
    assert_eq!(
        store
            .renew(&lease, Duration::from_secs(60))
            .await
            .expect("renew"),
        Fence::Held
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let other = Lease::new(id, None, Clock::system());
    assert!(
        matches!(store.claim(&other, Duration::from_secs(1)).await.expect("claim"), Claim::Found(r) if r.is_pending())
    );
    assert_eq!(store.release(&lease).await.expect("release"), Fence::Held);
}

mod limits {
    use super::*;
    use idempotency_core::{MemoryLimits, RawValue};

    async fn complete(store: &MemoryStore, key: &str, result: &str, ttl: Duration) {
        let lease = Lease::new(
            idempotency_testkit::record_id("op", key),
            None,
            Clock::system(),
        );
        assert_eq!(
            store
                .claim(&lease, Duration::from_secs(30))
                .await
                .expect("claim"),
            Claim::Acquired
        );
        let raw = RawValue::from_string(result.to_owned()).expect("json");
        store.complete(&lease, &raw, ttl).await.expect("complete");
    }

    #[tokio::test]
    async fn finished_records_soonest_to_expire_are_evicted_at_the_entry_limit() {
        let store = MemoryStore::with_limits(MemoryLimits::new(3, 1 << 30));
        complete(&store, "a", "1", Duration::from_secs(300)).await;
        complete(&store, "b", "2", Duration::from_secs(100)).await;
        complete(&store, "c", "3", Duration::from_secs(200)).await;
        complete(&store, "d", "4", Duration::from_secs(400)).await;
        assert_eq!(store.len(), 3);
        assert_eq!(store.evicted(), 1);
        let gone = store
            .get(&idempotency_testkit::record_id("op", "b"))
            .await
            .expect("get");
        assert_eq!(gone, None, "the soonest to expire goes first");
        for kept in ["a", "c", "d"] {
            assert!(
                store
                    .get(&idempotency_testkit::record_id("op", kept))
                    .await
                    .expect("get")
                    .is_some()
            );
        }
    }

    #[tokio::test]
    async fn a_live_reservation_is_never_evicted_a_new_claim_is_refused() {
        let store = MemoryStore::with_limits(MemoryLimits::new(2, 1 << 30));
        let mut leases = Vec::new();
        for key in ["a", "b"] {
            let lease = Lease::new(
                idempotency_testkit::record_id("op", key),
                None,
                Clock::system(),
            );
            store
                .claim(&lease, Duration::from_secs(30))
                .await
                .expect("claim");
            leases.push(lease);
        }
        let third = Lease::new(
            idempotency_testkit::record_id("op", "c"),
            None,
            Clock::system(),
        );
        let refused = store
            .claim(&third, Duration::from_secs(30))
            .await
            .expect_err("full");
        assert!(
            matches!(&refused, IdempotencyError::StorageRefused { code, .. } if code == "FULL"),
            "{refused}"
        );
        assert_eq!(store.evicted(), 0);
        // Both reservations stand, and their completions are written (their actions ran).
        for lease in &leases {
            let raw = RawValue::from_string("1".to_owned()).expect("json");
            let fence = store
                .complete(lease, &raw, Duration::from_secs(60))
                .await
                .expect("complete");
            assert_eq!(fence, Fence::Held);
        }
        // Now finished: a new claim evicts one instead of being refused.
        assert_eq!(
            store
                .claim(&third, Duration::from_secs(30))
                .await
                .expect("claim"),
            Claim::Acquired
        );
        assert_eq!(store.evicted(), 1);
    }

    #[tokio::test]
    async fn the_byte_limit_holds_as_records_come() {
        let limit = 64 * 1024;
        let store = MemoryStore::with_limits(MemoryLimits::new(1_000_000, limit));
        let big = format!("\"{}\"", "x".repeat(4096));
        for i in 0..100 {
            complete(&store, &format!("k{i}"), &big, Duration::from_secs(600)).await;
            assert!(store.bytes() <= limit, "{} bytes after {i}", store.bytes());
        }
        assert!(store.evicted() > 80, "{}", store.evicted());
    }

    #[tokio::test]
    async fn expired_records_are_dropped_by_later_writes() {
        let store = MemoryStore::new();
        for i in 0..50 {
            let lease = Lease::new(
                idempotency_testkit::record_id("op", &format!("e{i}")),
                None,
                Clock::system(),
            );
            store
                .claim(&lease, Duration::from_secs(1))
                .await
                .expect("claim");
        }
        assert_eq!(store.len(), 50);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        complete(&store, "later", "1", Duration::from_secs(60)).await;
        assert_eq!(store.len(), 1, "the expired reservations are gone");
        assert_eq!(store.evicted(), 0, "expiry is not eviction");
    }
}
