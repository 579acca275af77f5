//! Postgres: the coordinator on [`PostgresStore`] against the raw single statements a
//! hit and a miss need, the transactional call against the same business transaction
//! without the library, and the same coordinator calls on Redis, all in this run.
//!
//! The server is a throwaway one the testkit starts (`initdb` and `postgres` from the
//! machine's install, on a free loopback port, never 5432), removed when the program
//! ends; `--no-postgres` skips the section, and so does a machine without Postgres (the
//! section says why). Each row alternates its two sides (library, raw, raw, library, …)
//! over [`ROUNDS`] runs and prints the median with the range.

use std::fmt::Write as _;
use std::sync::Arc;

use idempotency_coordinator::Coordinator;
use idempotency_core::IdempotencyError;
use idempotency_postgres::{PostgresStore, TransactionOptions, migrate};
use idempotency_testkit::postgres::{PostgresServer, postgres_bin_dir};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::load::{Stats, drive};
use crate::scenarios::{Order, order};
use crate::{Ctx, Pace, Section, WithPostgres};

/// Concurrency of every row, and the pool's size: one connection per caller.
const CONCURRENCY: usize = 16;
/// Runs of each side per row.
const ROUNDS: usize = 5;
const OPERATION: &str = "bench.pg";
/// The store's default key prefix (the raw statements address the same rows).
const PREFIX: &str = "idempotency:";

/// The raw yardstick of a hit: the one statement that reads a live record by its key.
const RAW_HIT: &str = "SELECT record FROM idempotency_records
    WHERE key_prefix = $1 AND operation = $2 AND idempotency_key = $3
      AND expires_at > statement_timestamp()";
/// The raw yardstick of a miss: the one statement that writes a completed record.
const RAW_MISS: &str = "INSERT INTO idempotency_records
    (key_prefix, operation, idempotency_key, status, owner_token, fence, record,
     created_at, expires_at)
    VALUES ($1, $2, $3, 'completed', 'raw', nextval('idempotency_fence_seq'), $4,
            statement_timestamp(), statement_timestamp() + interval '30 minutes')";
/// The business write of the transactional rows.
const BUSINESS: &str = "INSERT INTO bench_orders (idem_key, amount) VALUES ($1, $2) RETURNING id";

/// Why the section cannot run here, if it cannot.
fn unavailable(ctx: &Ctx) -> Option<String> {
    if ctx.options.postgres == WithPostgres::Skip {
        return Some("skipped (--no-postgres)".to_owned());
    }
    // The testkit panics with an install hint; keep the hint, not the panic.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let found = std::panic::catch_unwind(postgres_bin_dir);
    std::panic::set_hook(hook);
    match found {
        Ok(_) => None,
        Err(panic) => Some(format!(
            "skipped: {}",
            panic
                .downcast_ref::<String>()
                .map_or("Postgres binaries not found", String::as_str)
        )),
    }
}

/// Median and range of a side's runs.
#[derive(Default)]
struct Runs(Vec<Stats>);

impl Runs {
    fn sorted(&self, f: impl Fn(&Stats) -> f64) -> Vec<f64> {
        let mut v: Vec<f64> = self.0.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v
    }
    fn median(&self, f: impl Fn(&Stats) -> f64) -> f64 {
        let v = self.sorted(f);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    }
    /// `median (min–max)`.
    fn spread(&self, f: impl Fn(&Stats) -> f64 + Copy, digits: usize) -> String {
        let v = self.sorted(f);
        format!(
            "{:.digits$} ({:.digits$}–{:.digits$})",
            self.median(f),
            v.first().copied().unwrap_or(0.0),
            v.last().copied().unwrap_or(0.0),
        )
    }
}

