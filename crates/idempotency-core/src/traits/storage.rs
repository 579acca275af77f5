//! The storage trait (repository) for idempotency records.

use std::collections::HashMap;
use std::future::Future;

use crate::error::Result;
use crate::record::IdempotencyRecord;

/// Options of [`IdempotencyRepository::save_many`].
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

/// Where records live: the repository of the domain.
///
/// Implementations validate `operation` and `key` before any I/O (an invalid one is a
/// [`IdempotencyError::Validation`](crate::IdempotencyError::Validation)), never return an
/// expired record, and report backend failures as
/// [`IdempotencyError::Storage`](crate::IdempotencyError::Storage). Every future is `Send`
/// so a coordinator can run on a multi-threaded runtime; none is cancel-unsafe beyond
/// the write it had already sent.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), idempotency_core::IdempotencyError> {
/// use idempotency_core::{IdempotencyDomainService, IdempotencyRepository, MemoryStore};
/// let store = MemoryStore::new();
/// let record = IdempotencyDomainService::default().create_record("op", "k", &1)?;
/// store.save(&record).await?;
/// assert!(store.save(&record).await.unwrap_err().is_collision());
/// assert_eq!(store.get("op", "k").await?, Some(record));
/// # Ok(()) }
/// ```
pub trait IdempotencyRepository: Send + Sync + 'static {
    /// The record under the key, if there is one and it has not expired.
    ///
    /// # Errors
    /// Validation, storage, corrupted or invalid record errors.
    fn get(
        &self,
        operation: &str,
        key: &str,
    ) -> impl Future<Output = Result<Option<IdempotencyRecord>>> + Send;

    /// Inserts the record only if its key is free.
    ///
    /// # Errors
    /// [`IdempotencyError::KeyCollision`](crate::IdempotencyError::KeyCollision) when the
    /// key is taken; validation (an already expired record) and storage errors.
    fn save(&self, record: &IdempotencyRecord) -> impl Future<Output = Result<()>> + Send;

    /// Writes the record whether or not the key is taken.
    ///
    /// # Errors
    /// Validation and storage errors.
    fn replace(&self, record: &IdempotencyRecord) -> impl Future<Output = Result<()>> + Send;

    /// Deletes the record; `true` when there was one.
    ///
    /// # Errors
    /// Validation and storage errors.
    fn delete(&self, operation: &str, key: &str) -> impl Future<Output = Result<bool>> + Send;

    /// The found, unexpired records among `keys`, by idempotency key.
    ///
    /// # Errors
    /// Validation (of any key), storage, corrupted or invalid record errors.
    fn get_many<K: AsRef<str> + Sync>(
        &self,
        operation: &str,
        keys: &[K],
    ) -> impl Future<Output = Result<HashMap<String, IdempotencyRecord>>> + Send;

    /// Inserts each record whose key is free. Not atomic: on error the records that were
    /// written stay, unless `options.rollback_on_error` is set, in which case exactly the
    /// records this call wrote are deleted again.
    ///
    /// # Errors
    /// One [`IdempotencyError::KeyCollision`](crate::IdempotencyError::KeyCollision)
    /// naming every taken key when collisions were the only trouble; otherwise
    /// [`IdempotencyError::BulkSave`](crate::IdempotencyError::BulkSave) listing
    /// collisions, invalid records and what was saved; storage errors.
    fn save_many(
        &self,
        records: &[IdempotencyRecord],
        options: SaveManyOptions,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Deletes the records under `keys`; returns how many there were.
    ///
    /// # Errors
    /// Validation and storage errors.
    fn delete_many<K: AsRef<str> + Sync>(
        &self,
        operation: &str,
        keys: &[K],
    ) -> impl Future<Output = Result<u64>> + Send;
}
