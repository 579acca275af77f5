//! Waiting for a reservation to end.

use std::time::{Duration, Instant};

use idempotency_core::{KeyWatch, RecordId, ReservationStore, Result};

use super::{Admin, Inspection};

/// How often a watch re-reads the row without a wake-up: a lease that runs out sends no
/// notification, and one can be lost while the listener reconnects.
const SAFETY_POLL: Duration = Duration::from_secs(1);

/// How [`Admin::watch`] ended.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum WatchOutcome {
    /// The row holds a finished record (it may have been finished before the watch).
    Completed(Box<Inspection>),
    /// The reservation seen is gone: released, evicted, or its lease ran out.
    Released,
    /// The table held no live row under the key when the watch began.
    NotFound,
    /// The row holds text that is not a record.
    Unreadable(Box<Inspection>),
    /// The row still held a live reservation when the timeout passed.
    TimedOut(Box<Inspection>),
}

impl Admin {
    /// Waits until the key's reservation completes or is released, or `timeout` passes.
    /// Woken by the store's `LISTEN`/`NOTIFY` wake-ups ([`ReservationStore::watch`]: a
    /// completion, release or delete notifies when it commits), and re-reads the row
    /// every second as a safety net (an expiring lease notifies nobody).
    ///
    /// # Errors
    /// [`IdempotencyError::Storage`](idempotency_core::IdempotencyError::Storage) when a
    /// statement fails or the server cannot be reached.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn run(admin: idempotency_postgres::admin::Admin) -> Result<(), idempotency_core::IdempotencyError> {
    /// use std::time::Duration;
    /// use idempotency_core::RecordId;
    /// use idempotency_postgres::admin::WatchOutcome;
    /// let id = RecordId::new("order.create", "k1")?;
    /// if let WatchOutcome::Completed(found) = admin.watch(&id, Duration::from_secs(60)).await? {
    ///     println!("completed: {}", found.storage_key);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn watch(&self, id: &RecordId, timeout: Duration) -> Result<WatchOutcome> {
        self.watch_with(id, timeout, |_| {}).await
    }

    /// [`Admin::watch`], calling `on_wait` with the reservation the first time it is found
    /// pending. A reservation gone before that is [`WatchOutcome::NotFound`], after it
    /// [`WatchOutcome::Released`].
    ///
    /// # Errors
    /// As [`Admin::watch`].
    pub async fn watch_with(
        &self,
        id: &RecordId,
        timeout: Duration,
        mut on_wait: impl FnMut(&Inspection) + Send,
    ) -> Result<WatchOutcome> {
        // A timeout the clock cannot add (`Duration::MAX`) is waited as a year.
        let deadline = Instant::now()
            .checked_add(timeout)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 24 * 60 * 60));
        // Listening before the first read, so a completion right after it is not missed.
        let mut watch = ReservationStore::watch(&self.store, id).await?;
        let mut seen_pending = false;
        loop {
            // An expired row counts as absent, as for every statement of the store.
            let Some(found) = self.inspect(id).await?.filter(|f| !f.expired) else {
                return Ok(if seen_pending {
                    WatchOutcome::Released
                } else {
                    WatchOutcome::NotFound
                });
            };
            match found.record() {
                Some(r) if r.is_pending() => {
                    if !seen_pending {
                        on_wait(&found);
                    }
                    seen_pending = true;
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(WatchOutcome::TimedOut(Box::new(found)));
                    }
                    watch.changed(left.min(SAFETY_POLL)).await;
                }
                Some(_) => return Ok(WatchOutcome::Completed(Box::new(found))),
                None => return Ok(WatchOutcome::Unreadable(Box::new(found))),
            }
        }
    }
}
