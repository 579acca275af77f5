//! The scenarios, their raw-Redis yardsticks, the Python runs, and the table.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use idempotency_core::BulkRepository;
use idempotency_core::{IdempotencyDomainService, IdempotencyError, SaveManyOptions};
use idempotency_redis::fred::prelude::{
    Expiration, KeysInterface, LuaInterface, SetOptions, Value,
};
use serde::{Deserialize, Serialize};

use crate::load::{Stats, drive, percentile};
use crate::python;
use crate::{Ctx, Section};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Order {
    order_id: u64,
    status: String,
    amount: f64,
}

pub(crate) fn order() -> Order {
    Order {
        order_id: 12_345,
        status: "created".into(),
        amount: 99.95,
    }
}

/// A pending record like the ones the coordinator claims with: the raw yardstick sends
/// the same bytes, so "the same command" means the same payload too.
pub(crate) fn pending_json() -> (Arc<String>, Arc<String>) {
    let id = idempotency_testkit::record_id("bench.order", "2f1c6f3e-1b7e-4b8a-9d1e-0c2b3a4d5e6f");
    let lease = idempotency_core::Lease::new(id, None, idempotency_core::Clock::system());
    let record = lease
        .pending_record(Duration::from_secs(30))
        .expect("reservation");
    (
        Arc::new(record.to_json()),
        Arc::new(lease.token().to_owned()),
    )
}

const COMPLETE_LUA: &str = include_str!("../../idempotency-redis/lua/complete.lua");

/// One row of the throughput table.
struct Row {
    scenario: &'static str,
    concurrency: usize,
    rust: Stats,
    rust_cmds: f64,
    rust_sent: Option<f64>,
    raw: Stats,
    raw_label: &'static str,
    python: Option<(Stats, f64)>,
}

async fn measured<F>(ctx: &Ctx, calls: u64, f: F) -> (Stats, f64)
where
    F: AsyncFnOnce() -> Stats,
{
    let before = ctx.counter.total();
    let stats = f().await;
    let after = ctx.counter.total();
    (stats, (after - before) as f64 / calls.max(1) as f64)
}

pub(crate) async fn seed_hits(ctx: &Ctx, prefix: &str) -> Arc<Vec<String>> {
    let keys: Vec<String> = (0..1000)
        .map(|i| format!("{prefix}-{}-{i}", ctx.run))
        .collect();
    for k in &keys {
        let _: Order = ctx
            .coordinator
            .call("bench.order", Some(k))
            .run(|| async { Ok::<_, IdempotencyError>(order()) })
            .await
            .expect("seed");
    }
    Arc::new(keys)
}

/// `n` hits at concurrency `c` over `keys` (seeded by [`seed_hits`]).
pub(crate) async fn rust_hits(ctx: &Ctx, c: usize, n: u64, keys: &Arc<Vec<String>>) -> Stats {
    let coordinator = ctx.coordinator.clone();
    let keys = Arc::clone(keys);
    drive(c, n, move |i| {
        let coordinator = coordinator.clone();
        let keys = Arc::clone(&keys);
        async move {
            let _: Order = coordinator
                .call("bench.order", Some(&keys[(i % 1000) as usize]))
                .run(|| async { Ok::<_, IdempotencyError>(order()) })
                .await
                .expect("hit");
        }
    })
    .await
}

/// The hit's raw yardstick: `n` of the same command the hit sends, `SET … NX GET` with
/// a pending record on a present key, at concurrency `c` over the Redis keys of `keys`
/// (call `i` takes key `i × 7919 mod len`, which visits them all).
pub(crate) struct RawHits {
    redis_keys: Arc<Vec<String>>,
    pending: Arc<String>,
}

impl RawHits {
    pub(crate) fn new(ctx: &Ctx, operation: &str, keys: &[String]) -> Self {
        let redis_keys = keys
            .iter()
            .map(|k| {
                ctx.store
                    .redis_key(&idempotency_testkit::record_id(operation, k))
            })
            .collect();
        Self {
            redis_keys: Arc::new(redis_keys),
            pending: pending_json().0,
        }
    }

