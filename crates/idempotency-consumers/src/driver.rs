//! One delivery, broker-neutral: the key policy, the run, the span and the count. The
//! brokers' modules turn their messages into a [`Delivery`] and the outcome into an
//! answer.

use tracing::Instrument;

use crate::delivery::Delivery;
use crate::key::MissingKey;
use crate::options::ConsumerOptions;
use crate::outcome::DeliveryOutcome;
use crate::process::Process;

/// Runs `delivery` (its key already taken, or `None`) and counts its outcome.
pub(crate) async fn drive<P: Process>(
    process: &P,
    delivery: Delivery,
    options: &ConsumerOptions,
    broker: &'static str,
) -> DeliveryOutcome {
    let span = tracing::info_span!(
        "consumer.delivery",
        broker,
        operation = process.operation(),
        attempt = delivery.attempt().number(),
        redelivery = delivery.attempt().is_redelivery(),
        outcome = tracing::field::Empty,
    );
    let outcome = async {
        if delivery.key().is_none() && options.missing_key == MissingKey::Reject {
            tracing::warn!("delivery without an idempotency key: rejected");
            return DeliveryOutcome::Rejected;
        }
        process.process(delivery).await
    }
    .instrument(span.clone())
    .await;
    span.record("outcome", outcome.as_str());
    options
        .metrics
        .record_delivery(process.operation(), outcome);
    outcome
}
