//! The admin API: evictions conditional on what was inspected, and what they wake.

use std::time::Duration;

use idempotency_core::{Claim, Clock, KeyWatch, Lease, RawValue, RecordId, ReservationStore};
use idempotency_postgres::admin::{Admin, Eviction, StatsOptions};
use idempotency_testkit::unique_key;

use crate::common::{expire, fixture};

async fn claimed(store: &idempotency_postgres::PostgresStore, id: &RecordId) -> Lease {
    let lease = Lease::new(id.clone(), None, Clock::system());
    let claim = store
        .claim(&lease, Duration::from_secs(120))
        .await
        .expect("claim");
    assert_eq!(claim, Claim::Acquired);
    lease
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eviction_of_a_row_completed_since_its_inspection_removes_nothing() {
    let f = fixture().await;
    let admin = Admin::new(f.store.clone());
    let id = RecordId::new("admin.changed", &unique_key("changed")).expect("id");
    let lease = claimed(&f.store, &id).await;
    let seen = admin.inspect(&id).await.expect("inspect").expect("a row");
    assert!(seen.is_live_reservation());
    let raw = RawValue::from_string("7".to_owned()).expect("raw");
    f.store
        .complete(&lease, &raw, Duration::from_secs(600))
        .await
        .expect("complete");
    let eviction = admin.evict_inspected(seen, true).await.expect("evict");
    assert!(matches!(eviction, Eviction::Changed(_)), "{eviction:?}");
    let now = admin.inspect(&id).await.expect("inspect").expect("kept");
    assert_eq!(now.status_label(), "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_reservation_is_evicted_without_force_and_counted_as_expired() {
    let f = fixture().await;
    let admin = Admin::new(f.store.clone());
    let key = unique_key("expired");
    let id = RecordId::new("admin.expired", &key).expect("id");
    claimed(&f.store, &id).await;
    expire(&f.pool, "admin.expired", &key).await;
    let stats = admin
        .stats(&StatsOptions::new().operation("admin.expired"))
        .await
        .expect("stats");
    assert_eq!((stats.rows, stats.expired_rows), (1, 1), "{stats:?}");
    assert_eq!(
        stats.total_with_status("pending"),
        0,
        "expired rows are not live"
    );
    let found = admin.inspect(&id).await.expect("inspect").expect("a row");
    assert!(found.is_expired() && !found.is_live_reservation());
    let eviction = admin.evict(&id, false).await.expect("evict");
    assert!(
        matches!(eviction, Eviction::Removed { forced: false, .. }),
        "{eviction:?}"
    );
    assert!(admin.inspect(&id).await.expect("inspect").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_eviction_wakes_the_keys_watchers() {
    let f = fixture().await;
    let admin = Admin::new(f.store.clone());
    let id = RecordId::new("admin.wake", &unique_key("wake")).expect("id");
    claimed(&f.store, &id).await;
    let mut watch = ReservationStore::watch(&f.store, &id).await.expect("watch");
    let evicted = tokio::spawn({
        let admin = admin.clone();
        let id = id.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            admin.evict(&id, true).await
        }
    });
    let started = std::time::Instant::now();
    watch.changed(Duration::from_secs(20)).await;
    let waited = started.elapsed();
    // Not before the eviction (200 ms in), and long before the 20 s timeout.
    assert!(
        waited >= Duration::from_millis(150) && waited < Duration::from_secs(10),
        "woken by the eviction's NOTIFY: {waited:?}"
    );
    let eviction = evicted.await.expect("joined").expect("evict");
    assert!(
        matches!(eviction, Eviction::Removed { forced: true, .. }),
        "{eviction:?}"
    );
}
