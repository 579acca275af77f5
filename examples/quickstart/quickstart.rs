//! Quickstart: a first call, a replay, ten concurrent duplicates that wait for one
//! action, and a reused key refused.
//!
//! Runs on the in-memory store; its one dependency is the coordinator (with its Redis
//! store, the package's default feature `redis`).
//! Set `REDIS_URL` (for example `redis://127.0.0.1:6379`) to run the same on Redis
//! (`--no-default-features` builds it in memory only, without the Redis client);
//! `RUST_LOG=debug` shows the library's events (hits, misses):
//!
//! ```text
//! cargo run -p idempotency-examples --example quickstart
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p idempotency-examples --example quickstart
//! RUST_LOG=debug cargo run -p idempotency-examples --example quickstart
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use idempotency_coordinator::{Coordinator, IdempotencyError, ReservationStore, fingerprint_of};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Payment {
    payment_id: u64,
    amount_cents: u64,
}

/// The "expensive, must happen once" operation: charging a card.
async fn charge(charges: &AtomicU64, amount_cents: u64) -> Result<Payment, IdempotencyError> {
    tokio::time::sleep(Duration::from_millis(50)).await;
    let payment_id = charges.fetch_add(1, Ordering::SeqCst) + 1;
    Ok(Payment {
        payment_id,
        amount_cents,
    })
}

async fn demo<S: ReservationStore>(
    coordinator: Coordinator<S>,
    run: &str,
) -> Result<(), IdempotencyError> {
    let charges = Arc::new(AtomicU64::new(0));
    let key = format!("checkout-{run}");

    let first: Payment = coordinator
        .call("payment.charge", Some(&key))
        .run(|| charge(&charges, 4200))
        .await?;
    println!(
        "first call:    charged payment #{} for {} cents",
        first.payment_id, first.amount_cents
    );

    let retry: Payment = coordinator
        .call("payment.charge", Some(&key))
        .run(|| charge(&charges, 4200))
        .await?;
    println!(
        "retry:         replayed payment #{} (cards charged so far: {})",
        retry.payment_id,
        charges.load(Ordering::SeqCst)
    );

    let burst_key = format!("double-click-{run}");
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let coordinator = coordinator.clone();
            let charges = Arc::clone(&charges);
            let key = burst_key.clone();
            tokio::spawn(async move {
                coordinator
                    .call("payment.charge", Some(&key))
                    .run(|| charge(&charges, 999))
                    .await
            })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        let payment: Payment = task
            .await
            .map_err(|e| IdempotencyError::storage(None, e))??;
        ids.push(payment.payment_id);
    }
    ids.dedup();
    println!(
        "10 duplicates: all got payment {ids:?}; cards charged in all: {}",
        charges.load(Ordering::SeqCst)
    );

    let request = serde_json::json!({"amount_cents": 4200, "currency": "EUR"});
    let other = serde_json::json!({"amount_cents": 9900, "currency": "EUR"});
    let fp_key = format!("fingerprinted-{run}");
    let _: Payment = coordinator
        .call("payment.charge", Some(&fp_key))
        .fingerprint(fingerprint_of(&request)?)
        .run(|| charge(&charges, 4200))
        .await?;
    let refused = coordinator
        .call("payment.charge", Some(&fp_key))
        .fingerprint(fingerprint_of(&other)?)
        .run(|| charge(&charges, 9900))
        .await;
    match refused {
        Err(e @ IdempotencyError::KeyReuse { .. }) => {
            println!("reused key:    refused with HTTP {} ({e})", e.http_status())
        }
        other => println!("reused key:    unexpected {other:?}"),
    }
    Ok(())
}

/// Logs to stderr, filtered by `RUST_LOG` (default `warn`; `RUST_LOG=debug` shows every
/// hit and miss).
fn install_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

#[cfg(feature = "redis")]
async fn on_redis(url: &str, run: &str) -> Result<(), IdempotencyError> {
    println!("store: Redis at {url}");
    let store = idempotency_coordinator::RedisStore::connect(
        url,
        &idempotency_coordinator::ConnectOptions::default(),
    )
    .await?;
    demo(Coordinator::builder(store).build()?, run).await
}

#[cfg(not(feature = "redis"))]
#[allow(clippy::unused_async)] // the same signature as the Redis variant
async fn on_redis(url: &str, _run: &str) -> Result<(), IdempotencyError> {
    Err(IdempotencyError::configuration(
        format!(
            "REDIS_URL is set ({url}) but this build has no Redis store (built with \
             --no-default-features): run `cargo run -p idempotency-examples --example \
             quickstart`, or unset REDIS_URL to run in memory"
        ),
        None,
    ))
}

#[tokio::main]
async fn main() -> Result<(), IdempotencyError> {
    install_tracing();
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
        .to_string();
    match std::env::var("REDIS_URL") {
        Ok(url) => on_redis(&url, &run).await,
        Err(_) => {
            println!("store: in memory (set REDIS_URL to use Redis)");
            demo(Coordinator::in_memory(), &run).await
        }
    }
}
