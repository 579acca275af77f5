//! A RabbitMQ consumer whose redeliveries and duplicates never run the handler twice.
//!
//! Needs a RabbitMQ broker at `AMQP_URL` (default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`). It declares the queue
//! `idempotency-example-orders`, publishes five orders (two of them twice, with the same
//! `message-id`), consumes until every delivery is settled, prints what ran and deletes
//! the queue.
//!
//! ```text
//! cargo run -p idempotency-examples-consumers --example amqp_consumer
//! ```

use std::sync::Arc;
use std::time::Duration;

use idempotency_consumers::{
    AmqpConsumer, ConsumerOptions, Delivery, DeliveryCounts, DeliveryOutcome, Idempotent,
};
use idempotency_coordinator::Coordinator;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

const QUEUE: &str = "idempotency-example-orders";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let connection = Connection::connect(&url, ConnectionProperties::default()).await?;
    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    publisher
        .queue_declare(
            QUEUE.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;

    // Orders 2 and 4 are published twice: a producer retried after a timeout.
    for order in [1, 2, 3, 2, 4, 5, 4] {
        let properties =
            BasicProperties::default().with_message_id(format!("order-{order}").into());
        publisher
            .basic_publish(
                "".into(),
                QUEUE.into(),
                BasicPublishOptions::default(),
                format!("{{\"order\":{order}}}").as_bytes(),
                properties,
            )
            .await?
            .await?;
    }

    let process = Idempotent::new(
        Coordinator::in_memory(),
        "orders.ship",
        |d: Delivery| async move {
            println!(
                "shipping {} ({:?}): {}",
                d.key().unwrap_or("?"),
                d.attempt(),
                String::from_utf8_lossy(d.payload())
            );
            Ok::<_, std::io::Error>(())
        },
    );
    let counts = Arc::new(DeliveryCounts::default());
    let options = ConsumerOptions::new().with_metrics(Arc::clone(&counts) as _);
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
    let channel = connection.create_channel().await?;
    AmqpConsumer::new(channel, QUEUE, process, options)
        .run(settled)
        .await?;
    println!(
        "executed {}, replayed {} (acknowledged without running)",
        counts.count(DeliveryOutcome::Executed),
        counts.count(DeliveryOutcome::Replayed)
    );
    publisher
        .queue_delete(QUEUE.into(), QueueDeleteOptions::default())
        .await?;
    connection.close(200, "OK".into()).await?;
    Ok(())
}
