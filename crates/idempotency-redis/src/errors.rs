//! fred errors as kit errors, and their metric labels.

use fred::error::{Error, ErrorKind};
use idempotency_core::{ErrorType, IdempotencyError, RecordId};

/// The metric label of a driver error (a fixed set).
pub(crate) fn label(e: &Error) -> ErrorType {
    match e.kind() {
        ErrorKind::IO | ErrorKind::Canceled | ErrorKind::Routing | ErrorKind::Backpressure => {
            ErrorType::Connection
        }
        ErrorKind::Timeout => ErrorType::Timeout,
        ErrorKind::Auth | ErrorKind::Config | ErrorKind::Url => ErrorType::Storage,
        _ => ErrorType::Response,
    }
}

/// Whether the server refused the command because the key holds another Redis type: a
/// permanent fault of the data under that key, not an outage.
pub(crate) fn is_wrong_type(e: &Error) -> bool {
    e.details().contains("WRONGTYPE")
}

/// The kit error of a driver error on one key: a data error naming the key when the key
/// holds a value of another type (so fail-open never runs the action over it), a storage
/// error otherwise.
pub(crate) fn classify(id: &RecordId, e: Error) -> IdempotencyError {
    if is_wrong_type(&e) {
        IdempotencyError::CorruptedRecord {
            operation: id.operation().to_owned(),
            key: id.key().to_owned(),
            source: Box::new(e),
        }
    } else {
        storage(id.operation(), e)
    }
}

/// A storage error carrying the driver's error as its source.
pub(crate) fn storage(operation: &str, e: Error) -> IdempotencyError {
    IdempotencyError::storage(Some(operation), e)
}
