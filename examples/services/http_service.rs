//! An HTTP service: `POST /orders` honours an `Idempotency-Key` header through the
//! coordinator on Redis, and `GET /metrics` serves the Prometheus scrape.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p idempotency-examples-services --example http_service
//! curl -s -XPOST -H 'Idempotency-Key: k1' -d '{"item":"book","quantity":2}' -H 'content-type: application/json' localhost:3000/orders
//! curl -s localhost:3000/metrics | grep idempotency_
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use idempotency_coordinator::{
    Coordinator, IdempotencyError, IdempotencySettings, fingerprint_of, redis_coordinator,
};
use idempotency_redis::RedisStore;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct NewOrder {
    item: String,
    quantity: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    order_id: u64,
    item: String,
    quantity: u32,
}

#[derive(Clone)]
struct AppState {
    coordinator: Coordinator<RedisStore>,
    registry: prometheus::Registry,
    next_id: Arc<AtomicU64>,
}

/// Library errors as HTTP answers: 400 invalid key, 409 in flight, 422 key reused, 503
/// storage down (when failing closed).
struct ApiError(IdempotencyError);

impl From<IdempotencyError> for ApiError {
    fn from(e: IdempotencyError) -> Self {
        Self(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, self.0.to_string()).into_response()
    }
}

async fn create_order(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<NewOrder>,
) -> Result<Json<Order>, ApiError> {
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok());
    let order = state
        .coordinator
        .call("order.create", key)
        .fingerprint(fingerprint_of(&body)?)
        .run(|| async {
            let order_id = state.next_id.fetch_add(1, Ordering::SeqCst) + 1;
            Ok::<_, ApiError>(Order {
                order_id,
                item: body.item.clone(),
                quantity: body.quantity,
            })
        })
        .await?;
    Ok(Json(order))
}

async fn metrics(State(state): State<AppState>) -> Result<String, StatusCode> {
    prometheus::TextEncoder::new()
        .encode_to_string(&state.registry.gather())
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Logs to stderr, filtered by `RUST_LOG` (default `warn`; `RUST_LOG=debug` shows the
    // library's hits and misses).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let settings = IdempotencySettings {
        metrics_enabled: true,
        key_prefix: "example:idempotency:".into(),
        ..Default::default()
    };
    let registry = prometheus::Registry::new();
    let client =
        idempotency_redis::connect_client(&url, &idempotency_redis::ConnectOptions::default())
            .await?;
    let collector = idempotency_metrics::PrometheusMetrics::register(&registry, None)?.shared();
    let coordinator = redis_coordinator(&settings, client, Some(collector))?;
    let state = AppState {
        coordinator,
        registry,
        next_id: Arc::new(AtomicU64::new(0)),
    };
    let app = Router::new()
        .route("/orders", post(create_order))
        .route("/metrics", get(metrics))
        .with_state(state);
    let addr = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{addr} (Redis at {url})");
    axum::serve(listener, app)
        .with_graceful_shutdown(async { drop(tokio::signal::ctrl_c().await) })
        .await?;
    Ok(())
}
