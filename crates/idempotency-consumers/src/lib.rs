//! Idempotent message consumers: each message's effect once across redeliveries and
//! crashes, for NATS JetStream and RabbitMQ.
//!
//! A consumer takes a key from each delivery (the broker's message id, a header, or a
//! function), runs the handler through a [`Process`] under that key and answers the
//! broker by the outcome:
//!
//! - executed or replayed (the record is durable): acknowledged;
//! - the key is in flight in another consumer: sent back with a delay, never run twice;
//! - the handler failed: the key released, sent back, up to the broker's own limits;
//! - a storage error: sent back with a delay, never acknowledged;
//! - no key: rejected to the dead-letter path ([`MissingKey::Reject`], the default), or
//!   run unprotected when asked ([`MissingKey::RunUnprotected`]).
//!
//! Two forms of [`Process`]: [`Idempotent`] runs the handler through a
//! [`Coordinator`](idempotency_coordinator::Coordinator) on any store (at most once while
//! leases hold); `Transactional` (feature `postgres`) runs it in the PostgreSQL store's
//! transactional mode, so the handler's writes and the record commit together: exactly
//! once for consumers that write to PostgreSQL.
//!
//! Each delivery gets a `consumer.delivery` span (broker, operation, attempt, outcome)
//! and one count in [`ConsumerMetrics`]. See `docs/consumers.md` for the per-broker
//! guarantees.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use idempotency_consumers::{Delivery, DeliveryOutcome, Headers, Idempotent, Process};
//! use idempotency_coordinator::Coordinator;
//!
//! let process = Idempotent::new(Coordinator::in_memory(), "orders.ship", |d: Delivery| async move {
//!     println!("ship {:?}", d.key());
//!     Ok::<_, std::io::Error>(())
//! });
//! let delivery = Delivery::new("orders", "{}".into(), Headers::default()).with_key("order-1");
//! assert_eq!(process.process(delivery.clone()).await, DeliveryOutcome::Executed);
//! // A redelivery is acknowledged without running the handler.
//! assert_eq!(process.process(delivery).await, DeliveryOutcome::Replayed);
//! # }
//! ```
//!
//! # Features
//! - `nats`: `JetStreamConsumer` on `async-nats` pull consumers.
//! - `amqp`: `AmqpConsumer` on `lapin`.
//! - `postgres`: `Transactional`, the handler in the record's transaction.

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "amqp")]
mod amqp;
mod constants;
mod delivery;
#[cfg(any(feature = "nats", feature = "amqp"))]
mod driver;
mod error;
mod key;
mod metrics;
mod options;
mod outcome;
mod process;
mod retention;
mod shutdown;

#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "postgres")]
mod transactional;

#[cfg(feature = "amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
pub use amqp::AmqpConsumer;
pub use constants::{
    DEFAULT_CONCURRENCY, DEFAULT_FAILURE_DELAY, DEFAULT_IN_FLIGHT_DELAY, DEFAULT_RECORD_TTL,
    DEFAULT_SHUTDOWN_GRACE, DEFAULT_STORAGE_DELAY, NATS_MSG_ID, X_DELIVERY_COUNT,
};
pub use delivery::{Attempt, Delivery, Headers};
pub use error::ConsumerError;
pub use key::{KeyFn, KeySource, MissingKey};
pub use metrics::{ConsumerMetrics, DeliveryCounts, NoConsumerMetrics};
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub use nats::JetStreamConsumer;
pub use options::ConsumerOptions;
pub use outcome::{Delays, DeliveryOutcome, Settlement};
pub use process::{Idempotent, Process, ReleaseErrors, StoreErrorsWhen};
pub use retention::Retention;
pub use shutdown::Stopped;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use transactional::{Transactional, TxHandlerFuture};
