//! The store unreachable before the handler: fail closed (503) by default, fail open by
//! option. Redis behind the testkit's proxy, black-holed.

use std::time::Duration;

use idempotency_coordinator::{ConnectOptions, RedisStore};
use idempotency_testkit::proxy::{Mode, Proxy};
use idempotency_testkit::{shared_server, unique_key};

use crate::common::{App, Keep, Options};

async fn app_behind_proxy(options: Options) -> (App, Proxy) {
    let server = shared_server();
    let proxy = Proxy::start(server.addr());
    let store = RedisStore::connect(
        &proxy.url(),
        &ConnectOptions::default().with_command_timeout(Duration::from_millis(500)),
    )
    .await
    .expect("connect");
    let app = App::start(store, options, Keep(Some(server), None)).await;
    let warm = app.post("/orders", &unique_key("warm"), "{}").await;
    assert_eq!(warm.status, 201);
    (app, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storage_down_fails_closed_with_503_and_retry_after() {
    let (app, proxy) = app_behind_proxy(Options::default()).await;
    proxy.set_mode(Mode::Freeze);
    let key = unique_key("down");
    let reply = app.post("/orders", &key, "{}").await;
    proxy.set_mode(Mode::Pass);
    assert_eq!(reply.status, 503, "{}", reply.body_text());
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    assert!(!reply.body_text().contains(&key));
    assert_eq!(app.runs(), 1, "the handler did not run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storage_down_runs_the_handler_when_failing_open() {
    let (app, proxy) = app_behind_proxy(Options {
        storage_down: idempotency_http::StorageDown::FailOpen,
        ..Options::default()
    })
    .await;
    proxy.set_mode(Mode::Freeze);
    let reply = app.post("/orders", &unique_key("open"), "{}").await;
    proxy.set_mode(Mode::Pass);
    assert_eq!(reply.status, 201, "{}", reply.body_text());
    assert_eq!(app.runs(), 2);
}