/// Runs `a` and `b` alternately (a, b, b, a, …), `ROUNDS` times each, with the round's
/// number; a warm-up of each first.
async fn alternate<A, B>(rounds: usize, a: A, b: B) -> (Runs, Runs)
where
    A: AsyncFn(usize) -> Stats,
    B: AsyncFn(usize) -> Stats,
{
    let _ = a(usize::MAX).await;
    let _ = b(usize::MAX - 1).await;
    let (mut ra, mut rb) = (Runs::default(), Runs::default());
    for round in 0..rounds {
        if round % 2 == 0 {
            ra.0.push(a(round).await);
            rb.0.push(b(round).await);
        } else {
            rb.0.push(b(round).await);
            ra.0.push(a(round).await);
        }
    }
    (ra, rb)
}

/// A table row: two sides, their ops/s and p50 latencies, and the ratio of medians.
fn row(md: &mut String, what: &str, a_label: &str, a: &Runs, b_label: &str, b: &Runs) -> f64 {
    let ratio = a.median(|s| s.ops_per_sec) / b.median(|s| s.ops_per_sec).max(f64::MIN_POSITIVE);
    let _ = writeln!(
        md,
        "| {what} | {a_label}: {} ops/s, p50 {} µs | {b_label}: {} ops/s, p50 {} µs | {ratio:.2} |",
        a.spread(|s| s.ops_per_sec, 0),
        a.spread(|s| s.p50_us, 0),
        b.spread(|s| s.ops_per_sec, 0),
        b.spread(|s| s.p50_us, 0),
    );
    ratio
}

/// The hit and the miss through the coordinator on `coordinator`'s store, `n` calls at
/// [`CONCURRENCY`]; misses on fresh keys of `round`.
async fn coordinator_calls<S>(
    coordinator: &Coordinator<S>,
    keys: &Arc<Vec<String>>,
    tag: &'static str,
    round: usize,
    n: u64,
) -> Stats
where
    S: idempotency_core::ReservationStore + Clone,
{
    let coordinator = coordinator.clone();
    let keys = Arc::clone(keys);
    drive(CONCURRENCY, n, move |i| {
        let coordinator = coordinator.clone();
        let keys = Arc::clone(&keys);
        async move {
            let key = if tag == "hit" {
                keys[usize::try_from(i).unwrap_or(0) % keys.len()].clone()
            } else {
                format!("{tag}-{round}-{i}")
            };
            let _: Order = coordinator
                .call(OPERATION, Some(&key))
                .run(|| async { Ok::<_, IdempotencyError>(order()) })
                .await
                .expect("a call");
        }
    })
    .await
}

/// `n` raw statements: a hit's read over `keys`, or a miss's insert on fresh keys.
async fn raw_statements(
    pool: &PgPool,
    keys: &Arc<Vec<String>>,
    record: &Arc<String>,
    hit: bool,
    round: usize,
    n: u64,
) -> Stats {
    let (pool, keys, record) = (pool.clone(), Arc::clone(keys), Arc::clone(record));
    drive(CONCURRENCY, n, move |i| {
        let (pool, keys, record) = (pool.clone(), Arc::clone(&keys), Arc::clone(&record));
        async move {
            if hit {
                let key = &keys[usize::try_from(i).unwrap_or(0) % keys.len()];
                let found: Option<String> = sqlx::query_scalar(RAW_HIT)
                    .bind(PREFIX)
                    .bind(OPERATION)
                    .bind(key)
                    .fetch_optional(&pool)
                    .await
                    .expect("raw hit");
                assert!(found.is_some(), "the raw hit finds its record");
            } else {
                sqlx::query(RAW_MISS)
                    .bind(PREFIX)
                    .bind("bench.pg.raw")
                    .bind(format!("raw-{round}-{i}"))
                    .bind(record.as_str())
                    .execute(&pool)
                    .await
                    .expect("raw miss");
            }
        }
    })
    .await
}