    pub(crate) async fn run(&self, ctx: &Ctx, c: usize, n: u64) -> Stats {
        let client = ctx.store.connection().client().clone();
        let keys = Arc::clone(&self.redis_keys);
        let pending = Arc::clone(&self.pending);
        drive(c, n, move |i| {
            let client = client.clone();
            let keys = Arc::clone(&keys);
            let pending = Arc::clone(&pending);
            async move {
                let v: Value = client
                    .set(
                        keys[(i.wrapping_mul(7919) % keys.len() as u64) as usize].as_str(),
                        pending.as_str(),
                        Some(Expiration::PX(30_000)),
                        Some(SetOptions::NX),
                        true,
                    )
                    .await
                    .expect("raw");
                assert!(!v.is_null());
            }
        })
        .await
    }
}

async fn hit(ctx: &Ctx, c: usize, keys: &Arc<Vec<String>>) -> Row {
    let calls = ctx.options.calls;
    let rust_run = async |n: u64| rust_hits(ctx, c, n, keys).await;
    let raw = RawHits::new(ctx, "bench.order", keys);
    let raw_run = async |n: u64| raw.run(ctx, c, n).await;
    let (rust, rust_cmds, raw) = abba(ctx, calls, &rust_run, &raw_run).await;
    let python = python_row(ctx, "hit", c, calls);
    let rust_sent = sent_per_call(ctx, |coordinator, i| {
        let key = keys[(i % 1000) as usize].clone();
        async move {
            let _: Order = coordinator
                .call("bench.order", Some(&key))
                .run(|| async { Ok::<_, IdempotencyError>(order()) })
                .await
                .expect("hit");
        }
    })
    .await;
    Row {
        scenario: "hit",
        concurrency: c,
        rust,
        rust_cmds,
        rust_sent,
        raw,
        raw_label: "SET NX GET",
        python,
    }
}

// One scenario reads best in one place: its Rust side, its raw side, and the row.
#[allow(clippy::too_many_lines)]
async fn miss(ctx: &Ctx, c: usize) -> Row {
    let calls = ctx.options.calls;
    let run = format!("{}-{c}", ctx.run);
    let rounds = std::sync::atomic::AtomicU64::new(0);
    let rust_run = async |n: u64| {
        let coordinator = ctx.coordinator.clone();
        let round = rounds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let run = format!("{run}-r{round}");
        drive(c, n, move |i| {
            let coordinator = coordinator.clone();
            let key = format!("miss-{run}-{i}");
            async move {
                let _: Order = coordinator
                    .call("bench.order", Some(&key))
                    .run(|| async { Ok::<_, IdempotencyError>(order()) })
                    .await
                    .expect("miss");
            }
        })
        .await
    };
    // Raw: the same two commands, `SET … NX GET` with a pending record, then `EVALSHA`
    // of the same completion script, which matches the owner and writes the record.
    let client = ctx.store.connection().client().clone();
    let sha: String = client.script_load(COMPLETE_LUA).await.expect("script load");
    let record = IdempotencyDomainService::default()
        .create_record("bench.order", "raw", &order())
        .expect("record")
        .to_json();
    let sha = Arc::new(sha);
    let record = Arc::new(record);
    let (pending, fragment) = pending_json();
    let raw_rounds = std::sync::atomic::AtomicU64::new(0);
    let raw_run = async |n: u64| {
        let round = raw_rounds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = ctx.store.redis_key(&idempotency_testkit::record_id(
            "bench.raw",
            &format!("{run}-r{round}"),
        ));
        let client = client.clone();
        let (sha, record, pending, fragment) = (
            Arc::clone(&sha),
            Arc::clone(&record),
            Arc::clone(&pending),
            Arc::clone(&fragment),
        );
        drive(c, n, move |i| {
            let client = client.clone();
            let key = format!("{prefix}-{i}");
            let (sha, record, pending, fragment) = (
                Arc::clone(&sha),
                Arc::clone(&record),
                Arc::clone(&pending),
                Arc::clone(&fragment),
            );
            async move {
                let _: Value = client
                    .set(
                        key.as_str(),
                        pending.as_str(),
                        Some(Expiration::PX(30_000)),
                        Some(SetOptions::NX),
                        true,
                    )
                    .await
                    .expect("claim");
                let written: i64 = client
                    .evalsha(
                        sha.as_str(),
                        key.as_str(),
                        vec![
                            Value::from(fragment.as_str()),
                            Value::from(record.as_str()),
                            Value::from(1_800_000),
                        ],
                    )
                    .await
                    .expect("complete");
                // The yardstick does the whole job: the fence matched and the record was written.
                assert_eq!(written, 1);
            }
        })
        .await
    };
    let (rust, rust_cmds, raw) = abba(ctx, calls, &rust_run, &raw_run).await;
    let python = python_row(ctx, "miss", c, calls);
    let counted_run = format!("counted-{}-{c}", ctx.run);
    let rust_sent = sent_per_call(ctx, |coordinator, i| {
        let key = format!("{counted_run}-{i}");
        async move {
            let _: Order = coordinator
                .call("bench.order", Some(&key))
                .run(|| async { Ok::<_, IdempotencyError>(order()) })
                .await
                .expect("miss");
        }
    })
    .await;
    Row {
        scenario: "miss",
        concurrency: c,
        rust,
        rust_cmds,
        rust_sent,
        raw,
        raw_label: "SET NX GET + EVALSHA",
        python,
    }
}

