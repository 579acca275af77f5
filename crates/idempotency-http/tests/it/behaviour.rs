//! One behaviour per test, each on memory, standalone Redis and the cluster.

use idempotency_testkit::unique_key;

use crate::common::{Backend, Options, Reply};

fn assert_problem(reply: &Reply, status: u16, slug: &str, secrets: &[&str]) {
    assert_eq!(reply.status, status, "{}", reply.body_text());
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    let doc: serde_json::Value = serde_json::from_slice(&reply.body).expect("problem json");
    assert_eq!(
        doc["type"].as_str(),
        Some(format!("{}{slug}", idempotency_http::DEFAULT_PROBLEM_BASE).as_str())
    );
    assert_eq!(doc["status"].as_u64(), Some(u64::from(status)));
    let text = reply.body_text();
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "the problem echoes {secret:?}: {text}"
        );
    }
}

on_every_store!(a_retry_replays_status_headers_and_body);
async fn a_retry_replays_status_headers_and_body(backend: Backend) {
    let app = backend.serve(Options::default()).await;
    let key = unique_key("replay");
    let first = app.post("/orders", &key, "{}").await;
    assert_eq!(first.status, 201);
    assert!(!first.replayed());
    assert!(
        first.header("set-cookie").is_some(),
        "the first client gets its cookie"
    );
    let retry = app.post("/orders", &key, "{}").await;
    assert_eq!(retry.status, 201);
    assert!(retry.replayed());
    assert_eq!(retry.body, first.body);
    assert_eq!(retry.header("x-order"), first.header("x-order"));
    assert_eq!(retry.header("content-type"), Some("application/json"));
    assert_eq!(
        retry.header("set-cookie"),
        None,
        "Set-Cookie is never replayed"
    );
    assert_eq!(app.runs(), 1);
}

on_every_store!(a_non_ascii_key_with_a_colon_is_one_key);
async fn a_non_ascii_key_with_a_colon_is_one_key(backend: Backend) {
    let app = backend.serve(Options::default()).await;
    let key = format!("заказ:日本:{}", unique_key("k"));
    let first = app.post("/orders", &key, "{}").await;
    let retry = app.post("/orders", &key, "{}").await;
    assert_eq!((first.status, retry.status), (201, 201));
    assert!(retry.replayed());
    assert_eq!(retry.body, first.body);
    assert_eq!(app.runs(), 1);
}

on_every_store!(quoted_and_bare_forms_are_one_key);
async fn quoted_and_bare_forms_are_one_key(backend: Backend) {
    let app = backend.serve(Options::default()).await;
    let key = unique_key("quoted");
    let first = app.post("/orders", &format!("\"{key}\""), "{}").await;
    let retry = app.post("/orders", &key, "{}").await;
    assert_eq!((first.status, retry.status), (201, 201));
    assert!(retry.replayed());
    assert_eq!(retry.body, first.body);
    assert_eq!(app.runs(), 1);
}

on_every_store!(a_repeated_header_is_400);
async fn a_repeated_header_is_400(backend: Backend) {
    let app = backend.serve(Options::default()).await;
    let key = unique_key("twice");
    let reply = app
        .send(
            "POST",
            "/orders",
            &[
                ("idempotency-key", key.as_bytes()),
                ("idempotency-key", key.as_bytes()),
            ],
            b"{}",
        )
        .await;
    assert_problem(&reply, 400, "idempotency-key-repeated", &[&key]);
    assert_eq!(app.runs(), 0);
}

on_every_store!(malformed_keys_are_400);
async fn malformed_keys_are_400(backend: Backend) {
    let app = backend.serve(Options::default()).await;
    let long = "é".repeat(256);
    let cases: [&[u8]; 4] = [b"\"\"", b"\xff\xfe", long.as_bytes(), b"\"open"];
    for value in cases {
        let reply = app
            .send("POST", "/orders", &[("idempotency-key", value)], b"{}")
            .await;
        assert_problem(&reply, 400, "idempotency-key-malformed", &[]);
    }
    assert_eq!(app.runs(), 0);
}

