//! The `idempotency` binary run against real standalone and cluster Redis servers, its
//! output and exit codes checked.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use idempotency_coordinator::{Coordinator, IdempotencyError, JsonAdapter};
use idempotency_core::{
    Claim, Clock, IdempotencyDomainService, IdempotencyRepository, Lease, RawValue,
    ReservationStore,
};
use idempotency_redis::{ConnectOptions, RedisStore};
use idempotency_testkit::{
    RedisCluster, RedisServer, free_port, record_id, resp, shared_cluster, shared_server,
    unique_key,
};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_idempotency");

/// What a run printed and how it exited.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn finished(out: Output) -> Run {
    Run {
        code: out.status.code().expect("the binary exited (not killed)"),
        stdout: text(out.stdout),
        stderr: text(out.stderr),
    }
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn cli(url: &str, args: &[&str]) -> Run {
    finished(
        Command::new(BIN)
            .arg("--url")
            .arg(url)
            .args(args)
            .env_remove("REDIS_URL")
            .env_remove("DATABASE_URL")
            .output()
            .expect("run the binary"),
    )
}

/// One JSON object per line.
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// A standalone server or the cluster, and a way to write raw values to it.
enum Deployment {
    Standalone(Arc<RedisServer>),
    Cluster(Arc<RedisCluster>),
}

impl Deployment {
    fn standalone() -> Self {
        Self::Standalone(shared_server())
    }

    fn cluster() -> Self {
        Self::Cluster(shared_cluster())
    }

    fn url(&self) -> String {
        match self {
            Self::Standalone(s) => s.url(),
            Self::Cluster(c) => c.url(),
        }
    }

    fn port_for(&self, redis_key: &str) -> u16 {
        match self {
            Self::Standalone(s) => s.port(),
            Self::Cluster(c) => c.owner_port(redis_key),
        }
    }

    fn raw(&self, redis_key: &str, args: &[&str]) -> resp::Reply {
        resp::command(self.port_for(redis_key), args).expect("raw command")
    }

    fn exists(&self, redis_key: &str) -> bool {
        self.raw(redis_key, &["EXISTS", redis_key]).as_int() == Some(1)
    }

    async fn store(&self) -> RedisStore {
        RedisStore::connect(&self.url(), &ConnectOptions::default())
            .await
            .expect("connect")
    }
}

/// A live reservation of ours (lease of two minutes).
async fn claim(store: &RedisStore, operation: &str, key: &str) -> Lease {
    let lease = Lease::new(record_id(operation, key), None, Clock::system());
    let claimed = store
        .claim(&lease, Duration::from_secs(120))
        .await
        .expect("claim");
    assert!(matches!(claimed, Claim::Acquired), "the key was free");
    lease
}

async fn complete(store: &RedisStore, lease: &Lease, result: &str) {
    let raw = RawValue::from_string(result.to_owned()).expect("raw JSON");
    store
        .complete(lease, &raw, Duration::from_secs(600))
        .await
        .expect("complete");
}

/// A record the Python library 0.5.0 wrote (conformance data), by case name.
fn python_raw(name: &str) -> String {
    let cases: Value =
        serde_json::from_str(&idempotency_testkit::conformance::text("records.json"))
            .expect("records.json");
    cases
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .and_then(|c| c["raw"].as_str())
        .unwrap_or_else(|| panic!("no conformance case {name}"))
        .to_owned()
}