/// Runs the coordinator and its raw yardstick in the order warm-up, Rust, raw, raw, Rust
/// (half the calls each), so drift in the server (hash-table rehashing after the
/// seeding, CPU frequency) falls on both sides alike. Returns the Rust stats, the Redis
/// commands per Rust call, and the raw stats.
async fn abba<R, W>(ctx: &Ctx, calls: u64, rust_run: &R, raw_run: &W) -> (Stats, f64, Stats)
where
    R: AsyncFn(u64) -> Stats,
    W: AsyncFn(u64) -> Stats,
{
    let half = (calls / 2).max(1);
    rust_run(calls / 10).await;
    raw_run(calls / 10).await;
    let (rust1, cmds) = measured(ctx, half, async || rust_run(half).await).await;
    let raw1 = raw_run(half).await;
    let raw2 = raw_run(half).await;
    let rust2 = rust_run(half).await;
    (merge(rust1, rust2), cmds, merge(raw1, raw2))
}

/// The mean of two runs of the same size (p99: the worse of the two).
fn merge(a: Stats, b: Stats) -> Stats {
    Stats {
        ops_per_sec: f64::midpoint(a.ops_per_sec, b.ops_per_sec),
        p50_us: f64::midpoint(a.p50_us, b.p50_us),
        p99_us: a.p99_us.max(b.p99_us),
        calls: a.calls + b.calls,
    }
}

/// Commands the client sends per call, counted at a proxy over 200 sequential calls.
async fn sent_per_call<F, Fut>(ctx: &Ctx, call: F) -> Option<f64>
where
    F: Fn(idempotency_coordinator::Coordinator<idempotency_redis::RedisStore>, u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (coordinator, proxy) = ctx.counted.as_ref()?;
    let before = proxy.commands_sent();
    for i in 0..200 {
        call(coordinator.clone(), i).await;
    }
    Some((proxy.commands_sent() - before) as f64 / 200.0)
}

fn python_row(ctx: &Ctx, scenario: &str, c: usize, calls: u64) -> Option<(Stats, f64)> {
    if !ctx.options.python {
        return None;
    }
    // Python is far slower; a fifth of the calls keeps the run short with stable numbers.
    let calls = (calls / 5).max(200);
    let out = python::run(
        &ctx.counter,
        &ctx.url,
        scenario,
        c,
        calls,
        &format!("{}-{c}", ctx.run),
    )?;
    let stats: Stats = serde_json::from_value(out.json).ok()?;
    Some((stats, out.commands_per_call))
}