on_every_store!(a_missing_required_key_is_400_and_an_optional_one_passes_through);
async fn a_missing_required_key_is_400_and_an_optional_one_passes_through(backend: Backend) {
    let optional = match &backend {
        Backend::Memory(_) => Backend::memory(),
        Backend::Redis(..) => Backend::standalone().await,
    }
    .serve(Options::default())
    .await;
    for _ in 0..2 {
        let reply = optional.send("POST", "/orders", &[], b"{}").await;
        assert_eq!(reply.status, 201);
        assert!(!reply.replayed());
    }
    assert_eq!(optional.runs(), 2);
    let required = backend
        .serve(Options {
            requirement: idempotency_http::KeyRequirement::Required,
            ..Options::default()
        })
        .await;
    let reply = required.send("POST", "/orders", &[], b"{}").await;
    assert_problem(&reply, 400, "idempotency-key-missing", &[]);
    let get = required.send("GET", "/orders", &[], b"").await;
    assert_eq!(get.status, 405, "other methods pass through to the router");
    assert_eq!(required.runs(), 0);
}

on_every_store!(tenants_never_share_keys);
async fn tenants_never_share_keys(backend: Backend) {
    let app = backend
        .serve(Options {
            tenant_header: true,
            ..Options::default()
        })
        .await;
    let key = unique_key("tenant");
    let post = |tenant: &'static str| {
        let (app, key) = (&app, key.clone());
        async move {
            app.send(
                "POST",
                "/orders",
                &[
                    ("idempotency-key", key.as_bytes()),
                    ("x-tenant", tenant.as_bytes()),
                ],
                b"{}",
            )
            .await
        }
    };
    let a = post("alice").await;
    let b = post("bob").await;
    assert_eq!((a.status, b.status), (201, 201));
    assert!(!b.replayed(), "bob never gets alice's response");
    assert_ne!(a.body, b.body);
    let a_again = post("alice").await;
    assert!(a_again.replayed());
    assert_eq!(a_again.body, a.body);
    assert_eq!(app.runs(), 2);
}

on_every_store!(a_response_over_the_body_limit_is_returned_but_not_stored);
async fn a_response_over_the_body_limit_is_returned_but_not_stored(backend: Backend) {
    let app = backend
        .serve(Options {
            max_response_body: Some(1024),
            ..Options::default()
        })
        .await;
    let key = unique_key("big");
    let first = app.post("/big", &key, "{}").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body, format!("1:{}", "x".repeat(4096)).into_bytes());
    let retry = app.post("/big", &key, "{}").await;
    assert_eq!(retry.status, 200);
    assert!(!retry.replayed());
    assert!(retry.body_text().starts_with("2:"), "the key was released");
    assert_eq!(app.runs(), 2);
    assert_eq!(app.stats.oversized(), 2);
}

on_every_store!(a_5xx_is_not_stored);
async fn a_5xx_is_not_stored(backend: Backend) {
    let app = backend.serve(Options::default()).await;
    let key = unique_key("fail");
    let first = app.post("/fail", &key, "{}").await;
    let retry = app.post("/fail", &key, "{}").await;
    assert_eq!((first.status, retry.status), (503, 503));
    assert_eq!(first.body_text(), "failure 1");
    assert_eq!(retry.body_text(), "failure 2");
    assert!(!retry.replayed());
    assert_eq!(app.stats.not_stored(), 2);
}

on_every_store!(a_different_body_under_the_same_key_is_422);
async fn a_different_body_under_the_same_key_is_422(backend: Backend) {
    let app = backend.serve(Options::default()).await;
    let key = unique_key("reuse");
    let first = app.post("/orders", &key, r#"{"amount":1}"#).await;
    assert_eq!(first.status, 201);
    let other = app.post("/orders", &key, r#"{"amount":2}"#).await;
    assert_problem(&other, 422, "idempotency-key-reused", &[&key]);
    assert_eq!(app.runs(), 1);
}

on_every_store!(a_streaming_response_is_buffered_stored_and_replayed);
async fn a_streaming_response_is_buffered_stored_and_replayed(backend: Backend) {
    let app = backend.serve(Options::default()).await;
    let key = unique_key("stream");
    let first = app.post("/stream", &key, "{}").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body_text(), "run 1;two;three");
    let retry = app.post("/stream", &key, "{}").await;
    assert!(retry.replayed());
    assert_eq!(retry.body, first.body);
    assert_eq!(app.runs(), 1);
}
