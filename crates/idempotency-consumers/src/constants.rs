//! Defaults of the consumers.

use std::time::Duration;

/// The record lifetime a consumer assumes when none is given: the kit's default TTL
/// (30 minutes), copied here so that the default stays one number per crate.
pub const DEFAULT_RECORD_TTL: Duration = Duration::from_secs(30 * 60);

/// How long a delivery whose key is in flight elsewhere waits before it comes back.
pub const DEFAULT_IN_FLIGHT_DELAY: Duration = Duration::from_secs(1);

/// How long a delivery whose handler failed waits before it comes back.
pub const DEFAULT_FAILURE_DELAY: Duration = Duration::from_secs(1);

/// How long a delivery that met a storage error waits before it comes back.
pub const DEFAULT_STORAGE_DELAY: Duration = Duration::from_secs(5);

/// How many deliveries one consumer runs at the same time.
pub const DEFAULT_CONCURRENCY: usize = 16;

/// How long a graceful shutdown lets running handlers finish before it cuts them.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The NATS header that carries a message's id (also JetStream's publish de-duplication).
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";

/// The header a quorum queue sets to the number of earlier delivery attempts.
pub const X_DELIVERY_COUNT: &str = "x-delivery-count";
