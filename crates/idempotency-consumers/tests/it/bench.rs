//! Messages per second through each consumer, next to the same loop without the library,
//! in one run. Opt-in (it measures, it checks nothing the other tests do not):
//! `IDEM_CONSUMER_BENCH=1 cargo test -p idempotency-consumers --release --test it bench -- --nocapture`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::PullConsumer;
use futures_util::StreamExt;
use idempotency_consumers::{
    AmqpConsumer, ConsumerOptions, Delivery, DeliveryCounts, DeliveryOutcome, Idempotent,
    JetStreamConsumer, KeySource, Process,
};
use idempotency_coordinator::{Coordinator, ReservationStore};
use idempotency_redis::{ConnectOptions, RedisStore};
use idempotency_testkit::RedisServer;
use idempotency_testkit::nats::NatsServer;
use idempotency_testkit::rabbitmq::RabbitVhost;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::task::JoinSet;

const MESSAGES: usize = 5000;
const CONCURRENCY: usize = 16;

fn enabled() -> bool {
    let on = std::env::var_os("IDEM_CONSUMER_BENCH").is_some();
    if !on {
        eprintln!("consumer benchmark not run: set IDEM_CONSUMER_BENCH=1");
    }
    on
}

fn rate(elapsed: Duration) -> f64 {
    MESSAGES as f64 / elapsed.as_secs_f64()
}

async fn noop(_: Delivery) -> Result<(), std::io::Error> {
    Ok(())
}

fn options(counts: &Arc<DeliveryCounts>, key: KeySource) -> ConsumerOptions {
    ConsumerOptions::new()
        .with_key(key)
        .with_concurrency(CONCURRENCY)
        .with_metrics(Arc::clone(counts) as _)
}

/// Completes once every message was executed, noting when: the measure ends there, not
/// after the shutdown (which waits up to a pull request's expiry).
async fn until_settled(counts: Arc<DeliveryCounts>, done: Arc<std::sync::Mutex<Option<Instant>>>) {
    while (counts.count(DeliveryOutcome::Executed) as usize) < MESSAGES {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    *done.lock().expect("done") = Some(Instant::now());
}

/// The same pull loop without the library: pulls of `CONCURRENCY` messages, each
/// message waiting for a free slot, then a task that acknowledges it.
async fn raw_nats(consumer: &PullConsumer) -> Duration {
    let started = Instant::now();
    let mut done = 0;
    let mut running = JoinSet::new();
    while done < MESSAGES {
        let mut batch = consumer
            .batch()
            .max_messages(CONCURRENCY)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .expect("batch");
        while let Some(Ok(message)) = batch.next().await {
            while running.try_join_next().is_some() {}
            while running.len() >= CONCURRENCY {
                running.join_next().await;
            }
            running.spawn(async move {
                message.ack().await.expect("ack");
            });
            done += 1;
            if done == MESSAGES {
                break;
            }
        }
    }
    while running.join_next().await.is_some() {}
    started.elapsed()
}

async fn nats_fill(js: &async_nats::jetstream::Context, run: &str) {
    for i in 0..MESSAGES {
        crate::nats::publish(
            js,
            &format!("bench.{run}"),
            Some(&format!("{run}-{i}")),
            "{}",
        )
        .await;
    }
}

async fn nats_consumer(js: &async_nats::jetstream::Context, name: &str) -> PullConsumer {
    js.get_stream("bench")
        .await
        .expect("stream")
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some(name.to_owned()),
            filter_subject: format!("bench.{name}"),
            ..Default::default()
        })
        .await
        .expect("consumer")
}

async fn through_nats<P: Process>(consumer: PullConsumer, process: P) -> Duration {
    let counts = Arc::new(DeliveryCounts::default());
    let done = Arc::default();
    let started = Instant::now();
    JetStreamConsumer::new(
        consumer,
        process,
        options(&counts, KeySource::header(crate::nats::EVENT_ID)),
    )
    .run(until_settled(Arc::clone(&counts), Arc::clone(&done)))
    .await
    .expect("run");
    let done = *done.lock().expect("done");
    done.expect("settled") - started
}

async fn redis_coordinator(server: &RedisServer) -> Coordinator<RedisStore> {
    let store = RedisStore::connect(&server.url(), &ConnectOptions::default())
        .await
        .expect("redis");
    Coordinator::builder(store).build().expect("coordinator")
}

/// The consumer without the kit: every delivery "executed" at once. The consumer's own
/// cost (key, span, count, settle), apart from the store.
struct Bare;

