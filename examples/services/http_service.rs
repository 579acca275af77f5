//! An HTTP service behind the `Idempotency-Key` layer: `POST /orders` creates an order at
//! most once per key (a retry gets the stored response replayed, with
//! `Idempotent-Replayed: true`), `GET /metrics` serves the Prometheus scrape.
//!
//! In memory by default; on Redis when `REDIS_URL` is set. Listens on `LISTEN` (default
//! `127.0.0.1:3000`); stops on Ctrl-C or SIGTERM, finishing the requests in flight.
//!
//! With `DATABASE_URL` set (it wins over `REDIS_URL`), on Postgres in the transactional
//! mode: at start-up the store's schema is migrated and an `orders` table created, and
//! `POST /orders` inserts its order row inside the transaction that also claims and
//! completes the idempotency record (`PostgresStore::run_in_transaction`), so the order
//! and its record commit together or not at all: a crash anywhere before the commit
//! leaves no order and the key free, after it both. A duplicate waits for the first
//! transaction and gets its order replayed. This mode's handler does the layer's work
//! itself (key header, fingerprint of the body, replay header); the layer runs the
//! handler outside any transaction of yours.
//!
//! ```text
//! cargo run -p idempotency-examples-services --example http_service
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p idempotency-examples-services --example http_service
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/orders_demo \
//!     cargo run -p idempotency-examples-services --example http_service
//!
//! curl -si -XPOST localhost:3000/orders -H 'Idempotency-Key: k1' -H 'x-account: ann' \
//!      -H 'content-type: application/json' -d '{"item":"book","quantity":2}'
//! # the same again: the same order, with Idempotent-Replayed: true
//! # another body with the same key: 422; a duplicate while the first runs: 409 (on
//! # Postgres it waits for the first transaction instead, and gets its order replayed)
//! psql postgres://postgres@127.0.0.1:5432/orders_demo -c 'SELECT * FROM orders'  # one row
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

/// The Postgres mode: the order row and the idempotency record in one transaction.
mod transactional {
    use axum::extract::State;
    use axum::http::{HeaderMap, HeaderValue, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};
    use axum::{Json, Router};
    use idempotency_coordinator::postgres::{RunError, TransactionOptions};
    use idempotency_coordinator::{
        IdempotencyError, PostgresStore, RecordId, fingerprint_of, migrate,
    };

    use super::{NewOrder, Order};

