//! Settings shared by the NATS and AMQP consumers.

use std::sync::Arc;
use std::time::Duration;

use crate::constants::{DEFAULT_CONCURRENCY, DEFAULT_SHUTDOWN_GRACE};
use crate::key::{KeySource, MissingKey};
use crate::metrics::{ConsumerMetrics, NoConsumerMetrics};
use crate::outcome::Delays;

/// How a consumer takes keys, sends deliveries back, runs and stops.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use idempotency_consumers::{ConsumerOptions, Delays, KeySource, MissingKey};
/// let options = ConsumerOptions::new()
///     .with_key(KeySource::header("Order-Id"))
///     .with_missing_key(MissingKey::Reject)
///     .with_delays(Delays::default().with_in_flight(Duration::from_millis(500)))
///     .with_concurrency(32);
/// assert_eq!(options.concurrency(), 32);
/// ```
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    pub(crate) key: KeySource,
    pub(crate) missing_key: MissingKey,
    pub(crate) delays: Delays,
    pub(crate) concurrency: usize,
    pub(crate) shutdown_grace: Duration,
    pub(crate) metrics: Arc<dyn ConsumerMetrics>,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self {
            key: KeySource::default(),
            missing_key: MissingKey::default(),
            delays: Delays::default(),
            concurrency: DEFAULT_CONCURRENCY,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            metrics: Arc::new(NoConsumerMetrics),
        }
    }
}

impl ConsumerOptions {
    /// The defaults: key from the message id, keyless deliveries rejected, default
    /// delays, 16 deliveries at a time, 30 s of shutdown grace, no delivery metrics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Where the key is read.
    #[must_use]
    pub fn with_key(mut self, key: KeySource) -> Self {
        self.key = key;
        self
    }

    /// What happens to a delivery without a key.
    #[must_use]
    pub fn with_missing_key(mut self, policy: MissingKey) -> Self {
        self.missing_key = policy;
        self
    }

    /// How long sent-back deliveries wait.
    #[must_use]
    pub fn with_delays(mut self, delays: Delays) -> Self {
        self.delays = delays;
        self
    }

    /// How many deliveries run at the same time (at least 1).
    #[must_use]
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// How long a graceful shutdown lets running handlers finish.
    #[must_use]
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Where deliveries are counted by outcome.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<dyn ConsumerMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// How many deliveries run at the same time.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// The delays.
    pub fn delays(&self) -> &Delays {
        &self.delays
    }
}
