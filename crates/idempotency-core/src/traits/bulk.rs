//! Bulk operations: the optional capability of a repository that can read, write and
//! delete many records in few round trips.

use std::collections::HashMap;
use std::future::Future;

use crate::batch::{Batch, SaveManyOptions, validate_all};
use crate::error::Result;
use crate::identity::RecordId;
use crate::record::IdempotencyRecord;
use crate::traits::storage::IdempotencyRepository;

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
    /// One [`IdempotencyError::KeyCollision`](crate::IdempotencyError::KeyCollision) naming every taken key when collisions were
    /// the only trouble; otherwise [`IdempotencyError::BulkSave`](crate::IdempotencyError::BulkSave) listing collisions,
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
