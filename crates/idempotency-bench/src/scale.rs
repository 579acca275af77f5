//! Scale: the hit and the miss at concurrency 64 on a nearly empty server, then again
//! with a million live records in it (on the cluster spread over every slot by their
//! keys' hashes); and the Redis memory a record costs, ours beside the Python library's
//! for the same result. Skipped by `--quick` (filling takes a while); `--only scale`
//! runs it alone.

use std::fmt::Write as _;
use std::sync::Arc;

use idempotency_core::{IdempotencyDomainService, IdempotencyError};
use idempotency_redis::fred::prelude::{Expiration, KeysInterface};
use idempotency_testkit::resp::{self, Reply};

use crate::load::drive;
use crate::scenarios::{Order, RawHits, order};
use crate::{Ctx, Section, python};

const CONCURRENCY: usize = 64;
/// Records filled in.
const RECORDS: u64 = 1_000_000;
/// Runs of each measurement; the median is reported.
const RUNS: usize = 3;
/// How long the server may settle after the fill before the measurements, at least.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(15);
/// The longest wait, after [`SETTLE`], for the hash tables to finish rehashing.
const REHASH_WAIT: std::time::Duration = std::time::Duration::from_secs(300);
/// Records sampled with `MEMORY USAGE` per library.
const SAMPLE: u64 = 1000;

fn used_memory(ports: &[u16]) -> u64 {
    ports
        .iter()
        .filter_map(|&port| match resp::command(port, &["INFO", "memory"]) {
            Ok(Reply::Bulk(Some(text))) => String::from_utf8_lossy(&text)
                .lines()
                .find_map(|l| l.strip_prefix("used_memory:")?.trim().parse::<u64>().ok()),
            _ => None,
        })
        .sum()
}

/// Whether a master is still rehashing database 0's tables (`DEBUG HTSTATS 0` lists a
/// "rehashing target"), or `None` when a server refuses `DEBUG` (a server the benchmark
/// did not start, see `REDIS_URL`).
fn rehashing(ports: &[u16]) -> Option<bool> {
    let mut any = false;
    for &port in ports {
        match resp::command(port, &["DEBUG", "HTSTATS", "0"]) {
            Ok(Reply::Bulk(Some(text))) => {
                any |= String::from_utf8_lossy(&text).contains("rehashing target");
            }
            _ => return None,
        }
    }
    Some(any)
}

