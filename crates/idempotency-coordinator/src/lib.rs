//! Run an async action at most once per idempotency key, and replay its result to every
//! retry: a client retry, a redelivered message or a double-click never charges a card
//! twice.
//!
//! [`Coordinator`] combines a store (in memory, Redis through `idempotency-redis`, or
//! Postgres through `idempotency-postgres`),
//! the TTL policy and a metrics collector. A call reserves its key while the action runs
//! (renewing the lease), concurrent duplicates wait for the result and are woken when it
//! lands, a key reused for a different request is refused, and storage trouble degrades
//! to running the action or fails closed, as configured.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), idempotency_coordinator::IdempotencyError> {
//! use idempotency_coordinator::{Coordinator, IdempotencyError};
//!
//! #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
//! struct Order { id: u64 }
//!
//! let coordinator = Coordinator::in_memory();
//! let place = |id| async move { Ok::<_, IdempotencyError>(Order { id }) };
//! let first = coordinator.call("order.create", Some("k-1")).run(|| place(1)).await?;
//! let retry = coordinator.call("order.create", Some("k-1")).run(|| place(2)).await?;
//! assert_eq!(first, retry);
//! # Ok(()) }
//! ```
//!
//! # Application errors
//! The action returns `Result<T, E>`; the call returns `Result<T, E>` too, with the
//! library's own errors converted by `E: From<IdempotencyError>`. Give your error type a
//! variant that wraps [`IdempotencyError`] (for example `#[error(transparent)]
//! Idempotency(#[from] IdempotencyError)`) and map it to a response with
//! [`IdempotencyError::http_status`].
//!
//! # Features
//! - `macros` (default): the `#[idempotent]` attribute.
//! - `redis` (default): [`redis_coordinator`], wiring the stack on a fred client.
//! - `postgres` (off by default: it brings sqlx): [`postgres_coordinator`], wiring the stack on a
//!   sqlx `PgPool`; re-exports `PostgresStore`, `StoreConfig` and `migrate`, and the
//!   whole store crate as [`postgres`] (the transactional mode's `TransactionOptions`
//!   and `RunError`, the sweeper, the admin API).
//! - `prometheus` (default): re-exports `PrometheusMetrics`, the collector to hand the
//!   wiring.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod action;
mod builder;
mod call;
mod coalesce;
mod coordinator;
mod drain;
mod error_policy;
mod follow;
mod hook;
mod lease;
mod modes;
mod outcome;
mod reserved;
mod settings;
mod sync;
mod unreserved;
mod wait;
#[cfg(any(feature = "redis", feature = "postgres"))]
mod wiring;

#[doc(hidden)]
pub mod __private;

pub use builder::{CoordinatorBuilder, DEFAULT_MAX_DETACHED};
pub use call::Call;
pub use coordinator::{CallOptions, Coordinator, WAIT_SAFETY_POLL};
pub use drain::Drained;
// The facade: what a user of the coordinator needs, so an application depends on this
// crate alone.
pub use error_policy::{ErrorPolicy, ReleaseOnError, StoreErrors};
pub use hook::{RecordCreated, RecordCreatedHook};
pub use idempotency_core::{
    BulkRepository, Claim, Clock, ErrorClass, ErrorType, Fence, FencingToken,
    IdempotencyDomainService, IdempotencyError, IdempotencyMetrics, IdempotencyRecord,
    IdempotencyRepository, JsonAdapter, KeyWatch, LatencyMethod, Lease, MemoryStore, NoopMetrics,
    RawValue, RecordId, RecordOptions, RecordStatus, ReservationStore, ResultAdapter,
    SaveManyOptions, SerdeAdapter, Unfenced, VoidAdapter, canonical_json, fingerprint_of,
};
#[cfg(feature = "macros")]
#[cfg_attr(docsrs, doc(cfg(feature = "macros")))]
pub use idempotency_macros::idempotent;
#[cfg(feature = "prometheus")]
#[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
pub use idempotency_metrics::PrometheusMetrics;
/// The Postgres store crate whole: its transactional mode (`TransactionOptions`,
/// `RunError`, …), multi-step runs, the sweeper and the admin API.
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use idempotency_postgres as postgres;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use idempotency_postgres::{PostgresStore, StoreConfig, migrate};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use idempotency_redis::{ConnectOptions, Connection, RedisStore, connect_client};
pub use modes::{InFlight, OnStorageError};
pub use outcome::Outcome;
pub use settings::IdempotencySettings;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use wiring::postgres_coordinator;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use wiring::redis_coordinator;