/// The contended figures of one coordinator.
struct Contended {
    max_runs: usize,
    delays: Vec<Duration>,
    commands_per_caller: f64,
}

/// 32 callers on one fresh key whose action sleeps 20 ms, over many keys: the
/// coordinator under test, and one with in-process coalescing off.
async fn contended(ctx: &Ctx) -> String {
    let callers = 32;
    let keys = ctx.options.contended_keys;
    // Both settings, whichever one the coordinator under test has.
    let other = idempotency_coordinator::Coordinator::builder(ctx.store.clone())
        .coalesce(!ctx.options.coalesce)
        .build()
        .expect("coordinator");
    let (off, on) = if ctx.options.coalesce {
        (&other, &ctx.coordinator)
    } else {
        (&ctx.coordinator, &other)
    };
    let rows = vec![
        (
            "Rust, coalescing off (the default)",
            contended_run(ctx, off, "cont", callers).await,
        ),
        (
            "Rust, coalescing on",
            contended_run(ctx, on, "cont-on", callers).await,
        ),
    ];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Contended: {callers} callers on one fresh key, action sleeps 20 ms, {keys} keys\n"
    );
    let _ = writeln!(
        out,
        "| library | action runs per key (max) | wake delay p50 | p99 | max | commands per caller |"
    );
    let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- |");
    for (name, c) in rows {
        let _ = writeln!(
            out,
            "| {name} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} |",
            c.max_runs,
            ms(percentile(&c.delays, 0.5)),
            ms(percentile(&c.delays, 0.99)),
            ms(c.delays.last().copied().unwrap_or_default()),
            c.commands_per_caller
        );
    }
    if !ctx.options.python {
        let _ = writeln!(
            out,
            "| Python 0.5.0 | skipped | skipped | skipped | skipped | skipped |"
        );
    } else if let Some(py) =
        python::run(&ctx.counter, &ctx.url, "contended", callers, keys, &ctx.run)
    {
        let j = &py.json;
        let _ = writeln!(
            out,
            "| Python 0.5.0 | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} |",
            j["max_runs_per_key"],
            j["wake_p50_ms"].as_f64().unwrap_or(0.0),
            j["wake_p99_ms"].as_f64().unwrap_or(0.0),
            j["wake_max_ms"].as_f64().unwrap_or(0.0),
            py.commands_per_call
        );
    } else {
        let _ = writeln!(out, "| Python 0.5.0 | failed | – | – | – | – |");
    }
    out
}

async fn contended_run(
    ctx: &Ctx,
    coordinator: &idempotency_coordinator::Coordinator<idempotency_redis::RedisStore>,
    prefix: &str,
    callers: usize,
) -> Contended {
    let keys = ctx.options.contended_keys;
    let before = ctx.counter.total();
    let mut delays = Vec::new();
    let mut max_runs = 0;
    for k in 0..keys {
        let key = Arc::new(format!("{prefix}-{}-{k}", ctx.run));
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let barrier = Arc::new(tokio::sync::Barrier::new(callers));
        let tasks: Vec<_> = (0..callers)
            .map(|_| {
                let coordinator = coordinator.clone();
                let (key, runs, barrier) =
                    (Arc::clone(&key), Arc::clone(&runs), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    let mut ran = false;
                    let _: Order = coordinator
                        .call("bench.order", Some(&key))
                        .run(|| async {
                            ran = true;
                            runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            Ok::<_, IdempotencyError>(order())
                        })
                        .await
                        .expect("contended");
                    (ran, Instant::now())
                })
            })
            .collect();
        let mut done = Vec::new();
        for t in tasks {
            done.push(t.await.expect("task"));
        }
        let owner = done
            .iter()
            .find(|(ran, _)| *ran)
            .map_or_else(Instant::now, |(_, at)| *at);
        delays.extend(
            done.iter()
                .filter(|(ran, _)| !ran)
                .map(|(_, at)| at.saturating_duration_since(owner)),
        );
        max_runs = max_runs.max(runs.load(std::sync::atomic::Ordering::SeqCst));
    }
    let commands_per_caller =
        (ctx.counter.total() - before) as f64 / (keys * callers as u64) as f64;
    delays.sort_unstable();
    Contended {
        max_runs,
        delays,
        commands_per_caller,
    }
}

