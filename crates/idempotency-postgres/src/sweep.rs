//! Removing expired rows: one bounded statement, and a background task that runs it.

use std::sync::Arc;
use std::time::Duration;

use idempotency_core::Result;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::errors::storage_error;
use crate::statements;
use crate::store::PostgresStore;

impl PostgresStore {
    /// Deletes up to `limit` expired rows (oldest expiry first) and returns how many.
    /// Run it now and then (a timer, a cron job); claims never depend on it, since an
    /// expired row counts as absent whether it was swept or not. It skips rows another
    /// transaction holds, so it never waits for a claim.
    ///
    /// # Errors
    /// Storage errors.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn run(store: idempotency_postgres::PostgresStore) -> Result<(), idempotency_core::IdempotencyError> {
    /// use idempotency_postgres::constants::DEFAULT_SWEEP_LIMIT;
    /// while store.sweep_expired(DEFAULT_SWEEP_LIMIT).await? == u64::from(DEFAULT_SWEEP_LIMIT) {}
    /// # Ok(()) }
    /// ```
    pub async fn sweep_expired(&self, limit: u32) -> Result<u64> {
        let done = self
            .query(statements::SWEEP)
            .bind(i64::from(limit))
            .execute(self.pool())
            .await
            .map_err(|e| storage_error(None, e))?;
        Ok(done.rows_affected())
    }

    /// Starts a task that sweeps every `every` (at least 1 ms), `limit` rows per
    /// statement, until no expired row is left, then waits for the next tick. It stops
    /// when the returned [`Sweeper`] is dropped or when the store (every clone) is gone;
    /// a failed sweep is logged and tried again at the next tick.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn run(store: idempotency_postgres::PostgresStore) {
    /// use std::time::Duration;
    /// let sweeper = store.spawn_sweeper(Duration::from_secs(60), 1000);
    /// // … serve …
    /// drop(sweeper);
    /// # }
    /// ```
    pub fn spawn_sweeper(&self, every: Duration, limit: u32) -> Sweeper {
        let store = Arc::downgrade(&self.inner);
        let limit = limit.max(1);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(1)));
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // Held only while sweeping: the task never keeps a dropped store alive.
                let Some(inner) = store.upgrade() else { return };
                let store = PostgresStore { inner };
                loop {
                    match store.sweep_expired(limit).await {
                        Ok(n) if n >= u64::from(limit) => {}
                        Ok(_) => break,
                        Err(e) => {
                            tracing::warn!(error = %e.log_message(), "sweeping expired idempotency records failed");
                            break;
                        }
                    }
                }
            }
        });
        Sweeper { task }
    }
}

/// The task started by [`PostgresStore::spawn_sweeper`]; dropping it stops the task.
#[derive(Debug)]
pub struct Sweeper {
    task: JoinHandle<()>,
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}
