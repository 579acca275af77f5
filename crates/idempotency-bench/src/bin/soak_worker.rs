//! One process of the exactly-once soak test: `TASKS` tasks call the coordinator on
//! random keys of `KEYS`, at random times; every action increments the key's counter in
//! Redis and returns a value unique to that execution (its caller's id).
//!
//! Prints its history for the test's checker (`idempotency_testkit::history::text`): one
//! `call` line per call (caller, key, start and end on the machine's wall clock, outcome,
//! the call's own execution if its action ran: when it started, when its side effect was
//! done, the value), then one `lost` line per key on which this process counted a lease
//! loss or a fail-open run. Each key has an operation label of its own, so the metrics'
//! per-operation counts are per key.
//!
//! usage: `soak_worker URL WORKER_ID TASKS CALLS_PER_TASK KEYS [CLOCK_OFFSET_SECS]`
//!
//! `CLOCK_OFFSET_SECS` shifts the wall clock this worker stamps records with (its
//! processes' clocks disagree, as machines' do): protocol v2 must not care. The history
//! is timed on the unshifted wall clock, which all workers share.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use idempotency_coordinator::{Coordinator, IdempotencyError, JsonAdapter};

use idempotency_redis::fred::prelude::{Client, KeysInterface};
use idempotency_redis::{ConnectOptions, RedisStore};
use idempotency_testkit::history::text::{call_line, lost_line, wall_now};
use idempotency_testkit::history::{Attachment, Call, Run};
use idempotency_testkit::{RecordingMetrics, error_type};

/// A small deterministic generator (xorshift), seeded per task.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (url, worker, tasks, calls, keys, offset) = match args.as_slice() {
        [_, url, worker, tasks, calls, keys] => (url, worker, tasks, calls, keys, "0"),
        [_, url, worker, tasks, calls, keys, offset] => {
            (url, worker, tasks, calls, keys, offset.as_str())
        }
        _ => {
            return Err(
                "usage: soak_worker URL WORKER_ID TASKS CALLS_PER_TASK KEYS [CLOCK_OFFSET_SECS]"
                    .into(),
            );
        }
    };
    let offset: i64 = offset.parse()?;
    let (worker, tasks, calls, keys): (u64, u64, u64, u64) = (
        worker.parse()?,
        tasks.parse()?,
        calls.parse()?,
        keys.parse()?,
    );
    if tasks >= 1000 || calls >= 1_000_000 {
        return Err("at most 999 tasks of 999,999 calls (caller ids must stay unique)".into());
    }
    let metrics = Arc::new(RecordingMetrics::default());
    let store = RedisStore::connect(
        url,
        &ConnectOptions::default().with_command_timeout(Duration::from_secs(10)),
    )
    .await?;
    let coordinator = Coordinator::builder(store.clone())
        .lease(Duration::from_secs(5))
        .metrics(metrics.clone())
        .clock(idempotency_core::Clock::with_offset(
            time::Duration::seconds(offset),
        ))
        .build()?;
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let coordinator = coordinator.clone();
            let client = store.connection().client().clone();
            tokio::spawn(async move {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (worker << 32) ^ (t + 1));
                let mut lines = Vec::new();
                for n in 0..calls {
                    tokio::time::sleep(Duration::from_micros(rng.next() % 2000)).await;
                    // One call in ten goes to 50 hot keys, so duplicates also race each other.
                    let key = if rng.next().is_multiple_of(10) {
                        format!("k{}", rng.next() % keys.min(50))
                    } else {
                        format!("k{}", rng.next() % keys)
                    };
                    let call = call(
                        &coordinator,
                        &client,
                        &mut rng,
                        caller_id(worker, t, n),
                        key,
                    );
                    lines.push(Box::pin(call).await);
                }
                lines
            })
        })
        .collect();
    let mut out = std::io::stdout().lock();
    for h in handles {
        for line in h.await? {
            writeln!(out, "{line}")?;
        }
    }
    for line in lost_lines(&metrics) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// One call by `caller` on `key`; its `call` line.
async fn call(
    coordinator: &Coordinator<RedisStore>,
    client: &Client,
    rng: &mut Rng,
    caller: u64,
    key: String,
) -> String {
    let counter = format!("soak:count:{key}");
    // The action's own log: when it started and when its side effect (the counter's
    // increment) was done; its value is its caller's id, unique per execution.
    let mut run: Option<Run> = None;
    let start = wall_now();
    let outcome: Result<serde_json::Value, IdempotencyError> = coordinator
        .call(&operation(&key), Some(&key))
        .adapter(JsonAdapter)
        .run(|| async {
            run = Some(Run {
                caller,
                started: wall_now(),
                effect: None,
            });
            let _: i64 = client
                .incr(counter.as_str())
                .await
                .map_err(|e| IdempotencyError::storage(None, e))?;
            if let Some(run) = &mut run {
                run.effect = Some((caller, wall_now()));
            }
            tokio::time::sleep(Duration::from_millis(rng.next() % 5)).await;
            Ok(serde_json::json!({ "by": caller }))
        })
        .await;
    let end = wall_now();
    let outcome = match outcome {
        Ok(value) => value["by"]
            .as_u64()
            .ok_or_else(|| format!("not a value of this soak: {value}")),
        Err(e) => Err(e.to_string()),
    };
    let call = Call {
        caller,
        key,
        start,
        end,
        outcome: Some(outcome),
        attachment: Attachment::Attached,
    };
    call_line(&call, run.as_ref())
}

/// The extra executions this process's counters allow, per key, as `lost` lines: its
/// lease losses on the key's operation. Nothing else: the soak injects no storage fault,
/// so a fail-open run would be a double run, and the soak fails on it (a storage error
/// counted on a key is no measure of unprotected runs anyway: a waiter that fails closed
/// counts one too).
fn lost_lines(metrics: &RecordingMetrics) -> Vec<String> {
    let mut lost: BTreeMap<String, usize> = BTreeMap::new();
    for (kind, op, detail) in metrics.calls() {
        if kind == "error"
            && detail == error_type::LEASE_LOST
            && let Some(key) = op.strip_prefix(OPERATION_PREFIX)
        {
            *lost.entry(key.to_owned()).or_default() += 1;
        }
    }
    lost.iter()
        .map(|(key, count)| lost_line(key, *count))
        .collect()
}

const OPERATION_PREFIX: &str = "soak.";

/// Key `key`'s operation: one label per key, so the metrics' per-operation counts
/// (`lease_lost`) are per key.
fn operation(key: &str) -> String {
    format!("{OPERATION_PREFIX}{key}")
}

/// A caller id unique across the workers (`tasks` < 1000, `calls` < 1,000,000).
fn caller_id(worker: u64, task: u64, n: u64) -> u64 {
    (worker * 1000 + task) * 1_000_000 + n
}
