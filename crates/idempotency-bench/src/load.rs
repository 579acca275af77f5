//! A closed-loop load driver: `concurrency` tasks issue `calls` calls in all.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Throughput and latency of one run.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Stats {
    pub(crate) ops_per_sec: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) calls: u64,
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Runs `calls` calls of `call(i)` from `concurrency` tasks and measures them.
pub(crate) async fn drive<F, Fut>(concurrency: usize, calls: u64, call: F) -> Stats
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let call = Arc::new(call);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let call = Arc::clone(&call);
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= calls {
                        return latencies;
                    }
                    let t = Instant::now();
                    call(i).await;
                    latencies.push(t.elapsed());
                }
            })
        })
        .collect();
    let mut all = Vec::with_capacity(usize::try_from(calls).unwrap_or(0));
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    let elapsed = started.elapsed();
    all.sort_unstable();
    Stats {
        ops_per_sec: all.len() as f64 / elapsed.as_secs_f64(),
        p50_us: percentile(&all, 0.5).as_secs_f64() * 1e6,
        p99_us: percentile(&all, 0.99).as_secs_f64() * 1e6,
        calls: all.len() as u64,
    }
}
