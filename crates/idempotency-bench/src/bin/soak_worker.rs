//! One process of the exactly-once soak test: `TASKS` tasks call the coordinator on
//! random keys of `KEYS`, at random times; every action increments the key's counter in
//! Redis and returns a value unique to that execution. Prints `key<TAB>value` per call.
//!
//! usage: `soak_worker URL WORKER_ID TASKS CALLS_PER_TASK KEYS [CLOCK_OFFSET_SECS]`
//!
//! `CLOCK_OFFSET_SECS` shifts the wall clock this worker stamps records with (its
//! processes' clocks disagree, as machines' do): protocol v2 must not care.

use std::io::Write;
use std::time::Duration;

use idempotency_coordinator::{Coordinator, IdempotencyError, JsonAdapter};
use idempotency_redis::fred::prelude::KeysInterface;
use idempotency_redis::{ConnectOptions, RedisStore};

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
    let store = RedisStore::connect(
        url,
        &ConnectOptions::default().with_command_timeout(Duration::from_secs(10)),
    )
    .await?;
    let coordinator = Coordinator::builder(store.clone())
        .lease(Duration::from_secs(5))
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
                        format!("soak-{}", rng.next() % keys.min(50))
                    } else {
                        format!("soak-{}", rng.next() % keys)
                    };
                    let counter = format!("soak:count:{key}");
                    let value: serde_json::Value = coordinator
                        .call("soak.op", Some(&key))
                        .adapter(JsonAdapter)
                        .run(|| async {
                            let _: i64 = client
                                .incr(counter.as_str())
                                .await
                                .map_err(|e| IdempotencyError::storage(None, e))?;
                            tokio::time::sleep(Duration::from_millis(rng.next() % 5)).await;
                            Ok::<_, IdempotencyError>(
                                serde_json::json!({ "by": format!("w{worker}-t{t}-n{n}") }),
                            )
                        })
                        .await
                        .map_err(|e| e.to_string())?;
                    lines.push(format!("{key}\t{value}"));
                }
                Ok::<_, String>(lines)
            })
        })
        .collect();
    let mut out = std::io::stdout().lock();
    for h in handles {
        for line in h.await?? {
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}
