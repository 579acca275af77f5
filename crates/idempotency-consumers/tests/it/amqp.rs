//! The AMQP consumer against the local RabbitMQ broker, a virtual host per test.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idempotency_consumers::{
    AmqpConsumer, Attempt, ConsumerOptions, Delays, Delivery, DeliveryCounts, DeliveryOutcome,
    Idempotent,
};
use idempotency_coordinator::Coordinator;
use idempotency_testkit::rabbitmq::RabbitVhost;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::oneshot;

use crate::common::eventually;

/// A connection to `vhost`.
pub(crate) async fn connect(vhost: &RabbitVhost) -> Connection {
    Connection::connect(&vhost.url(), ConnectionProperties::default())
        .await
        .expect("connect to rabbitmq")
}

/// A durable classic queue `name`, dead-lettering to `dead` when `dead_letter`.
pub(crate) async fn declare(channel: &Channel, name: &str, dead_letter: Option<&str>) {
    let mut args = FieldTable::default();
    if let Some(dead) = dead_letter {
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(dead.into()),
        );
    }
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(name.into(), options, args)
        .await
        .expect("declare the queue");
}

/// A channel in confirm mode for publishing.
pub(crate) async fn publisher(connection: &Connection) -> Channel {
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    channel
}

/// Publishes `payload` to `queue` with `message_id`, waiting for the broker's confirm.
pub(crate) async fn publish(
    channel: &Channel,
    queue: &str,
    message_id: Option<&str>,
    payload: &str,
) {
    let mut properties = BasicProperties::default().with_delivery_mode(2);
    if let Some(id) = message_id {
        properties = properties.with_message_id(ShortString::from(id));
    }
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            payload.as_bytes(),
            properties,
        )
        .await
        .expect("publish")
        .await
        .expect("confirmed");
}

/// Whether `queue` has neither ready nor unacknowledged messages.
pub(crate) fn drained(vhost: &RabbitVhost, queue: &str) -> bool {
    vhost
        .queues()
        .iter()
        .any(|(name, ready, unacked)| name == queue && *ready == 0 && *unacked == 0)
}

/// How many messages `queue` holds, ready or unacknowledged.
pub(crate) fn held(vhost: &RabbitVhost, queue: &str) -> u64 {
    vhost
        .queues()
        .iter()
        .find(|(name, ..)| name == queue)
        .map_or(0, |(_, ready, unacked)| ready + unacked)
}

fn options(counts: &Arc<DeliveryCounts>) -> ConsumerOptions {
    ConsumerOptions::new()
        .with_delays(
            Delays::default()
                .with_in_flight(Duration::from_millis(100))
                .with_failure(Duration::from_millis(100))
                .with_storage(Duration::from_millis(100)),
        )
        .with_metrics(Arc::clone(counts) as _)
}

type Runs = Arc<Mutex<HashMap<String, Vec<Attempt>>>>;

fn recording(
    runs: &Runs,
    pause: Duration,
) -> impl Fn(Delivery) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>>
+ Send
+ Sync
+ 'static {
    let runs = Arc::clone(runs);
    move |d: Delivery| {
        let runs = Arc::clone(&runs);
        Box::pin(async move {
            runs.lock()
                .expect("runs")
                .entry(d.key().unwrap_or_default().to_owned())
                .or_default()
                .push(d.attempt());
            tokio::time::sleep(pause).await;
            Ok(())
        })
    }
}

