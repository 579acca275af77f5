//! Consumers killed (`SIGKILL`) at random points, mid-handler, between the committed
//! effect and the ack, while a duplicate is in flight, and restarted; at least 1,000
//! messages per broker, a third of them published again out of order.
//!
//! With the transactional PostgreSQL store every message's effect happens exactly once;
//! with Redis at most once, apart from holders killed between their effect and their
//! record (their lease runs out and a redelivery runs again), which are bounded by the
//! kills and reported. In both, no message is lost and none stays unacknowledged.

use std::time::{Duration, Instant};

use async_nats::jetstream::Context;
use async_nats::jetstream::consumer::PullConsumer;
use idempotency_testkit::RedisServer;
use idempotency_testkit::nats::NatsServer;
use idempotency_testkit::postgres::TestDatabase;
use idempotency_testkit::rabbitmq::RabbitVhost;
use tokio::sync::Mutex;

use crate::common::{Rng, eventually, kill_messages};
use crate::worker::{KILL_CONCURRENCY, Workers, spawn};

const WORKERS: usize = 3;

/// One kill test at a time: each runs three worker processes on a small machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// The broker under test and how to publish to it and see it drained.
enum Broker {
    Nats {
        server: NatsServer,
        js: Context,
        consumer: Box<PullConsumer>,
    },
    Amqp {
        vhost: RabbitVhost,
        channel: lapin::Channel,
        _connection: lapin::Connection,
    },
}

impl Broker {
    async fn start(kind: &str) -> Self {
        match kind {
            "nats" => {
                let server = NatsServer::start();
                let (js, consumer) =
                    crate::nats::setup(&server, "kill", Duration::from_secs(2), 500).await;
                Self::Nats {
                    server,
                    js,
                    consumer: Box::new(consumer),
                }
            }
            _ => {
                let vhost = RabbitVhost::create();
                let connection = crate::amqp::connect(&vhost).await;
                let channel = crate::amqp::publisher(&connection).await;
                crate::amqp::declare(&channel, "kill", None).await;
                Self::Amqp {
                    vhost,
                    channel,
                    _connection: connection,
                }
            }
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::Nats { server, .. } => vec![
                ("IDEM_NATS_URL", server.url()),
                ("IDEM_STREAM", "kill".to_owned()),
            ],
            Self::Amqp { vhost, .. } => vec![
                ("IDEM_AMQP_URL", vhost.url()),
                ("IDEM_QUEUE", "kill".to_owned()),
            ],
        }
    }

    async fn publish(&self, key: &str) {
        match self {
            Self::Nats { js, .. } => {
                crate::nats::publish(js, "kill.created", Some(key), "{}").await
            }
            Self::Amqp { channel, .. } => {
                crate::amqp::publish(channel, "kill", Some(key), "{}").await
            }
        }
    }

    async fn drained(&self) -> bool {
        match self {
            Self::Nats { consumer, .. } => crate::nats::drained(consumer).await,
            Self::Amqp { vhost, .. } => crate::amqp::drained(vhost, "kill"),
        }
    }
}

async fn kill_test(broker: &str, store: &str) {
    let _one = ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    let db = TestDatabase::create();
    let pool = sqlx::PgPool::connect(&db.url()).await.expect("connect");
    idempotency_postgres::migrate(&pool).await.expect("migrate");
    for table in [
        "CREATE TABLE effects (key text NOT NULL, fence bigint, attempt bigint)",
        "CREATE TABLE outcomes (key text NOT NULL, outcome text NOT NULL, attempt bigint)",
    ] {
        sqlx::query(table)
            .execute(&pool)
            .await
            .expect("create a table");
    }
    let redis = (store == "redis").then(RedisServer::start);
    let brokered = Broker::start(broker).await;
    let mut env = brokered.env();
    env.push(("IDEM_PG_URL", db.url()));
    if let Some(redis) = &redis {
        env.push(("IDEM_REDIS_URL", redis.url()));
    }
    let role = format!("{broker}-{store}");
    let mut workers = Workers((0..WORKERS).map(|_| spawn(&role, &env)).collect());

    let messages = kill_messages();
    let publishing = async {
        let mut rng = Rng::seeded();
        for i in 0..messages {
            brokered.publish(&format!("m-{i}")).await;
            if rng.below(3) == 0 {
                let earlier = rng.below(i as u64 + 1);
                brokered.publish(&format!("m-{earlier}")).await;
            }
        }
    };
    let killing = async {
        let mut rng = Rng::seeded();
        let mut kills = 0;
        let kill_until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < kill_until {
            tokio::time::sleep(Duration::from_millis(100 + rng.below(300))).await;
            let victim = rng.below(WORKERS as u64) as usize;
            let child = &mut workers.0[victim];
            child.kill().expect("SIGKILL a worker");
            child.wait().expect("reap it");
            kills += 1;
            workers.0[victim] = spawn(&role, &env);
        }
        kills
    };
    let ((), kills) = tokio::join!(publishing, killing);

    let all_done = || async {
        let rows: i64 = sqlx::query_scalar("SELECT count(DISTINCT key) FROM effects")
            .fetch_one(&pool)
            .await
            .expect("count");
        rows as usize == messages && brokered.drained().await
    };
    assert!(
        eventually(Duration::from_secs(40), all_done).await,
        "not every message was applied and acknowledged"
    );
    let repeated: Vec<(String, i64)> =
        sqlx::query_as("SELECT key, count(*) FROM effects GROUP BY key HAVING count(*) > 1")
            .fetch_all(&pool)
            .await
            .expect("repeated effects");
    let report: Vec<(String, i64)> = sqlx::query_as(
        "SELECT outcome || CASE WHEN attempt > 1 OR attempt IS NULL THEN ' (redelivery)' ELSE '' END, \
         count(*) FROM outcomes GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .expect("outcomes");
    eprintln!(
        "{role} kill test: {messages} messages, {kills} kills, {} effects repeated, {:?}; outcomes: {report:?}",
        repeated.len(),
        started.elapsed()
    );
    assert!(kills >= 10);
    match store {
        "pg" => assert!(repeated.is_empty(), "effects applied twice: {repeated:?}"),
        _ => assert!(
            repeated.len() <= kills * KILL_CONCURRENCY,
            "more repeated effects than killed holders: {repeated:?}"
        ),
    }
    drop(workers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_transactional_consumers_apply_each_message_exactly_once() {
    kill_test("nats", "pg").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_redis_consumers_apply_each_message_at_most_once_but_for_lost_leases() {
    kill_test("nats", "redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_killed_transactional_consumers_apply_each_message_exactly_once() {
    kill_test("amqp", "pg").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_killed_redis_consumers_apply_each_message_at_most_once_but_for_lost_leases() {
    kill_test("amqp", "redis").await;
}
