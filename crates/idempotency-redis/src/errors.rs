//! fred errors as kit errors, and their metric labels.

use fred::error::{Error, ErrorKind};
use idempotency_core::{IdempotencyError, error_type};

/// The metric label of a driver error (a fixed set).
pub(crate) fn label(e: &Error) -> &'static str {
    match e.kind() {
        ErrorKind::IO | ErrorKind::Canceled | ErrorKind::Routing | ErrorKind::Backpressure => {
            error_type::CONNECTION
        }
        ErrorKind::Timeout => error_type::TIMEOUT,
        ErrorKind::Auth | ErrorKind::Config | ErrorKind::Url => error_type::STORAGE,
        _ => error_type::RESPONSE,
    }
}

/// A storage error carrying the driver's error as its source.
pub(crate) fn storage(operation: &str, e: Error) -> IdempotencyError {
    IdempotencyError::storage(Some(operation), e)
}
