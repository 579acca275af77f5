//! A run in progress: its steps (phases and external calls), each committed once.
//!
//! Invariants, enforced here and by the statements:
//! - a phase's own work and its recovery point commit in one transaction: the fenced
//!   `UPDATE` (owner token and fence, in `STEPS_COMMIT`) is its last statement before
//!   `COMMIT`, and when it finds no row (another owner took the run over) the
//!   transaction rolls back, so a stale owner's work is never committed;
//! - that `UPDATE` holds the row lock until the commit, so no claim takes the run over
//!   between the check and the commit (a claim waits, then finds the renewed lease);
//! - the journal advances only after a successful commit; an external call's output is
//!   held in memory and committed with the next phase, so a crash before that phase
//!   commits makes the retry call the provider again, with the same step key.

use std::future::Future;

use idempotency_core::{IdempotencyError, Lease, RawValue, RecordId};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::{PgConnection, Row};

use super::error::StepsError;
use super::journal::{Journal, Place};
use super::key::StepKey;
use crate::errors::{row_error, storage_error};
use crate::statements;
use crate::store::{PostgresStore, micros};
use crate::transaction::{ActionFuture, FencingToken, rollback};

/// A multi-step run owned by this call: the action of
/// [`PostgresStore::run_steps`] gets it and calls its steps in order.
///
/// - [`StepRun::phase`]: database work in a transaction of its own, committed together
///   with the run's recovery point;
/// - [`StepRun::external`]: a call outside the database (a payment provider), given the
///   step's [`StepKey`] to deduplicate by; its output is committed with the next
///   phase (after the last phase, the completed record ends the run);
/// - a step committed by an earlier attempt is not run again: it returns the output
///   that attempt committed.
///
/// The steps must be called in the same order, under the same names, on every attempt
/// (else [`StepsError::Diverged`]); outputs are stored as JSON, so a resumed run reads
/// back what the first attempt returned.
///
/// It borrows the call's store and identity for `'a`, which also lets the futures of
/// the action and of its phases borrow what lives that long.
#[derive(Debug)]
pub struct StepRun<'a> {
    store: &'a PostgresStore,
    id: &'a RecordId,
    lease: Lease,
    fence: FencingToken,
    run_id: String,
    lease_for: std::time::Duration,
    journal: Journal,
}

/// What a phase is told. It borrows the call's identity and the step's name for `'a`,
/// which also lets the phase's future borrow what lives that long.
#[derive(Debug, Clone)]
pub struct StepContext<'a> {
    id: &'a RecordId,
    step: &'a str,
    key: StepKey,
    fence: FencingToken,
}

impl<'a> StepContext<'a> {
    /// The record's identity (operation and key).
    pub fn id(&self) -> &'a RecordId {
        self.id
    }

    /// The phase's name.
    pub fn step(&self) -> &'a str {
        self.step
    }

    /// The phase's step key (for an outbox row written in the phase, say).
    pub fn key(&self) -> &StepKey {
        &self.key
    }

    /// The fencing token of this owner of the run: it grows with every owner, so a
    /// phase can write it next to its effects.
    pub fn fence(&self) -> FencingToken {
        self.fence
    }
}

impl<'a> StepRun<'a> {
    pub(crate) fn new(
        store: &'a PostgresStore,
        id: &'a RecordId,
        lease: Lease,
        fence: FencingToken,
        run_id: String,
        lease_for: std::time::Duration,
        journal: Journal,
    ) -> Self {
        Self {
            store,
            id,
            lease,
            fence,
            run_id,
            lease_for,
            journal,
        }
    }