impl Process for Bare {
    fn operation(&self) -> &'static str {
        "bench"
    }

    fn record_ttl(&self) -> Duration {
        Duration::from_secs(3600)
    }

    async fn process(&self, _: Delivery) -> DeliveryOutcome {
        DeliveryOutcome::Executed
    }
}

fn idempotent<S: ReservationStore>(coordinator: Coordinator<S>) -> impl Process {
    Idempotent::new(coordinator, "bench", noop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_nats_messages_per_second() {
    if !enabled() {
        return;
    }
    let server = NatsServer::start();
    let redis = RedisServer::start();
    let (js, _) = crate::nats::setup(&server, "bench", Duration::from_secs(30), 5).await;
    for run in ["raw", "bare", "memory", "redis"] {
        nats_fill(&js, run).await;
    }
    let raw = raw_nats(&nats_consumer(&js, "raw").await).await;
    let bare = through_nats(nats_consumer(&js, "bare").await, Bare).await;
    let memory = through_nats(
        nats_consumer(&js, "memory").await,
        idempotent(Coordinator::in_memory()),
    )
    .await;
    let on_redis = through_nats(
        nats_consumer(&js, "redis").await,
        idempotent(redis_coordinator(&redis).await),
    )
    .await;
    eprintln!(
        "nats, {MESSAGES} messages, concurrency {CONCURRENCY}: raw loop {:.0}/s, consumer without a store {:.0}/s, on the in-memory store {:.0}/s, on Redis {:.0}/s",
        rate(raw),
        rate(bare),
        rate(memory),
        rate(on_redis)
    );
}

async fn amqp_fill(channel: &lapin::Channel, queue: &str) {
    crate::amqp::declare(channel, queue, None).await;
    for i in 0..MESSAGES {
        crate::amqp::publish(channel, queue, Some(&format!("{queue}-{i}")), "{}").await;
    }
}

/// The same consume loop without the library: prefetch = concurrency, a task per
/// delivery that acknowledges it.
async fn raw_amqp(connection: &lapin::Connection) -> Duration {
    let channel = connection.create_channel().await.expect("channel");
    let started = Instant::now();
    channel
        .basic_qos(CONCURRENCY as u16, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = channel
        .basic_consume(
            "raw".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let done = Arc::new(AtomicUsize::new(0));
    let mut running = JoinSet::new();
    for _ in 0..MESSAGES {
        let delivery = consumer
            .next()
            .await
            .expect("a delivery")
            .expect("delivery");
        let done = Arc::clone(&done);
        running.spawn(async move {
            delivery.ack(BasicAckOptions::default()).await.expect("ack");
            done.fetch_add(1, Ordering::Relaxed);
        });
    }
    while running.join_next().await.is_some() {}
    started.elapsed()
}

async fn through_amqp<P: Process>(
    connection: &lapin::Connection,
    queue: &str,
    process: P,
) -> Duration {
    let counts = Arc::new(DeliveryCounts::default());
    let channel = connection.create_channel().await.expect("channel");
    let done = Arc::default();
    let started = Instant::now();
    AmqpConsumer::new(
        channel,
        queue,
        process,
        options(&counts, KeySource::MessageId),
    )
    .run(until_settled(Arc::clone(&counts), Arc::clone(&done)))
    .await
    .expect("run");
    let done = *done.lock().expect("done");
    done.expect("settled") - started
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_amqp_messages_per_second() {
    if !enabled() {
        return;
    }
    let vhost = RabbitVhost::create();
    let redis = RedisServer::start();
    let connection = crate::amqp::connect(&vhost).await;
    let channel = crate::amqp::publisher(&connection).await;
    for queue in ["raw", "bare", "memory", "redis"] {
        amqp_fill(&channel, queue).await;
    }
    let raw = raw_amqp(&connection).await;
    let bare = through_amqp(&connection, "bare", Bare).await;
    let memory = through_amqp(&connection, "memory", idempotent(Coordinator::in_memory())).await;
    let on_redis = through_amqp(
        &connection,
        "redis",
        idempotent(redis_coordinator(&redis).await),
    )
    .await;
    eprintln!(
        "amqp, {MESSAGES} messages, concurrency {CONCURRENCY}: raw loop {:.0}/s, consumer without a store {:.0}/s, on the in-memory store {:.0}/s, on Redis {:.0}/s",
        rate(raw),
        rate(bare),
        rate(memory),
        rate(on_redis)
    );
}
