//! How a store names its keys and sends its statements.

use idempotency_core::{Result, validate_key_prefix};

use crate::constants::DEFAULT_KEY_PREFIX;

/// How statements are sent to the server.
///
/// [`Statements::Cached`] lets sqlx prepare each statement once per connection (named
/// prepared statements, its default): the fastest, and right for direct connections,
/// session pooling and `PgBouncer` 1.21+ with `max_prepared_statements` set.
/// [`Statements::Unnamed`] sends every statement as an unnamed one (`persistent(false)`):
/// for `PgBouncer` in transaction pooling without prepared-statement support, where a named
/// statement could land on another server connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Statements {
    /// Named prepared statements, cached per connection.
    #[default]
    Cached,
    /// Unnamed statements, parsed on every execution.
    Unnamed,
}

impl Statements {
    /// The `persistent` flag of a sqlx query.
    pub(crate) fn persistent(self) -> bool {
        matches!(self, Self::Cached)
    }
}

/// Where the `LISTEN` connection of a store comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ListenerSource {
    /// A connection taken from the store's pool and kept for good (right for direct
    /// connections and session pooling): size the pool one larger.
    #[default]
    Pool,
    /// A connection of its own to this URL: behind `PgBouncer` in transaction pooling,
    /// point it at the server (or a session-pooled port), since `LISTEN` needs a session.
    Url(String),
}

/// The settings of a [`PostgresStore`](crate::PostgresStore).
///
/// # Examples
/// ```
/// # fn main() -> Result<(), idempotency_core::IdempotencyError> {
/// use idempotency_postgres::{StoreConfig, Statements};
/// let config = StoreConfig::new().with_key_prefix("billing:")?.with_statements(Statements::Unnamed);
/// assert_eq!(config.key_prefix(), "billing:");
/// assert!(StoreConfig::new().with_key_prefix("no-colon").is_err());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    key_prefix: String,
    statements: Statements,
    listener: ListenerSource,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            statements: Statements::default(),
            listener: ListenerSource::default(),
        }
    }
}

impl StoreConfig {
    /// The defaults: key prefix `idempotency:`, cached statements, the listener on the
    /// pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// Another key prefix: empty, or ending with `:`.
    ///
    /// # Errors
    /// [`IdempotencyError::Validation`](idempotency_core::IdempotencyError::Validation)
    /// for a prefix that is neither.
    pub fn with_key_prefix(mut self, prefix: &str) -> Result<Self> {
        validate_key_prefix(prefix)?;
        prefix.clone_into(&mut self.key_prefix);
        Ok(self)
    }

    /// How statements are sent.
    #[must_use]
    pub fn with_statements(mut self, statements: Statements) -> Self {
        self.statements = statements;
        self
    }

    /// Where the `LISTEN` connection comes from.
    #[must_use]
    pub fn with_listener(mut self, listener: ListenerSource) -> Self {
        self.listener = listener;
        self
    }

    /// The key prefix.
    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// How statements are sent.
    pub fn statements(&self) -> Statements {
        self.statements
    }

    /// Where the `LISTEN` connection comes from.
    pub fn listener(&self) -> &ListenerSource {
        &self.listener
    }
}
