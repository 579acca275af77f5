//! Watches: woken by what commits a change of their key, and by nothing else.

use std::time::Duration;

use idempotency_core::{
    Claim, Clock, IdempotencyDomainService, IdempotencyRepository, KeyWatch, Lease,
    ReservationStore,
};
use idempotency_testkit::{record_id, unique_key};

use crate::common::fixture;

const LONG: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_wakes_on_delete_and_finished_replace_and_not_on_other_keys() {
    let f = fixture().await;
    let id = record_id("wake.keys", &unique_key("watched"));
    let other = record_id("wake.keys", &unique_key("other"));
    let lease = Lease::new(id.clone(), None, Clock::system());
    assert_eq!(
        f.store.claim(&lease, LONG).await.expect("claim"),
        Claim::Acquired
    );
    let mut watch = f.store.watch(&id).await.expect("watch");
    // A change of another key, and a renewal of ours, wake nobody.
    let stranger = Lease::new(other.clone(), None, Clock::system());
    assert_eq!(
        f.store.claim(&stranger, LONG).await.expect("claim"),
        Claim::Acquired
    );
    f.store.release(&stranger).await.expect("release");
    f.store.renew(&lease, LONG).await.expect("renew");
    assert!(
        !watch.changed(Duration::from_millis(300)).await,
        "not woken by others"
    );
    assert!(f.store.delete(&id).await.expect("delete"));
    assert!(
        watch.changed(Duration::from_secs(5)).await,
        "woken by the delete"
    );
    let record = IdempotencyDomainService::default()
        .create_record(id.operation(), id.key(), &1)
        .expect("record");
    f.store.replace(&record).await.expect("replace");
    assert!(
        watch.changed(Duration::from_secs(5)).await,
        "woken by a finished replace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_transactional_call_wakes_nobody_and_a_committed_one_does() {
    let f = fixture().await;
    let id = record_id("wake.rollback", &unique_key("rollback"));
    let mut watch = f.store.watch(&id).await.expect("watch");
    // The action fails: the transaction rolls back, nothing is announced.
    let failed = f
        .store
        .run_in_transaction(
            &id,
            None,
            idempotency_postgres::TransactionOptions::new(),
            |_, _| Box::pin(async { Err::<i64, _>("no") }),
        )
        .await;
    assert!(failed.is_err());
    assert!(!watch.changed(Duration::from_millis(300)).await);
    let ran = f
        .store
        .run_in_transaction(
            &id,
            None,
            idempotency_postgres::TransactionOptions::new(),
            |_, _| Box::pin(async { Ok::<i64, &str>(3) }),
        )
        .await
        .expect("run");
    assert!(!ran.is_replayed());
    assert!(
        watch.changed(Duration::from_secs(5)).await,
        "woken by the commit"
    );
}
