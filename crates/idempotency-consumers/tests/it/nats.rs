//! The JetStream consumer against a throwaway `nats-server -js`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{PullConsumer, pull};
use async_nats::jetstream::{self, Context, stream};
use idempotency_consumers::{
    ConsumerOptions, Delays, Delivery, DeliveryCounts, DeliveryOutcome, Idempotent,
    JetStreamConsumer, KeySource, Retention,
};
use idempotency_coordinator::Coordinator;
use idempotency_testkit::nats::NatsServer;
use tokio::sync::oneshot;

use crate::common::eventually;

/// The header the tests key by: JetStream itself drops a second publication with the
/// same `Nats-Msg-Id` inside its duplicate window, so duplicates that must reach the
/// consumer carry their key in a header of their own.
pub(crate) const EVENT_ID: &str = "Event-Id";

/// A stream `name` on `name.>` and a durable pull consumer `workers` on it.
pub(crate) async fn setup(
    server: &NatsServer,
    name: &str,
    ack_wait: Duration,
    max_deliver: i64,
) -> (Context, PullConsumer) {
    let client = async_nats::connect(server.url())
        .await
        .expect("connect to nats-server");
    let js = jetstream::new(client);
    let stream = js
        .create_stream(stream::Config {
            name: name.to_owned(),
            subjects: vec![format!("{name}.>")],
            ..Default::default()
        })
        .await
        .expect("create the stream");
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("workers".to_owned()),
            ack_wait,
            max_deliver,
            ..Default::default()
        })
        .await
        .expect("create the consumer");
    (js, consumer)
}

/// Publishes `payload` on `subject` with the key header `key` (none when `None`).
pub(crate) async fn publish(js: &Context, subject: &str, key: Option<&str>, payload: &str) {
    let mut headers = HeaderMap::new();
    if let Some(key) = key {
        headers.insert(EVENT_ID, key);
    }
    js.publish_with_headers(subject.to_owned(), headers, payload.to_owned().into())
        .await
        .expect("publish")
        .await
        .expect("the stream stored the message");
}

/// Whether every message was acknowledged (nothing pending, nothing unacknowledged).
pub(crate) async fn drained(consumer: &PullConsumer) -> bool {
    let info = consumer.get_info().await.expect("consumer info");
    info.num_pending == 0 && info.num_ack_pending == 0
}

fn options(counts: &Arc<DeliveryCounts>) -> ConsumerOptions {
    ConsumerOptions::new()
        .with_key(KeySource::header(EVENT_ID))
        .with_delays(
            Delays::default()
                .with_in_flight(Duration::from_millis(100))
                .with_failure(Duration::from_millis(100))
                .with_storage(Duration::from_millis(100)),
        )
        .with_metrics(Arc::clone(counts) as _)
}

type Runs = Arc<Mutex<HashMap<String, Vec<u64>>>>;

