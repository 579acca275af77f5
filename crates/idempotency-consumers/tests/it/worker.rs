//! The worker processes of the kill tests: this test binary re-run with
//! `IDEM_CONSUMER_WORKER` set to a role, consuming until it is killed.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use idempotency_consumers::{
    AmqpConsumer, ConsumerOptions, Delays, Delivery, DeliveryOutcome, Idempotent,
    JetStreamConsumer, KeySource, Process, Transactional,
};
use idempotency_coordinator::Coordinator;
use idempotency_postgres::PostgresStore;
use idempotency_redis::{ConnectOptions, RedisStore};

/// The variable naming a worker's role.
pub(crate) const ROLE_VAR: &str = "IDEM_CONSUMER_WORKER";

/// Starts a worker process of `role` with `env`.
pub(crate) fn spawn(role: &str, env: &[(&str, String)]) -> Child {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        "worker_process",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(ROLE_VAR, role)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    for (name, value) in env {
        cmd.env(name, value);
    }
    cmd.spawn().expect("spawn a worker")
}

/// Worker processes, killed (`SIGKILL`) when dropped (also when the test fails).
#[derive(Debug, Default)]
pub(crate) struct Workers(pub(crate) Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A pseudo-random number below `n`, from the clock: where each delivery pauses.
fn jitter(n: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    (nanos / 1000) % n.max(1)
}

/// Runs the worker of `role` until killed.
pub(crate) fn run(role: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        tokio::spawn(exit_with_parent());
        consume_as(role).await;
    });
}

/// Ends the worker when the test process is gone (it would otherwise outlive it).
async fn exit_with_parent() {
    let parent = std::os::unix::process::parent_id();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if std::os::unix::process::parent_id() != parent {
            std::process::exit(1);
        }
    }
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

/// Holds an executed delivery for a moment before its ack (a kill there lands between
/// the committed effect and the acknowledgement) and notes every outcome in the
/// `outcomes` table, for the test's report.
struct Lingering<P>(P, sqlx::PgPool);

impl<P: Process> Process for Lingering<P> {
    fn operation(&self) -> &str {
        self.0.operation()
    }

    fn record_ttl(&self) -> Duration {
        self.0.record_ttl()
    }

    async fn process(&self, delivery: Delivery) -> DeliveryOutcome {
        {
            let key = delivery.key().unwrap_or_default().to_owned();
            let attempt = delivery.attempt().number().map(|n| n as i64);
            let outcome = self.0.process(delivery).await;
            let _ = sqlx::query("INSERT INTO outcomes (key, outcome, attempt) VALUES ($1, $2, $3)")
                .bind(key)
                .bind(outcome.as_str())
                .bind(attempt)
                .execute(&self.1)
                .await;
            if outcome == DeliveryOutcome::Executed {
                tokio::time::sleep(Duration::from_millis(jitter(15))).await;
            }
            outcome
        }
    }
}

/// The options of a kill-test worker: keys from `Event-Id` on NATS (JetStream itself
/// drops a repeated `Nats-Msg-Id`), from `message-id` on AMQP.
pub(crate) fn kill_options(broker: &str) -> ConsumerOptions {
    let key = if broker == "nats" {
        KeySource::header(crate::nats::EVENT_ID)
    } else {
        KeySource::MessageId
    };
    ConsumerOptions::new()
        .with_key(key)
        .with_delays(
            Delays::default()
                .with_in_flight(Duration::from_millis(100))
                .with_failure(Duration::from_millis(100))
                .with_storage(Duration::from_millis(200)),
        )
        .with_concurrency(KILL_CONCURRENCY)
}

/// How many deliveries each kill-test worker runs at once.
pub(crate) const KILL_CONCURRENCY: usize = 8;

/// The effect in the record's transaction: a row per run in `effects`, with a pause
/// inside the transaction where a kill lands mid-handler.
fn transactional()
-> impl Fn(&mut sqlx::PgConnection, Delivery) -> idempotency_consumers::TxHandlerFuture<'_, sqlx::Error>
+ Send
+ Sync
+ 'static {
    |conn, d| {
        Box::pin(async move {
            sqlx::query("INSERT INTO effects (key, fence, attempt) VALUES ($1, $2, $3)")
                .bind(d.key().unwrap_or_default())
                .bind(d.fence().map(idempotency_coordinator::FencingToken::as_i64))
                .bind(d.attempt().number().map(|n| n as i64))
                .execute(&mut *conn)
                .await?;
            tokio::time::sleep(Duration::from_millis(jitter(10))).await;
            Ok(())
        })
    }
}

async fn pg_pool() -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(12)
        .connect(&var("IDEM_PG_URL"))
        .await
        .expect("connect to postgres")
}

/// Runs the worker `broker-store` until killed.
async fn consume_as(role: &str) {
    let (broker, store) = role.split_once('-').expect("a role is broker-store");
    let pool = pg_pool().await;
    match store {
        "pg" => {
            let process =
                Transactional::new(PostgresStore::new(pool.clone()), "kill", transactional());
            consume(broker, Lingering(process, pool)).await;
        }
        "redis" => {
            let redis = RedisStore::connect(&var("IDEM_REDIS_URL"), &ConnectOptions::default())
                .await
                .expect("connect to redis");
            let coordinator = Coordinator::builder(redis)
                .lease(Duration::from_secs(2))
                .build()
                .expect("a coordinator");
            let effects = pool.clone();
            // The effect outside the record: committed at once, on its own.
            let handler = move |d: Delivery| {
                let effects = effects.clone();
                async move {
                    sqlx::query("INSERT INTO effects (key, fence, attempt) VALUES ($1, NULL, $2)")
                        .bind(d.key().unwrap_or_default())
                        .bind(d.attempt().number().map(|n| n as i64))
                        .execute(&effects)
                        .await?;
                    tokio::time::sleep(Duration::from_millis(jitter(10))).await;
                    Ok::<_, sqlx::Error>(())
                }
            };
            consume(
                broker,
                Lingering(Idempotent::new(coordinator, "kill", handler), pool),
            )
            .await;
        }
        other => panic!("unknown store {other:?}"),
    }
}

async fn consume<P: Process>(broker: &str, process: P) {
    match broker {
        "nats" => {
            let client = async_nats::connect(var("IDEM_NATS_URL"))
                .await
                .expect("connect to nats");
            let js = async_nats::jetstream::new(client);
            let consumer: async_nats::jetstream::consumer::PullConsumer = js
                .get_stream(var("IDEM_STREAM"))
                .await
                .expect("the stream")
                .get_consumer("workers")
                .await
                .expect("the consumer");
            let _ = JetStreamConsumer::new(consumer, process, kill_options(broker))
                .with_fetch_wait(Duration::from_millis(500))
                .run(std::future::pending())
                .await;
        }
        "amqp" => {
            let connection = lapin::Connection::connect(
                &var("IDEM_AMQP_URL"),
                lapin::ConnectionProperties::default(),
            )
            .await
            .expect("connect to rabbitmq");
            let channel = connection.create_channel().await.expect("a channel");
            let _ = AmqpConsumer::new(channel, var("IDEM_QUEUE"), process, kill_options(broker))
                .run(std::future::pending())
                .await;
        }
        other => panic!("unknown broker {other:?}"),
    }
}
