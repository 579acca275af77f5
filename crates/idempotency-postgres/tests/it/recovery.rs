//! Recovery points: a multi-step run (a ride: a database write, a charge at a fake
//! provider, a database write of the charge) commits each step once; a retry resumes
//! after the last committed step.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idempotency_core::{IdempotencyError, IdempotencyRepository, RecordId};
use idempotency_postgres::{InFlight, Outcome, PostgresStore, StepsError, StepsOptions};
use idempotency_testkit::{record_id, unique_key};
use sqlx::PgPool;
use tokio::sync::{Mutex as AsyncMutex, oneshot};

use crate::common::{Fixture, fixture};

/// A payment provider that deduplicates by the idempotency key it is given, as Stripe
/// does: a key seen before returns the charge made under it.
#[derive(Debug, Default)]
struct Provider {
    charges: Mutex<HashMap<String, String>>,
    calls: Mutex<Vec<String>>,
}

impl Provider {
    fn charge(&self, key: &str) -> String {
        self.calls.lock().expect("calls").push(key.to_owned());
        let mut charges = self.charges.lock().expect("charges");
        let next = format!("ch_{}", charges.len() + 1);
        charges.entry(key.to_owned()).or_insert(next).clone()
    }

    /// How many charges were made (not calls: a deduplicated call makes none).
    fn charges(&self) -> usize {
        self.charges.lock().expect("charges").len()
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("calls").clone()
    }
}

/// Where the ride's action lets a test step in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Point {
    /// Between the ride's phase and the charge.
    BeforeCharge,
    /// Inside the phase that saves the charge, after its insert; the backend's pid.
    SavingCharge(i32),
}

type HookFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// What the test does at each point (an error is the step's failure).
type Hook = Box<dyn Fn(Point) -> HookFuture + Send + Sync>;

fn no_hook() -> Hook {
    Box::new(|_| Box::pin(async { Ok(()) }))
}

/// A hook that, the first time the action reaches a point `at` accepts, says so (the
/// first receiver) and waits until told to go on (the sender).
fn pause_at(at: fn(Point) -> bool) -> (Hook, oneshot::Receiver<()>, oneshot::Sender<()>) {
    let (reached_tx, reached_rx) = oneshot::channel::<()>();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let once = Arc::new(AsyncMutex::new(Some((reached_tx, go_rx))));
    let hook: Hook = Box::new(move |point| {
        let once = Arc::clone(&once);
        Box::pin(async move {
            if at(point)
                && let Some((reached, go)) = once.lock().await.take()
            {
                let _ = reached.send(());
                let _ = go.await;
            }
            Ok(())
        })
    });
    (hook, reached_rx, go_tx)
}

/// The world the ride's action acts on, and how often each step's work ran.
#[derive(Debug, Default)]
struct World {
    provider: Provider,
    ride_runs: AtomicUsize,
    save_runs: AtomicUsize,
}

async fn with_tables(pool: &PgPool) {
    sqlx::query("CREATE TABLE rides (id bigserial PRIMARY KEY, idem_key text NOT NULL, fence bigint NOT NULL)")
        .execute(pool)
        .await
        .expect("create rides");
    sqlx::query("CREATE TABLE ride_charges (ride_id bigint NOT NULL, charge_id text NOT NULL, fence bigint NOT NULL)")
        .execute(pool)
        .await
        .expect("create ride_charges");
}

async fn count(pool: &PgPool, sql: &str, key: &str) -> i64 {
    sqlx::query_scalar(sql)
        .bind(key)
        .fetch_one(pool)
        .await
        .expect("count")
}

async fn rides(pool: &PgPool, key: &str) -> i64 {
    count(pool, "SELECT count(*) FROM rides WHERE idem_key = $1", key).await
}

async fn ride_charges(pool: &PgPool, key: &str) -> i64 {
    count(
        pool,
        "SELECT count(*) FROM ride_charges c JOIN rides r ON r.id = c.ride_id WHERE r.idem_key = $1",
        key,
    )
    .await
}

/// The run's recovery point, read directly.
async fn recovery_point(pool: &PgPool, id: &RecordId) -> Option<String> {
    sqlx::query_scalar(
        "SELECT recovery_point FROM idempotency_records WHERE operation = $1 AND idempotency_key = $2",
    )
    .bind(id.operation())
    .bind(id.key())
    .fetch_one(pool)
    .await
    .expect("recovery point")
}