/// Starts a consumer of `queue` on a channel of its own; returns the stop switch and
/// the task.
async fn start<P: idempotency_consumers::Process>(
    connection: &Connection,
    queue: &str,
    process: P,
    options: ConsumerOptions,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<
        Result<idempotency_consumers::Stopped, idempotency_consumers::ConsumerError>,
    >,
) {
    let channel = connection.create_channel().await.expect("channel");
    let queue = queue.to_owned();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        AmqpConsumer::new(channel, queue, process, options)
            .run(async move {
                let _ = stopped.await;
            })
            .await
    });
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_across_two_consumers_run_once_and_replay() {
    let vhost = RabbitVhost::create();
    let connection = connect(&vhost).await;
    let channel = publisher(&connection).await;
    declare(&channel, "dups", None).await;
    let keys: Vec<String> = (0..50).map(|i| format!("k-{i}")).collect();
    for round in 0..3 {
        for i in 0..keys.len() {
            let key = &keys[(i * 7 + round * 13) % keys.len()];
            publish(&channel, "dups", Some(key), "{}").await;
        }
    }
    let runs = Runs::default();
    let counts = Arc::new(DeliveryCounts::default());
    let coordinator = Coordinator::in_memory();
    let mut consumers = Vec::new();
    for _ in 0..2 {
        let process = Idempotent::new(
            coordinator.clone(),
            "dups",
            recording(&runs, Duration::from_millis(5)),
        );
        consumers.push(start(&connection, "dups", process, options(&counts)).await);
    }
    let done = || async {
        counts.count(DeliveryOutcome::Executed) + counts.count(DeliveryOutcome::Replayed) == 150
    };
    assert!(eventually(Duration::from_secs(30), done).await);
    for (stop, task) in consumers {
        let _ = stop.send(());
        assert_eq!(task.await.expect("join").expect("run").cut, 0);
    }
    assert!(drained(&vhost, "dups"));
    let runs = runs.lock().expect("runs");
    assert_eq!(runs.len(), 50);
    assert!(
        runs.values().all(|r| r.len() == 1),
        "a key ran twice: {runs:?}"
    );
    assert_eq!(counts.count(DeliveryOutcome::Executed), 50);
    assert_eq!(counts.count(DeliveryOutcome::Replayed), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_duplicate_is_requeued_and_never_runs_next_to_the_first() {
    let vhost = RabbitVhost::create();
    let connection = connect(&vhost).await;
    let channel = publisher(&connection).await;
    declare(&channel, "inflight", None).await;
    publish(&channel, "inflight", Some("same"), "1").await;
    publish(&channel, "inflight", Some("same"), "2").await;
    let runs = Runs::default();
    let counts = Arc::new(DeliveryCounts::default());
    let process = Idempotent::new(
        Coordinator::in_memory(),
        "inflight",
        recording(&runs, Duration::from_millis(600)),
    );
    let (stop, task) = start(&connection, "inflight", process, options(&counts)).await;
    let done = || async { counts.count(DeliveryOutcome::Replayed) == 1 };
    assert!(eventually(Duration::from_secs(20), done).await);
    let _ = stop.send(());
    task.await.expect("join").expect("run");
    assert!(drained(&vhost, "inflight"));
    assert_eq!(
        runs.lock().expect("runs").get("same").map(Vec::len),
        Some(1)
    );
    assert!(counts.count(DeliveryOutcome::RequeuedInFlight) >= 1);
    assert_eq!(counts.count(DeliveryOutcome::Executed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_handler_is_requeued_and_the_redelivery_is_flagged() {
    let vhost = RabbitVhost::create();
    let connection = connect(&vhost).await;
    let channel = publisher(&connection).await;
    declare(&channel, "fail", None).await;
    publish(&channel, "fail", Some("k"), "{}").await;
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&attempts);
    let process = Idempotent::new(Coordinator::in_memory(), "fail", move |d: Delivery| {
        let seen = Arc::clone(&seen);
        async move {
            let attempt = d.attempt();
            seen.lock().expect("attempts").push(attempt);
            if attempt.is_redelivery() {
                Ok(())
            } else {
                Err("first attempt fails")
            }
        }
    });
    let counts = Arc::new(DeliveryCounts::default());
    let (stop, task) = start(&connection, "fail", process, options(&counts)).await;
    let done = || async { counts.count(DeliveryOutcome::Executed) == 1 };
    assert!(eventually(Duration::from_secs(20), done).await);
    let _ = stop.send(());
    task.await.expect("join").expect("run");
    // A classic queue flags the redelivery but does not count it.
    assert_eq!(
        *attempts.lock().expect("attempts"),
        vec![Attempt::First, Attempt::Redelivered]
    );
    assert_eq!(counts.count(DeliveryOutcome::Failed), 1);
    assert!(drained(&vhost, "fail"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_delivery_is_dead_lettered_without_running_the_handler() {
    let vhost = RabbitVhost::create();
    let connection = connect(&vhost).await;
    let channel = publisher(&connection).await;
    declare(&channel, "dead", None).await;
    declare(&channel, "work", Some("dead")).await;
    publish(&channel, "work", None, "{}").await;
    let runs = Runs::default();
    let counts = Arc::new(DeliveryCounts::default());
    let process = Idempotent::new(
        Coordinator::in_memory(),
        "nokey",
        recording(&runs, Duration::ZERO),
    );
    let (stop, task) = start(&connection, "work", process, options(&counts)).await;
    let done = || async { counts.count(DeliveryOutcome::Rejected) == 1 };
    assert!(eventually(Duration::from_secs(20), done).await);
    let _ = stop.send(());
    task.await.expect("join").expect("run");
    assert!(runs.lock().expect("runs").is_empty());
    assert!(
        eventually(Duration::from_secs(5), || async {
            held(&vhost, "dead") == 1
        })
        .await
    );
    assert!(drained(&vhost, "work"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queue_counts_attempts() {
    let vhost = RabbitVhost::create();
    let connection = connect(&vhost).await;
    let channel = publisher(&connection).await;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare("quorum".into(), durable, args)
        .await
        .expect("declare");
    publish(&channel, "quorum", Some("k"), "{}").await;
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&attempts);
    let process = Idempotent::new(Coordinator::in_memory(), "quorum", move |d: Delivery| {
        let seen = Arc::clone(&seen);
        async move {
            let attempt = d.attempt();
            seen.lock().expect("attempts").push(attempt);
            if attempt.number().unwrap_or(0) >= 3 {
                Ok(())
            } else {
                Err("not yet")
            }
        }
    });
    let counts = Arc::new(DeliveryCounts::default());
    let (stop, task) = start(&connection, "quorum", process, options(&counts)).await;
    let done = || async { counts.count(DeliveryOutcome::Executed) == 1 };
    assert!(eventually(Duration::from_secs(20), done).await);
    let _ = stop.send(());
    task.await.expect("join").expect("run");
    assert_eq!(
        *attempts.lock().expect("attempts"),
        vec![Attempt::First, Attempt::Counted(2), Attempt::Counted(3)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_running_handlers_finish_and_returns_the_rest() {
    let vhost = RabbitVhost::create();
    let connection = connect(&vhost).await;
    let channel = publisher(&connection).await;
    declare(&channel, "stop", None).await;
    for i in 0..20 {
        publish(&channel, "stop", Some(&format!("k-{i}")), "{}").await;
    }
    let runs = Runs::default();
    let counts = Arc::new(DeliveryCounts::default());
    let process = Idempotent::new(
        Coordinator::in_memory(),
        "stop",
        recording(&runs, Duration::from_millis(400)),
    );
    let (stop, task) = start(
        &connection,
        "stop",
        process,
        options(&counts).with_concurrency(4),
    )
    .await;
    let started = || async { !runs.lock().expect("runs").is_empty() };
    assert!(eventually(Duration::from_secs(10), started).await);
    let _ = stop.send(());
    let stopped = task.await.expect("join").expect("run");
    assert_eq!(stopped.cut, 0);
    let ran = runs.lock().expect("runs").len() as u64;
    assert!(ran < 20);
    assert_eq!(counts.count(DeliveryOutcome::Executed), ran);
    // What ran was acknowledged; the rest is back in the queue, none unacknowledged.
    let queues = vhost.queues();
    assert!(
        queues
            .iter()
            .any(|(name, ready, unacked)| name == "stop" && *ready == 20 - ran && *unacked == 0),
        "{queues:?}"
    );
}