    /// The record's identity.
    pub fn id(&self) -> &'a RecordId {
        self.id
    }

    /// This owner's fencing token.
    pub fn fence(&self) -> FencingToken {
        self.fence
    }

    /// The key of `step` in this run: what [`StepRun::external`] hands its call.
    pub fn step_key(&self, step: &str) -> StepKey {
        StepKey::derive(
            self.store.prefix(),
            self.lease.operation(),
            self.lease.key(),
            &self.run_id,
            step,
        )
    }

    pub(crate) fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Runs the phase `step`: `work` gets a connection inside a transaction; its
    /// writes commit together with the run's recovery point (`step`), its output
    /// and the outputs of the external calls before it, or none does. When an earlier
    /// attempt committed `step`, `work` does not run and its committed output is
    /// returned.
    ///
    /// The commit renews this owner's lease.
    ///
    /// # Errors
    /// [`StepsError::Action`] when `work` fails (its writes rolled back);
    /// [`StepsError::LeaseLost`] when another owner took the run over (rolled back);
    /// [`StepsError::Diverged`] when the run committed another step here or the name
    /// was used; [`StepsError::Idempotency`] with storage errors and outputs that
    /// cannot be encoded or decoded (a failed `COMMIT`'s outcome the server alone
    /// knows: a retry finds out).
    ///
    /// # Examples
    /// ```no_run
    /// # async fn run(run: &mut idempotency_postgres::StepRun<'_>) -> Result<(), idempotency_postgres::StepsError<sqlx::Error>> {
    /// let order_id: i64 = run
    ///     .phase("create_order", |conn, ctx| {
    ///         Box::pin(async move {
    ///             sqlx::query_scalar("INSERT INTO orders (fence) VALUES ($1) RETURNING id")
    ///                 .bind(ctx.fence().as_i64())
    ///                 .fetch_one(&mut *conn)
    ///                 .await
    ///         })
    ///     })
    ///     .await?;
    /// # let _ = order_id; Ok(()) }
    /// ```
    pub async fn phase<'s, U, E, F>(
        &'s mut self,
        step: &'s str,
        work: F,
    ) -> Result<U, StepsError<E>>
    where
        U: Serialize + DeserializeOwned + Send,
        E: Send,
        // `&'c StepContext<'s>` implies `'s: 'c`, so the phase's future may borrow what
        // outlives this call, not only `'static` data.
        F: for<'c> FnOnce(&'c mut PgConnection, &'c StepContext<'s>) -> ActionFuture<'c, U, E>
            + Send,
    {
        if let Some(done) = self.done(step)? {
            return Ok(done);
        }
        let operation = self.lease.operation();
        let fail = |e| StepsError::Idempotency(storage_error(Some(operation), e));
        let id: &'s RecordId = self.id;
        let context = StepContext {
            id,
            step,
            key: self.step_key(step),
            fence: self.fence,
        };
        let mut tx = self.store.pool().begin().await.map_err(fail)?;
        let value = match work(&mut tx, &context).await {
            Ok(value) => value,
            Err(e) => {
                rollback(tx).await;
                return Err(StepsError::Action(e));
            }
        };
        let output = match encode(&value) {
            Ok(output) => output,
            Err(e) => {
                rollback(tx).await;
                return Err(e.into());
            }
        };
        let state = match self.journal.text_with(step, &output) {
            Ok(state) => state,
            Err(e) => {
                rollback(tx).await;
                return Err(e.into());
            }
        };
        let row = self
            .store
            .query(statements::STEPS_COMMIT)
            .bind(self.store.prefix())
            .bind(operation)
            .bind(self.lease.key())
            .bind(self.lease.token())
            .bind(self.fence.as_i64())
            .bind(step)
            .bind(state)
            .bind(micros(self.lease_for))
            .fetch_optional(&mut *tx)
            .await;
        match row {
            Ok(Some(_)) => {}
            // Another owner holds the run: nothing of this phase may commit.
            Ok(None) => {
                rollback(tx).await;
                return Err(StepsError::LeaseLost {
                    step: step.to_owned(),
                });
            }
            Err(e) => {
                rollback(tx).await;
                return Err(fail(e));
            }
        }
        tx.commit().await.map_err(fail)?;
        self.journal.committed(step, output);
        Ok(value)
    }

    /// Runs the external call `step`: `call` gets the step's [`StepKey`], the same on
    /// every attempt of this run, to pass to the provider so it deduplicates the call.
    /// Its output is committed with the next phase; until then a crash makes the
    /// retry call again, with the same key (after the last phase, the completed record
    /// ends the run). When an earlier attempt
    /// committed `step`, `call` does not run and the committed output is returned.
    ///
    /// Make the lease longer than the call, or [`renew`](StepRun::renew) it during a
    /// long one: past the lease, a retry may take the run over and call the provider
    /// too (with the same key), and this owner commits nothing more.
    ///
    /// # Errors
    /// [`StepsError::Action`] when `call` fails; [`StepsError::Diverged`] as for
    /// [`StepRun::phase`]; [`StepsError::Idempotency`] for an output that cannot be
    /// encoded or decoded.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn charge(amount: i64, idempotency_key: &str) -> Result<String, std::io::Error> { Ok(String::new()) }
    /// # async fn run(run: &mut idempotency_postgres::StepRun<'_>) -> Result<(), idempotency_postgres::StepsError<std::io::Error>> {
    /// let charge_id: String = run
    ///     .external("charge", |key| async move { charge(4200, key.as_str()).await })
    ///     .await?;
    /// # let _ = charge_id; Ok(()) }
    /// ```
    pub async fn external<U, E, F, Fut>(&mut self, step: &str, call: F) -> Result<U, StepsError<E>>
    where
        U: Serialize + DeserializeOwned + Send,
        F: FnOnce(StepKey) -> Fut + Send,
        Fut: Future<Output = Result<U, E>> + Send,
    {
        if let Some(done) = self.done(step)? {
            return Ok(done);
        }
        let value = call(self.step_key(step))
            .await
            .map_err(StepsError::Action)?;
        self.journal.hold(step, encode(&value)?);
        Ok(value)
    }

    /// Renews this owner's lease (for a long external call: every committed phase
    /// renews it too).
    ///
    /// # Errors
    /// [`StepsError::LeaseLost`] when another owner took the run over; storage errors.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn run(run: &mut idempotency_postgres::StepRun<'_>) -> Result<(), idempotency_postgres::StepsError<std::io::Error>> {
    /// run.renew().await?;
    /// # Ok(()) }
    /// ```
    pub async fn renew<E>(&mut self) -> Result<(), StepsError<E>> {
        let operation = self.lease.operation();
        let row = self
            .store
            .query(statements::STEPS_RENEW)
            .bind(self.store.prefix())
            .bind(operation)
            .bind(self.lease.key())
            .bind(self.lease.token())
            .bind(self.fence.as_i64())
            .bind(micros(self.lease_for))
            .fetch_optional(self.store.pool())
            .await
            .map_err(|e| storage_error(Some(operation), e))?;
        match row {
            Some(_) => Ok(()),
            None => Err(StepsError::LeaseLost {
                step: "renew".to_owned(),
            }),
        }
    }

    /// Ends this owner's lease now, so a retry resumes without waiting (the committed
    /// steps stay); wakes waiters. Best effort: a failure leaves the lease to end.
    pub(crate) async fn release(&self) {
        let operation = self.lease.operation();
        let released = self
            .store
            .query(statements::STEPS_RELEASE)
            .bind(self.store.prefix())
            .bind(operation)
            .bind(self.lease.key())
            .bind(self.lease.token())
            .bind(self.fence.as_i64())
            .bind(crate::constants::NOTIFY_CHANNEL)
            .bind(self.store.storage_key(self.lease.id()))
            .fetch_one(self.store.pool())
            .await
            .and_then(|row| row.try_get::<i64, _>(0));
        if let Err(e) = released {
            let e = row_error(Some(operation), e);
            tracing::debug!(error = %e, "releasing a multi-step run failed; its lease ends on its own");
        }
    }

    /// The committed output of `step` when an earlier attempt committed it; `None`
    /// when it is due.
    fn done<U: DeserializeOwned, E>(&mut self, step: &str) -> Result<Option<U>, StepsError<E>> {
        match self.journal.place(step) {
            Place::Due => Ok(None),
            Place::Done(output) => serde_json::from_str(output.get())
                .map(Some)
                .map_err(|e| StepsError::Idempotency(IdempotencyError::serialization(e))),
            Place::Diverged(committed) => Err(StepsError::Diverged {
                step: step.to_owned(),
                committed,
            }),
        }
    }
}

/// A step's output as JSON.
fn encode<U: Serialize>(value: &U) -> Result<Box<RawValue>, IdempotencyError> {
    serde_json::value::to_raw_value(value).map_err(IdempotencyError::serialization)
}