/// `n` transactional calls (an order inserted in the call's transaction), on fresh keys
/// of `round` or, with `replay`, on the seeded `keys`.
async fn transactional(
    store: &PostgresStore,
    keys: &Arc<Vec<String>>,
    replay: bool,
    round: usize,
    n: u64,
) -> Stats {
    let (store, keys) = (store.clone(), Arc::clone(keys));
    drive(CONCURRENCY, n, move |i| {
        let (store, keys) = (store.clone(), Arc::clone(&keys));
        async move {
            let key = if replay {
                keys[usize::try_from(i).unwrap_or(0) % keys.len()].clone()
            } else {
                format!("tx-{round}-{i}")
            };
            let id = idempotency_testkit::record_id("bench.pg.tx", &key);
            store
                .run_in_transaction(&id, None, TransactionOptions::new(), |conn, ctx| {
                    Box::pin(async move {
                        sqlx::query_scalar::<_, i64>(BUSINESS)
                            .bind(ctx.id().key())
                            .bind(9995_i64)
                            .fetch_one(&mut *conn)
                            .await
                    })
                })
                .await
                .expect("a transactional call");
        }
    })
    .await
}

/// `n` of the same business transaction without the library: BEGIN, the insert, COMMIT.
async fn plain_transactions(pool: &PgPool, round: usize, n: u64) -> Stats {
    let pool = pool.clone();
    drive(CONCURRENCY, n, move |i| {
        let pool = pool.clone();
        async move {
            let mut tx = pool.begin().await.expect("begin");
            let _: i64 = sqlx::query_scalar(BUSINESS)
                .bind(format!("plain-{round}-{i}"))
                .bind(9995_i64)
                .fetch_one(&mut *tx)
                .await
                .expect("the business write");
            tx.commit().await.expect("commit");
        }
    })
    .await
}

/// The section.
pub(crate) async fn run(ctx: &Ctx) -> Section {
    let mut md = String::from("## Postgres\n\n");
    if !ctx.options.wants("postgres") {
        return Section {
            markdown: String::new(),
            ratios: Vec::new(),
        };
    }
    if let Some(why) = unavailable(ctx) {
        let _ = writeln!(md, "{why}\n");
        return Section {
            markdown: md,
            ratios: Vec::new(),
        };
    }
    match measure(ctx, &mut md).await {
        Ok(ratios) => Section {
            markdown: md,
            ratios,
        },
        Err(e) => {
            let _ = writeln!(md, "failed: {e}\n");
            Section {
                markdown: md,
                ratios: Vec::new(),
            }
        }
    }
}

