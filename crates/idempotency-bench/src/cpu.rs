//! CPU per call: the coordinator's own cost on a hit at concurrency 64, measured as CPU
//! time rather than throughput. The client's is the sum over every thread of this process
//! (`/proc/self/task/*/schedstat`, nanoseconds), Redis's comes from `INFO cpu` on the
//! masters. Throughput on a 2-core machine moves with whatever else runs; CPU per call
//! hardly does, so this is where a regression of the hot path shows first.

use std::fmt::Write as _;
use std::time::Duration;

use idempotency_testkit::resp::{self, Reply};

use crate::load::Stats;
use crate::scenarios::{RawHits, rust_hits, seed_hits};
use crate::{Ctx, Section};

const CONCURRENCY: usize = 64;
/// Alternating runs of each side (Rust, raw, raw, Rust, …).
const ROUNDS: usize = 3;

/// CPU spent so far by every thread of this process, in nanoseconds.
fn client_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// CPU the Redis masters spent so far (user + system), in nanoseconds.
fn redis_cpu_ns(ports: &[u16]) -> u64 {
    let mut total = 0.0;
    for &port in ports {
        let Ok(Reply::Bulk(Some(text))) = resp::command(port, &["INFO", "cpu"]) else {
            continue;
        };
        for line in String::from_utf8_lossy(&text).lines() {
            if let Some(v) = line
                .strip_prefix("used_cpu_sys:")
                .or_else(|| line.strip_prefix("used_cpu_user:"))
            {
                total += v.trim().parse::<f64>().unwrap_or(0.0);
            }
        }
    }
    (total * 1e9) as u64
}

/// One side's totals over its runs.
#[derive(Default)]
struct Side {
    client_ns: u64,
    redis_ns: u64,
    calls: u64,
    ops: Vec<f64>,
}

impl Side {
    fn client_us(&self) -> f64 {
        self.client_ns as f64 / 1e3 / self.calls.max(1) as f64
    }
    fn redis_us(&self) -> f64 {
        self.redis_ns as f64 / 1e3 / self.calls.max(1) as f64
    }
    fn median_ops(&self) -> f64 {
        let mut ops = self.ops.clone();
        ops.sort_by(f64::total_cmp);
        ops.get(ops.len() / 2).copied().unwrap_or(0.0)
    }
}

async fn measure<F, Fut>(ctx: &Ctx, side: &mut Side, run: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Stats>,
{
    let (client, redis) = (client_cpu_ns(), redis_cpu_ns(ctx.counter.ports()));
    let stats = run().await;
    side.client_ns += client_cpu_ns().saturating_sub(client);
    side.redis_ns += redis_cpu_ns(ctx.counter.ports()).saturating_sub(redis);
    side.calls += stats.calls;
    side.ops.push(stats.ops_per_sec);
}

/// The section: client and Redis CPU per call for the hit and its raw command.
pub(crate) async fn run(ctx: &Ctx) -> Section {
    if !ctx.options.wants("cpu") {
        return Section {
            markdown: String::new(),
            ratios: Vec::new(),
        };
    }
    let calls = ctx.options.calls;
    let keys = seed_hits(ctx, "cpu").await;
    let raw_hits = RawHits::new(ctx, "bench.order", &keys);
    let rust_run = || rust_hits(ctx, CONCURRENCY, calls, &keys);
    let raw_run = || raw_hits.run(ctx, CONCURRENCY, calls);
    // Warm both paths, then alternate.
    rust_run().await;
    raw_run().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut rust, mut raw) = (Side::default(), Side::default());
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            measure(ctx, &mut rust, rust_run).await;
            measure(ctx, &mut raw, raw_run).await;
        } else {
            measure(ctx, &mut raw, raw_run).await;
            measure(ctx, &mut rust, rust_run).await;
        }
    }
    let mut md = String::from(
        "## CPU per call (hit at concurrency 64)\n\nCPU time per call, summed over the run: the client (every thread of the benchmark process) and Redis (`INFO cpu` of the masters). Throughput is the median of the runs.\n\n| side | client CPU µs/call | Redis CPU µs/call | ops/s (median) |\n|---|---|---|---|\n",
    );
    for (label, side) in [("coordinator hit", &rust), ("raw SET NX GET", &raw)] {
        let _ = writeln!(
            md,
            "| {label} | {:.2} | {:.2} | {:.0} |",
            side.client_us(),
            side.redis_us(),
            side.median_ops()
        );
    }
    let _ = writeln!(
        md,
        "\nThe coordinator's own CPU per hit: {:.2} µs of client CPU more than the raw command ({:.2}× its client CPU).",
        rust.client_us() - raw.client_us(),
        rust.client_us() / raw.client_us().max(f64::MIN_POSITIVE),
    );
    Section {
        markdown: md,
        ratios: vec![(
            "cpu-hit client raw/Rust".to_owned(),
            raw.client_us() / rust.client_us().max(f64::MIN_POSITIVE),
        )],
    }
}