/// Waits [`SETTLE`], then until no master is rehashing (Redis grows a table by moving
/// its entries a bucket at a time: on an idle server 1 ms per 100 ms, so a table of a
/// million keys takes about a minute, its expiry table as long again, and every command
/// meanwhile pays a step of it). Returns the seconds waited, and whether the end of the
/// rehash was seen.
async fn settle(ports: &[u16]) -> (f64, Option<bool>) {
    let started = std::time::Instant::now();
    tokio::time::sleep(SETTLE).await;
    loop {
        match rehashing(ports) {
            Some(true) if started.elapsed() < SETTLE + REHASH_WAIT => {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Some(true) => return (started.elapsed().as_secs_f64(), Some(false)),
            done => return (started.elapsed().as_secs_f64(), done.map(|_| true)),
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Median ops/s of `RUNS` hit runs over `keys` (call `i` takes key `i × 7919 mod len`).
async fn hits(ctx: &Ctx, keys: &Arc<Vec<String>>) -> f64 {
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        let coordinator = ctx.coordinator.clone();
        let keys = Arc::clone(keys);
        let stats = drive(CONCURRENCY, ctx.options.calls, move |i| {
            let coordinator = coordinator.clone();
            let keys = Arc::clone(&keys);
            async move {
                let key = &keys[(i.wrapping_mul(7919) % keys.len() as u64) as usize];
                let _: Order = coordinator
                    .call("bench.scale", Some(key))
                    .run(|| async { Ok::<_, IdempotencyError>(order()) })
                    .await
                    .expect("hit");
            }
        })
        .await;
        runs.push(stats.ops_per_sec);
    }
    median(runs)
}

/// Median ops/s of `RUNS` runs of the hit's raw command over `keys`.
async fn raw_hits(ctx: &Ctx, keys: &[String]) -> f64 {
    let raw = RawHits::new(ctx, "bench.scale", keys);
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        runs.push(raw.run(ctx, CONCURRENCY, ctx.options.calls).await.ops_per_sec);
    }
    median(runs)
}

/// Median ops/s of `RUNS` miss runs (fresh keys each).
async fn misses(ctx: &Ctx, label: &str) -> f64 {
    let mut runs = Vec::new();
    for round in 0..RUNS {
        let coordinator = ctx.coordinator.clone();
        let run = format!("{}-{label}-{round}", ctx.run);
        let stats = drive(CONCURRENCY, ctx.options.calls, move |i| {
            let coordinator = coordinator.clone();
            let key = format!("miss-{run}-{i}");
            async move {
                let _: Order = coordinator
                    .call("bench.scale", Some(&key))
                    .run(|| async { Ok::<_, IdempotencyError>(order()) })
                    .await
                    .expect("miss");
            }
        })
        .await;
        runs.push(stats.ops_per_sec);
    }
    median(runs)
}

/// One server state's figures.
struct Figures {
    hot_hit: f64,
    hot_raw: f64,
    spread_hit: f64,
    spread_raw: f64,
    miss: f64,
}

/// Average `MEMORY USAGE` of `keys` (Redis keys), in bytes.
fn memory_usage(ctx: &Ctx, keys: &[String]) -> Option<f64> {
    let mut total = 0u64;
    let mut seen = 0u64;
    for key in keys {
        for &port in ctx.counter.ports() {
            if let Ok(Reply::Int(n)) = resp::command(port, &["MEMORY", "USAGE", key]) {
                total += u64::try_from(n).unwrap_or(0);
                seen += 1;
                break;
            }
        }
    }
    (seen > 0).then(|| total as f64 / seen as f64)
}

/// Writes `RECORDS` completed records of the coordinator's format, keys `fill-{run}-{i}`.
async fn fill(ctx: &Ctx) -> Arc<Vec<String>> {
    let keys: Arc<Vec<String>> =
        Arc::new((0..RECORDS).map(|i| format!("fill-{}-{i}", ctx.run)).collect());
    let client = ctx.store.connection().client().clone();
    let store = ctx.store.clone();
    let service = Arc::new(IdempotencyDomainService::default());
    let fill_keys = Arc::clone(&keys);
    drive(256, RECORDS, move |i| {
        let client = client.clone();
        let key = fill_keys[i as usize].clone();
        let redis_key = store.redis_key(&idempotency_testkit::record_id("bench.scale", &key));
        let json = service
            .create_record("bench.scale", &key, &order())
            .expect("record")
            .to_json();
        async move {
            let () = client
                .set(
                    redis_key.as_str(),
                    json.as_str(),
                    Some(Expiration::EX(3600)),
                    None,
                    false,
                )
                .await
                .expect("fill");
        }
    })
    .await;
    keys
}

/// Removes what `fill` wrote (the server may be shared, see `REDIS_URL`).
async fn unfill(ctx: &Ctx, keys: &Arc<Vec<String>>) {
    let client = ctx.store.connection().client().clone();
    let store = ctx.store.clone();
    let keys = Arc::clone(keys);
    drive(256, keys.len() as u64, move |i| {
        let client = client.clone();
        let redis_key =
            store.redis_key(&idempotency_testkit::record_id("bench.scale", &keys[i as usize]));
        async move {
            let _: i64 = client.unlink(redis_key.as_str()).await.unwrap_or(0);
        }
    })
    .await;
}

/// Our completed records and the Python library's for the same result: average bytes
/// per record (`MEMORY USAGE`) and the stored value's length.
async fn memory_per_library(ctx: &Ctx) -> String {
    let ours: Vec<String> = (0..SAMPLE)
        .map(|i| format!("rs-mem-{}-{i}", ctx.run))
        .collect();
    for key in &ours {
        let _: Order = ctx
            .coordinator
            .call("bench.order", Some(key))
            .run(|| async { Ok::<_, IdempotencyError>(order()) })
            .await
            .expect("seed");
    }
    let redis_key = |k: &String| {
        ctx.store
            .redis_key(&idempotency_testkit::record_id("bench.order", k))
    };
    let ours: Vec<String> = ours.iter().map(redis_key).collect();
    let rust_bytes = memory_usage(ctx, &ours);
    let python_bytes = if ctx.options.python {
        python::run(&ctx.counter, &ctx.url, "memory", 1, SAMPLE, &ctx.run).and_then(|_| {
            let theirs: Vec<String> = (0..SAMPLE)
                .map(|i| redis_key(&format!("py-mem-{}-{i}", ctx.run)))
                .collect();
            memory_usage(ctx, &theirs)
        })
    } else {
        None
    };
    let show = |v: Option<f64>| v.map_or_else(|| "skipped".to_owned(), |b| format!("{b:.0}"));
    format!(
        "| completed record, `{{\"order_id\":12345,\"status\":\"created\",\"amount\":99.95}}` | {} | {} |\n",
        show(rust_bytes),
        show(python_bytes),
    )
}

/// The section.
pub(crate) async fn run(ctx: &Ctx) -> Section {
    let empty = |markdown: String| Section {
        markdown,
        ratios: Vec::new(),
    };
    if !ctx.options.wants("scale") {
        return empty(String::new());
    }
    if ctx.options.pace == crate::Pace::Quick {
        return empty("## Scale\n\nskipped in --quick (run `--only scale`)\n".to_owned());
    }
    let hot: Arc<Vec<String>> =
        Arc::new((0..1000).map(|i| format!("hot-{}-{i}", ctx.run)).collect());
    for key in hot.iter() {
        let _: Order = ctx
            .coordinator
            .call("bench.scale", Some(key))
            .run(|| async { Ok::<_, IdempotencyError>(order()) })
            .await
            .expect("seed");
    }
    let empty = Figures {
        hot_hit: hits(ctx, &hot).await,
        hot_raw: raw_hits(ctx, &hot).await,
        spread_hit: 0.0,
        spread_raw: 0.0,
        miss: misses(ctx, "empty").await,
    };
    let before = used_memory(ctx.counter.ports());
    let started = std::time::Instant::now();
    let filled = fill(ctx).await;
    let fill_secs = started.elapsed().as_secs_f64();
    // Let the server settle first (its incremental rehashing and the allocator's purge of
    // a fill's dirty pages run for a minute or more after a million writes and cost every
    // command meanwhile): measured is a big keyspace, not its growth.
    let (settled_secs, rehash_seen) = settle(ctx.counter.ports()).await;
    let per_record =
        used_memory(ctx.counter.ports()).saturating_sub(before) as f64 / RECORDS as f64;
    let full = Figures {
        hot_hit: hits(ctx, &hot).await,
        hot_raw: raw_hits(ctx, &hot).await,
        spread_hit: hits(ctx, &filled).await,
        spread_raw: raw_hits(ctx, &filled).await,
        miss: misses(ctx, "full").await,
    };
    let memory = memory_per_library(ctx).await;
    unfill(ctx, &filled).await;
    // The same recent-key runs once the million are gone again: what the keyspace cost,
    // as opposed to what the fill left behind in either process.
    let after = (hits(ctx, &hot).await, raw_hits(ctx, &hot).await);
    let mut md = render(ctx, &empty, &full, fill_secs, per_record, &memory);
    let _ = writeln!(
        md,
        "Measured {settled_secs:.0} s after the fill: {}.",
        match rehash_seen {
            Some(true) => "once every master had finished rehashing its tables",
            Some(false) => "**a master was still rehashing its tables** (gave up waiting)",
            None => "the server refuses `DEBUG HTSTATS`, so the end of its rehashing was not seen",
        }
    );
    let _ = writeln!(
        md,
        "After removing the million again, recent keys: hit {:.0} ops/s, raw {:.0} ops/s.",
        after.0, after.1
    );
    let (hit_full, hit_empty, miss_full, miss_empty) =
        (full.hot_hit, empty.hot_hit, full.miss, empty.miss);
    Section {
        markdown: md,
        ratios: vec![
            ("scale hit full/empty".to_owned(), hit_full / hit_empty.max(f64::MIN_POSITIVE)),
            (
                "scale miss full/empty".to_owned(),
                miss_full / miss_empty.max(f64::MIN_POSITIVE),
            ),
        ],
    }
}

/// The section's text.
fn render(
    ctx: &Ctx,
    empty: &Figures,
    full: &Figures,
    fill_secs: f64,
    per_record: f64,
    memory: &str,
) -> String {
    let ratio = |a: f64, b: f64| a / b.max(f64::MIN_POSITIVE);
    let mut md = String::from("## Scale: a million live records\n\n");
    let _ = writeln!(
        md,
        "Concurrency 64, {} calls per run, median of {RUNS} runs each; first with 1,000 records in the server, then with {RECORDS} more completed records filled in ({fill_secs:.1} s). Hits go to the 1,000 recent records (a retry finds a recent key) or are spread over all million, where Redis's lookups miss the CPU caches; the raw `SET … NX GET` over the same keys shows what the keyspace costs Redis itself.\n",
        ctx.options.calls
    );
    md.push_str("| scenario | ops/s, 1,000 records | ops/s, 1,000,000 records | full/empty | Rust/raw |\n|---|---|---|---|---|\n");
    // (scenario, ops/s empty, ops/s full, the Rust/raw cell); the spread rows compare
    // with the empty server's recent-key figure (an empty server has nothing to spread).
    let rows = [
        (
            "hit, recent keys",
            empty.hot_hit,
            full.hot_hit,
            format!(
                "{:.2} → {:.2}",
                ratio(empty.hot_hit, empty.hot_raw),
                ratio(full.hot_hit, full.hot_raw)
            ),
        ),
        ("raw `SET … NX GET`, recent keys", empty.hot_raw, full.hot_raw, String::new()),
        (
            "hit, keys spread over every record",
            empty.hot_hit,
            full.spread_hit,
            format!("{:.2}", ratio(full.spread_hit, full.spread_raw)),
        ),
        ("raw `SET … NX GET`, keys spread", empty.hot_raw, full.spread_raw, String::new()),
        ("miss", empty.miss, full.miss, String::new()),
    ];
    for (scenario, before, after, versus_raw) in rows {
        let _ = writeln!(
            md,
            "| {scenario} | {before:.0} | {after:.0} | {:.2} | {versus_raw} |",
            ratio(after, before)
        );
    }
    let _ = writeln!(
        md,
        "\nRedis memory per record: {per_record:.0} bytes (`used_memory` grew by that much per filled record, key, value, expiry and hash-table share included).\n\n| `MEMORY USAGE` per record (average of {SAMPLE}) | Rust coordinator | Python 0.5.0 |\n|---|---|---|\n{memory}"
    );
    md
}
