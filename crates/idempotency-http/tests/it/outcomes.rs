//! The layer's outcome (response and request extensions, the span field), per-layer
//! in-flight modes and maximum wait on one shared coordinator, and the metric series a
//! replay, a conflict and a mismatch count.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::response::Response;
use axum::routing::post;
use bytes::Bytes;
use http_body_util::Full;
use idempotency_coordinator::{Coordinator, ReservationStore};
use idempotency_http::{HttpOutcome, IdempotencyLayer, KeyRequirement, WhileInFlight};
use idempotency_testkit::RecordingMetrics;
use idempotency_testkit::unique_key;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::common::{Backend, Reply, send};

/// Copies the layer's outcome from the response extension into `x-outcome`, as an outer
/// logging middleware would read it.
async fn expose(response: Response) -> Response {
    let outcome = response
        .extensions()
        .get::<HttpOutcome>()
        .map_or("none", |o| o.as_str());
    let mut response = response;
    response
        .headers_mut()
        .insert("x-outcome", axum::http::HeaderValue::from_static(outcome));
    response
}

/// A handler that counts its runs, waits for `gate` to open, and answers with what the
/// layer told it in the request extension.
fn handler(runs: &Arc<AtomicU64>, gate: &watch::Receiver<bool>) -> axum::routing::MethodRouter {
    let (runs, gate) = (Arc::clone(runs), gate.clone());
    post(move |request: Request| {
        let (runs, mut gate) = (Arc::clone(&runs), gate.clone());
        async move {
            let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
            let _ = gate.wait_for(|open| *open).await;
            let seen = request
                .extensions()
                .get::<HttpOutcome>()
                .map_or("none", |o| o.as_str());
            format!("run {n}; handler saw {seen}")
        }
    })
}

struct Served {
    addr: std::net::SocketAddr,
    runs: Arc<AtomicU64>,
    open: watch::Sender<bool>,
}

/// `/orders` (409 on a duplicate in flight) and `/payments` (waits at most 300 ms), each
/// behind its own layer on one shared coordinator.
async fn serve<S: ReservationStore>(coordinator: Coordinator<S>, gate_open: bool) -> Served {
    let runs = Arc::new(AtomicU64::new(0));
    let (open, gate) = watch::channel(gate_open);
    let orders = IdempotencyLayer::on(coordinator.clone())
        .with_key_requirement(KeyRequirement::Optional)
        .build()
        .expect("layer");
    let payments = IdempotencyLayer::on(coordinator)
        .with_in_flight(WhileInFlight::Wait)
        .with_max_wait(Duration::from_millis(300))
        .build()
        .expect("layer");
    let router = Router::new()
        .route("/orders", handler(&runs, &gate).layer(orders))
        .route("/payments", handler(&runs, &gate).layer(payments))
        .layer(axum::middleware::map_response(expose));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    Served { addr, runs, open }
}

async fn post_with(addr: std::net::SocketAddr, path: &str, key: Option<&str>, body: &str) -> Reply {
    let headers: Vec<(&str, &[u8])> = key
        .map(|k| vec![("idempotency-key", k.as_bytes())])
        .unwrap_or_default();
    send(addr, "POST", path, &headers, body.as_bytes()).await
}

fn outcome(reply: &Reply) -> &str {
    reply.header("x-outcome").unwrap_or("missing")
}

/// Waits (generously) until the handler has been entered `n` times.
async fn entered(runs: &AtomicU64, n: u64) {
    assert!(
        crate::common::wait_until(Duration::from_secs(10), || async {
            runs.load(Ordering::SeqCst) >= n
        })
        .await,
        "the handler was entered {n} times"
    );
}

async fn outcomes_reach_the_response_the_request_and_the_metrics(backend: Backend) {
    match backend {
        Backend::Memory(store) => outcomes_on(store).await,
        Backend::Redis(store, _server, _cluster) => outcomes_on(store).await,
    }
}

