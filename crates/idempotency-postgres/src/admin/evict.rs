//! Removing one row, conditional on what was inspected.

use idempotency_core::{RecordId, Result};
use sqlx::Row;

use super::{Admin, Inspection};
use crate::constants::NOTIFY_CHANNEL;
use crate::errors::{row_error, storage_error};
use crate::statements;

/// The outcome of [`Admin::evict`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Eviction {
    /// The row was removed; this is what it held.
    Removed {
        /// The row as inspected just before it was removed.
        removed: Box<Inspection>,
        /// Whether a live reservation was removed (only with `force`).
        forced: bool,
    },
    /// The table holds no row under the key.
    NotFound {
        /// The record's storage key.
        storage_key: String,
    },
    /// The row is a live reservation and `force` was not given; nothing was removed.
    LiveReservation(Box<Inspection>),
    /// The row changed between the read and the removal (a new owner, a completion, a
    /// reservation renewed into life); nothing was removed. Inspect it again.
    Changed(Box<Inspection>),
}

impl Admin {
    /// Removes the row under `id`: a finished, expired or unreadable one; a live
    /// reservation only with `force` (its owner may still be running: its completion will
    /// then find the key gone and write nothing, and a retry runs the action again).
    ///
    /// The row is deleted only while it still holds the fence and the record text
    /// inspected and, unless forced, only while it is not a live reservation by the
    /// server's clock at the `DELETE`; waiters on the key are woken (`NOTIFY`).
    ///
    /// # Errors
    /// [`IdempotencyError::Storage`](idempotency_core::IdempotencyError::Storage) when
    /// the statement fails or the server cannot be reached.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn run(admin: idempotency_postgres::admin::Admin) -> Result<(), idempotency_core::IdempotencyError> {
    /// use idempotency_core::RecordId;
    /// use idempotency_postgres::admin::Eviction;
    /// let id = RecordId::new("order.create", "k1")?;
    /// if let Eviction::LiveReservation(found) = admin.evict(&id, false).await? {
    ///     println!("{} is still running (owner {})", found.storage_key, found.owner_label());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn evict(&self, id: &RecordId, force: bool) -> Result<Eviction> {
        match self.inspect(id).await? {
            None => Ok(Eviction::NotFound {
                storage_key: self.storage_key(id),
            }),
            Some(found) => self.evict_inspected(found, force).await,
        }
    }

    /// Removes what an earlier [`Admin::inspect`] found, under the same rules as
    /// [`Admin::evict`].
    ///
    /// # Errors
    /// As [`Admin::evict`].
    pub async fn evict_inspected(&self, found: Inspection, force: bool) -> Result<Eviction> {
        let live = found.is_live_reservation();
        if live && !force {
            return Ok(Eviction::LiveReservation(Box::new(found)));
        }
        let operation = found.id.operation();
        let row = self
            .store
            .query(statements::ADMIN_EVICT)
            .bind(self.store.prefix())
            .bind(operation)
            .bind(found.id.key())
            .bind(found.fence)
            .bind(&found.raw)
            .bind(NOTIFY_CHANNEL)
            .bind(force)
            .fetch_one(self.store.pool())
            .await
            .map_err(|e| storage_error(Some(operation), e))?;
        let removed: i64 = row
            .try_get("removed")
            .map_err(|e| row_error(Some(operation), e))?;
        Ok(if removed == 1 {
            // The storage key holds the client's key: at debug only (docs/security.md).
            tracing::debug!(storage_key = found.storage_key, "evicted this key");
            tracing::info!(
                operation,
                status = found.status_label(),
                owner = found.owner_label(),
                forced = live,
                "evicted"
            );
            Eviction::Removed {
                removed: Box::new(found),
                forced: live,
            }
        } else {
            Eviction::Changed(Box::new(found))
        })
    }
}
