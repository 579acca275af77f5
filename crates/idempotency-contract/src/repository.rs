//! The repository contract: what every [`IdempotencyRepository`] keeps. Each function
//! checks one rule and panics when it is broken; [`all`] runs them in turn.

use std::time::{Duration, Instant};

use idempotency_core::{
    IdempotencyDomainService, IdempotencyRecord, IdempotencyRepository, RawValue, RecordId,
};

use crate::fresh_id;

/// A completed record of `id` holding `result` (JSON text), living the default TTL.
pub(crate) fn record_of(id: &RecordId, result: &str) -> IdempotencyRecord {
    let raw = RawValue::from_string(result.to_owned()).expect("JSON text");
    IdempotencyDomainService::default()
        .create_record_raw(id.operation(), id.key(), raw, None, Some("fp"))
        .expect("a record")
}

/// Every repository check, in turn.
pub async fn all<S: IdempotencyRepository>(store: &S) {
    a_saved_record_reads_back_as_it_was_written(store).await;
    a_second_save_of_a_live_key_collides_and_changes_nothing(store).await;
    replace_writes_whether_or_not_the_key_is_taken(store).await;
    delete_reports_whether_there_was_a_record(store).await;
    an_expired_record_is_never_returned(store).await;
    an_already_expired_record_is_refused_and_not_written(store).await;
    two_operations_never_share_a_key(store).await;
}

/// A saved record reads back field for field (the result's text exactly, integers
/// beyond 64 bits included), and an absent key reads as `None`.
pub async fn a_saved_record_reads_back_as_it_was_written<S: IdempotencyRepository>(store: &S) {
    for result in [
        r#"{"order_id":42,"items":[1,2.5,"x"]}"#,
        "18446744073709551616",
        "null",
    ] {
        let id = fresh_id("contract.repo.save");
        assert_eq!(
            store.get(&id).await.expect("get"),
            None,
            "a fresh key is empty"
        );
        let record = record_of(&id, result);
        store.save(&record).await.expect("save into a free key");
        let back = store
            .get(&id)
            .await
            .expect("get")
            .expect("the saved record");
        assert_eq!(back.to_json(), record.to_json(), "read back as written");
    }
}

/// `save` is insert-if-absent: a second save of a live key is a key collision, and the
/// first record stays.
pub async fn a_second_save_of_a_live_key_collides_and_changes_nothing<S: IdempotencyRepository>(
    store: &S,
) {
    let id = fresh_id("contract.repo.collide");
    let first = record_of(&id, "1");
    store.save(&first).await.expect("save");
    let err = store
        .save(&record_of(&id, "2"))
        .await
        .expect_err("a second save of a live key");
    assert!(err.is_collision(), "a key collision, got {err:?}");
    let kept = store.get(&id).await.expect("get").expect("kept");
    assert_eq!(kept.result().get(), "1", "the first record stays");
}

/// `replace` writes over a taken key and into a free one.
pub async fn replace_writes_whether_or_not_the_key_is_taken<S: IdempotencyRepository>(store: &S) {
    let id = fresh_id("contract.repo.replace");
    store
        .replace(&record_of(&id, "1"))
        .await
        .expect("replace into a free key");
    assert_eq!(
        store
            .get(&id)
            .await
            .expect("get")
            .expect("written")
            .result()
            .get(),
        "1"
    );
    store
        .replace(&record_of(&id, "2"))
        .await
        .expect("replace over a taken key");
    assert_eq!(
        store
            .get(&id)
            .await
            .expect("get")
            .expect("written")
            .result()
            .get(),
        "2"
    );
}

/// `delete` is `true` when a record was there and `false` after; the key reads empty.
pub async fn delete_reports_whether_there_was_a_record<S: IdempotencyRepository>(store: &S) {
    let id = fresh_id("contract.repo.delete");
    store.save(&record_of(&id, "1")).await.expect("save");
    assert!(store.delete(&id).await.expect("delete"), "there was one");
    assert!(
        !store.delete(&id).await.expect("delete"),
        "there is none now"
    );
    assert_eq!(store.get(&id).await.expect("get"), None);
    store
        .save(&record_of(&id, "2"))
        .await
        .expect("a deleted key is free again");
}

/// A record is not returned once it has expired (the store's expiry: within a second
/// and a half of its `expires_at`, rounded up to the store's resolution).
pub async fn an_expired_record_is_never_returned<S: IdempotencyRepository>(store: &S) {
    let id = fresh_id("contract.repo.expire");
    let soon = time::OffsetDateTime::now_utc() + time::Duration::milliseconds(1200);
    let record = record_of(&id, "1").with_expires_at(soon);
    store.save(&record).await.expect("save");
    assert!(
        store.get(&id).await.expect("get").is_some(),
        "alive before it expires"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if store.get(&id).await.expect("get").is_none() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a record 3.8 s past its expiry is still returned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A record whose `expires_at` has passed is refused with a validation error, and
/// nothing is written.
pub async fn an_already_expired_record_is_refused_and_not_written<S: IdempotencyRepository>(
    store: &S,
) {
    let id = fresh_id("contract.repo.stale");
    let past = time::OffsetDateTime::now_utc() - time::Duration::seconds(5);
    let err = store
        .save(&record_of(&id, "1").with_expires_at(past))
        .await
        .expect_err("an expired record");
    assert!(err.is_validation(), "a validation error, got {err:?}");
    assert_eq!(store.get(&id).await.expect("get"), None, "nothing written");
}

/// The same key under two operations is two records.
pub async fn two_operations_never_share_a_key<S: IdempotencyRepository>(store: &S) {
    let a = fresh_id("contract.repo.op-a");
    let b = RecordId::new("contract.repo.op-b", a.key()).expect("valid identifiers");
    store.save(&record_of(&a, "1")).await.expect("save a");
    assert_eq!(store.get(&b).await.expect("get"), None, "b is not a");
    store.save(&record_of(&b, "2")).await.expect("save b");
    assert_eq!(
        store.get(&a).await.expect("get").expect("a").result().get(),
        "1"
    );
    assert_eq!(
        store.get(&b).await.expect("get").expect("b").result().get(),
        "2"
    );
}