/// `get_many` and `save_many` of 1,000 keys; the section and the Rust/raw ratios.
async fn bulk(ctx: &Ctx) -> (String, Vec<(String, f64)>) {
    let rounds = ctx.options.bulk_rounds;
    let svc = IdempotencyDomainService::default();
    let keys: Vec<String> = (0..1000).map(|i| format!("bulk-{}-{i}", ctx.run)).collect();
    let seed: Vec<_> = keys
        .iter()
        .map(|k| {
            svc.create_record("bench.bulk", k, &order())
                .expect("record")
        })
        .collect();
    ctx.store
        .save_many(&seed, SaveManyOptions::default())
        .await
        .expect("seed");
    let mut out = String::new();
    let mut ratios = Vec::new();
    let _ = writeln!(out, "## Bulk: 1,000 keys per call, {rounds} calls\n");
    let _ = writeln!(
        out,
        "| operation | Rust keys/s | commands per call | raw keys/s | Rust/raw | Python keys/s | Python commands per call | Rust/Python |"
    );
    let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- | --- | --- |");
    for op in ["get_many", "save_many"] {
        let before = ctx.counter.total();
        let started = Instant::now();
        for r in 0..rounds {
            if op == "get_many" {
                let found = ctx
                    .store
                    .get_many("bench.bulk", &keys)
                    .await
                    .expect("get_many");
                assert_eq!(found.len(), 1000);
            } else {
                let batch: Vec<_> = keys
                    .iter()
                    .map(|k| {
                        svc.create_record("bench.bulk", &format!("{k}-{r}"), &order())
                            .expect("r")
                    })
                    .collect();
                ctx.store
                    .save_many(&batch, SaveManyOptions::default())
                    .await
                    .expect("save_many");
            }
        }
        let rust = (rounds * 1000) as f64 / started.elapsed().as_secs_f64();
        let cmds = (ctx.counter.total() - before) as f64 / rounds as f64;
        let raw = raw_bulk(ctx, op, &keys, rounds).await;
        let py = if ctx.options.python {
            python::run(&ctx.counter, &ctx.url, op, 1, rounds, &ctx.run)
        } else {
            None
        };
        let py_rate = py.as_ref().and_then(|p| {
            p.json["keys_per_sec"]
                .as_f64()
                .map(|r| (r, p.commands_per_call))
        });
        let python = match py_rate {
            Some((rate, py_cmds)) => {
                format!("{rate:.0} | {py_cmds:.1} | {:.1}×", rust / rate)
            }
            None => {
                let why = if ctx.options.python {
                    "failed"
                } else {
                    "skipped"
                };
                format!("{why} | {why} | {why}")
            }
        };
        let _ = writeln!(
            out,
            "| {op} | {rust:.0} | {cmds:.1} | {raw:.0} | {:.2} | {python} |",
            rust / raw,
        );
        ratios.push((op.to_owned(), rust / raw));
    }
    (out, ratios)
}

