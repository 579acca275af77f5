//! RabbitMQ (AMQP 0-9-1) consumers.
//!
//! [`AmqpConsumer`] consumes a queue with manual acknowledgements and a prefetch of its
//! concurrency, runs each delivery through a [`Process`] under its key (by default the
//! `message-id` property) and answers:
//!
//! | outcome | answer |
//! | --- | --- |
//! | executed, replayed, unprotected | `basic.ack` |
//! | key in flight elsewhere | wait the in-flight delay, then `basic.nack` with requeue |
//! | handler failed | wait the failure delay, then `basic.nack` with requeue (the key was released) |
//! | storage error | wait the storage delay, then `basic.nack` with requeue |
//! | no key / invalid key / key reused | `basic.nack` without requeue: to the queue's dead-letter exchange, or dropped without one |
//!
//! AMQP has no delayed requeue: the delay is spent holding the delivery (it occupies one
//! prefetch slot meanwhile), and the requeued message goes back to the head of the queue.
//!
//! What AMQP tells about attempts: a classic queue sets only the `redelivered` flag
//! ([`Attempt::Redelivered`](crate::Attempt::Redelivered): a repeat, count unknown); a
//! quorum queue also sets `x-delivery-count` (earlier attempts) on redeliveries, read
//! as [`Attempt::Counted`](crate::Attempt::Counted). Limits are the queue's: a quorum
//! queue's `delivery-limit` dead-letters a message after that many returns (RabbitMQ
//! 4.0 sets 20 by default; 3.x none); a classic queue requeues without limit. The
//! redelivery horizon is therefore the queue's to state:
//! [`AmqpConsumer::with_redelivery_horizon`] checks it against the record TTL.
//!
//! Concurrency invariant: the prefetch bounds the deliveries this consumer holds, each
//! settled exactly once by the task that ran it (or, at shutdown, by the loop that
//! never started it). A consumer that dies returns its unacknowledged deliveries to the
//! queue when its channel closes; a redelivery of a finished message replays.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, message};
use tokio::task::JoinSet;

use crate::constants::X_DELIVERY_COUNT;
use crate::delivery::{Attempt, Delivery, Headers};
use crate::driver::drive;
use crate::error::ConsumerError;
use crate::options::ConsumerOptions;
use crate::outcome::Settlement;
use crate::process::Process;
use crate::retention::Retention;
use crate::shutdown::Stopped;

const BROKER: &str = "amqp";

/// How long a shutdown waits for deliveries already on their way after the cancel.
const CANCEL_DRAIN: Duration = Duration::from_millis(200);

/// A queue consumer whose deliveries run through a [`Process`].
///
/// # Examples
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use idempotency_consumers::{AmqpConsumer, ConsumerOptions, Delivery, Idempotent};
/// use idempotency_coordinator::Coordinator;
/// use lapin::{Connection, ConnectionProperties};
///
/// let connection = Connection::connect("amqp://guest:guest@127.0.0.1:5672/%2f", ConnectionProperties::default()).await?;
/// let channel = connection.create_channel().await?;
/// let process = Idempotent::new(Coordinator::in_memory(), "orders.ship", |d: Delivery| async move {
///     println!("ship {:?} (attempt {:?})", d.key(), d.attempt());
///     Ok::<_, std::io::Error>(())
/// });
/// let stopped = AmqpConsumer::new(channel, "orders", process, ConsumerOptions::new())
///     .run(async { let _ = tokio::signal::ctrl_c().await; })
///     .await?;
/// println!("cut {} running handlers", stopped.cut);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct AmqpConsumer<P> {
    channel: Channel,
    queue: String,
    tag: String,
    horizon: Option<Duration>,
    shared: Arc<Shared<P>>,
}

#[derive(Debug)]
struct Shared<P> {
    process: P,
    options: ConsumerOptions,
}

impl<P: Process> AmqpConsumer<P> {
    /// Consumes `queue` on `channel` (which this consumer closes when it stops) and runs
    /// its deliveries through `process`.
    pub fn new(
        channel: Channel,
        queue: impl Into<String>,
        process: P,
        options: ConsumerOptions,
    ) -> Self {
        Self {
            channel,
            queue: queue.into(),
            tag: String::new(),
            horizon: None,
            shared: Arc::new(Shared { process, options }),
        }
    }

