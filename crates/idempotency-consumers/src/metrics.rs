//! Counting deliveries by outcome.
//!
//! The coordinator already counts its calls on the kit's series (a replay is a hit, a
//! run a miss, an in-flight duplicate a collision); a consumer adds one count per
//! delivery and outcome here, through a collector the application hands it.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::outcome::DeliveryOutcome;

/// Receives one call per delivery: its operation and outcome. Synchronous and
/// object-safe; called on the delivery's task, so keep it cheap.
pub trait ConsumerMetrics: Send + Sync + fmt::Debug + 'static {
    /// Counts a delivery of `operation` that ended with `outcome`.
    fn record_delivery(&self, operation: &str, outcome: DeliveryOutcome);
}

/// Counts nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoConsumerMetrics;

impl ConsumerMetrics for NoConsumerMetrics {
    fn record_delivery(&self, _: &str, _: DeliveryOutcome) {}
}

/// In-process counters per outcome (all operations together): for tests, logs and a
/// status page.
///
/// # Examples
/// ```
/// use idempotency_consumers::{ConsumerMetrics, DeliveryCounts, DeliveryOutcome};
/// let counts = DeliveryCounts::default();
/// counts.record_delivery("orders", DeliveryOutcome::Replayed);
/// assert_eq!(counts.count(DeliveryOutcome::Replayed), 1);
/// assert_eq!(counts.count(DeliveryOutcome::Executed), 0);
/// ```
#[derive(Debug, Default)]
pub struct DeliveryCounts {
    counts: [AtomicU64; DeliveryOutcome::ALL.len()],
}

impl DeliveryCounts {
    /// How many deliveries ended with `outcome`.
    pub fn count(&self, outcome: DeliveryOutcome) -> u64 {
        self.counts[index(outcome)].load(Ordering::Relaxed)
    }
}

fn index(outcome: DeliveryOutcome) -> usize {
    DeliveryOutcome::ALL
        .iter()
        .position(|o| *o == outcome)
        .unwrap_or_default()
}

impl ConsumerMetrics for DeliveryCounts {
    fn record_delivery(&self, _: &str, outcome: DeliveryOutcome) {
        self.counts[index(outcome)].fetch_add(1, Ordering::Relaxed);
    }
}
