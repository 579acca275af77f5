//! The in-memory store's semantics: the same contract as the Redis store.

use std::sync::Arc;
use std::time::Duration;

use idempotency_core::{
    Claim, Fence, IdempotencyDomainService, IdempotencyError, IdempotencyRepository, KeyWatch,
    MemoryStore, RecordOptions, ReservationStore, SaveManyOptions, Unfenced,
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
    assert_eq!(store.get("op", "k").await.expect("get"), None);
    store.save(&r1).await.expect("save");
    assert_eq!(store.get("op", " k ").await.expect("get"), Some(r1.clone()));
    let err = store.save(&r1).await.expect_err("collision");
    assert!(matches!(err, IdempotencyError::KeyCollision { ref keys, .. } if keys == &["k"]));
    let r2 = svc().create_record("op", "k", &2).expect("record");
    store.replace(&r2).await.expect("replace");
    assert_eq!(store.get("op", "k").await.expect("get"), Some(r2));
    assert!(store.delete("op", "k").await.expect("delete"));
    assert!(!store.delete("op", "k").await.expect("delete again"));
    assert_eq!(store.get("op", "k").await.expect("get"), None);
}

#[tokio::test]
async fn invalid_identifiers_are_refused_before_touching_the_store() {
    let store = MemoryStore::new();
    assert!(
        store
            .get("op", "a:b")
            .await
            .expect_err("colon")
            .is_validation()
    );
    assert!(
        store
            .delete("", "k")
            .await
            .expect_err("empty")
            .is_validation()
    );
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
            .get("user.create", "k")
            .await
            .expect("get")
            .expect("found")
            .result()
            .get(),
        "1"
    );
    assert_eq!(
        store
            .get("identifier.attach", "k")
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
    assert_eq!(store.get("op", "k").await.expect("get"), None);
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
    assert!(store.get("op", "k1").await.expect("get").is_some());
    assert!(store.get("op", "k3").await.expect("get").is_some());
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
    assert_eq!(store.get("op", "k1").await.expect("get"), None);
    assert_eq!(store.get("op", "k3").await.expect("get"), None);
    assert_eq!(store.get("op", "k2").await.expect("get"), Some(existing));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_claims_get_exactly_one_owner() {
    let store = MemoryStore::new();
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.claim("op", "k", Duration::from_secs(30), None).await })
        })
        .collect();
    let mut owners = 0;
    for t in tasks {
        match t.await.expect("task").expect("claim") {
            Claim::Acquired(_) => owners += 1,
            Claim::Found(r) => assert!(r.is_pending()),
        }
    }
    assert_eq!(owners, 1);
}

#[tokio::test]
async fn a_stale_owner_cannot_complete_renew_or_release_over_a_newer_one() {
    let store = MemoryStore::new();
    let stale = store
        .claim("op", "k", Duration::from_secs(1), None)
        .await
        .expect("claim")
        .into_lease()
        .expect("free key");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = store
        .claim("op", "k", Duration::from_secs(30), None)
        .await
        .expect("claim")
        .into_lease()
        .expect("lease ran out");
    let late = svc().create_record("op", "k", &"stale").expect("r");
    assert_eq!(
        store.complete(&stale, &late).await.expect("complete"),
        Fence::Lost
    );
    assert_eq!(
        store
            .renew(&stale, Duration::from_secs(30))
            .await
            .expect("renew"),
        Fence::Lost
    );
    assert_eq!(store.release(&stale).await.expect("release"), Fence::Lost);
    let current = store.get("op", "k").await.expect("get").expect("pending");
    assert_eq!(current.owner(), Some(fresh.token()));
    let done = svc().create_record("op", "k", &"fresh").expect("r");
    assert_eq!(
        store.complete(&fresh, &done).await.expect("complete"),
        Fence::Held
    );
    assert_eq!(
        store.complete(&stale, &late).await.expect("complete"),
        Fence::Lost
    );
    assert_eq!(
        store
            .get("op", "k")
            .await
            .expect("get")
            .expect("done")
            .result()
            .get(),
        "\"fresh\""
    );
}

#[tokio::test]
async fn renew_pushes_the_lease_and_release_frees_the_key() {
    let store = MemoryStore::new();
    let lease = store
        .claim("op", "k", Duration::from_secs(2), None)
        .await
        .expect("claim")
        .into_lease()
        .expect("free key");
    assert_eq!(
        store
            .renew(&lease, Duration::from_secs(100))
            .await
            .expect("renew"),
        Fence::Held
    );
    let pending = store.get("op", "k").await.expect("get").expect("pending");
    assert!(pending.remaining_ttl() > Duration::from_secs(90));
    assert_eq!(store.release(&lease).await.expect("release"), Fence::Held);
    assert_eq!(store.get("op", "k").await.expect("get"), None);
    assert_eq!(
        store.release(&lease).await.expect("release twice"),
        Fence::Lost
    );
}

#[tokio::test]
async fn complete_writes_into_an_empty_key_but_not_over_a_completed_record() {
    let store = MemoryStore::new();
    let lease = store
        .claim("op", "k", Duration::from_secs(30), None)
        .await
        .expect("claim")
        .into_lease()
        .expect("free key");
    store.delete("op", "k").await.expect("delete");
    let record = svc().create_record("op", "k", &1).expect("r");
    assert_eq!(
        store.complete(&lease, &record).await.expect("complete"),
        Fence::Held
    );
    let other = svc().create_record("op", "k", &2).expect("r");
    assert_eq!(
        store.complete(&lease, &other).await.expect("complete"),
        Fence::Lost
    );
    assert_eq!(store.get("op", "k").await.expect("get"), Some(record));
}

#[tokio::test]
async fn a_watcher_is_woken_by_completion_and_by_release() {
    let store = MemoryStore::new();
    let lease = store
        .claim("op", "k", Duration::from_secs(30), None)
        .await
        .expect("claim")
        .into_lease()
        .expect("free key");
    let mut watch = store.watch("op", "k").await.expect("watch");
    // A change before the wait starts is not missed.
    store.release(&lease).await.expect("release");
    assert!(watch.changed(Duration::from_secs(5)).await);
    let lease = store
        .claim("op", "k", Duration::from_secs(30), None)
        .await
        .expect("claim")
        .into_lease()
        .expect("free key");
    let completer = {
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let record = svc().create_record("op", "k", &1).expect("r");
            store.complete(&lease, &record).await
        })
    };
    assert!(watch.changed(Duration::from_secs(5)).await);
    assert_eq!(
        completer.await.expect("task").expect("complete"),
        Fence::Held
    );
    assert!(
        !watch.changed(Duration::from_millis(20)).await,
        "no change, no wake-up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unfenced_fallback_claims_once_and_fences_what_it_can() {
    let store = Arc::new(Unfenced::new(MemoryStore::new()));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.claim("op", "k", Duration::from_secs(30), None).await })
        })
        .collect();
    let mut leases = Vec::new();
    for t in tasks {
        if let Claim::Acquired(l) = t.await.expect("task").expect("claim") {
            leases.push(l);
        }
    }
    assert_eq!(leases.len(), 1);
    let lease = &leases[0];
    assert_eq!(
        store
            .renew(lease, Duration::from_secs(60))
            .await
            .expect("renew"),
        Fence::Held
    );
    let record = svc().create_record("op", "k", &1).expect("r");
    assert_eq!(
        store.complete(lease, &record).await.expect("complete"),
        Fence::Held
    );
    assert_eq!(store.release(lease).await.expect("release"), Fence::Lost);
    assert_eq!(store.get("op", "k").await.expect("get"), Some(record));
}
