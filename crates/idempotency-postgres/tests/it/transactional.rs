//! The transactional mode: the claim, the action's writes and the completion commit
//! together or not at all.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idempotency_core::{IdempotencyError, RecordId};
use idempotency_postgres::{InFlight, Outcome, PostgresStore, RunError, TransactionOptions};
use idempotency_testkit::{record_id, unique_key};
use sqlx::PgPool;

use crate::common::fixture;

async fn with_orders(pool: &PgPool) {
    sqlx::query("CREATE TABLE orders (id bigserial PRIMARY KEY, idem_key text NOT NULL, fence bigint NOT NULL)")
        .execute(pool)
        .await
        .expect("create orders");
}

async fn orders(pool: &PgPool, key: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM orders WHERE idem_key = $1")
        .bind(key)
        .fetch_one(pool)
        .await
        .expect("count orders")
}

/// Places an order in the call's transaction; counts runs; returns the order's id.
async fn place_order(
    store: &PostgresStore,
    id: &RecordId,
    options: TransactionOptions,
    runs: &AtomicUsize,
) -> Result<Outcome<i64>, RunError<sqlx::Error>> {
    store
        .run_in_transaction(id, Some("fp"), options, |conn, ctx| {
            Box::pin(async move {
                runs.fetch_add(1, Ordering::SeqCst);
                let order: i64 = sqlx::query_scalar(
                    "INSERT INTO orders (idem_key, fence) VALUES ($1, $2) RETURNING id",
                )
                .bind(ctx.id().key())
                .bind(ctx.fence().as_i64())
                .fetch_one(&mut *conn)
                .await?;
                Ok(order)
            })
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_action_error_commits_nothing_and_the_retry_runs() {
    let f = fixture().await;
    with_orders(&f.pool).await;
    let id = record_id("tx.error", &unique_key("error"));
    let failed = f
        .store
        .run_in_transaction(&id, None, TransactionOptions::new(), |conn, ctx| {
            Box::pin(async move {
                sqlx::query("INSERT INTO orders (idem_key, fence) VALUES ($1, $2)")
                    .bind(ctx.id().key())
                    .bind(ctx.fence().as_i64())
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| e.to_string())?;
                Err::<i64, _>("card declined".to_owned())
            })
        })
        .await;
    assert_eq!(
        failed.expect_err("failed").into_action().as_deref(),
        Some("card declined")
    );
    assert_eq!(
        orders(&f.pool, id.key()).await,
        0,
        "the action's write rolled back"
    );
    assert!(
        crate::common::row_of(&f.pool, id.operation(), id.key())
            .await
            .is_none(),
        "no record"
    );
    let runs = AtomicUsize::new(0);
    let outcome = place_order(&f.store, &id, TransactionOptions::new(), &runs)
        .await
        .expect("retry");
    assert!(!outcome.is_replayed());
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(orders(&f.pool, id.key()).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_killed_before_commit_leaves_nothing_and_the_retry_runs_once() {
    let f = fixture().await;
    with_orders(&f.pool).await;
    let id = record_id("tx.crash", &unique_key("crash"));
    let (pid_tx, pid_rx) = tokio::sync::oneshot::channel::<i32>();
    let store = f.store.clone();
    let crashing_id = id.clone();
    let call = tokio::spawn(async move {
        store
            .run_in_transaction(
                &crashing_id,
                None,
                TransactionOptions::new(),
                move |conn, ctx| {
                    Box::pin(async move {
                        sqlx::query("INSERT INTO orders (idem_key, fence) VALUES ($1, $2)")
                            .bind(ctx.id().key())
                            .bind(ctx.fence().as_i64())
                            .execute(&mut *conn)
                            .await?;
                        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                            .fetch_one(&mut *conn)
                            .await?;
                        let _ = pid_tx.send(pid);
                        // The process "crashes" here: its connection dies before COMMIT.
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        Ok::<_, sqlx::Error>(1_i64)
                    })
                },
            )
            .await
    });
    let pid = pid_rx.await.expect("the action ran");
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&f.pool)
        .await
        .expect("terminate");
    assert!(killed);
    let crashed = call.await.expect("join");
    assert!(
        crashed
            .as_ref()
            .err()
            .and_then(RunError::as_idempotency)
            .is_some_and(IdempotencyError::is_storage),
        "the completion failed with the connection: {crashed:?}"
    );
    assert_eq!(orders(&f.pool, id.key()).await, 0, "nothing committed");
    let runs = AtomicUsize::new(0);
    let outcome = place_order(&f.store, &id, TransactionOptions::new(), &runs)
        .await
        .expect("retry");
    assert!(!outcome.is_replayed(), "the retry runs");
    let again = place_order(&f.store, &id, TransactionOptions::new(), &runs)
        .await
        .expect("again");
    assert!(again.is_replayed());
    assert_eq!(runs.load(Ordering::SeqCst), 1, "once");
    assert_eq!(orders(&f.pool, id.key()).await, 1, "exactly one effect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_dropped_mid_action_leaves_nothing() {
    let f = fixture().await;
    with_orders(&f.pool).await;
    let id = record_id("tx.dropped", &unique_key("dropped"));
    let runs = AtomicUsize::new(0);
    let options = TransactionOptions::new();
    let slow = f.store.run_in_transaction(&id, None, options, |conn, ctx| {
        Box::pin(async move {
            sqlx::query("INSERT INTO orders (idem_key, fence) VALUES ($1, $2)")
                .bind(ctx.id().key())
                .bind(ctx.fence().as_i64())
                .execute(&mut *conn)
                .await?;
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, sqlx::Error>(0_i64)
        })
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), slow)
            .await
            .is_err()
    );
    let outcome = place_order(&f.store, &id, options, &runs)
        .await
        .expect("retry");
    assert!(!outcome.is_replayed());
    assert_eq!(orders(&f.pool, id.key()).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_committed_call_is_replayed_without_running() {
    let f = fixture().await;
    with_orders(&f.pool).await;
    let id = record_id("tx.replay", &unique_key("replay"));
    let runs = AtomicUsize::new(0);
    let first = place_order(&f.store, &id, TransactionOptions::new(), &runs)
        .await
        .expect("first");
    let Outcome::Ran { value, fence } = first else {
        panic!("the first call runs")
    };
    let stored_fence: i64 = sqlx::query_scalar("SELECT fence FROM orders WHERE id = $1")
        .bind(value)
        .fetch_one(&f.pool)
        .await
        .expect("fence");
    assert_eq!(
        stored_fence,
        fence.as_i64(),
        "the action saw the claim's fence"
    );
    for _ in 0..3 {
        let again = place_order(&f.store, &id, TransactionOptions::new(), &runs)
            .await
            .expect("again");
        assert_eq!(again, Outcome::Replayed(value));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(orders(&f.pool, id.key()).await, 1);
    // The committed record is the store's: a reservation claim finds it.
    let lease = idempotency_core::Lease::new(id.clone(), None, idempotency_core::Clock::system());
    let found = idempotency_core::ReservationStore::claim(&f.store, &lease, Duration::from_secs(5))
        .await
        .expect("claim");
    assert!(
        matches!(found, idempotency_core::Claim::Found(r) if r.result().get() == value.to_string())
    );
    // Another request under the same key is refused.
    let reuse = f
        .store
        .run_in_transaction(&id, Some("other"), TransactionOptions::new(), |_, _| {
            Box::pin(async { Ok::<i64, sqlx::Error>(0) })
        })
        .await;
    assert!(matches!(
        reuse,
        Err(RunError::Idempotency(IdempotencyError::KeyReuse { .. }))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_concurrent_duplicates_make_one_effect_and_share_its_result() {
    let f = fixture().await;
    with_orders(&f.pool).await;
    for round in 0..3 {
        let id = record_id("tx.dupes", &unique_key(&format!("round{round}")));
        let runs = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(tokio::sync::Barrier::new(16));
        let calls: Vec<_> = (0..16)
            .map(|_| {
                let store = f.store.clone();
                let id = id.clone();
                let runs = Arc::clone(&runs);
                let barrier = Arc::clone(&barrier);
                tokio::spawn(async move {
                    barrier.wait().await;
                    place_order(&store, &id, TransactionOptions::new(), &runs).await
                })
            })
            .collect();
        let mut values = Vec::new();
        for call in calls {
            values.push(call.await.expect("join").expect("call").into_value());
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1, "the action ran once");
        assert_eq!(
            orders(&f.pool, id.key()).await,
            1,
            "exactly one business row"
        );
        assert!(
            values.iter().all(|v| *v == values[0]),
            "every caller got the same result"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_wait_mode_answers_in_progress_while_the_first_transaction_is_open() {
    let f = fixture().await;
    with_orders(&f.pool).await;
    let id = record_id("tx.nowait", &unique_key("nowait"));
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let (finish_tx, finish_rx) = tokio::sync::oneshot::channel::<()>();
    let store = f.store.clone();
    let first_id = id.clone();
    let first = tokio::spawn(async move {
        store
            .run_in_transaction(&first_id, None, TransactionOptions::new(), move |_, _| {
                Box::pin(async move {
                    let _ = started_tx.send(());
                    let _ = finish_rx.await;
                    Ok::<_, sqlx::Error>(5_i64)
                })
            })
            .await
    });
    started_rx.await.expect("the first call runs");
    let runs = AtomicUsize::new(0);
    let no_wait = TransactionOptions::new().with_in_flight(InFlight::Fail);
    let started = std::time::Instant::now();
    let busy = place_order(&f.store, &id, no_wait, &runs).await;
    assert!(started.elapsed() < Duration::from_secs(1), "promptly");
    assert!(matches!(
        busy,
        Err(RunError::Idempotency(IdempotencyError::InProgress { .. }))
    ));
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    finish_tx.send(()).expect("finish");
    assert_eq!(first.await.expect("join").expect("first").into_value(), 5);
    let after = place_order(&f.store, &id, no_wait, &runs)
        .await
        .expect("after");
    assert_eq!(after, Outcome::Replayed(5));
}
