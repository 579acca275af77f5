//! The storage trait (repository) for idempotency records.

use std::future::Future;

use crate::error::Result;
use crate::identity::RecordId;
use crate::record::IdempotencyRecord;

/// Where records live: the repository of the domain, one key at a time.
///
/// Every method takes the record's validated identity ([`RecordId`], or the record that
/// carries one), so nothing below the edge validates again and two operations' keys can
/// never meet: the store derives its key from the identity. Implementations never return
/// a record whose key the store has expired (the Redis store also hides one past its
/// `expires_at` on the server's clock, as the Python library does), and report backend
/// failures as [`IdempotencyError::Storage`](crate::IdempotencyError::Storage) (and data that is not
/// a record as a data error). Every future is `Send` so a coordinator can run on a
/// multi-threaded runtime; none is cancel-unsafe beyond the write it had already sent.
///
/// Bulk operations are a separate capability: [`BulkRepository`](crate::BulkRepository).
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), idempotency_core::IdempotencyError> {
/// use idempotency_core::{IdempotencyDomainService, IdempotencyRepository, MemoryStore, RecordId};
/// let store = MemoryStore::new();
/// let record = IdempotencyDomainService::default().create_record("op", "k", &1)?;
/// store.save(&record).await?;
/// assert!(store.save(&record).await.is_err_and(|e| e.is_collision()));
/// assert_eq!(store.get(&RecordId::new("op", "k")?).await?, Some(record));
/// # Ok(()) }
/// ```
pub trait IdempotencyRepository: Send + Sync + 'static {
    /// The record under the key, if there is one and it has not expired.
    ///
    /// # Errors
    /// Storage, corrupted or invalid record errors.
    fn get(&self, id: &RecordId) -> impl Future<Output = Result<Option<IdempotencyRecord>>> + Send;

    /// Inserts the record only if its key is free.
    ///
    /// # Errors
    /// [`IdempotencyError::KeyCollision`](crate::IdempotencyError::KeyCollision) when the
    /// key is taken; validation (an already expired record) and storage errors.
    fn save(&self, record: &IdempotencyRecord) -> impl Future<Output = Result<()>> + Send;

    /// Writes the record whether or not the key is taken (an administrative write: the
    /// coordinator never writes unconditionally).
    ///
    /// # Errors
    /// Validation and storage errors.
    fn replace(&self, record: &IdempotencyRecord) -> impl Future<Output = Result<()>> + Send;

    /// Deletes the record; `true` when there was one.
    ///
    /// # Errors
    /// Storage errors.
    fn delete(&self, id: &RecordId) -> impl Future<Output = Result<bool>> + Send;
}
