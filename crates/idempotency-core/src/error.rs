//! The one error type of the kit, and how to classify it.

use std::fmt;
use std::time::Duration;

/// A boxed error from a storage driver or another layer, kept as a typed source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Shorthand for results whose error is [`IdempotencyError`].
pub type Result<T, E = IdempotencyError> = std::result::Result<T, E>;

/// One problem with one field, as reported by a validation error.
///
/// `field` is the field's name (`operation`, `idempotency_key`, `created_at`, …) or
/// empty for the value as a whole; `kind` is a short machine-readable tag that follows
/// pydantic's error types where the Python library produced them (`string_too_short`,
/// `missing`, `string_type`, …); `message` is for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    /// The field the problem is about; empty for the whole value.
    pub field: String,
    /// Machine-readable tag of the problem.
    pub kind: &'static str,
    /// Human-readable description.
    pub message: String,
}

impl FieldProblem {
    /// Creates a problem report.
    ///
    /// # Examples
    /// ```
    /// let p = idempotency_core::FieldProblem::new("operation", "string_too_short", "must not be empty");
    /// assert_eq!(p.to_string(), "operation: must not be empty");
    /// ```
    pub fn new(field: impl Into<String>, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// The problems of a validation error, displayed as `a: …; b: …`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldProblems(pub Vec<FieldProblem>);

impl fmt::Display for FieldProblems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Where an error comes from, for choosing what to do about it.
///
/// A cache miss is not an error at all: reads return `Ok(None)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorClass {
    /// The store could not be reached or failed: degrade (run unprotected) or fail closed.
    Storage,
    /// The caller sent something invalid (bad key, bad TTL): HTTP 400.
    InvalidInput,
    /// The key is taken or in flight: HTTP 409.
    Conflict,
    /// The key was used before for a different request: HTTP 422.
    KeyReuse,
    /// The stored data or the result cannot be read or written: not the caller's fault.
    Data,
    /// The record exists but has expired.
    Expired,
    /// The kit was set up wrong (URL, settings, wiring): fix the deployment.
    Configuration,
}

/// Everything that can go wrong in the kit.
///
/// Match on the variants, or ask [`IdempotencyError::class`] and the `is_*` helpers.
///
/// # Examples
/// ```
/// use idempotency_core::{ErrorClass, IdempotencyError};
/// let err = IdempotencyError::in_progress("order.create", "k1");
/// assert_eq!(err.class(), ErrorClass::Conflict);
/// assert_eq!(err.http_status(), 409);
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdempotencyError {
    /// A record already exists under the key (or, from a bulk save, under each listed key).
    #[error("idempotency key collision for operation '{operation}', keys {keys:?}")]
    KeyCollision {
        /// The operation.
        operation: String,
        /// Every key that was taken.
        keys: Vec<String>,
    },
    /// The record exists but its lifetime has passed.
    #[error("idempotency record expired for operation '{operation}', key '{key}'")]
    RecordExpired {
        /// The operation.
        operation: String,
        /// The idempotency key.
        key: String,
    },
    /// The storage backend failed or could not be reached.
    #[error("idempotency storage failure{}", operation.as_deref().map(|o| format!(" for {o}")).unwrap_or_default())]
    Storage {
        /// The operation, when the call had one.
        operation: Option<String>,
        /// The driver's error.
        #[source]
        source: BoxError,
    },
    /// The storage server answered, refusing the command with an error reply (Redis:
    /// `OOM`, `NOREPLICAS`, `READONLY`, `MISCONF`, …), as opposed to [`Storage`]
    /// (it could not be reached, or did not answer in time). A server that refuses
    /// writes may still serve reads: a claim refused this way reads the key first, and
    /// only an empty key falls to the caller's storage-error mode.
    ///
    /// [`Storage`]: IdempotencyError::Storage
    #[error("idempotency storage refused the command{}: {code}", operation.as_deref().map(|o| format!(" for {o}")).unwrap_or_default())]
    StorageRefused {
        /// The operation, when the call had one.
        operation: Option<String>,
        /// The server's error code (`OOM`, `NOREPLICAS`, `READONLY`, …).
        code: String,
        /// The driver's error, with the whole reply.
        #[source]
        source: BoxError,
    },
    /// Input failed validation; every problem is listed.
    #[error("validation failed: {problems}")]
    Validation {
        /// What was wrong, field by field.
        problems: FieldProblems,
    },
    /// A TTL outside the configured bounds.
    #[error("invalid TTL {}s: must be between {}s and {}s", given.as_secs_f64(), min.as_secs_f64(), max.as_secs_f64())]
    InvalidTtl {
        /// The TTL asked for.
        given: Duration,
        /// The lower bound.
        min: Duration,
        /// The upper bound.
        max: Duration,
    },
    /// Another call with the same key is still running its action.
    #[error("idempotency record for operation '{operation}', key '{key}' is still in flight")]
    InProgress {
        /// The operation.
        operation: String,
        /// The idempotency key.
        key: String,
    },
    /// The key was used for a request with a different fingerprint.
    #[error(
        "idempotency key '{key}' for operation '{operation}' was used for a different request: stored fingerprint '{stored}', got '{given}'"
    )]
    KeyReuse {
        /// The operation.
        operation: String,
        /// The idempotency key.
        key: String,
        /// The fingerprint stored with the record.
        stored: String,
        /// The fingerprint of this call.
        given: String,
    },
    /// The bytes under a key are not a JSON record (invalid JSON or not UTF-8).
    #[error("corrupted idempotency record for {operation}:{key}")]
    CorruptedRecord {
        /// The operation of the key read.
        operation: String,
        /// The idempotency key read.
        key: String,
        /// Why it could not be parsed.
        #[source]
        source: BoxError,
    },
    /// A stored record is JSON of the wrong shape (missing field, wrong type, bad timestamp).
    #[error("invalid record data for {operation}:{key}: {problems}")]
    InvalidRecord {
        /// The operation of the key read.
        operation: String,
        /// The idempotency key read.
        key: String,
        /// What was wrong, field by field.
        problems: FieldProblems,
    },
    /// A value could not be turned into a storable result, or a stored result into a value.
    #[error("result serialization failed")]
    Serialization {
        /// The serializer's error.
        #[source]
        source: BoxError,
    },
    /// The action ran, but its result could not be stored (the adapter could not encode
    /// it, or no client could read it back: see [`check_storable`]); the key holds that
    /// fact, and every retry gets this error instead of running the action again.
    ///
    /// [`check_storable`]: crate::check_storable
    #[error("the result of operation '{operation}', key '{key}' could not be stored: {reason}")]
    ResultNotStorable {
        /// The operation.
        operation: String,
        /// The idempotency key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The kit was set up wrong: a malformed store URL, metrics asked for without a
    /// collector, an invalid client configuration. Not an outage (fail-open never applies)
    /// and not the caller's request (not a 400).
    #[error("configuration error: {message}")]
    Configuration {
        /// What is wrong.
        message: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// The task running a detached call was cancelled before it finished (the runtime
    /// shut down); whether the action ran is unknown, and a retry replays or runs it.
    #[error("idempotent call for operation '{operation}' was cancelled before it finished")]
    Cancelled {
        /// The operation.
        operation: String,
        /// The idempotency key, when the call had one.
        key: Option<String>,
    },
    /// Too many detached calls are in flight on this coordinator (their callers may
    /// have gone: see `CoordinatorBuilder::max_detached`); the action did not run. A
    /// 503: retry later.
    #[error("too many detached calls in flight ({limit}); operation '{operation}' refused")]
    Overloaded {
        /// The operation.
        operation: String,
        /// The bound that was reached.
        limit: usize,
    },
    /// Named values could not be turned into a request fingerprint (a value with no
    /// JSON form, or JSON text that is not JSON).
    #[error("request fingerprint could not be computed")]
    Fingerprint {
        /// Why.
        #[source]
        source: BoxError,
    },
    /// A bulk save that wrote some records and not others.
    #[error("bulk save for operation '{operation}': {} colliding, {} invalid, {} saved{}", collisions.len(), invalid.len(), saved.len(), if *rolled_back { ", rolled back" } else { "" })]
    BulkSave {
        /// The operation of the batch (its first record's).
        operation: String,
        /// Keys that were already taken.
        collisions: Vec<String>,
        /// Records that could not be written, by key, with why.
        invalid: Vec<(String, IdempotencyError)>,
        /// Keys this call wrote (and, when `rolled_back`, deleted again).
        saved: Vec<String>,
        /// Whether the saved keys were deleted again.
        rolled_back: bool,
    },
}

impl IdempotencyError {
    /// A validation error from a list of problems.
    pub fn validation(problems: Vec<FieldProblem>) -> Self {
        Self::Validation {
            problems: FieldProblems(problems),
        }
    }

    /// A validation error about one field.
    pub fn invalid_field(field: &str, kind: &'static str, message: impl Into<String>) -> Self {
        Self::validation(vec![FieldProblem::new(field, kind, message)])
    }

    /// A storage error with its cause.
    pub fn storage(operation: Option<&str>, source: impl Into<BoxError>) -> Self {
        Self::Storage {
            operation: operation.map(str::to_owned),
            source: source.into(),
        }
    }

    /// A storage error for a command the server refused with an error reply `code`.
    ///
    /// # Examples
    /// ```
    /// use idempotency_core::{ErrorClass, IdempotencyError};
    /// let err = IdempotencyError::storage_refused(Some("pay"), "OOM", "OOM command not allowed");
    /// assert!(err.is_storage() && !err.is_unreachable());
    /// assert_eq!(err.class(), ErrorClass::Storage);
    /// ```
    pub fn storage_refused(
        operation: Option<&str>,
        code: &str,
        source: impl Into<BoxError>,
    ) -> Self {
        Self::StorageRefused {
            operation: operation.map(str::to_owned),
            code: code.to_owned(),
            source: source.into(),
        }
    }

    /// The in-progress error.
    pub fn in_progress(operation: &str, key: &str) -> Self {
        Self::InProgress {
            operation: operation.to_owned(),
            key: key.to_owned(),
        }
    }

    /// A collision on one key.
    pub fn collision(operation: &str, key: &str) -> Self {
        Self::KeyCollision {
            operation: operation.to_owned(),
            keys: vec![key.to_owned()],
        }
    }

    /// A serialization error with its cause.
    pub fn serialization(source: impl Into<BoxError>) -> Self {
        Self::Serialization {
            source: source.into(),
        }
    }

    /// A configuration error, with its cause when there is one.
    pub fn configuration(message: impl Into<String>, source: Option<BoxError>) -> Self {
        Self::Configuration {
            message: message.into(),
            source,
        }
    }

    /// A fingerprint error with its cause.
    pub fn fingerprint(source: impl Into<BoxError>) -> Self {
        Self::Fingerprint {
            source: source.into(),
        }
    }

    /// Which kind of trouble this is.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Configuration { .. } => ErrorClass::Configuration,
            // A shutdown, like an outage, is the service's trouble: retry later (503).
            Self::Storage { .. }
            | Self::StorageRefused { .. }
            | Self::Cancelled { .. }
            | Self::Overloaded { .. } => ErrorClass::Storage,
            Self::Validation { .. } | Self::InvalidTtl { .. } => ErrorClass::InvalidInput,
            Self::KeyCollision { .. } | Self::InProgress { .. } => ErrorClass::Conflict,
            Self::KeyReuse { .. } => ErrorClass::KeyReuse,
            Self::RecordExpired { .. } => ErrorClass::Expired,
            Self::CorruptedRecord { .. }
            | Self::InvalidRecord { .. }
            | Self::Serialization { .. }
            | Self::ResultNotStorable { .. }
            | Self::Fingerprint { .. } => ErrorClass::Data,
            Self::BulkSave {
                collisions,
                invalid,
                ..
            } => {
                if invalid.iter().any(|(_, e)| e.is_storage()) {
                    ErrorClass::Storage
                } else if !collisions.is_empty() {
                    ErrorClass::Conflict
                } else {
                    ErrorClass::Data
                }
            }
        }
    }

    /// The HTTP status a service would answer with for this error: 400 for invalid
    /// input, 409 for a conflict, 422 for a reused key, 503 for storage trouble and
    /// 500 for the rest.
    pub fn http_status(&self) -> u16 {
        match self.class() {
            ErrorClass::InvalidInput => 400,
            ErrorClass::Conflict => 409,
            ErrorClass::KeyReuse => 422,
            ErrorClass::Storage => 503,
            ErrorClass::Data | ErrorClass::Expired | ErrorClass::Configuration => 500,
        }
    }

    /// Whether the store failed (an outage, not a mistake): it could not be reached,
    /// or it refused the command ([`IdempotencyError::StorageRefused`]).
    pub fn is_storage(&self) -> bool {
        matches!(self, Self::Storage { .. } | Self::StorageRefused { .. })
    }

    /// Whether the store could not be reached or did not answer in time (I/O, timeout):
    /// a storage error that is not a refusal by a server that answered.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Storage { .. })
    }

    /// The message with every cause after it (`storage failure for pay: IO Error:
    /// Connection refused`): what logs should show, since the top message alone often
    /// does not say what went wrong.
    ///
    /// # Examples
    /// ```
    /// let e = idempotency_core::IdempotencyError::storage(Some("pay"), std::io::Error::other("connection refused"));
    /// assert_eq!(e.full_message(), "idempotency storage failure for pay: connection refused");
    /// ```
    pub fn full_message(&self) -> String {
        let mut out = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            out.push_str(": ");
            out.push_str(&cause.to_string());
            source = cause.source();
        }
        out
    }

    /// [`full_message`](Self::full_message) with every idempotency key replaced by
    /// `key#` and the first 8 hex digits of its SHA-256: what events above `debug` carry.
    /// Keys are chosen by clients and may be secrets or personal data; the short hash
    /// still lets an operator match events of one key (`docs/security.md`).
    ///
    /// # Examples
    /// ```
    /// let e = idempotency_core::IdempotencyError::in_progress("pay", "card-4242");
    /// let logged = e.log_message();
    /// assert!(!logged.contains("card-4242"));
    /// assert!(logged.contains("key#"));
    /// ```
    pub fn log_message(&self) -> String {
        let mut text = self.full_message();
        let mut keys: Vec<&str> = match self {
            Self::KeyCollision { keys, .. } => keys.iter().map(String::as_str).collect(),
            Self::RecordExpired { key, .. }
            | Self::InProgress { key, .. }
            | Self::KeyReuse { key, .. }
            | Self::CorruptedRecord { key, .. }
            | Self::InvalidRecord { key, .. }
            | Self::ResultNotStorable { key, .. } => vec![key.as_str()],
            Self::Cancelled { key, .. } => key.iter().map(String::as_str).collect(),
            Self::BulkSave {
                collisions,
                invalid,
                saved,
                ..
            } => collisions
                .iter()
                .chain(saved)
                .chain(invalid.iter().map(|(k, _)| k))
                .map(String::as_str)
                .collect(),
            _ => Vec::new(),
        };
        // Longest first, so a key that contains another is replaced whole.
        keys.sort_by_key(|k| std::cmp::Reverse(k.len()));
        for key in keys.into_iter().filter(|k| !k.is_empty()) {
            text = text.replace(key, &key_tag(key));
        }
        text
    }

    /// Whether the caller's input was at fault (HTTP 4xx).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self.class(),
            ErrorClass::InvalidInput | ErrorClass::Conflict | ErrorClass::KeyReuse
        )
    }

    /// Whether this is a key collision.
    pub fn is_collision(&self) -> bool {
        matches!(self, Self::KeyCollision { .. })
    }

    /// Whether this is a validation error (identifiers, configuration, record shape).
    pub fn is_validation(&self) -> bool {
        matches!(self, Self::Validation { .. } | Self::InvalidRecord { .. })
    }

    /// The field problems of a validation error; empty for other errors.
    pub fn problems(&self) -> &[FieldProblem] {
        match self {
            Self::Validation { problems } | Self::InvalidRecord { problems, .. } => &problems.0,
            _ => &[],
        }
    }
}

/// `key#` and the first 8 hex digits of the key's SHA-256.
pub(crate) fn key_tag(key: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(key.as_bytes());
    let mut tag = String::from("key#");
    for byte in &digest[..4] {
        tag.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        tag.push(char::from(b"0123456789abcdef"[usize::from(byte & 0xf)]));
    }
    tag
}
