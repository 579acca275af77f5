//! An HTTP service behind the `Idempotency-Key` layer: `POST /orders` creates an order at
//! most once per key (a retry gets the stored response replayed, with
//! `Idempotent-Replayed: true`), `GET /metrics` serves the Prometheus scrape.
//!
//! In memory by default; on Redis when `REDIS_URL` is set. Listens on `LISTEN` (default
//! `127.0.0.1:3000`); stops on Ctrl-C or SIGTERM, finishing the requests in flight.
//!
//! ```text
//! cargo run -p idempotency-examples-services --example http_service
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p idempotency-examples-services --example http_service
//!
//! curl -si -XPOST localhost:3000/orders -H 'Idempotency-Key: k1' -H 'x-account: ann' \
//!      -H 'content-type: application/json' -d '{"item":"book","quantity":2}'
//! # the same again: the same order, with Idempotent-Replayed: true
//! # another body with the same key: 422; a duplicate while the first runs: 409
//! curl -s localhost:3000/metrics | grep idempotency_
//! ```
//!
//! `RUST_LOG=debug` shows each request's outcome (executed, replayed, conflict, …).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use idempotency_coordinator::{
    ConnectOptions, Coordinator, Drained, IdempotencySettings, MemoryStore, PrometheusMetrics,
    ReservationStore, connect_client, redis_coordinator,
};
use idempotency_http::{HttpOutcome, IdempotencyLayer, KeyRequirement};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct NewOrder {
    item: String,
    quantity: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    order_id: u64,
    item: String,
    quantity: u32,
}

/// The handler knows nothing of idempotency: the layer runs it at most once per key.
async fn create_order(
    State(next_id): State<Arc<AtomicU64>>,
    Json(order): Json<NewOrder>,
) -> (StatusCode, Json<Order>) {
    let order_id = next_id.fetch_add(1, Ordering::SeqCst) + 1;
    (
        StatusCode::CREATED,
        Json(Order {
            order_id,
            item: order.item,
            quantity: order.quantity,
        }),
    )
}

/// Logs what the layer did with each request (its `HttpOutcome` response extension).
async fn log_outcome(request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    if let Some(outcome) = response.extensions().get::<HttpOutcome>() {
        tracing::debug!(path, %outcome, status = response.status().as_u16(), "request");
    }
    response
}

/// The routes behind the layer, on whichever store the coordinator has.
fn app<S: ReservationStore>(
    coordinator: Coordinator<S>,
    registry: prometheus::Registry,
) -> Result<Router, idempotency_coordinator::IdempotencyError> {
    let idempotency = IdempotencyLayer::on(coordinator)
        .with_key_requirement(KeyRequirement::Required)
        // Keys are scoped per account, so one client can never replay another's order.
        // (A real service takes the account from its authentication, not a header.)
        .with_tenant(|parts| {
            parts
                .headers
                .get("x-account")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .build()?;
    let scrape = move || {
        let registry = registry.clone();
        async move {
            prometheus::TextEncoder::new()
                .encode_to_string(&registry.gather())
                .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)
        }
    };
    Ok(Router::new()
        .route("/orders", post(create_order).layer(idempotency))
        .with_state(Arc::new(AtomicU64::new(0)))
        .route("/metrics", get(scrape))
        .layer(axum::middleware::from_fn(log_outcome)))
}

/// Drains a coordinator of either store type.
type Drain = Box<dyn FnOnce(Duration) -> Pin<Box<dyn Future<Output = Drained> + Send>>>;

fn drainer<S: ReservationStore + Send + Sync + 'static>(coordinator: &Coordinator<S>) -> Drain {
    let coordinator = coordinator.clone();
    Box::new(move |deadline| Box::pin(coordinator.drain(deadline)))
}

/// Ctrl-C or SIGTERM.
async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    println!("shutting down: finishing the requests in flight");
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Logs to stderr, filtered by `RUST_LOG` (default `warn`).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let (collector, registry) = PrometheusMetrics::with_own_registry(None)?;
    let collector = collector.shared();
    // What the shutdown drains: the coordinator's detached handlers (see below).
    let drain: Drain;
    let (router, store) = match std::env::var("REDIS_URL") {
        Ok(url) => {
            let settings = IdempotencySettings {
                metrics_enabled: true,
                key_prefix: "example:idempotency:".into(),
                ..Default::default()
            };
            let client = connect_client(&url, &ConnectOptions::default()).await?;
            let coordinator = redis_coordinator(&settings, client, Some(collector))?;
            drain = drainer(&coordinator);
            (app(coordinator, registry)?, format!("Redis at {url}"))
        }
        Err(_) => {
            let coordinator = Coordinator::builder(MemoryStore::new())
                .metrics(collector)
                .build()?;
            drain = drainer(&coordinator);
            (
                app(coordinator, registry)?,
                "in memory (set REDIS_URL for Redis)".to_owned(),
            )
        }
    };
    let addr = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{addr}, records {store}");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown())
        .await?;
    // The server takes no more requests; handlers still running in detached tasks get
    // 10 s to finish and store their responses, the rest are cut and their keys released
    // (a retry runs them again) before the runtime ends.
    let drained = drain(Duration::from_secs(10)).await;
    println!(
        "drained: {} handlers finished, {} cut",
        drained.finished, drained.cut
    );
    Ok(())
}
