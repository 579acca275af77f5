//! What a handler is given: one delivery, broker-neutral.

use bytes::Bytes;
use idempotency_coordinator::FencingToken;

/// The headers of a delivery, as text (AMQP integers in decimal; other values that are
/// not text are left out).
///
/// # Examples
/// ```
/// use idempotency_consumers::Headers;
/// let headers = Headers::from_pairs([("Nats-Msg-Id", "order-7")]);
/// assert_eq!(headers.get("nats-msg-id"), Some("order-7"));
/// assert_eq!(headers.get("missing"), None);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// Headers from `(name, value)` pairs.
    pub fn from_pairs<N: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (N, V)>,
    ) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(n, v)| (n.into(), v.into()))
                .collect(),
        )
    }

    /// The first value of header `name` (compared without regard to ASCII case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every `(name, value)` pair, in the order received.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

/// Which delivery attempt this is, as far as the broker tells.
///
/// JetStream counts every delivery ([`Attempt::Counted`]). AMQP 0-9-1 says only whether
/// a message was delivered before (the `redelivered` flag); a quorum queue adds the
/// `x-delivery-count` header (earlier attempts), which makes it [`Attempt::Counted`]
/// again. A classic queue's redelivery is [`Attempt::Redelivered`]: a repeat, count
/// unknown.
///
/// # Examples
/// ```
/// use idempotency_consumers::Attempt;
/// assert_eq!(Attempt::Counted(1).number(), Some(1));
/// assert!(!Attempt::Counted(1).is_redelivery());
/// assert!(Attempt::Redelivered.is_redelivery());
/// assert_eq!(Attempt::Redelivered.number(), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Attempt {
    /// The broker counted the deliveries: this is delivery number `n` (1 = first).
    Counted(u64),
    /// The first delivery, as far as the broker knows (AMQP without a count).
    First,
    /// A redelivery whose number the broker does not tell (AMQP classic queues).
    Redelivered,
}

impl Attempt {
    /// The delivery's number (1 = first) where the broker counts.
    pub fn number(self) -> Option<u64> {
        match self {
            Self::Counted(n) => Some(n),
            Self::First => Some(1),
            Self::Redelivered => None,
        }
    }

    /// Whether the message was delivered before.
    pub fn is_redelivery(self) -> bool {
        match self {
            Self::Counted(n) => n > 1,
            Self::First => false,
            Self::Redelivered => true,
        }
    }
}

/// One delivery, as a handler sees it: payload, headers, the idempotency key, the
/// attempt and (in the transactional mode) the claim's fencing token.
///
/// # Examples
/// ```
/// use idempotency_consumers::{Attempt, Delivery, Headers};
/// let delivery = Delivery::new("orders.created", b"{}".as_slice().into(), Headers::default())
///     .with_key("order-7")
///     .with_attempt(Attempt::Counted(2));
/// assert_eq!(delivery.key(), Some("order-7"));
/// assert!(delivery.attempt().is_redelivery());
/// assert_eq!(delivery.fence(), None);
/// ```
#[derive(Debug, Clone)]
pub struct Delivery {
    subject: String,
    payload: Bytes,
    headers: Headers,
    key: Option<String>,
    attempt: Attempt,
    fence: Option<FencingToken>,
}

impl Delivery {
    /// A delivery of `payload` on `subject` (a NATS subject, an AMQP routing key), with
    /// no key yet, as a first attempt.
    pub fn new(subject: impl Into<String>, payload: Bytes, headers: Headers) -> Self {
        Self {
            subject: subject.into(),
            payload,
            headers,
            key: None,
            attempt: Attempt::First,
            fence: None,
        }
    }

    /// Sets the idempotency key.
    #[must_use]
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the attempt.
    #[must_use]
    pub fn with_attempt(mut self, attempt: Attempt) -> Self {
        self.attempt = attempt;
        self
    }

    /// Sets the fencing token of the claim the handler runs under.
    #[must_use]
    pub fn with_fence(mut self, fence: FencingToken) -> Self {
        self.fence = Some(fence);
        self
    }

    /// The NATS subject or AMQP routing key the message was published to.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The message body.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The message headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The idempotency key; `None` only for a keyless delivery run unprotected
    /// ([`MissingKey::RunUnprotected`](crate::MissingKey::RunUnprotected)).
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// Which attempt this is.
    pub fn attempt(&self) -> Attempt {
        self.attempt
    }

    /// The fencing token of the claim (grows with every new owner of the key): present
    /// in the transactional PostgreSQL mode, where the handler can write it next to its
    /// effects. Both modes hand it over (the coordinator mode asks the store for it before
    /// the handler runs: one round trip); `None` only for a delivery run unprotected.
    pub fn fence(&self) -> Option<FencingToken> {
        self.fence
    }
}
