//! sqlx errors as the kit's errors.

use idempotency_core::IdempotencyError;

/// SQLSTATE classes where the server answered but refused the statement for a reason
/// of its own state (read-only, out of resources, …); anything else the server answers
/// is refused as well, with its code.
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
