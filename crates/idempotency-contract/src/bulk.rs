//! The bulk contract: what every [`BulkRepository`] keeps. Each function checks one
//! rule and panics when it is broken; [`all`] runs them in turn.

use idempotency_core::{BulkRepository, IdempotencyError, RecordId, SaveManyOptions};

use crate::fresh_id;
use crate::repository::record_of;

/// Every bulk check, in turn.
pub async fn all<S: BulkRepository>(store: &S) {
    get_many_answers_the_live_keys_by_key(store).await;
    a_save_without_rollback_keeps_what_it_wrote_and_names_the_taken_keys(store).await;
    a_rolled_back_save_deletes_exactly_what_it_wrote(store).await;
    a_save_of_only_taken_keys_is_a_collision(store).await;
    delete_many_counts_what_was_there(store).await;
    an_invalid_key_fails_the_whole_call_before_any_io(store).await;
}

/// Keys of one operation, fresh.
fn fresh_keys(operation: &str, n: usize) -> Vec<String> {
    let base = fresh_id(operation);
    (0..n).map(|i| format!("{}-{i}", base.key())).collect()
}

/// `get_many` answers the found keys (by idempotency key, results as written) and
/// leaves out the absent ones; `save_many` of free keys writes them all.
pub async fn get_many_answers_the_live_keys_by_key<S: BulkRepository>(store: &S) {
    let op = "contract.bulk.get";
    let keys = fresh_keys(op, 3);
    let records: Vec<_> = keys[..2]
        .iter()
        .enumerate()
        .map(|(i, k)| record_of(&RecordId::new(op, k).expect("id"), &i.to_string()))
        .collect();
    store
        .save_many(&records, SaveManyOptions::default())
        .await
        .expect("save_many of free keys");
    let found = store.get_many(op, &keys).await.expect("get_many");
    assert_eq!(found.len(), 2, "the two saved keys, not the absent one");
    assert_eq!(found[&keys[0]].result().get(), "0");
    assert_eq!(found[&keys[1]].result().get(), "1");
    assert!(!found.contains_key(&keys[2]));
    assert!(
        store
            .get_many::<&str>(op, &[])
            .await
            .expect("no keys")
            .is_empty(),
        "no keys, no records"
    );
}

/// Without rollback a save is not atomic: the free keys are written, the taken one
/// keeps its record, and the error names it.
pub async fn a_save_without_rollback_keeps_what_it_wrote_and_names_the_taken_keys<
    S: BulkRepository,
>(
    store: &S,
) {
    let op = "contract.bulk.partial";
    let keys = fresh_keys(op, 3);
    let ids: Vec<_> = keys
        .iter()
        .map(|k| RecordId::new(op, k).expect("id"))
        .collect();
    store
        .save(&record_of(&ids[1], "\"first\""))
        .await
        .expect("save");
    let records: Vec<_> = ids.iter().map(|id| record_of(id, "\"bulk\"")).collect();
    let err = store
        .save_many(&records, SaveManyOptions::default())
        .await
        .expect_err("one key was taken");
    assert!(
        taken_keys(&err).contains(&keys[1].as_str()),
        "the error names the taken key: {err:?}"
    );
    assert_eq!(
        store
            .get(&ids[1])
            .await
            .expect("get")
            .expect("kept")
            .result()
            .get(),
        "\"first\"",
        "the taken key keeps its record"
    );
    for i in [0, 2] {
        assert_eq!(
            store
                .get(&ids[i])
                .await
                .expect("get")
                .expect("written")
                .result()
                .get(),
            "\"bulk\"",
            "a free key was written"
        );
    }
}

/// With rollback, a failed save deletes again exactly the records it wrote: the free
/// keys are empty afterwards and the taken key keeps its record.
pub async fn a_rolled_back_save_deletes_exactly_what_it_wrote<S: BulkRepository>(store: &S) {
    let op = "contract.bulk.rollback";
    let keys = fresh_keys(op, 3);
    let ids: Vec<_> = keys
        .iter()
        .map(|k| RecordId::new(op, k).expect("id"))
        .collect();
    store
        .save(&record_of(&ids[1], "\"first\""))
        .await
        .expect("save");
    let records: Vec<_> = ids.iter().map(|id| record_of(id, "\"bulk\"")).collect();
    store
        .save_many(&records, SaveManyOptions::rollback_on_error())
        .await
        .expect_err("one key was taken");
    assert_eq!(
        store
            .get(&ids[1])
            .await
            .expect("get")
            .expect("kept")
            .result()
            .get(),
        "\"first\"",
        "the taken key keeps its record (a rollback never deletes another's)"
    );
    for i in [0, 2] {
        assert_eq!(
            store.get(&ids[i]).await.expect("get"),
            None,
            "what the call wrote was deleted again"
        );
    }
}

/// A save whose every key is taken is one key collision naming them all.
pub async fn a_save_of_only_taken_keys_is_a_collision<S: BulkRepository>(store: &S) {
    let op = "contract.bulk.taken";
    let keys = fresh_keys(op, 2);
    let records: Vec<_> = keys
        .iter()
        .map(|k| record_of(&RecordId::new(op, k).expect("id"), "1"))
        .collect();
    store
        .save_many(&records, SaveManyOptions::default())
        .await
        .expect("save_many");
    let err = store
        .save_many(&records, SaveManyOptions::default())
        .await
        .expect_err("every key is taken");
    assert!(err.is_collision(), "a key collision, got {err:?}");
    let mut named = taken_keys(&err);
    named.sort_unstable();
    assert_eq!(named, vec![keys[0].as_str(), keys[1].as_str()]);
}

/// `delete_many` deletes the keys and counts those that held a record.
pub async fn delete_many_counts_what_was_there<S: BulkRepository>(store: &S) {
    let op = "contract.bulk.delete";
    let keys = fresh_keys(op, 3);
    let records: Vec<_> = keys[..2]
        .iter()
        .map(|k| record_of(&RecordId::new(op, k).expect("id"), "1"))
        .collect();
    store
        .save_many(&records, SaveManyOptions::default())
        .await
        .expect("save_many");
    assert_eq!(store.delete_many(op, &keys).await.expect("delete_many"), 2);
    assert!(
        store
            .get_many(op, &keys)
            .await
            .expect("get_many")
            .is_empty()
    );
    assert_eq!(store.delete_many(op, &keys).await.expect("delete_many"), 0);
}

/// One invalid key fails `get_many` and `delete_many` with a validation error before
/// anything is read or deleted.
pub async fn an_invalid_key_fails_the_whole_call_before_any_io<S: BulkRepository>(store: &S) {
    let op = "contract.bulk.invalid";
    let keys = fresh_keys(op, 1);
    let id = RecordId::new(op, &keys[0]).expect("id");
    store.save(&record_of(&id, "1")).await.expect("save");
    let with_bad = [keys[0].as_str(), "bad:key", ""];
    let err: IdempotencyError = store.get_many(op, &with_bad).await.expect_err("invalid");
    assert!(err.is_validation(), "{err:?}");
    let err = store.delete_many(op, &with_bad).await.expect_err("invalid");
    assert!(err.is_validation(), "{err:?}");
    assert!(
        store.get(&id).await.expect("get").is_some(),
        "nothing was deleted"
    );
}

/// The keys a failed bulk save names as taken.
fn taken_keys(err: &IdempotencyError) -> Vec<&str> {
    match err {
        IdempotencyError::KeyCollision { keys, .. } => keys.iter().map(String::as_str).collect(),
        IdempotencyError::BulkSave { collisions, .. } => {
            collisions.iter().map(String::as_str).collect()
        }
        _ => Vec::new(),
    }
}