#[allow(clippy::too_many_lines)] // one block per row of the table, in the table's order
async fn measure(
    ctx: &Ctx,
    md: &mut String,
) -> Result<Vec<(String, f64)>, Box<dyn std::error::Error>> {
    // Kept for the whole section; its watchdog removes it when the program ends.
    let server = tokio::task::spawn_blocking(PostgresServer::start).await?;
    server.psql("CREATE DATABASE bench");
    let version = server.psql("SHOW server_version");
    let pool = PgPoolOptions::new()
        .max_connections(u32::try_from(CONCURRENCY)?)
        .connect(&server.url("bench"))
        .await?;
    migrate(&pool).await?;
    sqlx::query("CREATE TABLE bench_orders (id bigserial PRIMARY KEY, idem_key text NOT NULL, amount bigint NOT NULL)")
        .execute(&pool)
        .await?;
    let store = PostgresStore::new(pool.clone());
    let pg = Coordinator::builder(store.clone()).build()?;
    let redis = ctx.coordinator.clone();
    let rounds = if ctx.options.pace == Pace::Quick {
        3
    } else {
        ROUNDS
    };
    let n = (ctx.options.calls / 4).max(100);

    let keys: Arc<Vec<String>> =
        Arc::new((0..1000).map(|i| format!("seed-{}-{i}", ctx.run)).collect());
    seed(&pg, &redis, &store, &keys).await?;
    let record: Arc<String> = Arc::new(
        sqlx::query_scalar(RAW_HIT)
            .bind(PREFIX)
            .bind(OPERATION)
            .bind(&keys[0])
            .fetch_one(&pool)
            .await?,
    );

    let _ = writeln!(
        md,
        "PostgreSQL {} (a throwaway server on this machine), concurrency {CONCURRENCY} \
         (a pool of {CONCURRENCY} connections), {n} calls per run, {rounds} alternating \
         runs of each side: median ops/s and p50 with the range.\n",
        version.trim()
    );
    let _ = writeln!(
        md,
        "| call | library | yardstick | ratio of medians |\n| --- | --- | --- | --- |"
    );
    let mut ratios = Vec::new();

    let (a, b) = alternate(
        rounds,
        async |r| coordinator_calls(&pg, &keys, "hit", r, n).await,
        async |r| raw_statements(&pool, &keys, &record, true, r, n).await,
    )
    .await;
    ratios.push((
        "pg hit/raw".to_owned(),
        row(
            md,
            "hit",
            "coordinator on Postgres",
            &a,
            "raw `SELECT` by key",
            &b,
        ),
    ));
    let pg_hit = a;

    let (a, b) = alternate(
        rounds,
        async |r| coordinator_calls(&pg, &keys, "miss", r, n).await,
        async |r| raw_statements(&pool, &keys, &record, false, r, n).await,
    )
    .await;
    ratios.push((
        "pg miss/raw".to_owned(),
        row(
            md,
            "miss",
            "coordinator on Postgres",
            &a,
            "raw `INSERT` of the record",
            &b,
        ),
    ));
    let pg_miss = a;

    let (a, b) = alternate(
        rounds,
        async |r| transactional(&store, &keys, false, r, n).await,
        async |r| plain_transactions(&pool, r, n).await,
    )
    .await;
    ratios.push((
        "pg tx/plain".to_owned(),
        row(
            md,
            "transactional call (runs)",
            "`run_in_transaction`",
            &a,
            "BEGIN, the insert, COMMIT",
            &b,
        ),
    ));

    let (a, b) = alternate(
        rounds,
        async |r| transactional(&store, &keys, true, r, n).await,
        async |r| plain_transactions(&pool, r, n).await,
    )
    .await;
    ratios.push((
        "pg tx replay/plain".to_owned(),
        row(
            md,
            "transactional call (replayed)",
            "`run_in_transaction`",
            &a,
            "BEGIN, the insert, COMMIT",
            &b,
        ),
    ));

    let (redis_hit, redis_miss) = alternate(
        rounds,
        async |r| coordinator_calls(&redis, &keys, "hit", r, n).await,
        async |r| coordinator_calls(&redis, &keys, "miss", r, n).await,
    )
    .await;
    ratios.push((
        "pg/redis hit".to_owned(),
        row(
            md,
            "hit, Postgres / Redis",
            "coordinator on Postgres",
            &pg_hit,
            "coordinator on Redis",
            &redis_hit,
        ),
    ));
    ratios.push((
        "pg/redis miss".to_owned(),
        row(
            md,
            "miss, Postgres / Redis",
            "coordinator on Postgres",
            &pg_miss,
            "coordinator on Redis",
            &redis_miss,
        ),
    ));
    round_trips(&server, &keys, md).await?;
    let _ = writeln!(
        md,
        "\nThe Postgres/Redis rows reuse the Postgres runs above; the Redis runs come after \
         them, at the same concurrency, on the benchmark's Redis.\n"
    );
    pool.close().await;
    drop(server);
    Ok(ratios)
}

