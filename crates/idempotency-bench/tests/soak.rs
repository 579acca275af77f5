//! Exactly-once under load: several OS processes, 32 tasks each, duplicate calls on
//! random keys at random times, against standalone Redis and a cluster. Every action
//! increments its key's counter: at the end each counter is exactly 1 and every caller
//! of a key got the same value.
//!
//! The workers' clocks disagree: offsets of -10 s, 0, +10 s and +4 s against a 5 s lease
//! (the first protocol let a clock ahead by more than 2/3 of a lease steal a live
//! reservation).
//!
//! `SOAK_CALLS` (calls per task, default 100) makes the run longer for manual soaks.

use std::collections::HashMap;
use std::process::Command;

use idempotency_testkit::resp::{self, Reply};
use idempotency_testkit::{RedisCluster, RedisServer};

const WORKERS: usize = 4;
const TASKS: usize = 32;
const KEYS: usize = 5000;
/// Each worker's clock offset in seconds (the lease is 5 s).
const CLOCK_OFFSETS: [i64; WORKERS] = [-10, 0, 10, 4];

fn calls_per_task() -> usize {
    std::env::var("SOAK_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

/// Runs the workers against `url`; returns every `(key, value)` they saw.
fn run_workers(url: &str) -> Vec<(String, String)> {
    let children: Vec<_> = (0..WORKERS)
        .map(|w| {
            Command::new(env!("CARGO_BIN_EXE_soak_worker"))
                .args([
                    url,
                    &w.to_string(),
                    &TASKS.to_string(),
                    &calls_per_task().to_string(),
                    &KEYS.to_string(),
                    &CLOCK_OFFSETS[w].to_string(),
                ])
                .output()
        })
        .collect();
    let mut seen = Vec::new();
    for child in children {
        let out = child.expect("worker ran");
        assert!(
            out.status.success(),
            "worker failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let (k, v) = line.split_once('\t').expect("key<TAB>value");
            seen.push((k.to_owned(), v.to_owned()));
        }
    }
    assert_eq!(seen.len(), WORKERS * TASKS * calls_per_task());
    seen
}

fn check(seen: &[(String, String)], counter: impl Fn(&str) -> Reply) -> (usize, usize) {
    let mut by_key: HashMap<&str, Vec<&str>> = HashMap::new();
    for (k, v) in seen {
        by_key.entry(k).or_default().push(v);
    }
    let mut duplicates = 0;
    for (key, values) in &by_key {
        assert!(
            values.windows(2).all(|w| w[0] == w[1]),
            "{key}: callers got different values {values:?}"
        );
        let runs = counter(&format!("soak:count:{key}"));
        assert_eq!(
            runs.as_bytes(),
            Some(&b"1"[..]),
            "{key}: the action ran {runs:?} times"
        );
        duplicates += values.len() - 1;
    }
    (by_key.len(), duplicates)
}

#[test]
fn exactly_once_across_processes_on_standalone_redis() {
    let server = RedisServer::start();
    let seen = run_workers(&server.url());
    let (keys, duplicates) = check(&seen, |k| server.cmd(&["GET", k]));
    assert!(
        duplicates > 0,
        "the run produced duplicate calls ({keys} keys)"
    );
    eprintln!(
        "standalone: {} calls, {keys} keys, {duplicates} duplicate calls, 0 double executions",
        seen.len()
    );
}

#[test]
fn exactly_once_across_processes_on_a_cluster() {
    let cluster = RedisCluster::start();
    let seen = run_workers(&cluster.url());
    let first = cluster.nodes()[0].port();
    let (keys, duplicates) = check(&seen, |k| {
        // Follow MOVED to the owner of the counter's slot.
        match resp::command(first, &["GET", k]).expect("get") {
            Reply::Error(e) if e.starts_with("MOVED") => {
                let port: u16 = e
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .expect("port");
                resp::command(port, &["GET", k]).expect("get")
            }
            other => other,
        }
    });
    assert!(duplicates > 0);
    eprintln!(
        "cluster: {} calls, {keys} keys, {duplicates} duplicate calls, 0 double executions",
        seen.len()
    );
}
