//! A database, a pool and a store per test.

use idempotency_postgres::{PostgresStore, migrate};
use idempotency_testkit::postgres::TestDatabase;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

pub(crate) struct Fixture {
    pub(crate) store: PostgresStore,
    pub(crate) pool: PgPool,
    // Dropped last: the database goes once the pool is closed.
    pub(crate) db: TestDatabase,
}

/// A migrated database of its own.
pub(crate) async fn fixture() -> Fixture {
    let db = tokio::task::spawn_blocking(TestDatabase::create)
        .await
        .expect("create a database");
    let pool = PgPoolOptions::new()
        .max_connections(80)
        .connect(&db.url())
        .await
        .expect("connect");
    migrate(&pool).await.expect("migrate");
    let store = PostgresStore::new(pool.clone());
    Fixture { store, pool, db }
}

/// The row's columns of interest, read directly.
pub(crate) async fn row_of(
    pool: &PgPool,
    operation: &str,
    key: &str,
) -> Option<(String, i64, String)> {
    sqlx::query_as(
        "SELECT status, fence, record FROM idempotency_records
         WHERE key_prefix = 'idempotency:' AND operation = $1 AND idempotency_key = $2",
    )
    .bind(operation)
    .bind(key)
    .fetch_optional(pool)
    .await
    .expect("read the row")
}

/// Moves the row's expiry into the server's past (an expired lease or TTL).
pub(crate) async fn expire(pool: &PgPool, operation: &str, key: &str) {
    sqlx::query(
        "UPDATE idempotency_records SET expires_at = statement_timestamp() - interval '1 second'
         WHERE operation = $1 AND idempotency_key = $2",
    )
    .bind(operation)
    .bind(key)
    .execute(pool)
    .await
    .expect("expire the row");
}
