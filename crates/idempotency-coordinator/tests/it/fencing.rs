//! Fencing tokens against a stalled owner: a real process stopped (SIGSTOP) past its
//! lease, not a sleep inside the action (a sleeping process still renews its lease; a
//! stopped one renews nothing). One test, two roles: run normally it is the parent; the
//! child it starts (this test binary again, with `FENCE_CHILD_REDIS` set) is the owner
//! that stalls.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use idempotency_coordinator::{Coordinator, FencingToken, IdempotencyError, InFlight};
use idempotency_redis::fred::prelude::{Client, LuaInterface};
use idempotency_redis::{ConnectOptions, RedisStore, connect_client, set_if_newer};
use idempotency_testkit::{shared_server, unique_key};

const CHILD_URL: &str = "FENCE_CHILD_REDIS";
const CHILD_KEY: &str = "FENCE_CHILD_KEY";
const LEASE: Duration = Duration::from_secs(1);

async fn connect(url: &str) -> (RedisStore, Client) {
    let connection = connect_client(url, &ConnectOptions::default())
        .await
        .expect("connect");
    let client = connection.client_for("").clone();
    let store = RedisStore::builder(connection).build().expect("store");
    (store, client)
}

fn ledger(key: &str) -> String {
    format!("ledger:{key}")
}

/// The stalled owner: takes the key, prints its token, waits for the parent's word (it is
/// stopped meanwhile), then tries its fenced write and prints whether it was taken.
async fn child(url: &str, key: &str) {
    let (store, client) = connect(url).await;
    let coordinator = Coordinator::builder(store)
        .lease(LEASE)
        .in_flight(InFlight::Raise)
        .build()
        .expect("coordinator");
    let ledger = ledger(key);
    let outcome = Box::pin(coordinator.call("ledger.post", Some(key)).run_fenced(
        |fence: Option<FencingToken>| async move {
            let fence = fence.expect("a claimed run has a token");
            println!("FENCE {}", fence.get());
            std::io::stdout().flush().expect("flush");
            let mut go = String::new();
            std::io::stdin().read_line(&mut go).expect("stdin");
            let written = set_if_newer(&client, &ledger, "stale owner", fence).await?;
            println!("WRITE {written}");
            std::io::stdout().flush().expect("flush");
            Ok::<_, IdempotencyError>(written)
        },
    ))
    .await;
    println!("CALL {}", outcome.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_owner_cannot_overwrite_the_newer_owners_effect() {
    if let (Ok(url), Ok(key)) = (std::env::var(CHILD_URL), std::env::var(CHILD_KEY)) {
        return Box::pin(child(&url, &key)).await;
    }
    let server = shared_server();
    let key = unique_key("fence");
    let mut stalled = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "fencing::a_stalled_owner_cannot_overwrite_the_newer_owners_effect",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_URL, server.url())
        .env(CHILD_KEY, &key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the owner");
    let mut lines = BufReader::new(stalled.stdout.take().expect("stdout")).lines();
    let mut next_line = |prefix: &str| -> String {
        loop {
            let line = lines.next().expect("a line").expect("utf-8");
            // Anywhere in the line: the harness's `test … ...` has no newline of its own.
            if let Some((_, rest)) = line.split_once(prefix) {
                return rest.trim().to_owned();
            }
        }
    };
    let stale: u64 = next_line("FENCE ").parse().expect("a token");
    let pid = stalled.id().to_string();
    // Stopped: its action, its lease renewal, everything in it.
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .expect("kill")
            .success()
    );

    // The lease runs out on the server; a new owner takes the key over and writes.
    let (store, client) = connect(&server.url()).await;
    let coordinator = Coordinator::builder(store)
        .lease(LEASE)
        .in_flight(InFlight::Raise)
        .build()
        .expect("coordinator");
    let ledger = ledger(&key);
    let deadline = Instant::now() + Duration::from_secs(10);
    let fresh = loop {
        let ledger = ledger.clone();
        let client = client.clone();
        let run = Box::pin(coordinator.call("ledger.post", Some(&key)).run_fenced(
            |fence: Option<FencingToken>| async move {
                let fence = fence.expect("a claimed run has a token");
                let written = set_if_newer(&client, &ledger, "new owner", fence).await?;
                Ok::<_, IdempotencyError>((fence.get(), written))
            },
        ))
        .await;
        match run {
            Ok(done) => break done,
            Err(IdempotencyError::InProgress { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the new owner's call failed: {e}"),
        }
    };
    assert!(
        fresh.0 > stale,
        "the new owner's token {} beats {stale}",
        fresh.0
    );
    assert!(fresh.1, "the new owner's write is taken");

    // The stalled owner wakes up and tries its write: refused.
    let mut stdin = stalled.stdin.take().expect("stdin");
    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .expect("kill")
            .success()
    );
    writeln!(stdin, "go").expect("tell the owner to go on");
    assert_eq!(
        next_line("WRITE "),
        "false",
        "the stale owner's write was refused"
    );
    let _ = stalled.wait();
    let stored: Option<String> = client
        .eval(
            "return redis.call('HGET', KEYS[1], 'value')",
            ledger.as_str(),
            Vec::<String>::new(),
        )
        .await
        .expect("HGET");
    assert_eq!(
        stored.as_deref(),
        Some("new owner"),
        "zero stale writes accepted"
    );
}