// ---------------------------------------------------------------------------- inspect

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_shows_a_record_completed_by_our_coordinator() {
    let d = Deployment::standalone();
    let key = unique_key("coord");
    let coordinator = Coordinator::builder(d.store().await)
        .build()
        .expect("coordinator");
    coordinator
        .call("order.create", Some(&key))
        .adapter(JsonAdapter)
        .run(|| async { Ok::<_, IdempotencyError>(json!({"order": 7, "név": "ü"})) })
        .await
        .expect("run");

    let table = cli(&d.url(), &["inspect", "order.create", &key]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(
        table.stdout.contains("status       completed"),
        "{}",
        table.stdout
    );
    assert!(
        table.stdout.contains("\"order\": 7"),
        "result pretty-printed: {}",
        table.stdout
    );
    assert!(
        table
            .stdout
            .contains(&format!("idempotency:order.create:{key}"))
    );

    let json = cli(&d.url(), &["--json", "inspect", "order.create", &key]);
    assert_eq!(json.code, 0, "{}", json.stderr);
    let v: Value = serde_json::from_str(json.stdout.trim()).expect("one JSON object");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["result"], json!({"order": 7, "név": "ü"}));
    let pttl = v["pttl_ms"].as_u64().expect("a TTL");
    assert!(
        pttl > 0 && pttl <= 30 * 60 * 1000,
        "the coordinator's 30 min TTL: {pttl}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_shows_the_owner_of_our_reservation() {
    let d = Deployment::cluster();
    let key = unique_key("own");
    let store = d.store().await;
    let lease = claim(&store, "order.pay", &key).await;
    let run = cli(&d.url(), &["--json", "inspect", "order.pay", &key]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v: Value = serde_json::from_str(run.stdout.trim()).expect("JSON");
    assert_eq!(v["status"], "pending");
    assert_eq!(v["owner"], lease.token());
    assert!(v["pttl_ms"].as_u64().is_some_and(|t| t <= 120_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_reads_records_the_python_library_wrote() {
    let d = Deployment::standalone();
    let completed = unique_key("py-done");
    let pending = unique_key("py-pending");
    for (key, case) in [
        (&completed, "completed_dict"),
        (&pending, "pending_no_fingerprint"),
    ] {
        let redis_key = format!("idempotency:user.create:{key}");
        d.raw(
            &redis_key,
            &["SET", &redis_key, &python_raw(case), "EX", "600"],
        );
    }
    let done = cli(&d.url(), &["inspect", "user.create", &completed]);
    assert_eq!(done.code, 0, "{}", done.stderr);
    assert!(
        done.stdout.contains("status       completed"),
        "{}",
        done.stdout
    );
    assert!(
        done.stdout.contains("\"status\": \"ok\""),
        "{}",
        done.stdout
    );

    let waiting = cli(&d.url(), &["inspect", "user.create", &pending]);
    assert_eq!(waiting.code, 0, "{}", waiting.stderr);
    assert!(
        waiting.stdout.contains("status       pending"),
        "{}",
        waiting.stdout
    );
    assert!(
        waiting.stdout.contains("owner        python/no owner"),
        "{}",
        waiting.stdout
    );
}

/// Has the Python idempotency-kit 0.5.0 run one call through its coordinator.
const PYTHON_COMPLETE: &str = r"
import asyncio, json, sys
from redis.asyncio import Redis
from idempotency_kit import AsyncIdempotencyCoordinator, IdempotencyDomainService, JsonResultAdapter
from idempotency_kit.infra.storage.redis.aio import RedisAsyncIdempotencyRepository

async def main():
    url, op, key, value = sys.argv[1:5]
    redis = Redis.from_url(url)
    coordinator = AsyncIdempotencyCoordinator(
        RedisAsyncIdempotencyRepository(redis), IdempotencyDomainService(default_ttl_minutes=30))
    async def action():
        return json.loads(value)
    print(json.dumps(await coordinator.coordinate(op, key, None, JsonResultAdapter(), action)))
    await redis.aclose()

asyncio.run(main())
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_reads_a_record_real_python_wrote() {
    let d = Deployment::standalone();
    let key = unique_key("real-py");
    let python = idempotency_testkit::python::python_with_kit();
    let out = Command::new(python)
        .args(["-c", PYTHON_COMPLETE, &d.url(), "order.create", &key])
        .arg(r#"{"from": "python", "n": 3}"#)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let run = cli(&d.url(), &["--json", "inspect", "order.create", &key]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v: Value = serde_json::from_str(run.stdout.trim()).expect("JSON");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["result"], json!({"from": "python", "n": 3}));
    assert_eq!(v["owner"], Value::Null, "Python keeps no owner");
    assert!(
        v["pttl_ms"]
            .as_u64()
            .is_some_and(|t| t > 0 && t <= 30 * 60 * 1000)
    );
    let table = cli(&d.url(), &["inspect", "order.create", &key]);
    assert!(
        table.stdout.contains("\"from\": \"python\""),
        "{}",
        table.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_reports_corrupt_values_with_exit_code_4() {
    let d = Deployment::cluster();
    let garbage = unique_key("garbage");
    let hash = unique_key("hash");
    let gk = format!("idempotency:order.create:{garbage}");
    let hk = format!("idempotency:order.create:{hash}");
    d.raw(&gk, &["SET", &gk, "{not json"]);
    d.raw(&hk, &["HSET", &hk, "a", "b"]);

    let run = cli(&d.url(), &["inspect", "order.create", &garbage]);
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(
        run.stdout.contains("status       unreadable"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("{not json"),
        "raw shown: {}",
        run.stdout
    );

    let run = cli(&d.url(), &["--json", "inspect", "order.create", &hash]);
    assert_eq!(run.code, 4, "{}", run.stderr);
    let v: Value = serde_json::from_str(run.stdout.trim()).expect("JSON");
    assert_eq!(v["status"], "wrong-type");
    assert_eq!(v["redis_type"], "hash");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_shows_integers_beyond_64_bits_as_stored() {
    let d = Deployment::standalone();
    let store = d.store().await;
    let key = unique_key("bigint");
    let lease = claim(&store, "order.create", &key).await;
    let stored = r#"{"id":123456789012345678901234567890,"n":-0,"x":1000000000000000.2}"#;
    complete(&store, &lease, stored).await;

    let run = cli(&d.url(), &["--json", "inspect", "order.create", &key]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .contains(r#""result":{"id":123456789012345678901234567890,"#),
        "the stored digits, not a rounded float: {}",
        run.stdout
    );
    let table = cli(&d.url(), &["inspect", "order.create", &key]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(
        table.stdout.contains("123456789012345678901234567890"),
        "{}",
        table.stdout
    );
    assert!(!table.stdout.contains("e+29"), "{}", table.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_without_its_separator_is_refused_before_connecting() {
    // `svc:t1` + `0op` and `svc:t10` + `op` would share keys: `list` under one would show
    // (and `evict` remove) the other's records.
    let run = cli(
        "redis://127.0.0.1:1",
        &["--prefix", "svc:t1", "list", "--operation", "0op"],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("must end with ':'"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_values_never_reach_the_terminal_raw() {
    let d = Deployment::standalone();
    // A window-title sequence, a screen clear, a row overwrite, a right-to-left override.
    let key = format!(
        "{}\u{1b}]0;pwned\u{7}\u{1b}[2J\rforged\u{202e}",
        unique_key("tty")
    );
    let redis_key = format!("idempotency:op:{key}");
    let value = format!(
        r#"{{"operation":"op","idempotency_key":"{}","result":"\u001b[31m\u202e","created_at":"2025-01-01T00:00:00Z","expires_at":"2999-01-01T00:00:00Z","status":"completed","fingerprint":null,"owner":"o\u001b[2Jwn"}}"#,
        key.replace('\u{1b}', "\\u001b")
            .replace('\u{7}', "\\u0007")
            .replace('\r', "\\r")
    );
    d.raw(&redis_key, &["SET", &redis_key, &value, "EX", "600"]);
    let garbage = format!("{redis_key}-garbage");
    d.raw(
        &garbage,
        &[
            "SET",
            &garbage,
            "\u{1b}]8;;http://evil\u{7}click\u{1b}]8;;\u{7}",
            "EX",
            "600",
        ],
    );
    let runs = [
        cli(&d.url(), &["inspect", "op", &key]),
        cli(&d.url(), &["list", "--operation", "op"]),
        cli(&d.url(), &["inspect", "op", &format!("{key}-garbage")]),
        cli(&d.url(), &["evict", "op", &format!("{key}-missing")]),
    ];
    for run in &runs {
        for text in [&run.stdout, &run.stderr] {
            for bad in ['\u{1b}', '\u{7}', '\r', '\u{202e}'] {
                assert!(
                    !text.contains(bad),
                    "{bad:?} reached the terminal: {text:?}"
                );
            }
        }
    }
    assert!(
        runs[0].stdout.contains("\\u001b]0;pwned"),
        "{}",
        runs[0].stdout
    );
    assert!(runs[1].stdout.contains("\\u202e"), "{}", runs[1].stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_of_a_missing_key_exits_1() {
    let d = Deployment::standalone();
    let run = cli(
        &d.url(),
        &["inspect", "order.create", &unique_key("absent")],
    );
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("not found"), "{}", run.stderr);
    assert!(run.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prefix_comes_from_the_settings_file_or_the_flag() {
    let d = Deployment::standalone();
    let key = unique_key("prefixed");
    let redis_key = format!("svc:idem:order.create:{key}");
    d.raw(
        &redis_key,
        &["SET", &redis_key, &python_raw("completed_str"), "EX", "600"],
    );
    let dir = d_dir();
    let settings = dir.join(format!("{key}.json"));
    std::fs::write(
        &settings,
        r#"{"key_prefix": "svc:idem:", "in_flight": "wait"}"#,
    )
    .expect("write settings");
    let settings = settings.to_str().expect("utf-8 path");

    let by_settings = cli(
        &d.url(),
        &["--settings", settings, "inspect", "order.create", &key],
    );
    assert_eq!(by_settings.code, 0, "{}", by_settings.stderr);
    assert!(by_settings.stdout.contains(&redis_key));
    let by_flag = cli(
        &d.url(),
        &["--prefix", "svc:idem:", "inspect", "order.create", &key],
    );
    assert_eq!(by_flag.code, 0, "{}", by_flag.stderr);
    let default_prefix = cli(&d.url(), &["inspect", "order.create", &key]);
    assert_eq!(default_prefix.code, 1, "not under idempotency:");
    let _ = std::fs::remove_file(settings);
}

fn d_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join("idempotency-cli-tests");
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

// ------------------------------------------------------------------------------- list

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_scans_every_master_of_the_cluster() {
    let d = Deployment::cluster();
    let Deployment::Cluster(cluster) = &d else {
        unreachable!()
    };
    let store = d.store().await;
    let op = unique_key("list-op");
    let svc = IdempotencyDomainService::default();
    let mut written = std::collections::BTreeSet::new();
    for i in 0..12 {
        let key = format!("k{i}");
        store
            .save(&svc.create_record(&op, &key, &i).expect("record"))
            .await
            .expect("save");
        written.insert(key);
    }
    let mut pending = Vec::new();
    for i in 0..3 {
        let key = format!("p{i}");
        let _lease = claim(&store, &op, &key).await;
        pending.push(key);
    }
    let masters: std::collections::BTreeSet<u16> = written
        .iter()
        .chain(&pending)
        .map(|k| cluster.owner_port(&format!("idempotency:{op}:{k}")))
        .collect();
    assert!(
        masters.len() >= 2,
        "the keys span several masters: {masters:?}"
    );

    let all = cli(&d.url(), &["--json", "list", "--operation", &op]);
    assert_eq!(all.code, 0, "{}", all.stderr);
    let listed: std::collections::BTreeSet<String> = json_lines(&all.stdout)
        .iter()
        .map(|v| v["key"].as_str().expect("key").to_owned())
        .collect();
    let expected: std::collections::BTreeSet<String> =
        written.iter().chain(&pending).cloned().collect();
    assert_eq!(listed, expected);

    let only_pending = cli(
        &d.url(),
        &["--json", "list", "--operation", &op, "--status", "pending"],
    );
    let lines = json_lines(&only_pending.stdout);
    assert_eq!(lines.len(), 3, "{}", only_pending.stdout);
    assert!(
        lines
            .iter()
            .all(|v| v["status"] == "pending" && v["owner"].is_string())
    );

    let limited = cli(
        &d.url(),
        &["--json", "list", "--operation", &op, "--limit", "5"],
    );
    assert_eq!(json_lines(&limited.stdout).len(), 5);

    // The same through a redis:// seed and --cluster, as a table.
    let Deployment::Cluster(c) = &d else {
        unreachable!()
    };
    let seed = format!("redis://127.0.0.1:{}", c.nodes()[0].port());
    let table = cli(
        &seed,
        &[
            "--cluster",
            "list",
            "--operation",
            &op,
            "--status",
            "completed",
        ],
    );
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(table.stdout.starts_with("STATUS"), "{}", table.stdout);
    assert!(table.stdout.contains("12 record(s)"), "{}", table.stdout);
}

// ------------------------------------------------------------------------------ evict

async fn evict_refuses_a_live_reservation_then_forces(d: Deployment) {
    let store = d.store().await;
    let key = unique_key("evict-live");
    let redis_key = format!("idempotency:order.create:{key}");
    let lease = claim(&store, "order.create", &key).await;

    let refused = cli(&d.url(), &["evict", "order.create", &key]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains(lease.token()),
        "names the owner: {}",
        refused.stderr
    );
    assert!(refused.stderr.contains("--force"), "{}", refused.stderr);
    assert!(d.exists(&redis_key), "nothing removed");

    let forced = cli(&d.url(), &["evict", "order.create", &key, "--force"]);
    assert_eq!(forced.code, 0, "{}", forced.stderr);
    assert!(
        forced.stdout.contains("LIVE reservation"),
        "{}",
        forced.stdout
    );
    assert!(
        forced.stdout.contains(lease.token()),
        "names the owner: {}",
        forced.stdout
    );
    assert!(!d.exists(&redis_key), "removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evict_refuses_a_live_reservation_then_forces_standalone() {
    evict_refuses_a_live_reservation_then_forces(Deployment::standalone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evict_refuses_a_live_reservation_then_forces_cluster() {
    evict_refuses_a_live_reservation_then_forces(Deployment::cluster()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evict_removes_completed_and_unreadable_records() {
    let d = Deployment::cluster();
    let store = d.store().await;
    let key = unique_key("evict-done");
    let redis_key = format!("idempotency:order.create:{key}");
    let lease = claim(&store, "order.create", &key).await;
    complete(&store, &lease, r#"{"paid":true}"#).await;

    let run = cli(&d.url(), &["--json", "evict", "order.create", &key]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v: Value = serde_json::from_str(run.stdout.trim()).expect("JSON");
    assert_eq!(v["evicted"], true);
    assert_eq!(v["forced"], false);
    assert_eq!(v["removed"]["status"], "completed");
    assert_eq!(v["removed"]["result"], json!({"paid": true}));
    assert!(!d.exists(&redis_key));

    let again = cli(&d.url(), &["evict", "order.create", &key]);
    assert_eq!(again.code, 1, "nothing left: {}", again.stderr);
    assert!(again.stderr.contains("not found"));

    let poisoned = unique_key("evict-poison");
    let pk = format!("idempotency:order.create:{poisoned}");
    d.raw(&pk, &["SET", &pk, "\u{0}garbage"]);
    let run = cli(&d.url(), &["evict", "order.create", &poisoned]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("unreadable"), "{}", run.stdout);
    assert!(!d.exists(&pk));
}

// ------------------------------------------------------------------------------ stats

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_counts_by_status_and_ttl_and_says_when_it_sampled() {
    let d = Deployment::standalone();
    let store = d.store().await;
    let op = unique_key("stats-op");
    let svc = IdempotencyDomainService::default();
    for i in 0..3 {
        store
            .save(
                &svc.create_record(&op, &format!("c{i}"), &i)
                    .expect("record"),
            )
            .await
            .expect("save");
    }
    let _a = claim(&store, &op, "p0").await;
    let _b = claim(&store, &op, "p1").await;
    let bad = format!("idempotency:{op}:bad");
    d.raw(&bad, &["SET", &bad, "nope"]);

    let run = cli(&d.url(), &["--json", "stats", "--operation", &op]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v: Value = serde_json::from_str(run.stdout.trim()).expect("JSON");
    assert_eq!(v["examined"], 6);
    assert_eq!(v["sampled"], false);
    assert_eq!(
        v["counts"][op.as_str()],
        json!({"completed": 3, "pending": 2, "unreadable": 1})
    );
    let bucket = |name: &str| {
        v["ttl_histogram"]
            .as_array()
            .and_then(|b| b.iter().find(|b| b["bucket"] == name))
            .map(|b| b["keys"].clone())
    };
    // Leases of 2 min, records of 30 min, the planted value without expiry.
    assert_eq!(bucket("1m-10m"), Some(json!(2)));
    assert_eq!(bucket("10m-1h"), Some(json!(3)));
    assert_eq!(bucket("no expiry"), Some(json!(1)));
    assert!(v["memory_bytes"].as_u64().is_some_and(|m| m > 0));
    assert!(v["server_used_memory"].as_u64().is_some_and(|m| m > 0));

    let sampled = cli(&d.url(), &["stats", "--operation", &op, "--sample", "4"]);
    assert_eq!(sampled.code, 0, "{}", sampled.stderr);
    assert!(sampled.stdout.starts_with("SAMPLED"), "{}", sampled.stdout);
    let sampled = cli(
        &d.url(),
        &["--json", "stats", "--operation", &op, "--sample", "4"],
    );
    let v: Value = serde_json::from_str(sampled.stdout.trim()).expect("JSON");
    assert_eq!(
        (v["sampled"].clone(), v["examined"].clone()),
        (json!(true), json!(4))
    );
}

// ------------------------------------------------------------------------------ watch

/// A running `watch` and its stderr.
struct Watching {
    child: std::process::Child,
    stderr: BufReader<std::process::ChildStderr>,
}

impl Watching {
    fn wait(mut self) -> Run {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut self.stderr, &mut rest);
        let out = self.child.wait_with_output().expect("watch output");
        let mut run = finished(out);
        run.stderr = rest;
        run
    }
}

/// Starts `watch` and returns once it said it is waiting on the pending record.
fn spawn_watch(url: &str, operation: &str, key: &str, timeout: &str) -> Watching {
    let mut child = Command::new(BIN)
        .args(["--url", url, "watch", operation, key, "--timeout", timeout])
        .env_remove("REDIS_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn watch");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    stderr.read_line(&mut line).expect("read stderr");
    assert!(line.starts_with("waiting for"), "watch waits: {line}");
    Watching { child, stderr }
}

async fn watch_returns_when_the_owner_completes(d: Deployment) {
    let store = d.store().await;
    let key = unique_key("watch");
    let lease = claim(&store, "order.create", &key).await;
    let url = d.url();
    let k = key.clone();
    let child = tokio::task::spawn_blocking(move || spawn_watch(&url, "order.create", &k, "120"))
        .await
        .expect("spawned");
    complete(&store, &lease, r#"{"done":1}"#).await;
    let run = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("joined");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("completed after"), "{}", run.stdout);
    assert!(run.stdout.contains("\"done\": 1"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_returns_when_the_owner_completes_standalone() {
    watch_returns_when_the_owner_completes(Deployment::standalone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_returns_when_the_owner_completes_cluster() {
    watch_returns_when_the_owner_completes(Deployment::cluster()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reports_a_release_and_a_timeout() {
    let d = Deployment::standalone();
    let store = d.store().await;
    let key = unique_key("watch-release");
    let lease = claim(&store, "order.create", &key).await;
    let url = d.url();
    let k = key.clone();
    let child = tokio::task::spawn_blocking(move || spawn_watch(&url, "order.create", &k, "120"))
        .await
        .expect("spawned");
    store.release(&lease).await.expect("release");
    let run = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("joined");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("released after"), "{}", run.stdout);

    let stuck = unique_key("watch-stuck");
    let _held = claim(&store, "order.create", &stuck).await;
    let run = cli(
        &d.url(),
        &["--json", "watch", "order.create", &stuck, "--timeout", "1"],
    );
    assert_eq!(run.code, 5, "{}", run.stderr);
    let v: Value = serde_json::from_str(run.stdout.trim()).expect("JSON");
    assert_eq!(v["outcome"], "timed_out");
}

// ------------------------------------------------------------------------- connection

#[test]
fn a_bad_url_exits_2() {
    for url in ["not a url", "http://127.0.0.1:1"] {
        let run = cli(url, &["inspect", "order.create", "k"]);
        assert_eq!(run.code, 2, "{url}: {}", run.stderr);
        assert!(
            run.stderr.contains("bad Redis or PostgreSQL URL"),
            "{}",
            run.stderr
        );
    }
    let run = finished(
        Command::new(BIN)
            .args(["inspect", "order.create", "k"])
            .env_remove("REDIS_URL")
            .env_remove("DATABASE_URL")
            .output()
            .expect("run"),
    );
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("no URL"), "{}", run.stderr);
    let usage = cli("redis://127.0.0.1:1", &["list", "--status", "running"]);
    assert_eq!(usage.code, 2, "clap usage error: {}", usage.stderr);
}

#[test]
fn a_refused_connection_exits_3_without_hanging() {
    let port = free_port();
    let start = Instant::now();
    let run = cli(
        &format!("redis://127.0.0.1:{port}"),
        &["--connect-timeout", "2", "inspect", "order.create", "k"],
    );
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(run.stderr.contains("cannot connect"), "{}", run.stderr);
    // Bounded by the timeout (2 s connect + 2 s command), not by a reconnect loop.
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
}

// ------------------------------------------------------------------------- PostgreSQL

/// A migrated database of its own on the testkit's throwaway server, and its store.
struct Pg {
    store: idempotency_postgres::PostgresStore,
    pool: sqlx::PgPool,
    // Dropped last: the database goes once the pool is closed.
    db: idempotency_testkit::postgres::TestDatabase,
}

impl Pg {
    async fn new() -> Self {
        let db = tokio::task::spawn_blocking(idempotency_testkit::postgres::TestDatabase::create)
            .await
            .expect("create a database");
        let pool = sqlx::PgPool::connect(&db.url()).await.expect("connect");
        idempotency_postgres::migrate(&pool).await.expect("migrate");
        let store = idempotency_postgres::PostgresStore::new(pool.clone());
        Self { store, pool, db }
    }

    fn url(&self) -> String {
        self.db.url()
    }

    async fn rows(&self, operation: &str, key: &str) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM idempotency_records WHERE operation = $1 AND idempotency_key = $2",
        )
        .bind(operation)
        .bind(key)
        .fetch_one(&self.pool)
        .await
        .expect("count")
    }

    async fn claim(&self, operation: &str, key: &str) -> Lease {
        let lease = Lease::new(record_id(operation, key), None, Clock::system());
        let claimed = self
            .store
            .claim(&lease, Duration::from_secs(120))
            .await
            .expect("claim");
        assert!(matches!(claimed, Claim::Acquired), "the key was free");
        lease
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_inspect_shows_a_record_completed_by_our_coordinator() {
    let pg = Pg::new().await;
    let key = unique_key("pg-coord");
    let coordinator = Coordinator::builder(pg.store.clone())
        .build()
        .expect("coordinator");
    coordinator
        .call("order.create", Some(&key))
        .adapter(JsonAdapter)
        .run(|| async { Ok::<_, IdempotencyError>(json!({"order": 7, "név": "ü"})) })
        .await
        .expect("run");

    let table = cli(&pg.url(), &["inspect", "order.create", &key]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(
        table.stdout.contains("status       completed"),
        "{}",
        table.stdout
    );
    assert!(table.stdout.contains("\"order\": 7"), "{}", table.stdout);
    assert!(
        table
            .stdout
            .contains(&format!("idempotency:order.create:{key}")),
        "{}",
        table.stdout
    );

    let json = cli(&pg.url(), &["--json", "inspect", "order.create", &key]);
    assert_eq!(json.code, 0, "{}", json.stderr);
    let v: Value = serde_json::from_str(json.stdout.trim()).expect("one JSON object");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["result"], json!({"order": 7, "név": "ü"}));
    assert_eq!(v["expired"], false);
    let ttl = v["ttl_ms"].as_u64().expect("a lifetime left");
    assert!(
        ttl > 0 && ttl <= 30 * 60 * 1000,
        "the coordinator's 30 min TTL: {ttl}"
    );
    assert!(v["fence"].as_i64().is_some_and(|f| f > 0), "{v}");
    assert!(v["row_bytes"].as_u64().is_some_and(|b| b > 0), "{v}");

    let missing = cli(&pg.url(), &["inspect", "order.create", "absent-key"]);
    assert_eq!(missing.code, 1, "{}", missing.stderr);
    assert!(
        missing.stderr.contains("no record under"),
        "{}",
        missing.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_list_filters_by_operation_and_status() {
    let pg = Pg::new().await;
    let done = unique_key("pg-list-done");
    let pending = unique_key("pg-list-pending");
    let lease = pg.claim("order.list", &done).await;
    let raw = RawValue::from_string("1".to_owned()).expect("raw JSON");
    pg.store
        .complete(&lease, &raw, Duration::from_secs(600))
        .await
        .expect("complete");
    let live = pg.claim("order.list", &pending).await;
    pg.claim("other.op", &unique_key("pg-list-other")).await;

    let all = cli(&pg.url(), &["--json", "list", "--operation", "order.list"]);
    assert_eq!(all.code, 0, "{}", all.stderr);
    let rows = json_lines(&all.stdout);
    let keys: Vec<&str> = rows.iter().filter_map(|r| r["key"].as_str()).collect();
    assert_eq!(keys.len(), 2, "only order.list: {rows:?}");
    assert!(keys.contains(&done.as_str()) && keys.contains(&pending.as_str()));

    let only_pending = cli(
        &pg.url(),
        &[
            "--json",
            "list",
            "--operation",
            "order.list",
            "--status",
            "pending",
        ],
    );
    assert_eq!(only_pending.code, 0, "{}", only_pending.stderr);
    let rows = json_lines(&only_pending.stdout);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["key"], pending.as_str());
    assert_eq!(rows[0]["owner"], live.token());

    let limited = cli(&pg.url(), &["list", "--limit", "1"]);
    assert_eq!(limited.code, 0, "{}", limited.stderr);
    assert!(
        limited.stdout.contains("1 record(s) (limit reached)"),
        "{}",
        limited.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_evict_refuses_a_live_reservation_then_forces() {
    let pg = Pg::new().await;
    let key = unique_key("pg-evict-live");
    let lease = pg.claim("order.pay", &key).await;

    let refused = cli(&pg.url(), &["evict", "order.pay", &key]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("live reservation") && refused.stderr.contains(lease.token()),
        "{}",
        refused.stderr
    );
    assert_eq!(pg.rows("order.pay", &key).await, 1, "nothing was removed");

    let forced = cli(
        &pg.url(),
        &["--json", "evict", "order.pay", &key, "--force"],
    );
    assert_eq!(forced.code, 0, "{}", forced.stderr);
    let v: Value = serde_json::from_str(forced.stdout.trim()).expect("JSON");
    assert_eq!(
        (v["evicted"].clone(), v["forced"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(pg.rows("order.pay", &key).await, 0, "the row is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_evict_removes_completed_and_unreadable_records() {
    let pg = Pg::new().await;
    let key = unique_key("pg-evict-done");
    let lease = pg.claim("order.create", &key).await;
    let raw = RawValue::from_string(r#"{"id":1}"#.to_owned()).expect("raw JSON");
    pg.store
        .complete(&lease, &raw, Duration::from_secs(600))
        .await
        .expect("complete");
    let run = cli(&pg.url(), &["evict", "order.create", &key]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("evicted "), "{}", run.stdout);
    assert_eq!(pg.rows("order.create", &key).await, 0);
    let again = cli(&pg.url(), &["evict", "order.create", &key]);
    assert_eq!(again.code, 1, "nothing left: {}", again.stderr);

    // A row another program wrote, whose record text the kit cannot read.
    let bad = unique_key("pg-evict-bad");
    sqlx::query(
        "INSERT INTO idempotency_records (key_prefix, operation, idempotency_key, status, fence, \
         record, created_at, expires_at) VALUES ('idempotency:', 'order.create', $1, 'completed', \
         nextval('idempotency_fence_seq'), 'not json', now(), now() + interval '1 hour')",
    )
    .bind(&bad)
    .execute(&pg.pool)
    .await
    .expect("insert");
    let inspected = cli(&pg.url(), &["inspect", "order.create", &bad]);
    assert_eq!(inspected.code, 4, "{}", inspected.stderr);
    assert!(
        inspected.stdout.contains("unreadable"),
        "{}",
        inspected.stdout
    );
    let run = cli(&pg.url(), &["evict", "order.create", &bad]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(pg.rows("order.create", &bad).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stats_counts_by_status_exactly() {
    let pg = Pg::new().await;
    pg.claim("stats.op", &unique_key("pg-stats-a")).await;
    pg.claim("stats.op", &unique_key("pg-stats-b")).await;
    let lease = pg.claim("stats.op", &unique_key("pg-stats-c")).await;
    let raw = RawValue::from_string("3".to_owned()).expect("raw JSON");
    pg.store
        .complete(&lease, &raw, Duration::from_secs(600))
        .await
        .expect("complete");
    let run = cli(&pg.url(), &["--json", "stats"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v: Value = serde_json::from_str(run.stdout.trim()).expect("JSON");
    assert_eq!(
        v["counts"]["stats.op"],
        json!({"pending": 2, "completed": 1})
    );
    assert_eq!(v["rows"], 3);
    assert_eq!(v["expired_rows"], 0);
    let table = cli(&pg.url(), &["stats"]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(
        table.stdout.contains("counted all 3 rows"),
        "{}",
        table.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_watch_returns_when_the_owner_completes() {
    let pg = Pg::new().await;
    let key = unique_key("pg-watch");
    let lease = pg.claim("order.create", &key).await;
    let url = pg.url();
    let k = key.clone();
    let child = tokio::task::spawn_blocking(move || spawn_watch(&url, "order.create", &k, "120"))
        .await
        .expect("spawned");
    let raw = RawValue::from_string(r#"{"done":1}"#.to_owned()).expect("raw JSON");
    pg.store
        .complete(&lease, &raw, Duration::from_secs(600))
        .await
        .expect("complete");
    let run = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("joined");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("completed after"), "{}", run.stdout);
    assert!(run.stdout.contains("\"done\": 1"), "{}", run.stdout);
}

#[test]
fn postgres_refused_connection_exits_3() {
    let port = free_port();
    let run = cli(
        &format!("postgres://postgres@127.0.0.1:{port}/none"),
        &["--connect-timeout", "2", "inspect", "order.create", "k"],
    );
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(run.stderr.contains("cannot connect"), "{}", run.stderr);
}
