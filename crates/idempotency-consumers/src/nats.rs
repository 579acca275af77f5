//! NATS JetStream pull consumers.
//!
//! [`JetStreamConsumer`] fetches batches from a durable pull consumer, runs each message
//! through a [`Process`] under its key (by default the `Nats-Msg-Id` header) and answers:
//!
//! | outcome | answer |
//! | --- | --- |
//! | executed, replayed, unprotected | `+ACK` |
//! | key in flight elsewhere | `-NAK` with the in-flight delay |
//! | handler failed | `-NAK` with the failure delay (the key was released) |
//! | storage error | `-NAK` with the storage delay |
//! | no key / invalid key / key reused | `+TERM` (no redelivery; JetStream publishes an advisory) |
//!
//! Every `-NAK` counts as a delivery: after `max_deliver` deliveries JetStream stops
//! redelivering (and publishes a `MAX_DELIVERIES` advisory, the stream's dead-letter
//! signal). Keep `max_deliver × in-flight delay` above the coordinator's lease, or a
//! message whose consumer died mid-handler can run out of deliveries before its lease
//! ends.
//!
//! Concurrency invariant: a message is settled exactly once, by the task that ran it
//! (or, at shutdown, by the loop that never started it). A running handler's message is
//! kept by `+WPI` every half `ack_wait`; a redelivery that comes all the same finds the
//! key in flight and is sent back, never run next to it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{AckKind, Context, Message};
use futures_util::StreamExt;
use tokio::task::JoinSet;

use crate::constants::NATS_MSG_ID;
use crate::delivery::{Attempt, Delivery, Headers};
use crate::driver::drive;
use crate::error::ConsumerError;
use crate::options::ConsumerOptions;
use crate::outcome::{DeliveryOutcome, Settlement};
use crate::process::Process;
use crate::retention::Retention;
use crate::shutdown::Stopped;

const BROKER: &str = "nats";

/// How long one pull request waits for messages before the loop asks again.
const DEFAULT_FETCH_WAIT: Duration = Duration::from_secs(1);

/// A JetStream pull consumer whose messages run through a [`Process`].
///
/// # Examples
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use async_nats::jetstream::{self, consumer::pull};
/// use idempotency_consumers::{ConsumerOptions, Delivery, Idempotent, JetStreamConsumer};
/// use idempotency_coordinator::Coordinator;
///
/// let js = jetstream::new(async_nats::connect("127.0.0.1:4222").await?);
/// let stream = js.get_stream("ORDERS").await?;
/// let consumer = stream
///     .get_or_create_consumer("ship", pull::Config { durable_name: Some("ship".into()), ..Default::default() })
///     .await?;
/// let process = Idempotent::new(Coordinator::in_memory(), "orders.ship", |d: Delivery| async move {
///     println!("ship {:?} (attempt {:?})", d.key(), d.attempt());
///     Ok::<_, std::io::Error>(())
/// });
/// let stopped = JetStreamConsumer::new(consumer, process, ConsumerOptions::new())
///     .run(async { let _ = tokio::signal::ctrl_c().await; })
///     .await?;
/// println!("cut {} running handlers", stopped.cut);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct JetStreamConsumer<P> {
    consumer: PullConsumer,
    shared: Arc<Shared<P>>,
    fetch_wait: Duration,
}

#[derive(Debug)]
struct Shared<P> {
    process: P,
    options: ConsumerOptions,
}

impl<P: Process> JetStreamConsumer<P> {
    /// Runs the messages of `consumer` (a durable pull consumer with explicit acks)
    /// through `process`.
    pub fn new(consumer: PullConsumer, process: P, options: ConsumerOptions) -> Self {
        Self {
            consumer,
            shared: Arc::new(Shared { process, options }),
            fetch_wait: DEFAULT_FETCH_WAIT,
        }
    }

    /// How long a pull request waits for messages (default 1 s); also the longest a
    /// shutdown waits for the batch in progress.
    #[must_use]
    pub fn with_fetch_wait(mut self, wait: Duration) -> Self {
        self.fetch_wait = wait;
        self
    }

    /// Reads the consumer's `max_deliver`, `ack_wait` and `backoff` and compares their
    /// redelivery horizon with the record TTL.
    ///
    /// # Errors
    /// [`ConsumerError::Broker`] when the consumer's info cannot be read.
    pub async fn check_retention(&self) -> Result<Retention, ConsumerError> {
        Ok(self.read_config().await?.0)
    }

    /// The retention, and how often a running handler tells JetStream it is still at
    /// work: half the shortest wait before a redelivery (`ack_wait`, or the first
    /// `backoff` entry).
    async fn read_config(&self) -> Result<(Retention, Duration), ConsumerError> {
        let info = self
            .consumer
            .get_info()
            .await
            .map_err(|e| ConsumerError::broker(BROKER, e))?;
        let config = &info.config;
        let retention = Retention::jetstream(
            self.shared.process.record_ttl(),
            config.max_deliver,
            config.ack_wait,
            &config.backoff,
            &self.shared.options.delays,
        );
        let shortest = config
            .backoff
            .first()
            .map_or(config.ack_wait, |first| (*first).min(config.ack_wait));
        Ok((retention, shortest / 2))
    }

