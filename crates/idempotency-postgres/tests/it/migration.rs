//! The schema's migrations: each applied once, on a fresh database or on one an
//! earlier version of the crate migrated.

use std::time::Duration;

use idempotency_core::{Clock, IdempotencyRepository, Lease, RawValue};
use idempotency_postgres::{
    Outcome, PostgresStore, SCHEMA_VERSION, StepsError, StepsOptions, migrate,
};
use idempotency_testkit::postgres::TestDatabase;
use idempotency_testkit::{record_id, unique_key};
use sqlx::{Executor, PgPool};

use crate::common::fixture;

/// What version 1 of the crate's `migrate` left: the versions table and 0001.
const VERSION_1: &str = include_str!("../../migrations/0001_records.sql");

async fn database() -> (TestDatabase, PgPool) {
    let db = tokio::task::spawn_blocking(TestDatabase::create)
        .await
        .expect("create a database");
    let pool = PgPool::connect(&db.url()).await.expect("connect");
    (db, pool)
}

async fn versions(pool: &PgPool) -> Vec<i32> {
    sqlx::query_scalar("SELECT version FROM idempotency_schema_versions ORDER BY version")
        .fetch_all(pool)
        .await
        .expect("versions")
}

/// The columns of `idempotency_records`, in order.
async fn columns(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns
         WHERE table_name = 'idempotency_records' ORDER BY ordinal_position",
    )
    .fetch_all(pool)
    .await
    .expect("columns")
}

/// A one-phase run: proves the recovery-point columns are there.
async fn one_phase(store: &PostgresStore, key: &str) -> Outcome<i64> {
    let id = record_id("migration.steps", key);
    store
        .run_steps(&id, None, StepsOptions::new(), |run| {
            Box::pin(async move {
                let value = run
                    .phase("only", |conn, _| {
                        Box::pin(async move {
                            sqlx::query_scalar::<_, i64>("SELECT 42::bigint")
                                .fetch_one(&mut *conn)
                                .await
                        })
                    })
                    .await?;
                Ok::<_, StepsError<sqlx::Error>>(value)
            })
        })
        .await
        .expect("a multi-step run")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migration_2_applies_on_a_database_migrated_to_version_1_and_keeps_its_rows() {
    let (_db, pool) = database().await;
    pool.execute(
        "CREATE TABLE idempotency_schema_versions (
             version    integer     PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT statement_timestamp()
         )",
    )
    .await
    .expect("versions table");
    pool.execute(VERSION_1).await.expect("0001");
    pool.execute("INSERT INTO idempotency_schema_versions (version) VALUES (1)")
        .await
        .expect("version 1");
    // A record written under version 1.
    let id = record_id("migration.old", &unique_key("old"));
    let lease = Lease::new(id.clone(), None, Clock::system());
    let value = RawValue::from_string("7".to_owned()).expect("json");
    let record = lease
        .completed_record(&value, Duration::from_secs(600))
        .expect("record");
    sqlx::query(
        "INSERT INTO idempotency_records (key_prefix, operation, idempotency_key, status, fence,
             record, created_at, expires_at)
         VALUES ('idempotency:', $1, $2, 'completed', nextval('idempotency_fence_seq'), $3,
             statement_timestamp(), statement_timestamp() + interval '10 minutes')",
    )
    .bind(id.operation())
    .bind(id.key())
    .bind(record.to_json())
    .execute(&pool)
    .await
    .expect("an old row");
    let before = columns(&pool).await;
    assert!(!before.iter().any(|c| c == "recovery_point"));

    migrate(&pool).await.expect("migrate");

    assert_eq!(versions(&pool).await, vec![1, 2]);
    let after = columns(&pool).await;
    assert_eq!(
        after[..before.len()],
        before[..],
        "version 1's columns unchanged"
    );
    assert_eq!(
        after[before.len()..],
        ["run_id", "recovery_point", "step_state"]
    );
    let store = PostgresStore::new(pool.clone());
    let old = store.get(&id).await.expect("get").expect("the old row");
    assert_eq!(
        old.to_json(),
        record.to_json(),
        "the old row reads as it was"
    );
    // The old record replays through a multi-step call of its key.
    let replayed = store
        .run_steps(&id, None, StepsOptions::new(), |_| {
            Box::pin(async { Ok::<i64, StepsError<sqlx::Error>>(0) })
        })
        .await
        .expect("replay");
    assert_eq!(replayed, Outcome::Replayed(7));
    assert_eq!(one_phase(&store, &unique_key("new")).await.into_value(), 42);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fresh_database_gets_every_migration() {
    let (_db, pool) = database().await;
    migrate(&pool).await.expect("migrate");
    assert_eq!(
        versions(&pool).await,
        (1..=SCHEMA_VERSION).collect::<Vec<_>>()
    );
    assert_eq!(SCHEMA_VERSION, 2);
    let store = PostgresStore::new(pool.clone());
    assert_eq!(
        one_phase(&store, &unique_key("fresh")).await.into_value(),
        42
    );
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrating_again_and_concurrently_changes_nothing() {
    let f = fixture().await;
    let applied = |pool: PgPool| async move {
        sqlx::query_as::<_, (i32, String)>(
            "SELECT version, applied_at::text FROM idempotency_schema_versions ORDER BY version",
        )
        .fetch_all(&pool)
        .await
        .expect("applied")
    };
    let first = applied(f.pool.clone()).await;
    let shape = columns(&f.pool).await;
    let runs = (0..4).map(|_| {
        let pool = f.pool.clone();
        tokio::spawn(async move { migrate(&pool).await })
    });
    for run in runs {
        run.await.expect("join").expect("migrate again");
    }
    migrate(&f.pool).await.expect("and once more");
    assert_eq!(
        applied(f.pool.clone()).await,
        first,
        "nothing applied again"
    );
    assert_eq!(
        first.len(),
        usize::try_from(SCHEMA_VERSION).expect("positive")
    );
    assert_eq!(columns(&f.pool).await, shape);
}
