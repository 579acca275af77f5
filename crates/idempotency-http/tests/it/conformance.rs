//! The rows of the conformance table in `docs/http.md` (IETF draft
//! draft-ietf-httpapi-idempotency-key-header-07) that a black-box HTTP client can observe
//! and that no other module tests already; each on memory, standalone Redis and the
//! cluster. The section of the draft is named on each test.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use idempotency_testkit::unique_key;

use crate::common::{App, Backend, Gate, Options, Reply};

/// Generous: CI is a loaded 2-core machine.
const WITHIN: Duration = Duration::from_secs(20);

/// `POST /gated` waits at `gate` and then creates (201); `GET`/`DELETE /counter` count.
fn extra(gate: &Gate) -> impl FnOnce(&Arc<AtomicU64>) -> Router + use<> {
    let gate = gate.clone();
    move |runs: &Arc<AtomicU64>| {
        let gated = Arc::clone(runs);
        let counted_get = Arc::clone(runs);
        let counted_delete = Arc::clone(runs);
        Router::new()
            .route(
                "/gated",
                post(move || {
                    let (runs, gate) = (Arc::clone(&gated), gate.clone());
                    async move {
                        gate.pass().await;
                        let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                        (StatusCode::CREATED, format!("gated {n}"))
                    }
                }),
            )
            .route(
                "/multi",
                post(|| async {
                    let mut response =
                        axum::response::Response::new(axum::body::Body::from("multi"));
                    *response.status_mut() = StatusCode::ACCEPTED;
                    let headers = response.headers_mut();
                    for value in ["b=2", "a=1", "c=3"] {
                        headers.append("x-multi", value.parse().expect("value"));
                    }
                    headers.append("cache-control", "no-store".parse().expect("value"));
                    headers.append("location", "/orders/7".parse().expect("value"));
                    response
                }),
            )
            .route(
                "/items/{id}",
                post(
                    |axum::extract::Path(id): axum::extract::Path<u32>| async move {
                        (StatusCode::CREATED, format!("item {id}"))
                    },
                ),
            )
            .route(
                "/counter",
                get(move || {
                    let runs = Arc::clone(&counted_get);
                    async move { format!("{}", runs.fetch_add(1, Ordering::SeqCst) + 1) }
                })
                .delete(move || {
                    let runs = Arc::clone(&counted_delete);
                    async move { format!("{}", runs.fetch_add(1, Ordering::SeqCst) + 1) }
                }),
            )
    }
}

async fn serve(backend: Backend, options: Options, gate: &Gate) -> App {
    backend.serve_with(options, extra(gate)).await
}

