//! The framework-neutral core driven by hand, as a framework other than tower would:
//! admit, read the body, plan, run. It must behave as the layer does.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use idempotency_coordinator::MemoryStore;
use idempotency_http::{Admission, HttpIdempotency, HttpOutcome, IdempotencyLayer, KeyRequirement};

/// One request through the core: what the response was and what the layer did.
async fn serve(
    decisions: &HttpIdempotency<MemoryStore>,
    runs: &Arc<AtomicU64>,
    key: Option<&str>,
    body: &'static str,
    hold: Duration,
) -> (StatusCode, HttpOutcome, Bytes) {
    let mut request = Request::post("/orders");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let (mut parts, body) = request
        .body(Bytes::from_static(body.as_bytes()))
        .expect("request")
        .into_parts();
    let response = match decisions.admit(&parts) {
        Admission::Refuse(response) => response,
        Admission::Bypass => panic!("a POST is the layer's"),
        Admission::Idempotent(admitted) => {
            let plan = decisions.plan(&mut parts, &admitted, &body);
            let runs = Arc::clone(runs);
            decisions
                .run(&plan, move || async move {
                    let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                    tokio::time::sleep(hold).await;
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(StatusCode::CREATED)
                            .body(Full::new(Bytes::from(format!("order {n}"))))
                            .expect("response"),
                    )
                })
                .await
                .expect("infallible")
        }
        _ => panic!("an admission this test does not know"),
    };
    let status = response.status();
    let outcome = *response
        .extensions()
        .get::<HttpOutcome>()
        .expect("an outcome");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, outcome, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_neutral_core_runs_once_replays_refuses_reuse_and_conflicts() {
    let decisions = IdempotencyLayer::builder(MemoryStore::new())
        .with_key_requirement(KeyRequirement::Required)
        .build()
        .expect("layer")
        .decisions();
    let runs = Arc::new(AtomicU64::new(0));
    let short = Duration::ZERO;

    let first = serve(&decisions, &runs, Some("\"k-1\""), "{\"sku\":1}", short).await;
    assert_eq!(
        first,
        (
            StatusCode::CREATED,
            HttpOutcome::Executed,
            Bytes::from("order 1")
        )
    );
    let again = serve(&decisions, &runs, Some("\"k-1\""), "{\"sku\":1}", short).await;
    assert_eq!(
        again,
        (
            StatusCode::CREATED,
            HttpOutcome::Replayed,
            Bytes::from("order 1")
        )
    );
    let reused = serve(&decisions, &runs, Some("\"k-1\""), "{\"sku\":2}", short).await;
    assert_eq!(
        (reused.0, reused.1),
        (StatusCode::UNPROCESSABLE_ENTITY, HttpOutcome::Mismatch)
    );
    let missing = serve(&decisions, &runs, None, "{}", short).await;
    assert_eq!(
        (missing.0, missing.1),
        (StatusCode::BAD_REQUEST, HttpOutcome::Rejected)
    );

    // A duplicate while the first is still running gets 409 (the default in-flight mode).
    let slow = {
        let decisions = decisions.clone();
        let runs = Arc::clone(&runs);
        tokio::spawn(async move {
            serve(
                &decisions,
                &runs,
                Some("\"k-2\""),
                "{}",
                Duration::from_millis(500),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let duplicate = serve(&decisions, &runs, Some("\"k-2\""), "{}", short).await;
    assert_eq!(
        (duplicate.0, duplicate.1),
        (StatusCode::CONFLICT, HttpOutcome::Conflict)
    );
    assert_eq!(slow.await.expect("task").1, HttpOutcome::Executed);
    assert_eq!(runs.load(Ordering::SeqCst), 2, "one run per key");
}