/// Seeds a completed record per key on each store, and a transactional one.
async fn seed(
    pg: &Coordinator<PostgresStore>,
    redis: &Coordinator<idempotency_redis::RedisStore>,
    store: &PostgresStore,
    keys: &[String],
) -> Result<(), Box<dyn std::error::Error>> {
    for key in keys {
        let _: Order = pg
            .call(OPERATION, Some(key))
            .run(|| async { Ok::<_, IdempotencyError>(order()) })
            .await?;
        let _: Order = redis
            .call(OPERATION, Some(key))
            .run(|| async { Ok::<_, IdempotencyError>(order()) })
            .await?;
        let id = idempotency_testkit::record_id("bench.pg.tx", key);
        store
            .run_in_transaction(&id, None, TransactionOptions::new(), |conn, ctx| {
                Box::pin(async move {
                    sqlx::query_scalar::<_, i64>(BUSINESS)
                        .bind(ctx.id().key())
                        .bind(9995_i64)
                        .fetch_one(&mut *conn)
                        .await
                })
            })
            .await?;
    }
    Ok(())
}

/// Calls per kind in the statement count.
const COUNTED: usize = 20;

/// The statements a call sends (each one round trip), counted in the server's log on a
/// connection of its own: for the coordinator's hit and miss and for the transactional
/// call, against the plain transaction.
async fn round_trips(
    server: &PostgresServer,
    keys: &[String],
    md: &mut String,
) -> Result<(), Box<dyn std::error::Error>> {
    sqlx::query("ALTER DATABASE bench SET log_statement = 'all'")
        .execute(&PgPool::connect(&server.url("bench")).await?)
        .await?;
    // One connection, so that every statement of a call comes from one backend.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&server.url("bench"))
        .await?;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&pool)
        .await?;
    let store = PostgresStore::new(pool.clone());
    let pg = Coordinator::builder(store.clone()).build()?;
    let count = || {
        let log = std::fs::read_to_string(server.log_path()).unwrap_or_default();
        let tag = format!("[{pid}] LOG:  ");
        log.lines()
            .filter_map(|l| l.split_once(&tag).map(|(_, rest)| rest))
            .filter(|l| l.starts_with("execute") || l.starts_with("statement"))
            .count()
    };
    let settle = || tokio::time::sleep(std::time::Duration::from_millis(300));
    let mut per_call = Vec::new();
    for kind in ["hit", "miss", "tx run", "tx replay", "plain"] {
        // One call first, so that preparing the statements is not counted.
        for round in 0..2 {
            settle().await;
            let before = count();
            let calls = if round == 0 { 1 } else { COUNTED };
            for (i, seeded) in keys.iter().take(calls).enumerate() {
                let fresh = format!("count-{kind}-{round}-{i}");
                let key = match kind {
                    "hit" | "tx replay" => seeded,
                    _ => &fresh,
                };
                match kind {
                    "hit" | "miss" => {
                        let _: Order = pg
                            .call(OPERATION, Some(key))
                            .run(|| async { Ok::<_, IdempotencyError>(order()) })
                            .await?;
                    }
                    "plain" => {
                        let mut tx = pool.begin().await?;
                        let _: i64 = sqlx::query_scalar(BUSINESS)
                            .bind(key)
                            .bind(9995_i64)
                            .fetch_one(&mut *tx)
                            .await?;
                        tx.commit().await?;
                    }
                    _ => {
                        let id = idempotency_testkit::record_id("bench.pg.tx", key);
                        store
                            .run_in_transaction(
                                &id,
                                None,
                                TransactionOptions::new(),
                                |conn, ctx| {
                                    Box::pin(async move {
                                        sqlx::query_scalar::<_, i64>(BUSINESS)
                                            .bind(ctx.id().key())
                                            .bind(9995_i64)
                                            .fetch_one(&mut *conn)
                                            .await
                                    })
                                },
                            )
                            .await?;
                    }
                }
            }
            settle().await;
            if round == 1 {
                #[allow(clippy::cast_precision_loss)] // a few dozen statements
                per_call.push((kind, (count() - before) as f64 / COUNTED as f64));
            }
        }
    }
    pool.close().await;
    let _ = writeln!(
        md,
        "\nStatements per call (each one round trip; the server's log of one connection, \
         {COUNTED} calls each): {}.",
        per_call
            .iter()
            .map(|(kind, n)| format!("{kind} {n:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
