//! Postgres storage for idempotency-kit, on sqlx: the record in the same database as
//! the service's data, and optionally in the same transaction as its effects.
//!
//! With the record in Redis, a crash after the action's effect committed in the
//! service's database but before the record was completed runs the effect again on
//! retry. Here the record can be written in the business transaction
//! ([`PostgresStore::run_in_transaction`]): the claim, the action's writes and the
//! completion commit together or not at all, so the effect happens once.
//!
//! - [`PostgresStore`]: the repository ([`IdempotencyRepository`]), bulk operations
//!   ([`BulkRepository`]) and fenced reservations ([`ReservationStore`]) of
//!   idempotency-core, so a coordinator can run on it as on Redis; waiters are woken by
//!   `LISTEN`/`NOTIFY`;
//! - [`PostgresStore::run_in_transaction`]: the transactional mode, with
//!   [`TransactionOptions`], [`InFlight`], [`Outcome`], [`RunError`], [`TxContext`] and
//!   its [`FencingToken`];
//! - [`PostgresStore::run_steps`]: multi-step runs with recovery points, for actions
//!   that call out of the database between their writes: each phase commits once with
//!   the run's recovery point, a retry resumes after the last one, and external calls
//!   get a [`StepKey`] for the provider to deduplicate by; with [`StepsOptions`],
//!   [`StepRun`], [`StepContext`] and [`StepsError`];
//! - [`PostgresStore::sweep_expired`] and [`PostgresStore::spawn_sweeper`] ([`Sweeper`]):
//!   bounded removal of expired rows;
//! - [`migrate`]: the schema (`migrations/*.sql`, embedded);
//! - [`admin`]: operator tools (inspect, list, evict, stats, watch), what the
//!   `idempotency` command-line tool runs for `postgres://` URLs.
//!
//! # The schema
//! One table, `idempotency_records`, primary key `(key_prefix, operation,
//! idempotency_key)`:
//!
//! | column | type | holds |
//! | --- | --- | --- |
//! | `key_prefix` | `text` | the store's key prefix (`''` or ending with `:`) |
//! | `operation` | `text` | the operation name |
//! | `idempotency_key` | `text` | the idempotency key |
//! | `status` | `text` | `pending`, `completed` or `stored_error` |
//! | `fingerprint` | `text` | the request fingerprint, if any |
//! | `owner_token` | `text` | the token of the lease that wrote the row |
//! | `fence` | `bigint` | the fencing token: grows with every new owner of the key |
//! | `record` | `text` | the record JSON, byte for byte what the other stores keep |
//! | `created_at` | `timestamptz` | when the row was written (server time) |
//! | `expires_at` | `timestamptz` | when the row stops counting (server time) |
//! | `lease_expires_at` | `timestamptz` | pending rows: the end of the lease; else `NULL` |
//! | `run_id` | `text` | multi-step runs: the run's id, kept by every owner that resumes it |
//! | `recovery_point` | `text` | multi-step runs: `started`, then the last committed phase |
//! | `step_state` | `text` | multi-step runs: the committed steps and their outputs (JSON) |
//!
//! (the last three from migration 0002, `NULL` on rows of other calls), plus the
//! sequence `idempotency_fence_seq`, an index on `expires_at`, the function
//! `idempotency_record_time(timestamptz)` (a time spelt as the record JSON spells it) and
//! `idempotency_schema_versions`.
//!
//! # Time
//! Every time is the server's (`statement_timestamp()`): whether a reservation is alive
//! or a record expired is decided by the server's clock in the statement that reads or
//! writes it, and the timestamps inside the record JSON are the server's too. A client
//! clock decides nothing.
//!
//! # `PgBouncer`
//! Nothing keeps session state: no session advisory locks, no `SET` outside a
//! transaction (the transactional mode's advisory lock is transaction-scoped). In
//! transaction pooling, send statements unnamed ([`Statements::Unnamed`]) unless
//! `PgBouncer` (1.21+) tracks prepared statements, and give the `LISTEN` connection a
//! direct or session-pooled URL ([`ListenerSource::Url`]); without one, waiters fall
//! back to the coordinator's safety poll.
//!
//! # Example
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use idempotency_core::RecordId;
//! use idempotency_postgres::{PostgresStore, TransactionOptions, migrate};
//!
//! let pool = sqlx::PgPool::connect("postgres://app@127.0.0.1/app").await?;
//! migrate(&pool).await?;
//! let store = PostgresStore::new(pool);
//! let id = RecordId::new("payment.capture", "key-7")?;
//! let outcome = store
//!     .run_in_transaction(&id, None, TransactionOptions::new(), |conn, _ctx| {
//!         Box::pin(async move {
//!             sqlx::query("UPDATE accounts SET balance = balance - 10 WHERE id = 1")
//!                 .execute(&mut *conn)
//!                 .await?;
//!             Ok::<_, sqlx::Error>("captured".to_owned())
//!         })
//!     })
//!     .await?;
//! assert_eq!(outcome.value(), "captured");
//! # Ok(()) }
//! ```
//!
//! # Features
//! None. sqlx is built with `postgres`, `runtime-tokio` and `tls-rustls`, without its
//! compile-time-checked macros.
//!
//! [`IdempotencyRepository`]: idempotency_core::IdempotencyRepository
//! [`BulkRepository`]: idempotency_core::BulkRepository
//! [`ReservationStore`]: idempotency_core::ReservationStore

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod admin;
mod config;
pub mod constants;
mod errors;
mod record_text;
mod replay;
mod reservation;
mod schema;
mod statements;
mod steps;
mod store;
mod sweep;
mod transaction;
mod wake;

pub use config::{ListenerSource, Statements, StoreConfig};
pub use schema::{SCHEMA_VERSION, migrate};
pub use steps::{StepContext, StepKey, StepRun, StepsError, StepsOptions};
pub use store::PostgresStore;
pub use sweep::Sweeper;
pub use transaction::{
    ActionFuture, FencingToken, InFlight, Outcome, RunError, TransactionOptions, TxContext,
};
pub use wake::PostgresWatch;

// The README's example compiles (it needs a server to run).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

// So do the guide's (docs/postgres.md; outside the package, read only by doctests).
#[cfg(doctest)]
#[doc = include_str!("../../../docs/postgres.md")]
struct GuideDoctests;
