//! The consumers' error.

use std::error::Error;

/// Why a consumer stopped. A single delivery never fails the consumer: its outcome is
/// settled with the broker and counted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumerError {
    /// The broker failed: fetching deliveries, reading the consumer's settings, or the
    /// channel closed.
    #[error("{broker} failed")]
    Broker {
        /// `"nats"` or `"amqp"`.
        broker: &'static str,
        /// The client's error.
        #[source]
        source: Box<dyn Error + Send + Sync>,
    },
}

impl ConsumerError {
    #[cfg(any(feature = "nats", feature = "amqp"))]
    pub(crate) fn broker(
        broker: &'static str,
        source: impl Into<Box<dyn Error + Send + Sync>>,
    ) -> Self {
        Self::Broker {
            broker,
            source: source.into(),
        }
    }
}
