//! The hot-key storm: `CALLERS` concurrent callers in each of two processes on one key
//! whose action takes 20 ms, with in-process coalescing on (the default) and off. The
//! processes are this program again, in `--storm-worker` mode, driven round by round
//! over their stdin/stdout; commands are counted on the servers around each round.
//!
//! Per round and key: how many times the action ran (over both processes), the Redis
//! commands per caller, and each caller's wake-up delay: the time from the return of the
//! call that ran the action (its result stored) to the caller's own return, on the wall
//! clock both processes share.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use idempotency_coordinator::{Coordinator, IdempotencyError};
use idempotency_redis::{ConnectOptions, RedisStore};
use serde::{Deserialize, Serialize};

use crate::Ctx;
use crate::load::percentile;

/// Callers per process.
const CALLERS: usize = 1000;
/// How long the action takes.
const ACTION: Duration = Duration::from_millis(20);

/// One process's report of one round.
#[derive(Debug, Serialize, Deserialize)]
struct RoundReport {
    /// How often the action ran in this process.
    runs: usize,
    /// When the call that ran the action returned (ns since the epoch), if it ran here.
    owner_done_ns: Option<u128>,
    /// When every other caller returned (ns since the epoch).
    done_ns: Vec<u128>,
    /// Calls that failed.
    errors: usize,
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// The worker: `--storm-worker URL COALESCE(0|1)`. Prints `ready`, then for every line
/// `KEY` on stdin runs one storm on it and prints its [`RoundReport`] as JSON.
pub(crate) async fn worker(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let [url, coalesce] = args else {
        return Err("usage: idempotency-bench --storm-worker URL COALESCE".into());
    };
    let store = RedisStore::connect(
        url,
        &ConnectOptions::default().with_command_timeout(Duration::from_secs(10)),
    )
    .await?;
    let coordinator = Coordinator::builder(store)
        .coalesce(coalesce == "1")
        .build()?;
    println!("ready");
    let mut lines = BufReader::new(std::io::stdin()).lines();
    while let Some(Ok(key)) = lines.next() {
        let report = round(&coordinator, &key).await;
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

async fn round(coordinator: &Coordinator<RedisStore>, key: &str) -> RoundReport {
    let runs = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(CALLERS));
    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let coordinator = coordinator.clone();
            let key = key.to_owned();
            let (runs, barrier) = (Arc::clone(&runs), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                let mut ran = false;
                let outcome: Result<u64, IdempotencyError> = coordinator
                    .call("bench.storm", Some(&key))
                    .run(|| async {
                        ran = true;
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(ACTION).await;
                        Ok(42)
                    })
                    .await;
                (ran, outcome.is_ok(), now_ns())
            })
        })
        .collect();
    let mut report = RoundReport {
        runs: 0,
        owner_done_ns: None,
        done_ns: Vec::with_capacity(CALLERS),
        errors: 0,
    };
    for t in tasks {
        let Ok((ran, ok, at)) = t.await else {
            report.errors += 1;
            continue;
        };
        if !ok {
            report.errors += 1;
        }
        if ran {
            report.owner_done_ns = Some(at);
        } else {
            report.done_ns.push(at);
        }
    }
    report.runs = runs.load(Ordering::SeqCst);
    report
}

/// A running worker process.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    fn start(url: &str, coalesce: bool) -> Result<Self, Box<dyn std::error::Error>> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--storm-worker", url, if coalesce { "1" } else { "0" }])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().ok_or("worker stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("worker stdout")?);
        let mut worker = Self {
            child,
            stdin,
            stdout,
        };
        let ready = worker.line()?;
        if ready.trim() != "ready" {
            return Err(format!("storm worker did not start: {ready:?}").into());
        }
        Ok(worker)
    }

    fn line(&mut self) -> Result<String, Box<dyn std::error::Error>> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        Ok(line)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing stdin ends the worker's loop.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The storm's figures for one setting over all its rounds.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StormStats {
    /// The most runs of the action on one key (over both processes).
    pub(crate) max_runs: usize,
    /// Redis commands per caller.
    pub(crate) commands_per_caller: f64,
    pub(crate) wake_p50_ms: f64,
    pub(crate) wake_p99_ms: f64,
    pub(crate) wake_max_ms: f64,
    /// Wake-up p99 of the callers in the process whose call ran the action.
    pub(crate) owner_side_p99_ms: f64,
    /// Wake-up p99 of the callers in the other process (woken through Redis).
    pub(crate) other_side_p99_ms: f64,
    pub(crate) errors: usize,
}

