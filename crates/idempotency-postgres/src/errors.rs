//! sqlx errors as the kit's errors.

use idempotency_core::IdempotencyError;

/// A failed statement as the kit's error: refused (the server answered with an error,
/// named by its SQLSTATE: read-only, out of resources, a lock timeout, …) or a storage
/// failure (no connection, I/O, a timeout of the pool).
pub(crate) fn storage_error(operation: Option<&str>, error: sqlx::Error) -> IdempotencyError {
    match &error {
        sqlx::Error::Database(db) => {
            let code = db
                .code()
                .map_or_else(|| "XX000".to_owned(), std::borrow::Cow::into_owned);
            IdempotencyError::storage_refused(operation, &code, error)
        }
        _ => IdempotencyError::storage(operation, error),
    }
}

/// A decoding error of a row this crate wrote: the schema is not the one it expects.
pub(crate) fn row_error(operation: Option<&str>, error: sqlx::Error) -> IdempotencyError {
    IdempotencyError::storage(operation, error)
}
