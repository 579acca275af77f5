//! Where a delivery's idempotency key comes from, and what happens without one.

use std::fmt;
use std::sync::Arc;

use crate::delivery::Delivery;

/// The function form of [`KeySource`]: the key of a delivery, or `None`.
pub type KeyFn = Arc<dyn Fn(&Delivery) -> Option<String> + Send + Sync>;

/// Where the idempotency key of a delivery is read.
///
/// # Examples
/// ```
/// use idempotency_consumers::{Delivery, Headers, KeySource};
/// let delivery = Delivery::new("s", "{}".into(), Headers::from_pairs([("Order-Id", "o-1")]));
/// assert_eq!(KeySource::header("order-id").key_of(&delivery, None), Some("o-1".to_owned()));
/// assert_eq!(KeySource::MessageId.key_of(&delivery, Some("m-9")), Some("m-9".to_owned()));
/// let by_subject = KeySource::function(|d: &Delivery| Some(d.subject().to_owned()));
/// assert_eq!(by_subject.key_of(&delivery, None), Some("s".to_owned()));
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum KeySource {
    /// The broker's message id: the `Nats-Msg-Id` header on NATS (the id JetStream also
    /// de-duplicates publications by), the `message-id` property on AMQP.
    #[default]
    MessageId,
    /// A header of this name (any case).
    Header(String),
    /// A function of the delivery.
    Function(KeyFn),
}

impl KeySource {
    /// [`KeySource::Header`].
    pub fn header(name: impl Into<String>) -> Self {
        Self::Header(name.into())
    }

    /// [`KeySource::Function`].
    pub fn function(f: impl Fn(&Delivery) -> Option<String> + Send + Sync + 'static) -> Self {
        Self::Function(Arc::new(f))
    }

    /// The key of `delivery`, given the broker's message id; an empty or blank key
    /// counts as none.
    pub fn key_of(&self, delivery: &Delivery, message_id: Option<&str>) -> Option<String> {
        let key = match self {
            Self::MessageId => message_id.map(str::to_owned),
            Self::Header(name) => delivery.headers().get(name).map(str::to_owned),
            Self::Function(f) => f(delivery),
        };
        key.filter(|k| !k.trim().is_empty())
    }
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MessageId => f.write_str("MessageId"),
            Self::Header(name) => f.debug_tuple("Header").field(name).finish(),
            Self::Function(_) => f.write_str("Function(..)"),
        }
    }
}

/// What a consumer does with a delivery that has no key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MissingKey {
    /// Reject it without running the handler: JetStream `TERM` (no redelivery; an
    /// advisory is published), AMQP `basic.nack` without requeue (to the queue's
    /// dead-letter exchange, if it has one). Counted as `rejected`.
    #[default]
    Reject,
    /// Run the handler without idempotency (at least once): for streams where some
    /// messages need no protection. Counted as `unprotected`.
    RunUnprotected,
}
