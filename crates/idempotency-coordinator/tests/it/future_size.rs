//! The size of a call's future on the Redis store: it is moved into every spawned task.

use idempotency_coordinator::{Coordinator, IdempotencyError};
use idempotency_redis::RedisStore;

fn size_of_call(coordinator: &Coordinator<RedisStore>) -> usize {
    let fut = coordinator
        .call("op", Some("k"))
        .run(|| async { Ok::<_, IdempotencyError>(1u32) });
    std::mem::size_of_val(&fut)
}

#[tokio::test]
async fn a_call_future_stays_under_sixteen_kib() {
    let server = idempotency_testkit::RedisServer::start();
    let store = RedisStore::connect(&server.url(), &idempotency_redis::ConnectOptions::default())
        .await
        .expect("connect");
    let coordinator = Coordinator::builder(store).build().expect("coordinator");
    let size = size_of_call(&coordinator);
    eprintln!("call future: {size} bytes");
    assert!(size < 16 * 1024, "{size} bytes");
}