    /// The table the handler writes, created at start-up. `fence` is the claim's fencing
    /// token: the order's row says which owner of the key wrote it.
    const CREATE_ORDERS: &str = "CREATE TABLE IF NOT EXISTS orders (
        order_id        bigserial   PRIMARY KEY,
        account         text        NOT NULL,
        idempotency_key text        NOT NULL,
        item            text        NOT NULL,
        quantity        integer     NOT NULL,
        fence           bigint      NOT NULL,
        created_at      timestamptz NOT NULL DEFAULT now()
    )";

    /// Connects, migrates the store's schema, creates `orders`, and returns the routes.
    pub(super) async fn app(
        url: &str,
        registry: prometheus::Registry,
    ) -> Result<Router, Box<dyn std::error::Error>> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .connect(url)
            .await?;
        migrate(&pool).await?;
        sqlx::query(CREATE_ORDERS).execute(&pool).await?;
        let store = PostgresStore::new(pool);
        let scrape = move || {
            let registry = registry.clone();
            async move {
                prometheus::TextEncoder::new()
                    .encode_to_string(&registry.gather())
                    .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)
            }
        };
        Ok(Router::new()
            .route("/orders", post(create_order))
            .with_state(store)
            .route("/metrics", get(scrape))
            .layer(axum::middleware::from_fn(super::log_outcome)))
    }

    /// A problem response: `status` and a one-line JSON body.
    fn problem(status: StatusCode, detail: &str) -> Response {
        (status, Json(serde_json::json!({ "detail": detail }))).into_response()
    }

    /// `POST /orders`: claims the key, inserts the order and completes the record in one
    /// transaction; a retry gets the committed order back with `Idempotent-Replayed: true`.
    async fn create_order(
        State(store): State<PostgresStore>,
        headers: HeaderMap,
        Json(order): Json<NewOrder>,
    ) -> Response {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let Some(key) = header("idempotency-key") else {
            return problem(
                StatusCode::BAD_REQUEST,
                "the Idempotency-Key header is required",
            );
        };
        // Keys are scoped per account, as the layer's tenant does in the other modes.
        let account = header("x-account").unwrap_or("anonymous").to_owned();
        let id = match RecordId::new("order.create", &format!("{account}/{key}")) {
            Ok(id) => id,
            Err(e) => return problem(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        // The same key with another body is refused (422), as the layer refuses it.
        let fingerprint = match fingerprint_of(&(&order.item, order.quantity)) {
            Ok(f) => f,
            Err(e) => return problem(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        };
        let key = key.to_owned();
        let outcome = store
            .run_in_transaction(
                &id,
                Some(&fingerprint),
                TransactionOptions::new(),
                |conn, ctx| {
                    Box::pin(async move {
                        let order_id: i64 = sqlx::query_scalar(
                            "INSERT INTO orders (account, idempotency_key, item, quantity, fence)
                             VALUES ($1, $2, $3, $4, $5) RETURNING order_id",
                        )
                        .bind(&account)
                        .bind(&key)
                        .bind(&order.item)
                        .bind(i32::try_from(order.quantity).unwrap_or(i32::MAX))
                        .bind(ctx.fence().as_i64())
                        .fetch_one(&mut *conn)
                        .await?;
                        Ok::<_, sqlx::Error>(Order {
                            order_id: u64::try_from(order_id).unwrap_or_default(),
                            item: order.item,
                            quantity: order.quantity,
                        })
                    })
                },
            )
            .await;
        match outcome {
            Ok(outcome) => {
                let replayed = outcome.is_replayed();
                let mut response =
                    (StatusCode::CREATED, Json(outcome.into_value())).into_response();
                if replayed {
                    response
                        .headers_mut()
                        .insert("idempotent-replayed", HeaderValue::from_static("true"));
                }
                tracing::debug!(replayed, "order.create");
                response
            }
            Err(RunError::Action(e)) => {
                tracing::warn!(error = %e, "the order was not written (rolled back)");
                problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the order could not be written",
                )
            }
            Err(RunError::Idempotency(e)) => idempotency_problem(&e),
            Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e:?}")),
        }
    }

    fn idempotency_problem(e: &IdempotencyError) -> Response {
        let status =
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        problem(status, &e.to_string())
    }
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
    let drain: Option<Drain>;
    let (router, store) = if let Ok(url) = std::env::var("DATABASE_URL") {
        let router = transactional::app(&url, registry).await?;
        // Nothing detached to drain: each request's transaction ends with its request.
        drain = None;
        (
            router,
            format!("in Postgres at {url}, with the orders, in one transaction"),
        )
    } else {
        match std::env::var("REDIS_URL") {
            Ok(url) => {
                let settings = IdempotencySettings {
                    metrics_enabled: true,
                    key_prefix: "example:idempotency:".into(),
                    ..Default::default()
                };
                let client = connect_client(&url, &ConnectOptions::default()).await?;
                let coordinator = redis_coordinator(&settings, client, Some(collector))?;
                drain = Some(drainer(&coordinator));
                (app(coordinator, registry)?, format!("Redis at {url}"))
            }
            Err(_) => {
                let coordinator = Coordinator::builder(MemoryStore::new())
                    .metrics(collector)
                    .build()?;
                drain = Some(drainer(&coordinator));
                (
                    app(coordinator, registry)?,
                    "in memory (set REDIS_URL for Redis, DATABASE_URL for Postgres)".to_owned(),
                )
            }
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
    if let Some(drain) = drain {
        let drained = drain(Duration::from_secs(10)).await;
        println!(
            "drained: {} handlers finished, {} cut",
            drained.finished, drained.cut
        );
    }
    Ok(())
}
