//! An IETF `Idempotency-Key` layer for tower and axum, on idempotency-kit's coordinator.
//!
//! [`IdempotencyLayer`] wraps any tower service over the `http` crate's types. For a
//! covered method (default POST and PATCH) with a key, the first request runs the inner
//! service in a detached task (it finishes and is stored even if the client goes away)
//! and its response (status, end-to-end headers, body) is stored; a retry with the same
//! key gets it replayed with `Idempotent-Replayed: true`. A duplicate in flight gets
//! 409 with `Retry-After`, the same key with another request 422, a down store 503
//! (fail closed by default). Errors are RFC 9457 problem documents that never echo the
//! key. See `docs/http.md` for the configuration reference and the conformance table
//! against the IETF draft.
//!
//! # Example
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::{Router, routing::post};
//! use idempotency_http::IdempotencyLayer;
//!
//! let layer = IdempotencyLayer::builder(idempotency_coordinator::MemoryStore::new()).build()?;
//! let app: Router = Router::new()
//!     .route("/orders", post(|| async { "created" }))
//!     .layer(layer);
//! # drop(app);
//! # Ok(()) }
//! ```
//!
//! # Features
//! - `axum` (default): scope keys by axum's `MatchedPath` when the layer sits inside a
//!   router (`Router::layer` / `route_layer`); without it, the URI path (or
//!   [`IdempotencyLayerBuilder::with_route`]) names the operation.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod config;
pub mod constants;
mod decision;
mod encoding;
mod fingerprint;
mod key;
mod layer;
mod outcome;
mod policy;
mod problem;
mod scope;
mod service;
mod stored;

pub use body::{BoxError, HandlerBody, ResponseBody};
pub use config::{
    DEFAULT_DENY_HEADERS, KeyRequirement, LayerStats, StorageDown, StorePolicyFn, WhileInFlight,
};
pub use constants::DEFAULT_PROBLEM_BASE;
pub use decision::{Admission, Admitted, HttpIdempotency, Plan};
pub use fingerprint::FingerprintFn;
pub use layer::{IdempotencyLayer, IdempotencyLayerBuilder};
pub use outcome::HttpOutcome;
pub use policy::store_by_default;
pub use problem::Problem;
pub use scope::TenantFn;
pub use service::{Handler, IdempotencyService, RequestBody, ResponseFuture};
