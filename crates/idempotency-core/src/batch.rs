//! What every store's bulk operations share: the options of a bulk save, validating a
//! batch of keys, and turning what happened to each record of a bulk save into its
//! outcome.

use crate::error::{IdempotencyError, Result};
use crate::identity::RecordId;
use crate::record::IdempotencyRecord;

/// Options of [`BulkRepository::save_many`](crate::BulkRepository::save_many).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SaveManyOptions {
    /// Delete again the records this call wrote when any record of the batch failed.
    pub rollback_on_error: bool,
}

impl SaveManyOptions {
    /// With rollback on error.
    pub fn rollback_on_error() -> Self {
        Self {
            rollback_on_error: true,
        }
    }
}

/// The records of a bulk save, never empty, and the operation the save reports under
/// (its first record's: in its errors and its metrics).
///
/// # Examples
/// ```
/// # fn main() -> Result<(), idempotency_core::IdempotencyError> {
/// use idempotency_core::{Batch, IdempotencyDomainService};
/// let svc = IdempotencyDomainService::default();
/// let records = vec![svc.create_record("op", "a", &1)?];
/// let batch = Batch::new(&records).map(|b| b.operation().to_owned());
/// assert_eq!(batch.as_deref(), Some("op"));
/// assert!(Batch::new(&[]).is_none());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    operation: &'a str,
    records: &'a [IdempotencyRecord],
}

impl<'a> Batch<'a> {
    /// The batch of `records`; `None` when there are none (nothing to save).
    pub fn new(records: &'a [IdempotencyRecord]) -> Option<Self> {
        let first = records.first()?;
        Some(Self {
            operation: first.operation(),
            records,
        })
    }

    /// The operation the save reports under: the first record's.
    pub fn operation(self) -> &'a str {
        self.operation
    }

    /// The records, in the order given (at least one).
    pub fn records(self) -> &'a [IdempotencyRecord] {
        self.records
    }
}

/// Validates every key of a bulk call before any I/O, reporting every problem; returns
/// the identities in the order given.
///
/// # Errors
/// [`IdempotencyError::Validation`](crate::IdempotencyError::Validation) with the problems of every invalid key.
///
/// # Examples
/// ```
/// # fn main() -> Result<(), idempotency_core::IdempotencyError> {
/// use idempotency_core::validate_all;
/// let ids = validate_all("op", &["a", " b "])?;
/// assert_eq!(ids[1].key(), "b");
/// let refused = validate_all("op", &["a:b", ""]).err();
/// assert_eq!(refused.map(|e| e.problems().len()), Some(2));
/// # Ok(()) }
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
/// [`IdempotencyError::KeyCollision`](crate::IdempotencyError::KeyCollision) when collisions were the only trouble (and nothing
/// stayed saved); otherwise [`IdempotencyError::BulkSave`](crate::IdempotencyError::BulkSave).
///
/// # Examples
/// ```
/// use idempotency_core::{SaveManyOptions, bulk_outcome};
/// assert!(bulk_outcome("op", vec![], vec![], vec!["a".into()], SaveManyOptions::default()).is_ok());
/// let refused = bulk_outcome("op", vec!["b".into()], vec![], vec![], SaveManyOptions::default());
/// assert!(refused.is_err_and(|e| e.is_collision()));
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
