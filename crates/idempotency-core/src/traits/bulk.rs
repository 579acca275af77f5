//! Helpers every store's bulk operations share: validating a batch of keys and turning
//! what happened to each record of a bulk save into its outcome.

use crate::error::{IdempotencyError, Result};
use crate::identifiers::RecordId;
use crate::traits::storage::SaveManyOptions;

/// Validates every key of a bulk call before any I/O, reporting every problem; returns
/// the identities in the order given.
///
/// # Errors
/// [`IdempotencyError::Validation`] with the problems of every invalid key.
///
/// # Examples
/// ```
/// let ids = idempotency_core::validate_all("op", &["a", " b "]).expect("valid");
/// assert_eq!(ids[1].key(), "b");
/// assert_eq!(idempotency_core::validate_all("op", &["a:b", ""]).unwrap_err().problems().len(), 2);
/// ```
pub fn validate_all<K: AsRef<str>>(operation: &str, keys: &[K]) -> Result<Vec<RecordId>> {
    let mut out = Vec::with_capacity(keys.len());
    let mut problems = Vec::new();
    for key in keys {
        match RecordId::new(operation, key.as_ref()) {
            Ok(id) => out.push(id),
            Err(IdempotencyError::Validation { problems: p }) => problems.extend(p.0),
            Err(e) => return Err(e),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        problems.dedup();
        Err(IdempotencyError::validation(problems))
    }
}

/// The error (or not) of a bulk save, from what happened to each record: the colliding
/// keys, the invalid records with why, and the idempotency keys this call saved.
///
/// # Errors
/// [`IdempotencyError::KeyCollision`] when collisions were the only trouble (and nothing
/// stayed saved); otherwise [`IdempotencyError::BulkSave`].
///
/// # Examples
/// ```
/// use idempotency_core::{SaveManyOptions, bulk_outcome};
/// assert!(bulk_outcome("op", vec![], vec![], vec!["a".into()], SaveManyOptions::default()).is_ok());
/// let err = bulk_outcome("op", vec!["b".into()], vec![], vec![], SaveManyOptions::default()).unwrap_err();
/// assert!(err.is_collision());
/// ```
pub fn bulk_outcome(
    operation: &str,
    collisions: Vec<String>,
    invalid: Vec<(String, IdempotencyError)>,
    saved: Vec<String>,
    options: SaveManyOptions,
) -> Result<()> {
    if collisions.is_empty() && invalid.is_empty() {
        return Ok(());
    }
    if invalid.is_empty() && (options.rollback_on_error || saved.is_empty()) {
        return Err(IdempotencyError::KeyCollision {
            operation: operation.to_owned(),
            keys: collisions,
        });
    }
    Err(IdempotencyError::BulkSave {
        operation: operation.to_owned(),
        collisions,
        invalid,
        saved,
        rolled_back: options.rollback_on_error,
    })
}