/// Ends the run's lease on the server's clock (its owner "died" long ago).
async fn end_lease(pool: &PgPool, id: &RecordId) {
    sqlx::query(
        "UPDATE idempotency_records SET lease_expires_at = statement_timestamp() - interval '1 second'
         WHERE operation = $1 AND idempotency_key = $2",
    )
    .bind(id.operation())
    .bind(id.key())
    .execute(pool)
    .await
    .expect("end the lease");
}

/// Takes a ride: creates it (phase), charges it (external call, keyed), saves the
/// charge (phase); returns the charge id.
async fn take_ride(
    store: &PostgresStore,
    id: &RecordId,
    options: StepsOptions,
    world: &World,
    hook: &Hook,
) -> Result<Outcome<String>, StepsError<String>> {
    store
        .run_steps(id, Some("fp"), options, |run| {
            Box::pin(async move {
                let ride: i64 = run
                    .phase("create_ride", |conn, ctx| {
                        Box::pin(async move {
                            world.ride_runs.fetch_add(1, Ordering::SeqCst);
                            sqlx::query_scalar(
                                "INSERT INTO rides (idem_key, fence) VALUES ($1, $2) RETURNING id",
                            )
                            .bind(ctx.id().key())
                            .bind(ctx.fence().as_i64())
                            .fetch_one(&mut *conn)
                            .await
                            .map_err(|e| e.to_string())
                        })
                    })
                    .await?;
                hook(Point::BeforeCharge)
                    .await
                    .map_err(StepsError::Action)?;
                let charge: String = run
                    .external("charge", |key| async move {
                        Ok::<_, String>(world.provider.charge(key.as_str()))
                    })
                    .await?;
                let saved = charge.clone();
                run.phase("save_charge", |conn, ctx| {
                    Box::pin(async move {
                        world.save_runs.fetch_add(1, Ordering::SeqCst);
                        sqlx::query(
                            "INSERT INTO ride_charges (ride_id, charge_id, fence) VALUES ($1, $2, $3)",
                        )
                        .bind(ride)
                        .bind(saved)
                        .bind(ctx.fence().as_i64())
                        .execute(&mut *conn)
                        .await
                        .map_err(|e| e.to_string())?;
                        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                            .fetch_one(&mut *conn)
                            .await
                            .map_err(|e| e.to_string())?;
                        hook(Point::SavingCharge(pid)).await
                    })
                })
                .await?;
                Ok(charge)
            })
        })
        .await
}