async fn outcomes_on<S: ReservationStore>(store: S) {
    let metrics = Arc::new(RecordingMetrics::default());
    let coordinator = Coordinator::builder(store)
        .metrics(metrics.clone())
        .build()
        .expect("coordinator");
    let app = serve(coordinator, true).await;
    let key = unique_key("outcome");

    let first = post_with(app.addr, "/orders", Some(&key), "{}").await;
    assert_eq!((first.status, outcome(&first)), (200, "executed"));
    assert_eq!(first.body_text(), "run 1; handler saw executed");
    let retry = post_with(app.addr, "/orders", Some(&key), "{}").await;
    assert_eq!((retry.status, outcome(&retry)), (200, "replayed"));
    assert_eq!(retry.body_text(), first.body_text());
    let other = post_with(app.addr, "/orders", Some(&key), r#"{"other":1}"#).await;
    assert_eq!((other.status, outcome(&other)), (422, "mismatch"));
    let bare = post_with(app.addr, "/orders", None, "{}").await;
    assert_eq!((bare.status, outcome(&bare)), (200, "bypassed"));
    assert_eq!(bare.body_text(), "run 2; handler saw bypassed");
    let bad = send(
        app.addr,
        "POST",
        "/orders",
        &[("idempotency-key", b"")],
        b"{}",
    )
    .await;
    assert_eq!((bad.status, outcome(&bad)), (400, "rejected"));

    // The coordinator's series, labelled with the layer's operation: one miss for the
    // first request, a hit for the replay, a key_reuse error for the mismatch.
    let calls = metrics.calls();
    let of = |kind: &str, detail: &str| {
        calls
            .iter()
            .filter(|(k, op, d)| k == kind && d == detail && op == "POST /orders")
            .count()
    };
    assert_eq!(of("miss", ""), 1, "{calls:?}");
    assert_eq!(of("hit", ""), 1, "{calls:?}");
    assert_eq!(of("error", "key_reuse"), 1, "{calls:?}");
}

async fn each_layer_keeps_its_in_flight_mode_on_a_shared_coordinator(backend: Backend) {
    match backend {
        Backend::Memory(store) => modes_on(store).await,
        Backend::Redis(store, _server, _cluster) => modes_on(store).await,
    }
}

async fn modes_on<S: ReservationStore>(store: S) {
    let metrics = Arc::new(RecordingMetrics::default());
    let coordinator = Coordinator::builder(store)
        .metrics(metrics.clone())
        .build()
        .expect("coordinator");
    let app = serve(coordinator, false).await;

    // /orders: a duplicate in flight is a 409 at once.
    let key = unique_key("modes");
    let addr = app.addr;
    let first = {
        let key = key.clone();
        tokio::spawn(async move { post_with(addr, "/orders", Some(&key), "{}").await })
    };
    entered(&app.runs, 1).await;
    let conflict = post_with(addr, "/orders", Some(&key), "{}").await;
    assert_eq!((conflict.status, outcome(&conflict)), (409, "conflict"));
    assert!(conflict.header("retry-after").is_some());
    assert!(
        metrics
            .calls()
            .iter()
            .any(|(k, op, _)| k == "collision" && op == "POST /orders"),
        "the conflict is counted as a collision"
    );

    // /payments: a duplicate waits, but at most 300 ms, then 409 while the first still
    // runs (the gate is closed).
    let pay_key = unique_key("modes");
    let paying = {
        let pay_key = pay_key.clone();
        tokio::spawn(async move { post_with(addr, "/payments", Some(&pay_key), "{}").await })
    };
    entered(&app.runs, 2).await;
    let asked = std::time::Instant::now();
    let bounded = post_with(addr, "/payments", Some(&pay_key), "{}").await;
    assert_eq!((bounded.status, outcome(&bounded)), (409, "conflict"));
    // Bounded by the layer's 300 ms, not by the coordinator's 30 s lease (the margin is
    // for a loaded machine).
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    assert!(!paying.is_finished(), "the first payment still runs");

    // Open the gate while a duplicate waits: it gets the first response, marked.
    let waiting = {
        let pay_key = pay_key.clone();
        tokio::spawn(async move { post_with(addr, "/payments", Some(&pay_key), "{}").await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    app.open.send_replace(true);
    let paid = paying.await.expect("task");
    let waited = waiting.await.expect("task");
    assert_eq!((paid.status, outcome(&paid)), (200, "executed"));
    assert_eq!(waited.status, 200);
    assert!(
        matches!(outcome(&waited), "waited_then_replayed" | "replayed"),
        "a duplicate that waited gets the replay: {}",
        outcome(&waited)
    );
    assert_eq!(waited.body_text(), paid.body_text());
    assert_eq!(first.await.expect("task").status, 200);
    assert_eq!(app.runs.load(Ordering::SeqCst), 2, "one run per key");
}

on_every_store!(outcomes_reach_the_response_the_request_and_the_metrics);
on_every_store!(each_layer_keeps_its_in_flight_mode_on_a_shared_coordinator);

/// The inner service of the span test: answers 201 with a fixed body.
#[derive(Clone)]
struct Created;

impl tower_service::Service<http::Request<Full<Bytes>>> for Created {
    type Response = http::Response<Full<Bytes>>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<Full<Bytes>>) -> Self::Future {
        Box::pin(async {
            let mut response = http::Response::new(Full::new(Bytes::from_static(b"created")));
            *response.status_mut() = http::StatusCode::CREATED;
            Ok(response)
        })
    }
}

/// Captures the `outcome` recorded on `idempotency_http` spans.
struct Outcomes(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>>
    tracing_subscriber::Layer<S> for Outcomes
{
    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        context: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Visit<'a>(&'a Mutex<Vec<String>>);
        impl tracing::field::Visit for Visit<'_> {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "outcome" {
                    self.0
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(value.to_owned());
                }
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        if context
            .span(id)
            .is_some_and(|span| span.name() == "idempotency_http")
        {
            values.record(&mut Visit(&self.0));
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_outcome_is_a_field_of_the_layers_span() {
    use tower_layer::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let subscriber = tracing_subscriber::registry().with(Outcomes(Arc::clone(&recorded)));
    let _default = tracing::subscriber::set_default(subscriber);
    // Tests on other threads may have registered the span's callsite while no subscriber
    // of theirs was interested (tracing caches that per callsite): ask again now that
    // this thread's subscriber is in place, or its spans may go unrecorded.
    tracing::callsite::rebuild_interest_cache();
    let layer = IdempotencyLayer::builder(idempotency_coordinator::MemoryStore::new())
        .build()
        .expect("layer");
    let mut service = layer.layer(Created);
    let key = unique_key("span");
    for body in ["a", "a", "b"] {
        let request = http::Request::post("/orders")
            .header("idempotency-key", key.as_str())
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        std::future::poll_fn(|cx| tower_service::Service::poll_ready(&mut service, cx))
            .await
            .expect("ready");
        let response = tower_service::Service::call(&mut service, request)
            .await
            .expect("response");
        assert!(response.extensions().get::<HttpOutcome>().is_some());
    }
    let recorded = recorded
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    assert_eq!(recorded, ["executed", "replayed", "mismatch"]);
}

async fn json_pointer_fingerprints_compare_the_chosen_members(backend: Backend) {
    match backend {
        Backend::Memory(store) => json_pointers_on(store).await,
        Backend::Redis(store, _server, _cluster) => json_pointers_on(store).await,
    }
}

async fn json_pointers_on<S: ReservationStore>(store: S) {
    let runs = Arc::new(AtomicU64::new(0));
    let (_open, gate) = watch::channel(true);
    let layer = IdempotencyLayer::builder(store)
        .with_fingerprint_json_pointers(["/amount", "/to/iban"])
        .build()
        .expect("layer");
    let router = Router::new()
        .route("/transfers", handler(&runs, &gate).layer(layer))
        .layer(axum::middleware::map_response(expose));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    let key = unique_key("pointers");
    let first = post_with(
        addr,
        "/transfers",
        Some(&key),
        r#"{"amount": 10, "to": {"iban": "DE1"}, "note": "rent"}"#,
    )
    .await;
    assert_eq!((first.status, outcome(&first)), (200, "executed"));
    // Reordered, respaced, another unselected member: the same request.
    let same = post_with(
        addr,
        "/transfers",
        Some(&key),
        r#"{"note":"rent, again","to":{"iban":"DE1"},"amount":10}"#,
    )
    .await;
    assert_eq!((same.status, outcome(&same)), (200, "replayed"));
    let changed = post_with(
        addr,
        "/transfers",
        Some(&key),
        r#"{"amount": 11, "to": {"iban": "DE1"}}"#,
    )
    .await;
    assert_eq!((changed.status, outcome(&changed)), (422, "mismatch"));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

on_every_store!(json_pointer_fingerprints_compare_the_chosen_members);
