//! Calls whose record is written in the business transaction: the claim, the action's
//! own writes and the completion commit together, or none does.
//!
//! The flow, in one transaction on one connection:
//! 1. the key's transaction-scoped advisory lock (`pg_advisory_xact_lock`, or
//!    `pg_try_advisory_xact_lock` under [`InFlight::Fail`]): a duplicate waits here for
//!    the first transaction's outcome, or fails at once;
//! 2. the claim (the same statement as [`ReservationStore::claim`]): a committed,
//!    finished record is replayed (after the fingerprint check), a live reservation of
//!    a non-transactional caller is [`IdempotencyError::InProgress`];
//! 3. the action, given the open transaction and the claim's fencing token;
//! 4. the completion (the same fenced statement as [`ReservationStore::complete`]), then
//!    `COMMIT`.
//!
//! Invariant: the record becomes visible to others only in the commit that makes the
//! action's writes visible, so a crash anywhere before it leaves the key free and
//! nothing written, and a crash after it leaves both. Both locks (advisory lock, row
//! lock) are transaction-scoped: no session state, so it works behind `PgBouncer` in
//! transaction pooling.
//!
//! [`ReservationStore::claim`]: idempotency_core::ReservationStore::claim
//! [`ReservationStore::complete`]: idempotency_core::ReservationStore::complete

mod options;
mod outcome;

use std::future::Future;
use std::pin::Pin;

