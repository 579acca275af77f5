//! Fencing tokens on `PostgreSQL` against a stalled owner: a real process stopped
//! (SIGSTOP) past its lease, not a sleep inside the action (a stopped process renews
//! nothing). One test, two roles: run normally it is the parent; the child it starts
//! (this test binary again, with `STALLED_OWNER_DB` set) is the owner that stalls. The
//! downstream write is the pattern the docs give: `… WHERE fence < $n`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use idempotency_coordinator::{Coordinator, FencingToken, IdempotencyError, InFlight};
use idempotency_postgres::PostgresStore;
use idempotency_testkit::unique_key;
use sqlx::PgPool;

use crate::common::fixture;

const CHILD_DB: &str = "STALLED_OWNER_DB";
const CHILD_KEY: &str = "STALLED_OWNER_KEY";
const LEASE: Duration = Duration::from_secs(1);

/// The fenced downstream write: taken only with a token larger than the row's.
async fn post(pool: &PgPool, key: &str, value: &str, fence: FencingToken) -> bool {
    sqlx::query(
        "INSERT INTO ledger (id, value, fence) VALUES ($1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET value = excluded.value, fence = excluded.fence
         WHERE ledger.fence < excluded.fence",
    )
    .bind(key)
    .bind(value)
    .bind(fence.as_i64())
    .execute(pool)
    .await
    .expect("the fenced write")
    .rows_affected()
        == 1
}

fn coordinator(pool: PgPool) -> Coordinator<PostgresStore> {
    Coordinator::builder(PostgresStore::new(pool))
        .lease(LEASE)
        .in_flight(InFlight::Raise)
        .build()
        .expect("coordinator")
}

/// The stalled owner: takes the key, prints its token, waits for the parent's word (it
/// is stopped meanwhile), then tries its fenced write and prints whether it was taken.
async fn child(url: &str, key: &str) {
    let pool = PgPool::connect(url).await.expect("connect");
    let coordinator = coordinator(pool.clone());
    let outcome = Box::pin(coordinator.call("ledger.post", Some(key)).run_fenced(
        |fence: Option<FencingToken>| async move {
            let fence = fence.expect("a claimed run has a token");
            println!("FENCE {}", fence.get());
            std::io::stdout().flush().expect("flush");
            let mut go = String::new();
            std::io::stdin().read_line(&mut go).expect("stdin");
            let written = post(&pool, key, "stale owner", fence).await;
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
    if let (Ok(url), Ok(key)) = (std::env::var(CHILD_DB), std::env::var(CHILD_KEY)) {
        return Box::pin(child(&url, &key)).await;
    }
    let f = fixture().await;
    sqlx::query(
        "CREATE TABLE ledger (id text PRIMARY KEY, value text NOT NULL, fence bigint NOT NULL)",
    )
    .execute(&f.pool)
    .await
    .expect("the ledger");
    let key = unique_key("stalled");
    let mut stalled = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "stalled_owner::a_stalled_owner_cannot_overwrite_the_newer_owners_effect",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DB, f.db.url())
        .env(CHILD_KEY, &key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the owner");
    let mut lines = BufReader::new(stalled.stdout.take().expect("stdout")).lines();
    let mut next_line = |marker: &str| -> String {
        loop {
            let line = lines.next().expect("a line").expect("utf-8");
            // Anywhere in the line: the harness's `test … ...` has no newline of its own.
            if let Some((_, rest)) = line.split_once(marker) {
                return rest.trim().to_owned();
            }
        }
    };
    let stale: u64 = next_line("FENCE ").parse().expect("a token");
    let pid = stalled.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .expect("kill")
            .success()
    );

    // The lease runs out on the server; a new owner takes the key over and writes.
    let coordinator = coordinator(f.pool.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    let fresh = loop {
        let pool = f.pool.clone();
        let key_for_run = key.clone();
        let run = Box::pin(coordinator.call("ledger.post", Some(&key)).run_fenced(
            |fence: Option<FencingToken>| async move {
                let fence = fence.expect("a claimed run has a token");
                let written = post(&pool, &key_for_run, "new owner", fence).await;
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
    let stored: String = sqlx::query_scalar("SELECT value FROM ledger WHERE id = $1")
        .bind(&key)
        .fetch_one(&f.pool)
        .await
        .expect("the ledger row");
    assert_eq!(stored, "new owner", "zero stale writes accepted");
}