    /// Fetches and runs messages until `shutdown` completes, then stops fetching, sends
    /// back what was received but not started, lets running handlers finish for the
    /// shutdown grace (their messages are settled as they end), cuts the rest and
    /// flushes the acknowledgements. At start-up it checks the retention and warns when
    /// records may expire before the last redelivery.
    ///
    /// # Errors
    /// [`ConsumerError::Broker`] when the consumer's info cannot be read at start-up.
    /// Failed pull requests later are logged and retried.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<Stopped, ConsumerError> {
        let (retention, progress) = self.read_config().await?;
        retention.warn_if_short(self.shared.process.operation());
        let concurrency = self.shared.options.concurrency;
        let mut running: JoinSet<()> = JoinSet::new();
        let mut context: Option<Context> = None;
        let mut stopped = Stopped::default();
        let shutdown = std::pin::pin!(shutdown);
        let mut shutdown = shutdown;
        // Each pull asks for a full `concurrency` of messages, whatever runs: waiting
        // for free slots before asking would turn a busy consumer into one round trip
        // per message. A received message waits for a slot in hand (at most one batch
        // beyond what runs), and a shutdown sends it back.
        'fetch: loop {
            while running.try_join_next().is_some() {}
            let request = self
                .consumer
                .batch()
                .max_messages(concurrency)
                .expires(self.fetch_wait)
                .messages();
            let batch = tokio::select! {
                biased;
                () = &mut shutdown => break 'fetch,
                batch = request => batch,
            };
            let mut batch = match batch {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(error = %e, "pull request failed; retrying");
                    tokio::time::sleep(self.fetch_wait).await;
                    continue;
                }
            };
            loop {
                let message = tokio::select! {
                    biased;
                    () = &mut shutdown => {
                        stopped.returned += return_rest(&mut batch, self.fetch_wait).await;
                        break 'fetch;
                    }
                    next = batch.next() => match next {
                        None => break,
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "batch ended");
                            break;
                        }
                        Some(Ok(message)) => message,
                    },
                };
                context.get_or_insert_with(|| message.context.clone());
                while running.try_join_next().is_some() {}
                // Invariant: at most `concurrency` handlers run; the message waits here.
                while running.len() >= concurrency {
                    tokio::select! {
                        biased;
                        () = &mut shutdown => {
                            if message.ack_with(AckKind::Nak(None)).await.is_ok() {
                                stopped.returned += 1;
                            }
                            stopped.returned += return_rest(&mut batch, self.fetch_wait).await;
                            break 'fetch;
                        }
                        _ = running.join_next() => {}
                    }
                }
                running.spawn(settle(Arc::clone(&self.shared), message, progress));
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
        // Dropping a running call releases its key (the coordinator's release guard; a
        // transaction rolls back): the message comes back after `ack_wait`.
        running.shutdown().await;
        if let Some(context) = context
            && let Err(e) = context.client().flush().await
        {
            tracing::warn!(error = %e, "flushing the acknowledgements failed");
        }
        Ok(stopped)
    }
}

/// Sends back at once every message of the batch in progress (received, never started).
async fn return_rest(
    batch: &mut async_nats::jetstream::consumer::pull::Batch,
    wait: Duration,
) -> usize {
    let mut returned = 0;
    while let Ok(Some(Ok(message))) = tokio::time::timeout(wait, batch.next()).await {
        if message.ack_with(AckKind::Nak(None)).await.is_ok() {
            returned += 1;
        }
    }
    returned
}

/// The delivery a message is, its key taken as the options say.
fn delivery_of(message: &Message, options: &ConsumerOptions) -> Delivery {
    let headers = message
        .headers
        .as_ref()
        .map_or_else(Headers::default, |map| {
            Headers::from_pairs(map.iter().flat_map(|(name, values)| {
                values
                    .iter()
                    .map(move |v| (name.to_string(), v.as_str().to_owned()))
            }))
        });
    let attempt = message.info().map_or(Attempt::First, |info| {
        Attempt::Counted(u64::try_from(info.delivered).unwrap_or(1).max(1))
    });
    let message_id = headers.get(NATS_MSG_ID).map(str::to_owned);
    let delivery = Delivery::new(message.subject.as_str(), message.payload.clone(), headers)
        .with_attempt(attempt);
    match options.key.key_of(&delivery, message_id.as_deref()) {
        Some(key) => delivery.with_key(key),
        None => delivery,
    }
}

/// Runs one message and answers the broker.
///
/// While the handler runs, `+WPI` (work in progress) every `progress` keeps JetStream
/// from redelivering the message to another consumer meanwhile (which would only be
/// sent back, but would use up one of its deliveries).
async fn settle<P: Process>(shared: Arc<Shared<P>>, message: Message, progress: Duration) {
    let delivery = delivery_of(&message, &shared.options);
    let run = drive(&shared.process, delivery, &shared.options, BROKER);
    tokio::pin!(run);
    let mut ticks = tokio::time::interval(progress.max(Duration::from_millis(10)));
    ticks.tick().await;
    let outcome = loop {
        tokio::select! {
            outcome = &mut run => break outcome,
            _ = ticks.tick() => {
                if let Err(e) = message.ack_with(AckKind::Progress).await {
                    tracing::debug!(error = %e, "progress not sent");
                }
            }
        }
    };
    let kind = match outcome.settlement(&shared.options.delays) {
        Settlement::Ack => AckKind::Ack,
        Settlement::Retry(delay) if delay.is_zero() => AckKind::Nak(None),
        Settlement::Retry(delay) => AckKind::Nak(Some(delay)),
        Settlement::Reject => AckKind::Term,
    };
    if let Err(e) = message.ack_with(kind).await {
        // Not settled: JetStream redelivers after `ack_wait`; a finished record replays.
        tracing::warn!(error = %e, outcome = outcome.as_str(), "settling the message failed");
    }
    if outcome == DeliveryOutcome::Executed {
        tracing::debug!("executed and acknowledged");
    }
}
