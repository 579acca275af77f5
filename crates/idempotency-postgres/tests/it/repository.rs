//! The repository and bulk operations, and the sweep of expired rows.

use std::time::{Duration, Instant};

use idempotency_core::{
    BulkRepository, IdempotencyDomainService, IdempotencyRepository, SaveManyOptions,
};
use idempotency_testkit::{record_id, unique_key};

use crate::common::{expire, fixture};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn save_refuses_a_live_key_and_an_expired_row_counts_as_absent() {
    let f = fixture().await;
    let svc = IdempotencyDomainService::default();
    let key = unique_key("save");
    let record = svc
        .create_record("repo.save", &key, &serde_json::json!({"a": 1}))
        .expect("record");
    f.store.save(&record).await.expect("save");
    assert!(f.store.save(&record).await.is_err_and(|e| e.is_collision()));
    let id = record_id("repo.save", &key);
    assert_eq!(f.store.get(&id).await.expect("get"), Some(record.clone()));
    expire(&f.pool, "repo.save", &key).await;
    assert_eq!(
        f.store.get(&id).await.expect("get"),
        None,
        "expired on the server's clock"
    );
    f.store
        .save(&record)
        .await
        .expect("an expired row does not hold the key");
    assert!(f.store.delete(&id).await.expect("delete"));
    assert!(!f.store.delete(&id).await.expect("delete again"));
    let other = svc.create_record("repo.save", &key, &2).expect("record");
    f.store
        .replace(&record)
        .await
        .expect("replace into nothing");
    f.store
        .replace(&other)
        .await
        .expect("replace over a record");
    assert_eq!(f.store.get(&id).await.expect("get"), Some(other));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bulk_saves_report_collisions_and_roll_back_when_asked() {
    let f = fixture().await;
    let svc = IdempotencyDomainService::default();
    let keys: Vec<String> = (0..4).map(|i| unique_key(&format!("bulk{i}"))).collect();
    let records: Vec<_> = keys
        .iter()
        .map(|k| svc.create_record("repo.bulk", k, &k.len()).expect("record"))
        .collect();
    f.store
        .save_many(&records[..2], SaveManyOptions::default())
        .await
        .expect("save two");
    // Two new, one taken: with rollback, nothing of this call stays.
    let refused = f
        .store
        .save_many(&records[1..], SaveManyOptions::rollback_on_error())
        .await;
    assert!(refused.is_err_and(|e| e.is_collision()));
    assert_eq!(
        f.store
            .get_many("repo.bulk", &keys)
            .await
            .expect("get")
            .len(),
        2
    );
    // Without rollback, the free ones stay.
    let partial = f
        .store
        .save_many(&records[1..], SaveManyOptions::default())
        .await;
    assert!(partial.is_err());
    let found = f.store.get_many("repo.bulk", &keys).await.expect("get");
    assert_eq!(found.len(), 4);
    assert_eq!(found.get(&keys[3]), Some(&records[3]));
    assert_eq!(
        f.store
            .delete_many("repo.bulk", &keys[..3])
            .await
            .expect("delete"),
        3
    );
    assert_eq!(
        f.store
            .get_many("repo.bulk", &keys)
            .await
            .expect("get")
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sweep_deletes_expired_rows_in_bounded_batches_and_skips_locked_ones() {
    let f = fixture().await;
    let svc = IdempotencyDomainService::default();
    for i in 0..30 {
        let key = format!("sweep-{i}");
        f.store
            .save(&svc.create_record("repo.sweep", &key, &i).expect("record"))
            .await
            .expect("save");
        if i < 25 {
            expire(&f.pool, "repo.sweep", &key).await;
        }
    }
    // One expired row held by another transaction (a claim taking it over, say): the
    // sweep passes it by instead of waiting.
    let mut holder = f.pool.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM idempotency_records WHERE idempotency_key = 'sweep-0' FOR UPDATE")
        .execute(&mut *holder)
        .await
        .expect("lock");
    let started = Instant::now();
    let mut swept = Vec::new();
    loop {
        let n = f.store.sweep_expired(10).await.expect("sweep");
        swept.push(n);
        if n == 0 {
            break;
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the sweep never waited"
    );
    assert_eq!(swept, vec![10, 10, 4, 0]);
    holder.rollback().await.expect("rollback");
    assert_eq!(f.store.sweep_expired(10).await.expect("sweep"), 1);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_records")
        .fetch_one(&f.pool)
        .await
        .expect("count");
    assert_eq!(left, 5, "live rows stay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sweeper_task_removes_expired_rows_until_dropped() {
    let f = fixture().await;
    let svc = IdempotencyDomainService::default();
    for i in 0..25 {
        let key = format!("swept-{i}");
        f.store
            .save(&svc.create_record("repo.sweeper", &key, &i).expect("record"))
            .await
            .expect("save");
        expire(&f.pool, "repo.sweeper", &key).await;
    }
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM idempotency_records")
            .fetch_one(&f.pool)
            .await
            .expect("count")
    };
    let sweeper = f.store.spawn_sweeper(Duration::from_millis(50), 10);
    let deadline = Instant::now() + Duration::from_secs(5);
    while count().await > 0 {
        assert!(
            Instant::now() < deadline,
            "the sweeper removed every expired row"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(sweeper);
    f.store
        .save(
            &svc.create_record("repo.sweeper", "late", &0)
                .expect("record"),
        )
        .await
        .expect("save");
    expire(&f.pool, "repo.sweeper", "late").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count().await, 1, "a dropped sweeper sweeps no more");
}