/// An RFC 9457 problem document with a stable `type`, the given status, every member
/// the draft's examples show, and none of `secrets` in it.
fn assert_problem(reply: &Reply, status: u16, slug: &str, secrets: &[&str]) {
    assert_eq!(reply.status, status, "{}", reply.body_text());
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    let doc: serde_json::Value = serde_json::from_slice(&reply.body).expect("problem json");
    let expected = format!("{}{slug}", idempotency_http::DEFAULT_PROBLEM_BASE);
    assert_eq!(doc["type"].as_str(), Some(expected.as_str()));
    assert_eq!(doc["status"].as_u64(), Some(u64::from(status)));
    assert!(doc["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(doc["detail"].as_str().is_some_and(|t| !t.is_empty()));
    let text = reply.body_text();
    for secret in secrets {
        assert!(!text.contains(secret), "echoes {secret:?}: {text}");
    }
}

// §2.1: the value is an sf-string; its escapes (`\"`, `\\`) decode, so the quoted form
// and the bare form of one key are one key; parameters make it malformed; non-ASCII
// inside the quotes is accepted (deliberately wider than RFC 8941).
on_every_store!(sf_string_escapes_decode_to_the_bare_key);
async fn sf_string_escapes_decode_to_the_bare_key(backend: Backend) {
    let app = serve(backend, Options::default(), &Gate::default()).await;
    let u = unique_key("sf");
    let quoted = format!(r#""a\"b\\c-{u}""#);
    let bare = format!(r#"a"b\c-{u}"#);
    let first = app.post("/orders", &quoted, "{}").await;
    let retry = app.post("/orders", &bare, "{}").await;
    assert_eq!((first.status, retry.status), (201, 201));
    assert!(retry.replayed(), "the escapes decode to the bare key");
    assert_eq!(retry.body, first.body);
    let with_params = app.post("/orders", &format!(r#""{u}-p";a=1"#), "{}").await;
    assert_problem(&with_params, 400, "idempotency-key-malformed", &[&u]);
    let non_ascii = format!("\"ключ-{u}\"");
    let a = app.post("/orders", &non_ascii, "{}").await;
    let b = app.post("/orders", &format!("ключ-{u}"), "{}").await;
    assert_eq!((a.status, b.status), (201, 201));
    assert!(b.replayed());
    assert_eq!(app.runs(), 2);
}

// Key length: 255 characters (Stripe's limit; the draft sets none) are accepted,
// counted in characters, not bytes (256 is refused: `malformed_keys_are_400`).
on_every_store!(a_key_of_255_characters_is_accepted);
async fn a_key_of_255_characters_is_accepted(backend: Backend) {
    let app = serve(backend, Options::default(), &Gate::default()).await;
    let u = unique_key("");
    let key: String = format!("{u}{}", "é".repeat(255 - u.chars().count()));
    assert_eq!(key.chars().count(), 255);
    let first = app.post("/orders", &key, "{}").await;
    let retry = app.post("/orders", &key, "{}").await;
    assert_eq!((first.status, retry.status), (201, 201));
    assert!(retry.replayed());
    assert_eq!(app.runs(), 1);
}

// §2.2: uniqueness of the key is defined by the resource: here per tenant, method and
// route. The same key on another route is another key.
on_every_store!(the_same_key_on_another_route_is_another_key);
async fn the_same_key_on_another_route_is_another_key(backend: Backend) {
    let app = serve(backend, Options::default(), &Gate::default()).await;
    let key = unique_key("route");
    let orders = app.post("/orders", &key, "{}").await;
    let big = app.post("/big", &key, "{}").await;
    assert_eq!((orders.status, big.status), (201, 200));
    assert!(!big.replayed());
    assert_eq!(app.runs(), 2);
    assert!(app.post("/orders", &key, "{}").await.replayed());
    assert!(app.post("/big", &key, "{}").await.replayed());
    assert_eq!(app.runs(), 2);
}

// §2.2: the scope is the matched route, not the concrete path: one key on
// `/items/1` and `/items/2` is one key used with two requests, 422.
on_every_store!(the_scope_is_the_matched_route_not_the_path);
async fn the_scope_is_the_matched_route_not_the_path(backend: Backend) {
    let app = serve(backend, Options::default(), &Gate::default()).await;
    let key = unique_key("items");
    let one = app.post("/items/1", &key, "{}").await;
    assert_eq!(one.status, 201);
    assert_eq!(one.body_text(), "item 1");
    let two = app.post("/items/2", &key, "{}").await;
    assert_problem(&two, 422, "idempotency-key-reused", &[&key]);
    assert!(app.post("/items/1", &key, "{}").await.replayed());
}

// §2.4 / §2.7: the fingerprint covers the query as well as the body: the same key with
// another query is a reuse with a different payload, 422.
on_every_store!(another_query_under_the_same_key_is_422);
async fn another_query_under_the_same_key_is_422(backend: Backend) {
    let app = serve(backend, Options::default(), &Gate::default()).await;
    let key = unique_key("query");
    let first = app.post("/orders?amount=1", &key, "{}").await;
    assert_eq!(first.status, 201);
    let other = app.post("/orders?amount=2", &key, "{}").await;
    assert_problem(&other, 422, "idempotency-key-reused", &[&key]);
    let same = app.post("/orders?amount=1", &key, "{}").await;
    assert!(same.replayed());
    assert_eq!(app.runs(), 1);
}

// §2.6 Retry: "the result of the previously completed operation, success or an error":
// a 4xx from the inner service (here axum refusing a body that is not UTF-8) is stored
// and replayed; the handler never runs.
on_every_store!(a_stored_client_error_is_replayed);
async fn a_stored_client_error_is_replayed(backend: Backend) {
    let app = serve(backend, Options::default(), &Gate::default()).await;
    let key = unique_key("4xx");
    let headers: [(&str, &[u8]); 1] = [("idempotency-key", key.as_bytes())];
    let first = app.send("POST", "/orders", &headers, b"\xff\xfe").await;
    assert_eq!(first.status, 400, "{}", first.body_text());
    assert!(!first.replayed());
    let retry = app.send("POST", "/orders", &headers, b"\xff\xfe").await;
    assert_eq!(retry.status, 400);
    assert!(retry.replayed(), "the error is the stored result");
    assert_eq!(retry.body, first.body);
    assert_eq!(app.runs(), 0);
}

// §2.6 Concurrent Request and §2.7: 409 with a problem body while the first request is
// processed; §2.7 "with the exception of 409 where no correction is required": the same
// request retried after it completes gets the result, without running again.
on_every_store!(a_409_needs_no_correction_the_same_retry_gets_the_result);
async fn a_409_needs_no_correction_the_same_retry_gets_the_result(backend: Backend) {
    let gate = Gate::default();
    let app = serve(backend, Options::default(), &gate).await;
    let key = unique_key("inflight");
    let first = {
        let (addr, key) = (app.addr, key.clone());
        tokio::spawn(async move {
            crate::common::send(
                addr,
                "POST",
                "/gated",
                &[("idempotency-key", key.as_bytes())],
                b"{}",
            )
            .await
        })
    };
    gate.wait_entered(1, WITHIN).await;
    let conflict = app.post("/gated", &key, "{}").await;
    assert_problem(&conflict, 409, "idempotency-key-in-flight", &[&key]);
    assert_eq!(conflict.header("retry-after"), Some("1"));
    let other_payload = app.post("/gated", &key, r#"{"other":1}"#).await;
    assert_problem(&other_payload, 422, "idempotency-key-reused", &[&key]);
    gate.open();
    let first = first.await.expect("first request");
    assert_eq!(first.status, 201);
    assert_eq!(first.body_text(), "gated 1");
    let retry = app.post("/gated", &key, "{}").await;
    assert_eq!(retry.status, 201);
    assert!(retry.replayed());
    assert_eq!(retry.body, first.body);
    assert_eq!(app.runs(), 1);
}

// §2.7: "Clients MUST correct the requests ... before performing a retry operation, or
// the resource MUST fail the request and return one of the above errors": an
// uncorrected 422 keeps failing, and never replaces the stored result.
on_every_store!(an_uncorrected_reuse_keeps_failing_with_422);
async fn an_uncorrected_reuse_keeps_failing_with_422(backend: Backend) {
    let app = serve(backend, Options::default(), &Gate::default()).await;
    let key = unique_key("uncorrected");
    let first = app.post("/orders", &key, r#"{"a":1}"#).await;
    assert_eq!(first.status, 201);
    for _ in 0..3 {
        let again = app.post("/orders", &key, r#"{"a":2}"#).await;
        assert_problem(&again, 422, "idempotency-key-reused", &[&key]);
    }
    let original = app.post("/orders", &key, r#"{"a":1}"#).await;
    assert!(original.replayed());
    assert_eq!(original.body, first.body);
    assert_eq!(app.runs(), 1);
}

// §2.7 and RFC 9457: every problem the layer answers is `application/problem+json`
// with `type`, `title`, `status` and `detail`, a stable `type` per problem, and never
// the key. (409 above; 503 in `storage` and `faults`.)
on_every_store!(every_problem_is_an_rfc9457_document);
async fn every_problem_is_an_rfc9457_document(backend: Backend) {
    let app = serve(
        backend,
        Options {
            requirement: idempotency_http::KeyRequirement::Required,
            ..Options::default()
        },
        &Gate::default(),
    )
    .await;
    let key = unique_key("problems");
    let missing = app.send("POST", "/orders", &[], b"{}").await;
    assert_problem(&missing, 400, "idempotency-key-missing", &[]);
    let malformed = app
        .send(
            "POST",
            "/orders",
            &[("idempotency-key", format!("\"{key}").as_bytes())],
            b"{}",
        )
        .await;
    assert_problem(&malformed, 400, "idempotency-key-malformed", &[&key]);
    let repeated = app
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
    assert_problem(&repeated, 400, "idempotency-key-repeated", &[&key]);
    let too_large = app
        .send(
            "POST",
            "/orders",
            &[("idempotency-key", key.as_bytes())],
            &vec![b'x'; 1024 * 1024 + 1],
        )
        .await;
    assert_problem(&too_large, 413, "idempotency-request-too-large", &[&key]);
    let created = app.post("/orders", &key, "{}").await;
    assert_eq!(created.status, 201, "no refusal stored anything");
    let reused = app.post("/orders", &key, "[]").await;
    assert_problem(&reused, 422, "idempotency-key-reused", &[&key]);
    assert_eq!(app.runs(), 1);
}

// Methods: only POST and PATCH are covered by default (the draft's non-idempotent
// methods); a key on GET or DELETE has no effect (as at Stripe): each request runs.
on_every_store!(a_key_on_get_or_delete_has_no_effect);
async fn a_key_on_get_or_delete_has_no_effect(backend: Backend) {
    let app = serve(backend, Options::default(), &Gate::default()).await;
    let key = unique_key("get");
    let headers: [(&str, &[u8]); 1] = [("idempotency-key", key.as_bytes())];
    let mut bodies = Vec::new();
    for method in ["GET", "GET", "DELETE", "DELETE"] {
        let reply = app.send(method, "/counter", &headers, b"").await;
        assert_eq!(reply.status, 200);
        assert!(!reply.replayed());
        bodies.push(reply.body_text());
    }
    assert_eq!(bodies, ["1", "2", "3", "4"]);
}

// §5 Security Considerations, injection: the key is data, never a pattern or part of a
// store command: keys holding glob and hash-tag characters are distinct keys, each
// replaying its own response (on the cluster `{...}` would be a hash tag if used raw).
on_every_store!(keys_are_data_never_patterns);
async fn keys_are_data_never_patterns(backend: Backend) {
    let app = serve(backend, Options::default(), &Gate::default()).await;
    let u = unique_key("glob");
    let keys = [
        format!("{u}*"),
        format!("{u}?"),
        format!("{u}[a]"),
        format!("{{{u}}}"),
        format!("{u} x"),
    ];
    let mut firsts = Vec::new();
    for key in &keys {
        let reply = app.post("/orders", key, "{}").await;
        assert_eq!(reply.status, 201);
        assert!(!reply.replayed(), "{key:?} met another key");
        firsts.push(reply.body);
    }
    for (key, first) in keys.iter().zip(&firsts) {
        let retry = app.post("/orders", key, "{}").await;
        assert!(retry.replayed());
        assert_eq!(&retry.body, first, "{key:?} replays its own response");
    }
    assert_eq!(app.runs(), keys.len() as u64);
}

// §2.6 Retry, "respond with the result of the previously completed operation": the
// whole result, every value of a repeated header in its order included.
on_every_store!(a_replay_keeps_every_header_value_in_order);
async fn a_replay_keeps_every_header_value_in_order(backend: Backend) {
    let app = serve(backend, Options::default(), &Gate::default()).await;
    let key = unique_key("multi");
    let first = app.post("/multi", &key, "{}").await;
    let retry = app.post("/multi", &key, "{}").await;
    assert_eq!((first.status, retry.status), (202, 202));
    assert!(retry.replayed());
    let values = |reply: &Reply, name: &str| -> Vec<Vec<u8>> {
        reply
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    };
    for name in ["x-multi", "cache-control", "location"] {
        assert_eq!(values(&retry, name), values(&first, name), "{name}");
    }
    assert_eq!(
        values(&retry, "x-multi"),
        [b"b=2".to_vec(), b"a=1".to_vec(), b"c=3".to_vec()]
    );
    assert_eq!(retry.body, b"multi");
}