/// A handler that records the attempt number of each run under its key.
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
                .push(d.attempt().number().unwrap_or(0));
            tokio::time::sleep(pause).await;
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_across_two_consumers_run_once_and_replay() {
    let server = NatsServer::start();
    let (js, consumer) = setup(&server, "dups", Duration::from_secs(5), 20).await;
    let keys: Vec<String> = (0..50).map(|i| format!("k-{i}")).collect();
    // Each key three times, the copies interleaved out of order.
    for round in 0..3 {
        for i in 0..keys.len() {
            let key = &keys[(i * 7 + round * 13) % keys.len()];
            publish(&js, "dups.created", Some(key), "{}").await;
        }
    }
    let runs = Runs::default();
    let counts = Arc::new(DeliveryCounts::default());
    let coordinator = Coordinator::in_memory();
    let mut stops = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let (stop, stopped) = oneshot::channel::<()>();
        let process = Idempotent::new(
            coordinator.clone(),
            "dups",
            recording(&runs, Duration::from_millis(5)),
        );
        let worker = JetStreamConsumer::new(consumer.clone(), process, options(&counts));
        tasks.push(tokio::spawn(worker.run(async move {
            let _ = stopped.await;
        })));
        stops.push(stop);
    }
    assert!(eventually(Duration::from_secs(30), || drained(&consumer)).await);
    for stop in stops {
        let _ = stop.send(());
    }
    for task in tasks {
        let stopped = task.await.expect("join").expect("run");
        assert_eq!(stopped.cut, 0);
    }
    let runs = runs.lock().expect("runs");
    assert_eq!(runs.len(), keys.len());
    assert!(
        runs.values().all(|r| r.len() == 1),
        "a key ran twice: {runs:?}"
    );
    assert_eq!(counts.count(DeliveryOutcome::Executed), 50);
    assert_eq!(counts.count(DeliveryOutcome::Replayed), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_duplicate_is_sent_back_and_never_runs_next_to_the_first() {
    let server = NatsServer::start();
    let (js, consumer) = setup(&server, "inflight", Duration::from_secs(5), 20).await;
    publish(&js, "inflight.x", Some("same"), "1").await;
    publish(&js, "inflight.x", Some("same"), "2").await;
    let runs = Runs::default();
    let counts = Arc::new(DeliveryCounts::default());
    let process = Idempotent::new(
        Coordinator::in_memory(),
        "inflight",
        recording(&runs, Duration::from_millis(600)),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(
        JetStreamConsumer::new(consumer.clone(), process, options(&counts)).run(async move {
            let _ = stopped.await;
        }),
    );
    assert!(eventually(Duration::from_secs(20), || drained(&consumer)).await);
    let _ = stop.send(());
    task.await.expect("join").expect("run");
    assert_eq!(
        runs.lock().expect("runs").get("same").map(Vec::len),
        Some(1)
    );
    assert!(counts.count(DeliveryOutcome::RequeuedInFlight) >= 1);
    assert_eq!(counts.count(DeliveryOutcome::Executed), 1);
    assert_eq!(counts.count(DeliveryOutcome::Replayed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_handler_releases_the_key_and_the_redelivery_sees_its_attempt_and_a_newer_fence() {
    let server = NatsServer::start();
    let (js, consumer) = setup(&server, "fail", Duration::from_secs(5), 5).await;
    publish(&js, "fail.x", Some("k"), "{}").await;
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&attempts);
    let process = Idempotent::new(Coordinator::in_memory(), "fail", move |d: Delivery| {
        let seen = Arc::clone(&seen);
        async move {
            let attempt = d.attempt().number().unwrap_or(0);
            let fence = d
                .fence()
                .expect("a claimed run has its fencing token")
                .get();
            seen.lock().expect("attempts").push((attempt, fence));
            if attempt < 2 {
                Err("first attempt fails")
            } else {
                Ok(())
            }
        }
    });
    let counts = Arc::new(DeliveryCounts::default());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(
        JetStreamConsumer::new(consumer.clone(), process, options(&counts)).run(async move {
            let _ = stopped.await;
        }),
    );
    assert!(eventually(Duration::from_secs(20), || drained(&consumer)).await);
    let _ = stop.send(());
    task.await.expect("join").expect("run");
    let seen = attempts.lock().expect("attempts").clone();
    assert_eq!(seen.iter().map(|(a, _)| *a).collect::<Vec<_>>(), vec![1, 2]);
    assert!(
        seen[1].1 > seen[0].1,
        "the redelivery's owner has a newer fence: {seen:?}"
    );
    assert_eq!(counts.count(DeliveryOutcome::Failed), 1);
    assert_eq!(counts.count(DeliveryOutcome::Executed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_delivery_is_terminated_without_running_the_handler() {
    let server = NatsServer::start();
    let (js, consumer) = setup(&server, "nokey", Duration::from_secs(5), 5).await;
    publish(&js, "nokey.x", None, "{}").await;
    let runs = Runs::default();
    let counts = Arc::new(DeliveryCounts::default());
    let process = Idempotent::new(
        Coordinator::in_memory(),
        "nokey",
        recording(&runs, Duration::ZERO),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(
        JetStreamConsumer::new(consumer.clone(), process, options(&counts)).run(async move {
            let _ = stopped.await;
        }),
    );
    assert!(eventually(Duration::from_secs(20), || drained(&consumer)).await);
    let _ = stop.send(());
    task.await.expect("join").expect("run");
    assert!(runs.lock().expect("runs").is_empty());
    assert_eq!(counts.count(DeliveryOutcome::Rejected), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_is_checked_against_max_deliver_times_ack_wait() {
    let server = NatsServer::start();
    let (_js, consumer) = setup(&server, "retention", Duration::from_secs(30), 10).await;
    let counts = Arc::new(DeliveryCounts::default());
    let runs = Runs::default();
    let short = Idempotent::new(
        Coordinator::in_memory(),
        "r",
        recording(&runs, Duration::ZERO),
    )
    .with_ttl(Duration::from_secs(120));
    let retention = JetStreamConsumer::new(consumer.clone(), short, options(&counts))
        .check_retention()
        .await
        .expect("consumer info");
    assert_eq!(
        retention,
        Retention::Short {
            ttl: Duration::from_secs(120),
            horizon: Duration::from_secs(300)
        }
    );
    let long = Idempotent::new(
        Coordinator::in_memory(),
        "r",
        recording(&runs, Duration::ZERO),
    )
    .with_ttl(Duration::from_secs(3600));
    let retention = JetStreamConsumer::new(consumer, long, options(&counts))
        .check_retention()
        .await
        .expect("consumer info");
    assert!(!retention.is_short());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_running_handlers_finish_and_acknowledges_them() {
    let server = NatsServer::start();
    let (js, consumer) = setup(&server, "stop", Duration::from_secs(30), 5).await;
    for i in 0..20 {
        publish(&js, "stop.x", Some(&format!("k-{i}")), "{}").await;
    }
    let runs = Runs::default();
    let counts = Arc::new(DeliveryCounts::default());
    let coordinator = Coordinator::in_memory();
    let process = Idempotent::new(
        coordinator.clone(),
        "stop",
        recording(&runs, Duration::from_millis(400)),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(
        JetStreamConsumer::new(
            consumer.clone(),
            process,
            options(&counts).with_concurrency(4),
        )
        .run(async move {
            let _ = stopped.await;
        }),
    );
    let started = || async { !runs.lock().expect("runs").is_empty() };
    assert!(eventually(Duration::from_secs(10), started).await);
    let _ = stop.send(());
    let result = task.await.expect("join").expect("run");
    assert_eq!(result.cut, 0);
    let ran = runs.lock().expect("runs").len() as u64;
    assert!(ran < 20, "the shutdown came after every message ran");
    assert_eq!(counts.count(DeliveryOutcome::Executed), ran);
    // A second consumer on the same durable, well inside `ack_wait` (30 s): what ran was
    // acknowledged (it is not replayed), what was received and not started was sent back
    // at once (it does not wait out `ack_wait`).
    let again = Idempotent::new(coordinator, "stop", recording(&runs, Duration::ZERO));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(
        JetStreamConsumer::new(consumer.clone(), again, options(&counts)).run(async move {
            let _ = stopped.await;
        }),
    );
    assert!(eventually(Duration::from_secs(10), || drained(&consumer)).await);
    let _ = stop.send(());
    task.await.expect("join").expect("run");
    assert_eq!(counts.count(DeliveryOutcome::Replayed), 0);
    assert_eq!(counts.count(DeliveryOutcome::Executed), 20);
    assert!(runs.lock().expect("runs").values().all(|r| r.len() == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_key_is_nats_msg_id_and_a_late_republication_replays() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client);
    // A short duplicate window, so that JetStream stores the second publication.
    let stream = js
        .create_stream(stream::Config {
            name: "msgid".to_owned(),
            subjects: vec!["msgid.>".to_owned()],
            duplicate_window: Duration::from_millis(100),
            ..Default::default()
        })
        .await
        .expect("stream");
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("workers".to_owned()),
            ..Default::default()
        })
        .await
        .expect("consumer");
    for _ in 0..2 {
        let mut headers = HeaderMap::new();
        headers.insert(idempotency_consumers::NATS_MSG_ID, "order-1");
        js.publish_with_headers("msgid.x", headers, "{}".into())
            .await
            .expect("publish")
            .await
            .expect("stored");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let runs = Runs::default();
    let counts = Arc::new(DeliveryCounts::default());
    let process = Idempotent::new(
        Coordinator::in_memory(),
        "msgid",
        recording(&runs, Duration::ZERO),
    );
    let options = ConsumerOptions::new().with_metrics(Arc::clone(&counts) as _);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(
        JetStreamConsumer::new(consumer.clone(), process, options).run(async move {
            let _ = stopped.await;
        }),
    );
    assert!(eventually(Duration::from_secs(20), || drained(&consumer)).await);
    let _ = stop.send(());
    task.await.expect("join").expect("run");
    assert_eq!(
        runs.lock().expect("runs").get("order-1").map(Vec::len),
        Some(1)
    );
    assert_eq!(counts.count(DeliveryOutcome::Executed), 1);
    assert_eq!(counts.count(DeliveryOutcome::Replayed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_handler_error_is_acknowledged_and_replayed_to_the_duplicate() {
    let server = NatsServer::start();
    let (js, consumer) = setup(&server, "stored", Duration::from_secs(5), 5).await;
    publish(&js, "stored.x", Some("k"), "{}").await;
    publish(&js, "stored.x", Some("k"), "{}").await;
    let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = Arc::clone(&ran);
    let process = Idempotent::new(Coordinator::in_memory(), "stored", move |_: Delivery| {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async { Err::<(), String>("out of stock".to_owned()) }
    })
    .with_stored_errors(|e: &String| e == "out of stock");
    let counts = Arc::new(DeliveryCounts::default());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(
        JetStreamConsumer::new(
            consumer.clone(),
            process,
            options(&counts).with_concurrency(1),
        )
        .run(async move {
            let _ = stopped.await;
        }),
    );
    assert!(eventually(Duration::from_secs(20), || drained(&consumer)).await);
    let _ = stop.send(());
    task.await.expect("join").expect("run");
    assert_eq!(ran.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(counts.count(DeliveryOutcome::StoredError), 2);
    assert_eq!(counts.count(DeliveryOutcome::Failed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_running_past_ack_wait_keeps_its_message() {
    let server = NatsServer::start();
    let (js, consumer) = setup(&server, "slow", Duration::from_secs(1), 10).await;
    publish(&js, "slow.x", Some("k"), "{}").await;
    let runs = Runs::default();
    let counts = Arc::new(DeliveryCounts::default());
    let process = Idempotent::new(
        Coordinator::in_memory(),
        "slow",
        recording(&runs, Duration::from_millis(3500)),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(
        JetStreamConsumer::new(consumer.clone(), process, options(&counts)).run(async move {
            let _ = stopped.await;
        }),
    );
    let done = || async { counts.count(DeliveryOutcome::Executed) == 1 };
    assert!(eventually(Duration::from_secs(20), done).await);
    assert!(eventually(Duration::from_secs(5), || drained(&consumer)).await);
    let _ = stop.send(());
    task.await.expect("join").expect("run");
    // Without the progress signals, JetStream would have redelivered it every second.
    assert_eq!(counts.count(DeliveryOutcome::RequeuedInFlight), 0);
    assert_eq!(runs.lock().expect("runs").get("k").map(Vec::len), Some(1));
}
