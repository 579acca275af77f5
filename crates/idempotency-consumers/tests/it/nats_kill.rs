//! `JetStream` consumers killed (`SIGKILL`) at random points (mid-handler, between the committed
//! effect and the ack, while a duplicate is in flight) and restarted.

use std::time::{Duration, Instant};

use idempotency_testkit::nats::NatsServer;
use idempotency_testkit::postgres::TestDatabase;

use crate::common::{Rng, eventually, kill_messages};
use crate::nats::{drained, publish, setup};
use crate::worker::{Workers, spawn};

const WORKERS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_transactional_consumers_apply_each_message_exactly_once() {
    let started = Instant::now();
    let server = NatsServer::start();
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
    let (js, consumer) = setup(&server, "kill", Duration::from_secs(2), 200).await;
    let env = [
        ("IDEM_NATS_URL", server.url()),
        ("IDEM_PG_URL", db.url()),
        ("IDEM_STREAM", "kill".to_owned()),
    ];
    let mut workers = Workers((0..WORKERS).map(|_| spawn("nats-pg", &env)).collect());

    // Every key once, then a third of them again, out of order, while workers die.
    let messages = kill_messages();
    let publisher = tokio::spawn(async move {
        let mut rng = Rng::seeded();
        for i in 0..messages {
            publish(&js, "kill.created", Some(&format!("m-{i}")), "{}").await;
            if rng.below(3) == 0 {
                let earlier = rng.below(i as u64 + 1);
                publish(&js, "kill.created", Some(&format!("m-{earlier}")), "{}").await;
            }
        }
    });

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
        workers.0[victim] = spawn("nats-pg", &env);
    }
    publisher.await.expect("publisher");

    let all_done = || async {
        let rows: i64 = sqlx::query_scalar("SELECT count(DISTINCT key) FROM effects")
            .fetch_one(&pool)
            .await
            .expect("count");
        rows as usize == messages && drained(&consumer).await
    };
    assert!(
        eventually(Duration::from_secs(40), all_done).await,
        "not every message was applied and acknowledged"
    );
    let duplicated: Vec<(String, i64)> =
        sqlx::query_as("SELECT key, count(*) FROM effects GROUP BY key HAVING count(*) > 1")
            .fetch_all(&pool)
            .await
            .expect("duplicates");
    assert!(
        duplicated.is_empty(),
        "effects applied twice: {duplicated:?}"
    );
    let report: Vec<(String, i64)> = sqlx::query_as(
        "SELECT outcome || CASE WHEN attempt > 1 THEN ' (redelivery)' ELSE '' END, count(*) \
         FROM outcomes GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .expect("outcomes");
    eprintln!(
        "nats kill test: {messages} messages, {kills} kills, {:?}; outcomes: {report:?}",
        started.elapsed()
    );
    assert!(kills >= 10);
}
