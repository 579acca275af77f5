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

/// A pool of one connection to the fixture's database whose statements the server logs,
/// and that connection's backend pid.
pub(crate) async fn logged_connection(f: &Fixture) -> (PgPool, i32) {
    sqlx::query(&format!(
        "ALTER DATABASE {} SET log_statement = 'all'",
        f.db.name()
    ))
    .execute(&f.pool)
    .await
    .expect("log statements");
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .connect(&f.db.url())
        .await
        .expect("connect");
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .expect("pid");
    (pool, pid)
}

/// The statements the backend `pid` executed so far, as the server logged them.
pub(crate) fn executed(f: &Fixture, pid: i32) -> Vec<String> {
    let text = std::fs::read_to_string(f.db.server().log_path()).expect("read the log");
    let tag = format!("[{pid}] LOG:  ");
    text.lines()
        .filter_map(|l| l.split_once(&tag).map(|(_, rest)| rest.to_owned()))
        .filter(|l| l.starts_with("execute") || l.starts_with("statement"))
        .collect()
}