use idempotency_core::{
    Clock, Fence, Finished, IdempotencyError, IdempotencyRecord, Lease, RecordId, ResultAdapter,
    SerdeAdapter,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::{PgConnection, Postgres, Row, Transaction};

pub use idempotency_core::FencingToken;
pub use options::{InFlight, TransactionOptions};
pub use outcome::{Outcome, RunError, TxContext};

use crate::constants::TRANSACTION_LEASE;
use crate::errors::storage_error;
use crate::replay::{Replay, replay};
use crate::reservation::Claimed;
use crate::statements;
use crate::store::PostgresStore;

/// The future an action returns: boxed, borrowing the transaction for `'c`.
pub type ActionFuture<'c, T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>;

impl PostgresStore {
    /// Runs `action` at most once per `id`, inside a transaction that also holds the
    /// idempotency record: the claim, the action's writes (made through the connection
    /// it is given) and the completion commit together, or none does.
    ///
    /// - No record: the action runs; when it returns `Ok`, its value is stored (as JSON,
    ///   through [`SerdeAdapter`]) and everything commits: [`Outcome::Ran`].
    /// - The action returns `Err`: everything rolls back, the key stays free:
    ///   [`RunError::Action`].
    /// - A committed record: its value is replayed, the action does not run:
    ///   [`Outcome::Replayed`] (or [`IdempotencyError::KeyReuse`] when both fingerprints
    ///   are there and differ).
    /// - Another transaction holds the key: wait for it, or fail at once, as
    ///   `options` say ([`InFlight`]).
    ///
    /// The transaction runs at the pool's isolation level, which must be READ COMMITTED
    /// (Postgres's default): a statement then sees rows committed while it waited.
    ///
    /// # Errors
    /// [`RunError::Action`] with the action's error; [`RunError::Idempotency`] with
    /// storage errors, [`IdempotencyError::InProgress`], [`IdempotencyError::KeyReuse`],
    /// a value that cannot be stored or a stored one that cannot be decoded;
    /// [`RunError::StoredError`] when the key holds a stored error. In every case
    /// nothing of this call was committed (a failed `COMMIT` aside, whose outcome the
    /// server alone knows: a retry finds out).
    ///
    /// # Examples
    /// ```no_run
    /// # async fn run(store: idempotency_postgres::PostgresStore) -> Result<(), Box<dyn std::error::Error>> {
    /// use idempotency_core::RecordId;
    /// use idempotency_postgres::TransactionOptions;
    ///
    /// let id = RecordId::new("order.create", "key-1")?;
    /// let outcome = store
    ///     .run_in_transaction(&id, None, TransactionOptions::new(), |conn, ctx| {
    ///         Box::pin(async move {
    ///             let order_id: i64 = sqlx::query_scalar(
    ///                 "INSERT INTO orders (amount, fence) VALUES ($1, $2) RETURNING id",
    ///             )
    ///             .bind(42_i64)
    ///             .bind(ctx.fence().as_i64())
    ///             .fetch_one(&mut *conn)
    ///             .await?;
    ///             Ok::<_, sqlx::Error>(order_id)
    ///         })
    ///     })
    ///     .await?;
    /// println!("order {} (replayed: {})", outcome.value(), outcome.is_replayed());
    /// # Ok(()) }
    /// ```
    pub async fn run_in_transaction<'a, T, E, F>(
        &self,
        id: &'a RecordId,
        fingerprint: Option<&str>,
        options: TransactionOptions,
        action: F,
    ) -> Result<Outcome<T>, RunError<E>>
    where
        T: Serialize + DeserializeOwned + Send,
        E: Send,
        // `&'c TxContext<'a>` implies `'a: 'c`, so the action's future may borrow what
        // outlives the call, not only `'static` data.
        F: for<'c> FnOnce(&'c mut PgConnection, &'c TxContext<'a>) -> ActionFuture<'c, T, E> + Send,
    {
        let operation = id.operation();
        let fail = |e| RunError::Idempotency(storage_error(Some(operation), e));
        let lease = Lease::new(id.clone(), fingerprint, Clock::system());
        let mut tx = self.pool().begin().await.map_err(fail)?;
        if !self
            .lock_key(&mut tx, id, options.in_flight())
            .await
            .map_err(fail)?
        {
            rollback(tx).await;
            return Err(IdempotencyError::in_progress(operation, id.key()).into());
        }
        let claimed = self
            .claim_on(&mut tx, &lease, TRANSACTION_LEASE)
            .await
            .map_err(|e| RunError::Idempotency(e.into_kit(operation)));
        let fence = match claimed {
            Ok(Claimed::Acquired(fence)) => FencingToken::new(fence.unsigned_abs()),
            Ok(Claimed::Found(record)) => {
                rollback(tx).await;
                return replayed(&record, fingerprint);
            }
            Err(e) => {
                rollback(tx).await;
                return Err(e);
            }
        };
        let context = TxContext::new(id, fence);
        let value = match action(&mut tx, &context).await {
            Ok(value) => value,
            Err(e) => {
                rollback(tx).await;
                return Err(RunError::Action(e));
            }
        };
        let written = match ResultAdapter::<T>::encode(&SerdeAdapter, &value) {
            Ok(raw) => self
                .finish_on(&mut tx, &lease, Finished::Value(&raw), options.ttl())
                .await
                .map_err(|e| e.into_kit(operation)),
            Err(e) => Err(e),
        };
        match written {
            Ok(Fence::Held) => {}
            // Our row, inserted or locked by this transaction, cannot have changed.
            Ok(_) => {
                rollback(tx).await;
                return Err(IdempotencyError::storage(
                    Some(operation),
                    "the reservation was lost inside its own transaction",
                )
                .into());
            }
            Err(e) => {
                rollback(tx).await;
                return Err(e.into());
            }
        }
        tx.commit().await.map_err(fail)?;
        Ok(Outcome::Ran { value, fence })
    }

    /// Takes the key's transaction-scoped advisory lock (waiting, or only trying);
    /// `false` when it is held elsewhere and we only tried.
    async fn lock_key(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        id: &RecordId,
        in_flight: InFlight,
    ) -> Result<bool, sqlx::Error> {
        let key = self.storage_key(id);
        match in_flight {
            InFlight::Wait => {
                self.query(statements::LOCK_KEY)
                    .bind(key)
                    .execute(&mut **tx)
                    .await?;
                Ok(true)
            }
            InFlight::Fail => {
                let row = self
                    .query(statements::TRY_LOCK_KEY)
                    .bind(key)
                    .fetch_one(&mut **tx)
                    .await?;
                row.try_get(0)
            }
        }
    }
}

/// Rolls back; a failure leaves the same (the connection is dropped, so the server
/// rolls back), so it is only logged.
pub(crate) async fn rollback(tx: Transaction<'_, Postgres>) {
    if let Err(e) = tx.rollback().await {
        tracing::debug!(error = %e, "rollback failed; the server rolls back on disconnect");
    }
}

/// The answer of a key that holds a record (see [`replay`]).
fn replayed<T: Serialize + DeserializeOwned, E>(
    record: &IdempotencyRecord,
    fingerprint: Option<&str>,
) -> Result<Outcome<T>, RunError<E>> {
    match replay(record, fingerprint)? {
        Replay::Value(value) => Ok(Outcome::Replayed(value)),
        Replay::StoredError(raw) => Err(RunError::StoredError(raw)),
    }
}
