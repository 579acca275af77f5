//! Bulk operations: the optional capability of a repository that can read, write and
//! delete many records in few round trips, and the helpers every store's bulk operations
//! share (validating a batch of keys, turning what happened to each record of a bulk save
//! into its outcome).

use std::collections::HashMap;
use std::future::Future;

use crate::error::{IdempotencyError, Result};
use crate::identifiers::RecordId;
use crate::record::IdempotencyRecord;
use crate::traits::storage::{IdempotencyRepository, SaveManyOptions};

/// Bulk reads, writes and deletes of one operation's records: a capability beside the
/// single-key [`IdempotencyRepository`], so a backend or wrapper implements only what it
/// offers (as apalis keeps optional abilities in their own traits). Keys are validated at
/// this edge, all of them before any I/O ([`validate_all`]).
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), idempotency_core::IdempotencyError> {
/// use idempotency_core::{BulkRepository, IdempotencyDomainService, MemoryStore, SaveManyOptions};
/// let store = MemoryStore::new();
/// let svc = IdempotencyDomainService::default();
/// let records = vec![svc.create_record("op", "a", &1)?, svc.create_record("op", "b", &2)?];
/// store.save_many(&records, SaveManyOptions::default()).await?;
/// assert_eq!(store.get_many("op", &["a", "b", "c"]).await?.len(), 2);
/// assert_eq!(store.delete_many("op", &["a", "b"]).await?, 2);
/// # Ok(()) }
/// ```
pub trait BulkRepository: IdempotencyRepository {
    /// The found, unexpired records among `keys`, by idempotency key. Every key is
    /// validated here, once, before any I/O; the store reads them with
    /// [`BulkRepository::get_by_ids`].
    ///
    /// # Errors
    /// Validation (of any key), storage, corrupted or invalid record errors.
    fn get_many<K: AsRef<str> + Sync>(
        &self,
        operation: &str,
        keys: &[K],
    ) -> impl Future<Output = Result<HashMap<String, IdempotencyRecord>>> + Send {
        let ids = validate_all(operation, keys);
        async move { self.get_by_ids(&ids?).await }
    }

    /// [`BulkRepository::get_many`] of identities validated already: what a store
    /// implements (and what a wrapper forwards, so no key is validated twice). The
    /// identities are of one operation, as `get_many` makes them: the answer is keyed by
    /// idempotency key alone, and counted under the first identity's operation.
    ///
    /// # Errors
    /// Storage, corrupted or invalid record errors.
    fn get_by_ids(
        &self,
        ids: &[RecordId],
    ) -> impl Future<Output = Result<HashMap<String, IdempotencyRecord>>> + Send;

    /// Inserts each record whose key is free. Not atomic: on error the records that were
    /// written stay, unless `options.rollback_on_error` is set, in which case exactly the
    /// records this call wrote (and still unchanged) are deleted again. An empty slice
    /// does nothing; any other is a [`Batch`] handed to [`BulkRepository::save_batch`].
    ///
    /// # Errors
    /// As [`BulkRepository::save_batch`].
    fn save_many(
        &self,
        records: &[IdempotencyRecord],
        options: SaveManyOptions,
    ) -> impl Future<Output = Result<()>> + Send {
        let batch = Batch::new(records);
        async move {
            match batch {
                Some(batch) => self.save_batch(batch, options).await,
                None => Ok(()),
            }
        }
    }

    /// [`BulkRepository::save_many`] of a batch that is not empty: what a store
    /// implements.
    ///
    /// # Errors
    /// One [`IdempotencyError::KeyCollision`] naming every taken key when collisions were
    /// the only trouble; otherwise [`IdempotencyError::BulkSave`] listing collisions,
    /// invalid records and what was saved; storage errors.
    fn save_batch(
        &self,
        batch: Batch<'_>,
        options: SaveManyOptions,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Deletes the records under `keys`; returns how many there were. Every key is
    /// validated here, once, before any I/O.
    ///
    /// # Errors
    /// Validation and storage errors.
    fn delete_many<K: AsRef<str> + Sync>(
        &self,
        operation: &str,
        keys: &[K],
    ) -> impl Future<Output = Result<u64>> + Send {
        let ids = validate_all(operation, keys);
        async move { self.delete_by_ids(&ids?).await }
    }

    /// [`BulkRepository::delete_many`] of identities validated already: what a store
    /// implements.
    ///
    /// # Errors
    /// Storage errors.
    fn delete_by_ids(&self, ids: &[RecordId]) -> impl Future<Output = Result<u64>> + Send;
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
/// [`IdempotencyError::Validation`] with the problems of every invalid key.
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
/// [`IdempotencyError::KeyCollision`] when collisions were the only trouble (and nothing
/// stayed saved); otherwise [`IdempotencyError::BulkSave`].
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