/// Asserts the end state of one ride: one ride row, one charge at the provider, one
/// saved charge.
async fn assert_one_ride(f: &Fixture, id: &RecordId, world: &World) {
    assert_eq!(rides(&f.pool, id.key()).await, 1, "one ride row");
    assert_eq!(world.provider.charges(), 1, "one charge at the provider");
    assert_eq!(ride_charges(&f.pool, id.key()).await, 1, "one saved charge");
    assert_eq!(
        world.ride_runs.load(Ordering::SeqCst),
        1,
        "the ride's phase ran once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_step_error_after_the_first_phase_resumes_at_the_second_step() {
    let f = fixture().await;
    with_tables(&f.pool).await;
    let id = record_id("steps.error", &unique_key("error"));
    let world = World::default();
    let failing: Hook = Box::new(|point| {
        Box::pin(async move {
            match point {
                Point::BeforeCharge => Err("the process stops here".to_owned()),
                Point::SavingCharge(_) => Ok(()),
            }
        })
    });
    let failed = take_ride(&f.store, &id, StepsOptions::new(), &world, &failing).await;
    assert_eq!(
        failed.expect_err("stopped").into_action().as_deref(),
        Some("the process stops here")
    );
    assert_eq!(
        recovery_point(&f.pool, &id).await.as_deref(),
        Some("create_ride")
    );
    assert_eq!(world.provider.charges(), 0, "no charge yet");
    // The failed attempt ended its lease: the retry resumes at once.
    let no_wait = StepsOptions::new().with_in_flight(InFlight::Fail);
    let outcome = take_ride(&f.store, &id, no_wait, &world, &no_hook())
        .await
        .expect("the retry resumes");
    assert_eq!(outcome.value(), "ch_1");
    assert!(!outcome.is_replayed());
    assert_one_ride(&f, &id, &world).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_dropped_after_the_first_phase_resumes_at_the_second_step_once_its_lease_ends() {
    let f = fixture().await;
    with_tables(&f.pool).await;
    let id = record_id("steps.dropped", &unique_key("dropped"));
    let world = World::default();
    let (stalls, reached, _never) = pause_at(|p| p == Point::BeforeCharge);
    let ride = take_ride(&f.store, &id, StepsOptions::new(), &world, &stalls);
    // The future is dropped once the first phase committed (the process dies there).
    tokio::select! {
        ended = ride => panic!("the ride stalls, yet it ended: {ended:?}"),
        at = reached => at.expect("the ride reached the charge"),
    }
    assert_eq!(
        recovery_point(&f.pool, &id).await.as_deref(),
        Some("create_ride")
    );
    // A crash releases nothing: the lease is alive until it ends on the server's clock.
    let no_wait = StepsOptions::new().with_in_flight(InFlight::Fail);
    let busy = take_ride(&f.store, &id, no_wait, &world, &no_hook()).await;
    assert!(matches!(
        busy,
        Err(StepsError::Idempotency(IdempotencyError::InProgress { .. }))
    ));
    end_lease(&f.pool, &id).await;
    let outcome = take_ride(&f.store, &id, no_wait, &world, &no_hook())
        .await
        .expect("the retry resumes");
    assert_eq!(outcome.value(), "ch_1");
    assert_one_ride(&f, &id, &world).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_that_panics_after_the_first_phase_resumes_at_the_second_step_once_its_lease_ends() {
    let f = fixture().await;
    with_tables(&f.pool).await;
    let id = record_id("steps.panic", &unique_key("panic"));
    let world = Arc::new(World::default());
    let panics: Hook = Box::new(|point| {
        Box::pin(async move {
            assert_ne!(point, Point::BeforeCharge, "the process dies here");
            Ok(())
        })
    });
    let attempt = {
        let (store, id, world) = (f.store.clone(), id.clone(), Arc::clone(&world));
        tokio::spawn(
            async move { take_ride(&store, &id, StepsOptions::new(), &world, &panics).await },
        )
    };
    assert!(attempt.await.expect_err("it panicked").is_panic());
    assert_eq!(
        recovery_point(&f.pool, &id).await.as_deref(),
        Some("create_ride")
    );
    end_lease(&f.pool, &id).await;
    let no_wait = StepsOptions::new().with_in_flight(InFlight::Fail);
    let outcome = take_ride(&f.store, &id, no_wait, &world, &no_hook())
        .await
        .expect("the retry resumes");
    assert_eq!(outcome.value(), "ch_1");
    assert_one_ride(&f, &id, &world).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_killed_mid_phase_rolls_the_phase_back_and_the_retry_resumes_there() {
    let f = fixture().await;
    with_tables(&f.pool).await;
    let id = record_id("steps.killed", &unique_key("killed"));
    let world = World::default();
    let (pid_tx, pid_rx) = oneshot::channel::<i32>();
    let pid_tx = Mutex::new(Some(pid_tx));
    let killed: Hook = Box::new(move |point| {
        let pid_tx = match point {
            Point::SavingCharge(pid) => pid_tx.lock().expect("pid").take().map(|tx| (tx, pid)),
            Point::BeforeCharge => None,
        };
        Box::pin(async move {
            if let Some((tx, pid)) = pid_tx {
                let _ = tx.send(pid);
                // The connection dies here, before the phase commits.
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            Ok(())
        })
    });
    let store = f.store.clone();
    let pool = f.pool.clone();
    let terminator = tokio::spawn(async move {
        let pid = pid_rx.await.expect("the phase ran");
        let done: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(&pool)
            .await
            .expect("terminate");
        assert!(done);
    });
    let crashed = take_ride(&store, &id, StepsOptions::new(), &world, &killed).await;
    terminator.await.expect("terminator");
    assert!(
        crashed
            .as_ref()
            .err()
            .and_then(StepsError::as_idempotency)
            .is_some_and(IdempotencyError::is_storage),
        "the phase failed with its connection: {crashed:?}"
    );
    assert_eq!(
        ride_charges(&f.pool, id.key()).await,
        0,
        "the killed phase rolled back"
    );
    assert_eq!(
        recovery_point(&f.pool, &id).await.as_deref(),
        Some("create_ride")
    );
    assert_eq!(world.provider.charges(), 1);
    let retry = StepsOptions::new().with_in_flight(InFlight::Fail);
    let outcome = take_ride(&f.store, &id, retry, &world, &no_hook())
        .await
        .expect("the retry resumes");
    assert_eq!(outcome.value(), "ch_1");
    assert_one_ride(&f, &id, &world).await;
    assert_eq!(
        world.save_runs.load(Ordering::SeqCst),
        2,
        "the killed phase ran again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_after_the_charge_calls_the_provider_again_with_the_same_key() {
    let f = fixture().await;
    with_tables(&f.pool).await;
    let id = record_id("steps.charged", &unique_key("charged"));
    let world = World::default();
    let fails_saving: Hook = Box::new(|point| {
        Box::pin(async move {
            match point {
                Point::SavingCharge(_) => Err("crash before the charge is saved".to_owned()),
                Point::BeforeCharge => Ok(()),
            }
        })
    });
    let failed = take_ride(&f.store, &id, StepsOptions::new(), &world, &fails_saving).await;
    assert!(failed.is_err());
    assert_eq!(world.provider.charges(), 1, "the provider charged");
    assert_eq!(
        ride_charges(&f.pool, id.key()).await,
        0,
        "the save rolled back"
    );
    assert_eq!(
        recovery_point(&f.pool, &id).await.as_deref(),
        Some("create_ride")
    );
    let outcome = take_ride(&f.store, &id, StepsOptions::new(), &world, &no_hook())
        .await
        .expect("the retry resumes");
    let calls = world.provider.calls();
    assert_eq!(calls.len(), 2, "the provider was called again");
    assert_eq!(calls[0], calls[1], "with the same key");
    assert_eq!(outcome.value(), "ch_1", "the first charge, deduplicated");
    assert_one_ride(&f, &id, &world).await;
    let saved: String = sqlx::query_scalar("SELECT charge_id FROM ride_charges")
        .fetch_one(&f.pool)
        .await
        .expect("saved charge");
    assert_eq!(saved, "ch_1");
    // The completed record is the store's: `get` reads it.
    let record = f.store.get(&id).await.expect("get").expect("a record");
    assert_eq!(record.status(), idempotency_core::RecordStatus::Completed);
    assert_eq!(record.result().get(), "\"ch_1\"");
    assert_eq!(
        recovery_point(&f.pool, &id).await,
        None,
        "finished runs keep no state"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_owner_cannot_commit_a_phase_after_another_took_the_run_over() {
    let f = fixture().await;
    with_tables(&f.pool).await;
    let id = record_id("steps.stale", &unique_key("stale"));
    let world = World::default();
    let lease = StepsOptions::new()
        .with_lease(Duration::from_secs(1))
        .with_in_flight(InFlight::Fail);

    // The first owner stalls before the charge, past its lease; the second stops
    // inside its save (its lease alive), until told.
    let (stale_hook, stalled, go) = pause_at(|p| p == Point::BeforeCharge);
    let (live_hook, saving, finish) = pause_at(|p| matches!(p, Point::SavingCharge(_)));

    let world = Arc::new(world);
    let first_owner = {
        let (store, id, world) = (f.store.clone(), id.clone(), Arc::clone(&world));
        tokio::spawn(async move { take_ride(&store, &id, lease, &world, &stale_hook).await })
    };
    stalled.await.expect("the first owner stalls");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let ended: bool = sqlx::query_scalar(
        "SELECT lease_expires_at <= statement_timestamp() FROM idempotency_records
         WHERE operation = $1 AND idempotency_key = $2",
    )
    .bind(id.operation())
    .bind(id.key())
    .fetch_one(&f.pool)
    .await
    .expect("lease");
    assert!(ended, "the first lease ended on the server's clock");

    let live = {
        let (store, id, world) = (f.store.clone(), id.clone(), Arc::clone(&world));
        tokio::spawn(async move {
            take_ride(&store, &id, StepsOptions::new(), &world, &live_hook).await
        })
    };
    saving
        .await
        .expect("the second owner took over and is saving");
    // The stale owner wakes up: it charges (deduplicated by the key) and tries to
    // commit its save, which must be refused and rolled back.
    go.send(()).expect("wake the stale owner");
    let refused = first_owner.await.expect("join");
    assert!(
        matches!(&refused, Err(StepsError::LeaseLost { step }) if step == "save_charge"),
        "the stale owner's phase is refused: {refused:?}"
    );
    finish.send(()).expect("let the live owner finish");
    let outcome = live.await.expect("join").expect("the live owner completes");
    assert_eq!(outcome.value(), "ch_1");

    assert_eq!(
        world.save_runs.load(Ordering::SeqCst),
        2,
        "both owners ran the save"
    );
    assert_eq!(
        ride_charges(&f.pool, id.key()).await,
        1,
        "one save committed"
    );
    let (saved_fence, ride_fence): (i64, i64) = sqlx::query_as(
        "SELECT c.fence, r.fence FROM ride_charges c JOIN rides r ON r.id = c.ride_id",
    )
    .fetch_one(&f.pool)
    .await
    .expect("fences");
    let Outcome::Ran { fence, .. } = outcome else {
        panic!("the live owner ran")
    };
    assert_eq!(
        saved_fence,
        fence.as_i64(),
        "the committed save is the live owner's"
    );
    assert!(ride_fence < saved_fence, "the ride was the first owner's");
    assert_one_ride(&f, &id, &world).await;
    assert_eq!(
        world.provider.calls().len(),
        2,
        "both owners called, with one key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_completed_run_replays_without_running_a_step() {
    let f = fixture().await;
    with_tables(&f.pool).await;
    let id = record_id("steps.replay", &unique_key("replay"));
    let world = World::default();
    let first = take_ride(&f.store, &id, StepsOptions::new(), &world, &no_hook())
        .await
        .expect("first");
    assert!(!first.is_replayed());
    for _ in 0..3 {
        let again = take_ride(&f.store, &id, StepsOptions::new(), &world, &no_hook())
            .await
            .expect("again");
        assert_eq!(again, Outcome::Replayed("ch_1".to_owned()));
    }
    assert_one_ride(&f, &id, &world).await;
    assert_eq!(world.provider.calls().len(), 1, "no step ran again");
    assert_eq!(world.save_runs.load(Ordering::SeqCst), 1);
    let reuse = f
        .store
        .run_steps(&id, Some("another request"), StepsOptions::new(), |_| {
            Box::pin(async { Ok::<String, StepsError<String>>(String::new()) })
        })
        .await;
    assert!(matches!(
        reuse,
        Err(StepsError::Idempotency(IdempotencyError::KeyReuse { .. }))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unfinished_run_under_another_fingerprint_is_key_reuse() {
    let f = fixture().await;
    with_tables(&f.pool).await;
    let id = record_id("steps.reuse", &unique_key("reuse"));
    let world = World::default();
    let failing: Hook = Box::new(|point| {
        Box::pin(async move {
            match point {
                Point::BeforeCharge => Err("stop".to_owned()),
                Point::SavingCharge(_) => Ok(()),
            }
        })
    });
    assert!(
        take_ride(&f.store, &id, StepsOptions::new(), &world, &failing)
            .await
            .is_err()
    );
    let reuse = f
        .store
        .run_steps(&id, Some("another request"), StepsOptions::new(), |_| {
            Box::pin(async { Ok::<String, StepsError<String>>(String::new()) })
        })
        .await;
    assert!(matches!(
        reuse,
        Err(StepsError::Idempotency(IdempotencyError::KeyReuse { .. }))
    ));
    assert_eq!(
        recovery_point(&f.pool, &id).await.as_deref(),
        Some("create_ride")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_duplicates_run_each_step_once() {
    let f = fixture().await;
    with_tables(&f.pool).await;
    for round in 0..3 {
        let id = record_id("steps.dupes", &unique_key(&format!("round{round}")));
        let world = Arc::new(World::default());
        let barrier = Arc::new(tokio::sync::Barrier::new(8));
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let (store, id, world) = (f.store.clone(), id.clone(), Arc::clone(&world));
                let barrier = Arc::clone(&barrier);
                tokio::spawn(async move {
                    barrier.wait().await;
                    take_ride(&store, &id, StepsOptions::new(), &world, &no_hook()).await
                })
            })
            .collect();
        let mut replayed = 0;
        for call in calls {
            let outcome = call.await.expect("join").expect("call");
            assert_eq!(outcome.value(), "ch_1", "every caller gets the one charge");
            replayed += usize::from(outcome.is_replayed());
        }
        assert_eq!(replayed, 7, "one ran, seven waited and replayed");
        assert_one_ride(&f, &id, &world).await;
        assert_eq!(
            world.provider.calls().len(),
            1,
            "the provider was called once"
        );
        assert_eq!(world.save_runs.load(Ordering::SeqCst), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn steps_called_in_another_order_than_committed_diverge() {
    let f = fixture().await;
    with_tables(&f.pool).await;
    let id = record_id("steps.diverged", &unique_key("diverged"));
    let world = World::default();
    let failing: Hook = Box::new(|point| {
        Box::pin(async move {
            match point {
                Point::BeforeCharge => Err("stop".to_owned()),
                Point::SavingCharge(_) => Ok(()),
            }
        })
    });
    assert!(
        take_ride(&f.store, &id, StepsOptions::new(), &world, &failing)
            .await
            .is_err()
    );
    let changed = f
        .store
        .run_steps(&id, Some("fp"), StepsOptions::new(), |run| {
            Box::pin(async move {
                run.phase("renamed_ride", |_, _| {
                    Box::pin(async { Ok::<_, String>(0_i64) })
                })
                .await?;
                Ok::<String, StepsError<String>>(String::new())
            })
        })
        .await;
    assert!(
        matches!(&changed, Err(StepsError::Diverged { step, committed: Some(c) })
            if step == "renamed_ride" && c == "create_ride"),
        "{changed:?}"
    );
}