    /// The consumer tag (default: one the server makes up).
    #[must_use]
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = tag.into();
        self
    }

    /// The longest time between a message's first delivery and its last, as the queue
    /// allows (a quorum queue's `delivery-limit` times the longest delay a delivery is
    /// held, or the consumer timeout): checked against the record TTL at start-up.
    #[must_use]
    pub fn with_redelivery_horizon(mut self, horizon: Duration) -> Self {
        self.horizon = Some(horizon);
        self
    }

    /// The retention against the stated redelivery horizon; `None` when none was stated.
    pub fn check_retention(&self) -> Option<Retention> {
        self.horizon
            .map(|horizon| Retention::compare(self.shared.process.record_ttl(), horizon))
    }

    /// Consumes until `shutdown` completes, then cancels the consumer, sends back what
    /// was received but not started, lets running handlers finish for the shutdown
    /// grace (their deliveries are settled as they end), cuts the rest and closes the
    /// channel (which returns the deliveries of cut handlers to the queue).
    ///
    /// # Errors
    /// [`ConsumerError::Broker`] when the channel fails (set-up, or the delivery stream).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<Stopped, ConsumerError> {
        if let Some(retention) = self.check_retention() {
            retention.warn_if_short(self.shared.process.operation());
        }
        let fail = |e| ConsumerError::broker(BROKER, e);
        let prefetch = u16::try_from(self.shared.options.concurrency).unwrap_or(u16::MAX);
        self.channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(fail)?;
        let mut consumer = self
            .channel
            .basic_consume(
                self.queue.as_str().into(),
                self.tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(fail)?;
        let mut running: JoinSet<()> = JoinSet::new();
        let mut stopped = Stopped::default();
        let mut shutdown = std::pin::pin!(shutdown);
        let mut failure = None;
        loop {
            while running.try_join_next().is_some() {}
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        running.spawn(settle(Arc::clone(&self.shared), delivery));
                    }
                    Some(Err(e)) => {
                        failure = Some(fail(e));
                        break;
                    }
                    None => break,
                },
            }
        }
        if failure.is_none() {
            let cancelled = self
                .channel
                .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                .await;
            if let Err(e) = cancelled {
                tracing::warn!(error = %e, "cancelling the consumer failed");
            }
            while let Ok(Some(Ok(delivery))) =
                tokio::time::timeout(CANCEL_DRAIN, consumer.next()).await
            {
                let requeue = BasicNackOptions {
                    multiple: false,
                    requeue: true,
                };
                if delivery.nack(requeue).await.is_ok() {
                    stopped.returned += 1;
                }
            }
        }
        let grace = tokio::time::sleep(self.shared.options.shutdown_grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                () = &mut grace => break,
                done = running.join_next() => if done.is_none() { break },
            }
        }
        stopped.cut = running.len();
        // Dropping a running call releases its key; closing the channel requeues its
        // delivery.
        running.shutdown().await;
        if let Err(e) = self.channel.close(200, "OK".into()).await {
            tracing::debug!(error = %e, "closing the channel failed");
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(stopped),
        }
    }
}

/// A header value as text: strings as they are, integers in decimal; others left out.
fn text_of(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok().map(str::to_owned),
        AMQPValue::ShortShortInt(n) => Some(n.to_string()),
        AMQPValue::ShortShortUInt(n) => Some(n.to_string()),
        AMQPValue::ShortInt(n) => Some(n.to_string()),
        AMQPValue::ShortUInt(n) => Some(n.to_string()),
        AMQPValue::LongInt(n) => Some(n.to_string()),
        AMQPValue::LongUInt(n) => Some(n.to_string()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The delivery a message is, its key taken as the options say.
fn delivery_of(message: &message::Delivery, options: &ConsumerOptions) -> Delivery {
    let headers = message
        .properties
        .headers()
        .as_ref()
        .map_or_else(Headers::default, |table| {
            Headers::from_pairs(
                table
                    .inner()
                    .iter()
                    .filter_map(|(name, value)| Some((name.as_str().to_owned(), text_of(value)?))),
            )
        });
    let earlier = headers
        .get(X_DELIVERY_COUNT)
        .and_then(|count| count.parse::<u64>().ok());
    let attempt = match (earlier, message.redelivered) {
        (Some(earlier), _) => Attempt::Counted(earlier + 1),
        (None, true) => Attempt::Redelivered,
        (None, false) => Attempt::First,
    };
    let message_id = message
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned());
    let payload = bytes::Bytes::copy_from_slice(&message.data);
    let delivery =
        Delivery::new(message.routing_key.as_str(), payload, headers).with_attempt(attempt);
    match options.key.key_of(&delivery, message_id.as_deref()) {
        Some(key) => delivery.with_key(key),
        None => delivery,
    }
}

/// Runs one delivery and answers the broker.
async fn settle<P: Process>(shared: Arc<Shared<P>>, message: message::Delivery) {
    let delivery = delivery_of(&message, &shared.options);
    let outcome = drive(&shared.process, delivery, &shared.options, BROKER).await;
    let settled = match outcome.settlement(&shared.options.delays) {
        Settlement::Ack => message.ack(BasicAckOptions::default()).await,
        Settlement::Retry(delay) => {
            tokio::time::sleep(delay).await;
            message
                .nack(BasicNackOptions {
                    multiple: false,
                    requeue: true,
                })
                .await
        }
        Settlement::Reject => {
            message
                .nack(BasicNackOptions {
                    multiple: false,
                    requeue: false,
                })
                .await
        }
    };
    if let Err(e) = settled {
        // Not settled: the delivery returns to the queue when the channel closes; a
        // finished record replays.
        tracing::warn!(error = %e, outcome = outcome.as_str(), "settling the delivery failed");
    }
}
