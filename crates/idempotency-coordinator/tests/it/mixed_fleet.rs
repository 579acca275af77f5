//! A mixed fleet: the Python idempotency-kit 0.5.0 (in a venv the test makes) and this
//! coordinator share one Redis.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idempotency_coordinator::{Coordinator, IdempotencyError, JsonAdapter};
use idempotency_redis::{ConnectOptions, RedisStore};
use idempotency_testkit::{RedisServer, python::python_with_kit};
use serde_json::{Value, json};

fn fleet(url: &str, args: &[&str]) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fleet/fleet.py");
    let out = Command::new(python_with_kit())
        .arg(script)
        .arg(url)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python printed JSON")
}

async fn coordinator(url: &str) -> Coordinator<RedisStore> {
    let store = RedisStore::connect(url, &ConnectOptions::default())
        .await
        .expect("connect");
    Coordinator::builder(store).build().expect("coordinator")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_completed_by_python_is_replayed_by_rust() {
    let server = RedisServer::start();
    let url = server.url();
    let stored = fleet(
        &url,
        &[
            "complete",
            "order.create",
            "py-first",
            r#"{"order": 7, "név": "ü"}"#,
        ],
    );
    let coordinator = coordinator(&url).await;
    let replayed: Value = coordinator
        .call("order.create", Some("py-first"))
        .adapter(JsonAdapter)
        .run(|| async { Ok::<_, IdempotencyError>(json!({"ran": "rust"})) })
        .await
        .expect("replay");
    assert_eq!(replayed, stored);
    assert_eq!(replayed, json!({"order": 7, "név": "ü"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_completed_by_rust_is_replayed_by_python() {
    let server = RedisServer::start();
    let url = server.url();
    let coordinator = coordinator(&url).await;
    let value = json!({"order": 8, "amount": 1e-7, "big": 9_007_199_254_740_993_u64});
    let stored: Value = coordinator
        .call("order.create", Some("rs-first"))
        .adapter(JsonAdapter)
        .run(|| async { Ok::<_, IdempotencyError>(value.clone()) })
        .await
        .expect("store");
    let replayed = fleet(&url, &["replay", "order.create", "rs-first"]);
    assert_eq!(replayed, stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_from_both_sides_run_the_action_once() {
    let server = RedisServer::start();
    let url = server.url();
    for round in 0..3 {
        let key = format!("race-{round}");
        let counter = format!("runs-{round}");
        let coordinator = coordinator(&url).await;
        let rust_runs = Arc::new(AtomicUsize::new(0));
        // Python callers and Rust callers start together.
        let python = {
            let (url, key, counter) = (url.clone(), key.clone(), counter.clone());
            tokio::task::spawn_blocking(move || {
                fleet(&url, &["race", "order.create", &key, "8", &counter])
            })
        };
        tokio::time::sleep(Duration::from_millis(if round % 2 == 0 { 0 } else { 700 })).await;
        let rust: Vec<_> = (0..8)
            .map(|_| {
                let coordinator = coordinator.clone();
                let key = key.clone();
                let runs = Arc::clone(&rust_runs);
                let server_port = server.port();
                let counter = counter.clone();
                tokio::spawn(async move {
                    coordinator
                        .call("order.create", Some(&key))
                        .adapter(JsonAdapter)
                        .run(|| async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            idempotency_testkit::resp::command(server_port, &["INCR", &counter])
                                .expect("incr");
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            Ok::<_, IdempotencyError>(json!({"winner": "rust"}))
                        })
                        .await
                })
            })
            .collect();
        let mut results = Vec::new();
        for t in rust {
            results.push(t.await.expect("task").expect("rust call"));
        }
        let python = python.await.expect("python task");
        results.extend(python.as_array().expect("python results").iter().cloned());
        let runs = server.cmd(&["GET", &counter]);
        assert_eq!(
            runs.as_bytes(),
            Some(&b"1"[..]),
            "round {round}: the action ran once across both fleets"
        );
        assert!(
            results.windows(2).all(|w| w[0] == w[1]),
            "round {round}: every caller got one value: {results:?}"
        );
        assert_eq!(results.len(), 16);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_never_replays_a_stored_error_as_a_success() {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Refused {
        Declined { reason: String },
        Idempotency(String),
    }
    impl From<IdempotencyError> for Refused {
        fn from(e: IdempotencyError) -> Self {
            Self::Idempotency(e.to_string())
        }
    }
    let declined = || Refused::Declined {
        reason: "card declined".to_owned(),
    };
    let server = RedisServer::start();
    let url = server.url();
    let coordinator = coordinator(&url).await;
    let rust_call = |value: Result<Value, Refused>| {
        coordinator
            .call("order.create", Some("rs-error"))
            .adapter(JsonAdapter)
            .store_errors(|_: &Refused| true)
            .run(move || async move { value })
    };
    assert_eq!(rust_call(Err(declined())).await, Err(declined()));
    // Python reads the stored error as an invalid record: it never returns the stored
    // payload as its result. It treats it as Python treats every error (not cached): it
    // runs its own action, and (0.5.0 completes an unconfirmed run with a plain write)
    // its result replaces the stored error.
    let python = fleet(&url, &["attempt", "order.create", "rs-error"]);
    assert_ne!(
        python.get("returned"),
        Some(&json!({"Declined": {"reason": "card declined"}})),
        "python replayed the stored error as a success: {python}"
    );
    assert_eq!(python, json!({"returned": {"ran": "python"}}));
    // From then on every caller replays Python's result: Rust's action does not run.
    assert_eq!(
        rust_call(Ok(json!({"ran": "rust"}))).await,
        Ok(json!({"ran": "python"}))
    );
}
