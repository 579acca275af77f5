//! Quickstart: a first call, a replay, ten concurrent duplicates that wait for one
//! action, and a reused key refused.
//!
//! Runs on the in-memory store; set `REDIS_URL` (for example `redis://127.0.0.1:6379`)
//! to run the same on Redis:
//!
//! ```text
//! cargo run -p idempotency-examples --example quickstart
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p idempotency-examples --example quickstart
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use idempotency_coordinator::{Coordinator, IdempotencyError, fingerprint_of};
use idempotency_core::ReservationStore;
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

#[tokio::main]
async fn main() -> Result<(), IdempotencyError> {
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
        .to_string();
    match std::env::var("REDIS_URL") {
        Ok(url) => {
            println!("store: Redis at {url}");
            let store = idempotency_redis::RedisStore::connect(
                &url,
                &idempotency_redis::ConnectOptions::default(),
            )
            .await?;
            demo(Coordinator::builder(store).build()?, &run).await
        }
        Err(_) => {
            println!("store: in memory (set REDIS_URL to use Redis)");
            demo(Coordinator::in_memory(), &run).await
        }
    }
}
