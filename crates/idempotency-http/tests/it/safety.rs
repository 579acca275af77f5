//! Safe defaults: one key space per client (credentials), credential headers never
//! replayed, bounded metric labels, no route braces in Redis keys.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::http::{HeaderValue, StatusCode};
use axum::routing::post;
use idempotency_coordinator::{Coordinator, MemoryStore};
use idempotency_http::IdempotencyLayer;
use idempotency_testkit::RecordingMetrics;
use idempotency_testkit::unique_key;
use tokio::net::TcpListener;

use crate::common::{App, Keep, Options, send};

async fn post_as(
    app: &App,
    path: &str,
    key: &str,
    auth: Option<&str>,
    cookie: Option<&str>,
) -> crate::common::Reply {
    let mut headers: Vec<(&str, &[u8])> = vec![("idempotency-key", key.as_bytes())];
    if let Some(auth) = auth {
        headers.push(("authorization", auth.as_bytes()));
    }
    if let Some(cookie) = cookie {
        headers.push(("cookie", cookie.as_bytes()));
    }
    app.send("POST", path, &headers, b"{}").await
}

/// The test app's standard routes behind `builder`'s layer, on the in-memory store.
async fn on_memory(builder: idempotency_http::IdempotencyLayerBuilder<MemoryStore>) -> App {
    App::start_with(
        builder,
        Options::default(),
        |_| Router::new(),
        Keep(None, None),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_with_different_credentials_never_share_a_record() {
    let app = crate::common::Backend::memory()
        .serve(Options::default())
        .await;
    let key = unique_key("shared");
    let alice = post_as(&app, "/orders", &key, Some("Bearer alice"), None).await;
    assert_eq!(alice.status, 201);
    let bob = post_as(&app, "/orders", &key, Some("Bearer bob"), None).await;
    assert_eq!(bob.status, 201);
    assert!(!bob.replayed(), "bob got alice's response");
    assert_eq!(bob.header("x-order"), Some("2"));
    assert_eq!(app.runs(), 2);
    let again = post_as(&app, "/orders", &key, Some("Bearer alice"), None).await;
    assert!(again.replayed());
    assert_eq!(again.header("x-order"), Some("1"));
    // Without credentials: the anonymous space, apart from both.
    let anonymous = post_as(&app, "/orders", &key, None, None).await;
    assert!(!anonymous.replayed());
    assert_eq!(app.runs(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_in_flight_for_one_client_is_no_conflict_for_another() {
    let app = crate::common::Backend::memory()
        .serve(Options::default())
        .await;
    let key = unique_key("probe");
    let slow = {
        let addr = app.addr;
        let key = key.clone();
        tokio::spawn(async move {
            send(
                addr,
                "POST",
                "/slow",
                &[
                    ("idempotency-key", key.as_bytes()),
                    ("authorization", b"Bearer alice"),
                ],
                b"{}",
            )
            .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let bob = post_as(&app, "/slow", &key, Some("Bearer bob"), None).await;
    assert_eq!(
        bob.status,
        201,
        "bob probed alice's key: {}",
        bob.body_text()
    );
    assert_eq!(slow.await.expect("task").status, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_key_space_is_an_explicit_opt_out() {
    let builder = IdempotencyLayer::builder(MemoryStore::new()).with_shared_key_space();
    let app = on_memory(builder).await;
    let key = unique_key("opt-out");
    post_as(&app, "/orders", &key, Some("Bearer alice"), None).await;
    let bob = post_as(&app, "/orders", &key, Some("Bearer bob"), None).await;
    assert!(bob.replayed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_session_cookie_scopes_keys_and_other_cookies_do_not() {
    let builder = IdempotencyLayer::builder(MemoryStore::new()).with_session_cookies(["sid"]);
    let app = on_memory(builder).await;
    let key = unique_key("cookie");
    post_as(&app, "/orders", &key, None, Some("sid=1; _ga=a")).await;
    let other = post_as(&app, "/orders", &key, None, Some("_ga=a; sid=2")).await;
    assert!(!other.replayed(), "another session shared the key");
    let retry = post_as(&app, "/orders", &key, None, Some("_ga=b; sid=1")).await;
    assert!(
        retry.replayed(),
        "an analytics cookie changed the key space"
    );
    assert_eq!(app.runs(), 2);
}

/// A route answering with credential headers, one of them marked sensitive.
fn credential_route(runs: &Arc<AtomicU64>) -> Router {
    let runs = Arc::clone(runs);
    Router::new().route(
        "/login",
        post(move || {
            let runs = Arc::clone(&runs);
            async move {
                let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                let mut secret = HeaderValue::from_static("s3cret");
                secret.set_sensitive(true);
                (
                    StatusCode::OK,
                    [
                        (
                            "set-cookie",
                            HeaderValue::from_str(&format!("session={n}")).expect("value"),
                        ),
                        ("x-auth-token", HeaderValue::from_static("token-1")),
                        ("x-custom", HeaderValue::from_static("custom")),
                        ("x-secret", secret),
                        ("x-kept", HeaderValue::from_static("kept")),
                    ],
                    "ok",
                )
            }
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_to_the_deny_list_keeps_the_defaults() {
    let builder = IdempotencyLayer::builder(MemoryStore::new())
        .with_deny_headers([axum::http::HeaderName::from_static("x-custom")]);
    let app = App::start_with(
        builder,
        Options::default(),
        credential_route,
        Keep(None, None),
    )
    .await;
    let key = unique_key("deny");
    let first = app.post("/login", &key, "").await;
    assert_eq!(first.header("set-cookie"), Some("session=1"));
    let replay = app.post("/login", &key, "").await;
    assert!(replay.replayed());
    for name in ["set-cookie", "x-auth-token", "x-custom", "x-secret"] {
        assert_eq!(replay.header(name), None, "{name} was replayed");
    }
    assert_eq!(replay.header("x-kept"), Some("kept"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_labels_stay_bounded_and_route_braces_never_reach_the_key() {
    let metrics = Arc::new(RecordingMetrics::default());
    let coordinator = Coordinator::builder(MemoryStore::new())
        .metrics(metrics.clone())
        .build()
        .expect("coordinator");
    let layer = IdempotencyLayer::on(coordinator).build().expect("layer");
    let router = Router::new()
        .route("/orders/{id}", post(|| async { "routed" }))
        .fallback(|| async { "fallback" })
        .layer(layer);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    for i in 0..30 {
        let key = unique_key("label");
        let path = format!("/anything/{i}");
        let reply = send(
            addr,
            "POST",
            &path,
            &[("idempotency-key", key.as_bytes())],
            b"",
        )
        .await;
        assert_eq!(reply.status, 200);
        let order_path = format!("/orders/{i}");
        send(
            addr,
            "POST",
            &order_path,
            &[("idempotency-key", key.as_bytes())],
            b"",
        )
        .await;
    }
    let operations: std::collections::BTreeSet<String> =
        metrics.calls().into_iter().map(|(_, op, _)| op).collect();
    assert_eq!(
        operations,
        ["POST (unrouted)", "POST /orders/(id)"]
            .map(str::to_owned)
            .into_iter()
            .collect(),
        "one label per route, none per path"
    );
}
