//! The one-call wiring on Postgres: a coordinator built from settings and a pool runs
//! the action once, replays it, and keeps its rows under the settings' key prefix.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use idempotency_coordinator::{
    IdempotencyError, IdempotencySettings, migrate, postgres_coordinator,
};
use idempotency_testkit::postgres::TestDatabase;
use idempotency_testkit::unique_key;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_coordinator_from_settings_runs_once_and_replays() {
    let db = tokio::task::spawn_blocking(TestDatabase::create)
        .await
        .expect("create a database");
    let pool = sqlx::PgPool::connect(&db.url()).await.expect("connect");
    migrate(&pool).await.expect("migrate");
    let settings = IdempotencySettings {
        key_prefix: "wired:".to_owned(),
        ..IdempotencySettings::default()
    };
    let coordinator = postgres_coordinator(&settings, pool.clone(), None).expect("wiring");
    let key = unique_key("wired");
    let runs = Arc::new(AtomicUsize::new(0));
    let mut results = Vec::new();
    for attempt in 0..2_u64 {
        let runs = Arc::clone(&runs);
        let value: u64 = coordinator
            .call("order.create", Some(&key))
            .run(|| async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, IdempotencyError>(100 + attempt)
            })
            .await
            .expect("call");
        results.push(value);
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the retry did not run the action"
    );
    assert_eq!(results, [100, 100], "the retry got the first result");
    let (prefix, status): (String, String) = sqlx::query_as(
        "SELECT key_prefix, status FROM idempotency_records WHERE idempotency_key = $1",
    )
    .bind(&key)
    .fetch_one(&pool)
    .await
    .expect("the row");
    assert_eq!(
        (prefix.as_str(), status.as_str()),
        ("wired:", "completed"),
        "the row is under the settings' prefix"
    );
    pool.close().await;
}

#[test]
fn postgres_wiring_refuses_metrics_enabled_without_a_collector() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    // A lazy pool: nothing is connected before the settings are checked.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .expect("lazy pool");
    let settings = IdempotencySettings {
        metrics_enabled: true,
        ..IdempotencySettings::default()
    };
    let error = postgres_coordinator(&settings, pool.clone(), None).expect_err("refused");
    assert!(
        matches!(error, IdempotencyError::Configuration { .. }),
        "{error}"
    );
    let bad_prefix = IdempotencySettings {
        key_prefix: "no-colon".to_owned(),
        ..IdempotencySettings::default()
    };
    let error = postgres_coordinator(&bad_prefix, pool, None).expect_err("refused");
    assert!(error.is_validation(), "{error}");
}
