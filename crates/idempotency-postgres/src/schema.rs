//! The schema, shipped as SQL files, and the migration that applies them.

use idempotency_core::Result;
use sqlx::{Executor, PgPool};

use crate::errors::storage_error;

/// The migrations in order: version, SQL. Each is applied once per database.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../migrations/0001_records.sql")),
    (2, include_str!("../migrations/0002_recovery_points.sql")),
];

/// The advisory lock that serialises concurrent migrations (transaction-scoped, so
/// `PgBouncer`-safe): "idem" "pg" in ASCII.
const MIGRATION_LOCK: i64 = 0x6964_656d_0070_6701;

/// Creates or updates the store's schema in the pool's database: the
/// `idempotency_records` table (with the recovery-point columns of multi-step runs,
/// version 2), its sequence, index and time-spelling function, and the
/// `idempotency_schema_versions` table that records what was applied. A database
/// migrated by an earlier version of this crate gets only what it lacks.
///
/// Idempotent: every migration runs once per database, in one transaction, under a
/// transaction-scoped advisory lock, so concurrent callers (many instances starting at
/// once) apply it once and the others wait for it.
///
/// # Errors
/// Storage errors (no connection, no right to create tables).
///
/// # Examples
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = sqlx::PgPool::connect("postgres://app@127.0.0.1/app").await?;
/// idempotency_postgres::migrate(&pool).await?;
/// idempotency_postgres::migrate(&pool).await?; // nothing left to do
/// # Ok(()) }
/// ```
pub async fn migrate(pool: &PgPool) -> Result<()> {
    let fail = |e| storage_error(None, e);
    let mut tx = pool.begin().await.map_err(fail)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(fail)?;
    // Sent without arguments: the simple protocol, which takes several statements.
    tx.execute(
        "CREATE TABLE IF NOT EXISTS idempotency_schema_versions (
             version    integer     PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT statement_timestamp()
         )",
    )
    .await
    .map_err(fail)?;
    let applied: Vec<i32> = sqlx::query_scalar("SELECT version FROM idempotency_schema_versions")
        .fetch_all(&mut *tx)
        .await
        .map_err(fail)?;
    for (version, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.execute(*sql).await.map_err(fail)?;
        sqlx::query("INSERT INTO idempotency_schema_versions (version) VALUES ($1)")
            .bind(version)
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
    }
    tx.commit().await.map_err(fail)
}

/// The latest schema version this crate knows.
pub const SCHEMA_VERSION: i32 = 2;
