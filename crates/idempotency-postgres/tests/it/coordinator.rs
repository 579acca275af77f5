//! The coordinator on the Postgres store: two instances (two pools, two listeners) share
//! one key.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use idempotency_coordinator::{Coordinator, IdempotencyError};
use idempotency_postgres::PostgresStore;
use idempotency_testkit::unique_key;

use crate::common::fixture;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiter_on_another_instance_is_woken_by_notify_not_by_polling() {
    let f = fixture().await;
    let other_pool = sqlx::PgPool::connect(&f.db.url()).await.expect("connect");
    // Safety polls far longer than the test may take: only a NOTIFY can wake the waiter.
    let first = Coordinator::builder(f.store.clone())
        .wait_safety_poll(Duration::from_secs(30))
        .build()
        .expect("coordinator");
    let second = Coordinator::builder(PostgresStore::new(other_pool))
        .wait_safety_poll(Duration::from_secs(30))
        .build()
        .expect("coordinator");
    let key = unique_key("coordinated");
    let runs = Arc::new(AtomicUsize::new(0));
    let leader = {
        let (first, key, runs) = (first.clone(), key.clone(), Arc::clone(&runs));
        tokio::spawn(async move {
            first
                .call("coord.wake", Some(&key))
                .run(|| async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    Ok::<_, IdempotencyError>(vec![1, 2, 3])
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let follower: Vec<i32> = second
        .call("coord.wake", Some(&key))
        .run(|| async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, IdempotencyError>(vec![9])
        })
        .await
        .expect("follower");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "woken by the completion's NOTIFY"
    );
    assert_eq!(follower, vec![1, 2, 3]);
    assert_eq!(leader.await.expect("join").expect("leader"), vec![1, 2, 3]);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