/// Runs `rounds` storms (after one warm-up) with coalescing on or off.
fn storms(
    ctx: &Ctx,
    coalesce: bool,
    rounds: u64,
) -> Result<StormStats, Box<dyn std::error::Error>> {
    let mut workers = [
        Worker::start(&ctx.url, coalesce)?,
        Worker::start(&ctx.url, coalesce)?,
    ];
    let tag = if coalesce { "on" } else { "off" };
    let mut stats = StormStats::default();
    let mut delays = Vec::new();
    let mut sides: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut commands = 0;
    for r in 0..=rounds {
        let key = format!("storm-{}-{tag}-{r}", ctx.run);
        let before = ctx.counter.total();
        for w in &mut workers {
            writeln!(w.stdin, "{key}")?;
            w.stdin.flush()?;
        }
        let mut reports = Vec::new();
        for w in &mut workers {
            let line = w.line()?;
            reports.push(serde_json::from_str::<RoundReport>(&line)?);
        }
        let after = ctx.counter.total();
        if r == 0 {
            // The warm-up: connections, the subscriber and script loading are set up.
            continue;
        }
        commands += after - before;
        stats.max_runs = stats.max_runs.max(reports.iter().map(|rep| rep.runs).sum());
        stats.errors += reports.iter().map(|rep| rep.errors).sum::<usize>();
        let Some(owner) = reports.iter().find_map(|rep| rep.owner_done_ns) else {
            continue;
        };
        for rep in &reports {
            let side = usize::from(rep.owner_done_ns.is_none());
            for &at in &rep.done_ns {
                let delay = Duration::from_nanos(
                    u64::try_from(at.saturating_sub(owner)).unwrap_or(u64::MAX),
                );
                delays.push(delay);
                sides[side].push(delay);
            }
        }
    }
    delays.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let callers = (rounds as f64) * (2 * CALLERS) as f64;
    stats.commands_per_caller = commands as f64 / callers;
    stats.wake_p50_ms = ms(percentile(&delays, 0.5));
    stats.wake_p99_ms = ms(percentile(&delays, 0.99));
    stats.wake_max_ms = ms(delays.last().copied().unwrap_or_default());
    for side in &mut sides {
        side.sort_unstable();
    }
    stats.owner_side_p99_ms = ms(percentile(&sides[0], 0.99));
    stats.other_side_p99_ms = ms(percentile(&sides[1], 0.99));
    Ok(stats)
}

/// The storm section, and its coalescing-on figures for the summary.
pub(crate) fn run(ctx: &Ctx) -> Result<(String, StormStats), Box<dyn std::error::Error>> {
    let rounds = ctx.options.storm_rounds;
    let on = storms(ctx, true, rounds)?;
    let off = storms(ctx, false, rounds)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Hot-key storm: {CALLERS} callers in each of 2 processes on one key, action 20 ms, {rounds} keys\n"
    );
    let _ = writeln!(
        out,
        "| coordinator | action runs per key (max) | commands per caller | wake delay p50 | p99 | max | p99, owner's process | p99, other process | failed calls |"
    );
    let _ = writeln!(
        out,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for (name, s) in [("coalescing on", on), ("coalescing off (the default)", off)] {
        let _ = writeln!(
            out,
            "| {name} | {} | {:.4} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {} |",
            s.max_runs,
            s.commands_per_caller,
            s.wake_p50_ms,
            s.wake_p99_ms,
            s.wake_max_ms,
            s.owner_side_p99_ms,
            s.other_side_p99_ms,
            s.errors
        );
    }
    let _ = writeln!(
        out,
        "\nTargets: under 0.05 commands per caller, wake-up p99 under 5 ms, the action run once per key."
    );
    Ok((out, on))
}
