//! Redis storage for idempotency-kit, on the [`fred`] client.
//!
//! [`RedisStore`] implements the core's storage trait
//! ([`IdempotencyRepository`](idempotency_core::IdempotencyRepository)) and its fenced
//! reservations ([`ReservationStore`](idempotency_core::ReservationStore)) on a single
//! node, Redis Cluster or sentinel, with whatever fred client (a `Client` or a `Pool`)
//! the application already has, or from a URL ([`RedisStore::connect`]).
//!
//! Records are stored under `{prefix}{operation}:{idempotency_key}` (default prefix
//! `idempotency:`) as the JSON the Python idempotency-kit 0.5.0 writes, so a Python and a
//! Rust service sharing one Redis read each other's records.
//!
//! # Example
//! ```no_run
//! # async fn run() -> Result<(), idempotency_core::IdempotencyError> {
//! use idempotency_core::{IdempotencyDomainService, IdempotencyRepository, RecordId};
//! use idempotency_redis::{ConnectOptions, RedisStore};
//!
//! let store = RedisStore::connect("redis://127.0.0.1:6379", &ConnectOptions::default()).await?;
//! let record = IdempotencyDomainService::default().create_record("order.create", "k1", &42)?;
//! store.save(&record).await?;
//! let found = store.get(&RecordId::new("order.create", "k1")?).await?;
//! assert_eq!(found.map(|r| r.result().get().to_owned()), Some("42".into()));
//! # Ok(()) }
//! ```
//!
//! # Features
//! - `tls`: `rediss://` URLs, through rustls (ring provider).
//! - `local-cache`: [`cache::CachedStore`], a local cache of finished records invalidated
//!   by the server (`CLIENT TRACKING`, RESP3).
//!
//! See `docs/redis.md` for the key layout, the scripts and their guarantees, cluster
//! behaviour and failure modes.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod admin;
mod breaker;
#[cfg(feature = "local-cache")]
#[cfg_attr(docsrs, doc(cfg(feature = "local-cache")))]
pub mod cache;
mod config;
mod errors;
mod fenced_write;
mod keys;
mod reservation;
mod scripts;
mod server_clock;
mod store;
mod wake;

pub use breaker::{FailFast, Unreachable};
pub use config::{ConnectOptions, connect_client};
pub use fenced_write::set_if_newer;
pub use fred;
pub use store::{Connection, RedisStore, RedisStoreBuilder};
pub use wake::RedisWatch;
