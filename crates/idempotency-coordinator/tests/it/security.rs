//! AUTH: a password server and an ACL user; a wrong password fails at start-up.

use std::time::Duration;

use idempotency_coordinator::{Coordinator, IdempotencyError, InFlight};
use idempotency_redis::{ConnectOptions, RedisStore};
use idempotency_testkit::{RedisServer, ServerOptions};

fn options() -> ConnectOptions {
    ConnectOptions::default()
        .with_connect_timeout(Duration::from_secs(2))
        .with_command_timeout(Duration::from_secs(2))
}

fn server_with(args: &[&str]) -> RedisServer {
    RedisServer::start_with(&ServerOptions {
        args: args.iter().map(|s| (*s).to_owned()).collect(),
        ..ServerOptions::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_from_the_url_authenticates_commands_and_wake_ups() {
    let server = server_with(&["--requirepass", "s3cret"]);
    let url = format!("redis://:s3cret@127.0.0.1:{}", server.port());
    let store = RedisStore::connect(&url, &options())
        .await
        .expect("authenticated");
    let coordinator = Coordinator::builder(store)
        .in_flight(InFlight::Wait)
        .wait_safety_poll(Duration::from_secs(20))
        .build()
        .expect("c");
    // A waiter woken by the owner's completion: the subscriber connection authenticated too
    // (with a 20 s safety poll, only the push can wake it in time).
    let owner = {
        let coordinator = coordinator.clone();
        tokio::spawn(async move {
            coordinator
                .call("op", Some("k"))
                .run(|| async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<_, IdempotencyError>(1u32)
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let waited: u32 = tokio::time::timeout(
        Duration::from_secs(5),
        coordinator
            .call("op", Some("k"))
            .run(|| async { Ok::<_, IdempotencyError>(2u32) }),
    )
    .await
    .expect("woken by the push, not the 20 s poll")
    .expect("waiter");
    assert_eq!((owner.await.expect("task").expect("owner"), waited), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_from_the_url_works() {
    let server = server_with(&[
        "--user",
        "app",
        "on",
        ">app-pass",
        "~idempotency:*",
        "&*",
        "+@all",
        "--user",
        "default",
        "off",
    ]);
    let url = format!("redis://app:app-pass@127.0.0.1:{}", server.port());
    let store = RedisStore::connect(&url, &options())
        .await
        .expect("acl user");
    let coordinator = Coordinator::builder(store).build().expect("c");
    let v: u32 = coordinator
        .call("op", Some("k"))
        .run(|| async { Ok::<_, IdempotencyError>(5) })
        .await
        .expect("call");
    let replay: u32 = coordinator
        .call("op", Some("k"))
        .run(|| async { Ok::<_, IdempotencyError>(6) })
        .await
        .expect("replay");
    assert_eq!((v, replay), (5, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_an_error_at_start_up() {
    let server = server_with(&["--requirepass", "s3cret"]);
    for url in [
        format!("redis://:wrong@127.0.0.1:{}", server.port()),
        format!("redis://127.0.0.1:{}", server.port()),
        format!("redis://nobody:s3cret@127.0.0.1:{}", server.port()),
    ] {
        let err = RedisStore::connect(&url, &options())
            .await
            .expect_err("refused");
        // The deployment's mistake, not an outage that fail-open would run through.
        assert_eq!(
            err.class(),
            idempotency_core::ErrorClass::Configuration,
            "{err:?}"
        );
        let cause = std::error::Error::source(&err)
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(
            cause.contains("WRONGPASS")
                || cause.contains("NOAUTH")
                || cause.to_lowercase().contains("auth"),
            "{cause}"
        );
    }
}
