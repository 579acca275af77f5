//! A NATS JetStream consumer whose redeliveries and duplicates never run the handler
//! twice.
//!
//! Needs a JetStream server (`nats-server -js`) at `NATS_URL` (default
//! `nats://127.0.0.1:4222`). It creates the stream `IDEMPOTENCY_EXAMPLE` and a durable
//! pull consumer on it, publishes five orders (two of them twice, with the same
//! `Order-Id`), consumes until every message is settled, prints what ran and deletes the
//! stream.
//!
//! ```text
//! nats-server -js &
//! cargo run -p idempotency-examples-consumers --example nats_consumer
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::pull, stream};
use idempotency_consumers::{
    ConsumerOptions, Delivery, DeliveryCounts, DeliveryOutcome, Idempotent, JetStreamConsumer,
    KeySource,
};
use idempotency_coordinator::Coordinator;

const STREAM: &str = "IDEMPOTENCY_EXAMPLE";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let js = jetstream::new(async_nats::connect(&url).await?);
    let stream = js
        .get_or_create_stream(stream::Config {
            name: STREAM.to_owned(),
            subjects: vec!["example.orders.>".to_owned()],
            ..Default::default()
        })
        .await?;
    let consumer = stream
        .get_or_create_consumer(
            "ship",
            pull::Config {
                durable_name: Some("ship".to_owned()),
                ack_wait: Duration::from_secs(30),
                max_deliver: 20,
                ..Default::default()
            },
        )
        .await?;

    // Orders 2 and 4 are published twice: a producer retried after a timeout.
    for order in [1, 2, 3, 2, 4, 5, 4] {
        let mut headers = HeaderMap::new();
        headers.insert("Order-Id", format!("order-{order}").as_str());
        js.publish_with_headers(
            "example.orders.created",
            headers,
            format!("{{\"order\":{order}}}").into(),
        )
        .await?
        .await?;
    }

    let process = Idempotent::new(
        Coordinator::in_memory(),
        "orders.ship",
        |d: Delivery| async move {
            println!(
                "shipping {} (attempt {:?}): {}",
                d.key().unwrap_or("?"),
                d.attempt().number(),
                String::from_utf8_lossy(d.payload())
            );
            Ok::<_, std::io::Error>(())
        },
    );
    let counts = Arc::new(DeliveryCounts::default());
    let options = ConsumerOptions::new()
        .with_key(KeySource::header("Order-Id"))
        .with_metrics(Arc::clone(&counts) as _);
    let settled = {
        let counts = Arc::clone(&counts);
        async move {
            while counts.count(DeliveryOutcome::Executed) + counts.count(DeliveryOutcome::Replayed)
                < 7
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    JetStreamConsumer::new(consumer, process, options)
        .run(settled)
        .await?;
    println!(
        "executed {}, replayed {} (acknowledged without running)",
        counts.count(DeliveryOutcome::Executed),
        counts.count(DeliveryOutcome::Replayed)
    );
    js.delete_stream(STREAM).await?;
    Ok(())
}