async fn raw_bulk(ctx: &Ctx, op: &str, keys: &[String], rounds: u64) -> f64 {
    let client = ctx.store.connection().client();
    let redis_keys: Vec<String> = keys
        .iter()
        .map(|k| {
            ctx.store
                .redis_key(&idempotency_testkit::record_id("bench.bulk", k))
        })
        .collect();
    let value = IdempotencyDomainService::default()
        .create_record("bench.bulk", "x", &order())
        .expect("r")
        .to_json();
    let started = Instant::now();
    for r in 0..rounds {
        if op == "get_many" {
            // One MGET per hash slot on a cluster, one MGET on a standalone server, as
            // the store does.
            if ctx.options.cluster {
                let groups = idempotency_redis::fred::util::group_by_hash_slot(
                    redis_keys.iter().map(String::as_str),
                )
                .expect("groups");
                let calls = groups
                    .into_values()
                    .map(|g| client.mget::<Value, _>(Vec::from(g)));
                for reply in futures::future::join_all(calls).await {
                    reply.expect("mget");
                }
            } else {
                let _: Value = client.mget(redis_keys.clone()).await.expect("mget");
            }
        } else {
            let pipeline = client.pipeline();
            for k in &redis_keys {
                let _: () = pipeline
                    .set(
                        format!("{k}-raw-{r}"),
                        value.as_str(),
                        Some(Expiration::EX(1800)),
                        Some(SetOptions::NX),
                        false,
                    )
                    .await
                    .expect("queue");
            }
            let _: Vec<Value> = pipeline.all().await.expect("pipeline");
        }
    }
    (rounds * 1000) as f64 / started.elapsed().as_secs_f64()
}

fn throughput_table(rows: &[Row], skipped: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Throughput and latency per call\n");
    let _ = writeln!(
        out,
        "| scenario | concurrency | Rust ops/s | p50 | p99 | commands sent per call (round trips) | commands Redis ran per call (incl. inside scripts) | raw fred ops/s (same commands) | Rust/raw | Python ops/s | Python p50 | Python commands per call | Rust/Python |"
    );
    let _ = writeln!(
        out,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for r in rows {
        let (py_ops, py_p50, py_cmds, ratio) = match r.python {
            Some((s, cmds)) => (
                format!("{:.0}", s.ops_per_sec),
                format!("{:.0} µs", s.p50_us),
                format!("{cmds:.2}"),
                format!("{:.1}×", r.rust.ops_per_sec / s.ops_per_sec),
            ),
            None => {
                let why = if skipped { "skipped" } else { "failed" };
                (why.into(), why.into(), why.into(), why.into())
            }
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.0} µs | {:.0} µs | {} | {:.2} | {:.0} ({}) | {:.2} | {py_ops} | {py_p50} | {py_cmds} | {ratio} |",
            r.scenario,
            r.concurrency,
            r.rust.ops_per_sec,
            r.rust.p50_us,
            r.rust.p99_us,
            r.rust_sent
                .map_or_else(|| "–".to_owned(), |s| format!("{s:.2}")),
            r.rust_cmds,
            r.raw.ops_per_sec,
            r.raw_label,
            r.rust.ops_per_sec / r.raw.ops_per_sec,
        );
    }
    out
}

/// The built-in sections (as `--only` selects them), printed as they finish, and their
/// ratios for the summary.
pub(crate) async fn run_all(ctx: &Ctx) -> Result<Section, Box<dyn std::error::Error>> {
    let mut report = String::new();
    let mut ratios = Vec::new();
    if ctx.options.wants("throughput") {
        let keys = seed_hits(ctx, "hit").await;
        let mut rows = Vec::new();
        for c in [1, 64] {
            rows.push(hit(ctx, c, &keys).await);
            rows.push(miss(ctx, c).await);
        }
        for r in rows.iter().filter(|r| r.concurrency == 64) {
            ratios.push((
                format!("{}@64", r.scenario),
                r.rust.ops_per_sec / r.raw.ops_per_sec,
            ));
        }
        let table = throughput_table(&rows, !ctx.options.python);
        println!("{table}");
        report.push_str(&table);
    }
    if ctx.options.wants("contended") {
        let table = contended(ctx).await;
        println!("{table}");
        report.push_str(&table);
    }
    if ctx.options.wants("bulk") {
        let (table, bulk_ratios) = bulk(ctx).await;
        println!("{table}");
        report.push_str(&table);
        ratios.extend(bulk_ratios);
    }
    Ok(Section {
        markdown: report,
        ratios,
    })
}
