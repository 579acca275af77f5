//! The fallback that lets a plain repository serve a coordinator.

use std::collections::HashMap;
use std::time::Duration;

use crate::batch::{Batch, SaveManyOptions};
use crate::claim::{Claim, Fence, Finished};
use crate::error::{IdempotencyError, Result};
use crate::identity::RecordId;
use crate::lease::{Lease, completion_fence, holds_lease};
use crate::record::IdempotencyRecord;
use crate::traits::bulk::BulkRepository;
use crate::traits::reservation::{KeyWatch, ReservationStore};
use crate::traits::storage::IdempotencyRepository;

/// How often a waiter on an [`Unfenced`] store re-reads the key (the Python library's
/// interval).
pub const UNFENCED_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Emulates [`ReservationStore`] on any [`IdempotencyRepository`], the way the Python
/// library does: claim with `save` (insert-if-absent) and a `get` on collision, complete
/// and renew with a `get` then `replace`, release with a `get` then `delete`, and waiters
/// polling every [`UNFENCED_POLL_INTERVAL`].
///
/// The owner check and the write are two steps, so the fencing invariant of
/// [`ReservationStore`] does **not** hold: a caller whose lease ran out can overwrite the
/// record of the caller that took over, in the window between the two. Use a store with
/// native reservations ([`MemoryStore`](crate::MemoryStore), the Redis store) where that
/// matters.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), idempotency_core::IdempotencyError> {
/// use std::time::Duration;
/// use idempotency_core::{Claim, Clock, Lease, MemoryStore, RecordId, ReservationStore, Unfenced};
/// let store = Unfenced::new(MemoryStore::new());
/// let lease = Lease::new(RecordId::new("op", "k")?, None, Clock::system());
/// assert_eq!(store.claim(&lease, Duration::from_secs(5)).await?, Claim::Acquired);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Unfenced<R> {
    inner: R,
}

impl<R> Unfenced<R> {
    /// Wraps a repository.
    pub fn new(inner: R) -> Self {
        Self { inner }
    }

    /// The wrapped repository.
    pub fn inner(&self) -> &R {
        &self.inner
    }
}

impl<R: IdempotencyRepository> IdempotencyRepository for Unfenced<R> {
    async fn get(&self, id: &RecordId) -> Result<Option<IdempotencyRecord>> {
        self.inner.get(id).await
    }

    async fn save(&self, record: &IdempotencyRecord) -> Result<()> {
        self.inner.save(record).await
    }

    async fn replace(&self, record: &IdempotencyRecord) -> Result<()> {
        self.inner.replace(record).await
    }

    async fn delete(&self, id: &RecordId) -> Result<bool> {
        self.inner.delete(id).await
    }
}

impl<R: BulkRepository> BulkRepository for Unfenced<R> {
    async fn get_by_ids(&self, ids: &[RecordId]) -> Result<HashMap<String, IdempotencyRecord>> {
        self.inner.get_by_ids(ids).await
    }

    async fn save_batch(&self, batch: Batch<'_>, options: SaveManyOptions) -> Result<()> {
        self.inner.save_batch(batch, options).await
    }

    async fn delete_by_ids(&self, ids: &[RecordId]) -> Result<u64> {
        self.inner.delete_by_ids(ids).await
    }
}

/// A watch that only sleeps: waiters on an [`Unfenced`] store poll.
#[derive(Debug, Clone, Copy)]
pub struct PollWatch;

impl KeyWatch for PollWatch {
    async fn changed(&mut self, timeout: Duration) -> bool {
        tokio::time::sleep(timeout.min(UNFENCED_POLL_INTERVAL)).await;
        false
    }
}

impl<R: IdempotencyRepository> Unfenced<R> {
    async fn ours(&self, lease: &Lease) -> Result<Option<IdempotencyRecord>> {
        Ok(self
            .inner
            .get(lease.id())
            .await?
            .filter(|r| holds_lease(r, lease.token())))
    }
}

impl<R: IdempotencyRepository> ReservationStore for Unfenced<R> {
    type Watch = PollWatch;

    async fn claim(&self, lease: &Lease, duration: Duration) -> Result<Claim> {
        let pending = lease.pending_record(duration)?;
        // A key that empties between our failed save and our read is tried again; a few
        // rounds are plenty, since each one needs another caller to finish in between.
        for _ in 0..3 {
            match self.inner.save(&pending).await {
                Ok(()) => return Ok(Claim::Acquired),
                Err(e) if e.is_collision() => {
                    if let Some(found) = self.inner.get(lease.id()).await? {
                        return Ok(if holds_lease(&found, lease.token()) {
                            Claim::Acquired
                        } else {
                            Claim::Found(found)
                        });
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(IdempotencyError::in_progress(
            lease.operation(),
            lease.key(),
        ))
    }

    /// Checked, then written: not atomic, the reason this wrapper is unfenced.
    async fn finish(&self, lease: &Lease, finished: Finished<'_>, ttl: Duration) -> Result<Fence> {
        let record = lease.finished_record_at(lease.clock().now(), finished, ttl)?;
        let fence = completion_fence(self.inner.get(lease.id()).await?.as_ref(), lease);
        if fence != Fence::Lost {
            self.inner.replace(&record).await?;
        }
        Ok(fence)
    }

    async fn renew(&self, lease: &Lease, duration: Duration) -> Result<Fence> {
        if self.ours(lease).await?.is_none() {
            return Ok(Fence::Lost);
        }
        self.inner.replace(&lease.pending_record(duration)?).await?;
        Ok(Fence::Held)
    }

    async fn release(&self, lease: &Lease) -> Result<Fence> {
        if self.ours(lease).await?.is_none() {
            return Ok(Fence::Lost);
        }
        self.inner.delete(lease.id()).await?;
        Ok(Fence::Held)
    }

    async fn watch(&self, _id: &RecordId) -> Result<PollWatch> {
        Ok(PollWatch)
    }
}
