//! Multi-step runs with recovery points: an action whose effects cannot all live in
//! one transaction (a call to a payment provider between two database writes) made of
//! named steps, each committed once; a retry resumes after the last committed one.
//!
//! After Brandur Leach's "Implementing Stripe-like Idempotency Keys in Postgres"
//! (atomic phases, a `recovery_point` on the key's row, a lock on it, a final
//! response), with these differences:
//! - every external call gets a key derived from the run and the step ([`StepKey`]),
//!   the same on every retry, for the provider to deduplicate by (the article's demo
//!   passes none, so a crash between the charge and its phase charges twice);
//! - the owner's lock is a lease on the server's clock, fenced by the owner's token and
//!   fencing token in the very statement that commits each phase: a stalled owner whose
//!   lease was taken over commits nothing, rather than trusting a `locked_at` read
//!   earlier;
//! - each step's output is kept on the row, so a resumed run reads back what the
//!   earlier attempt returned instead of re-reading the application's tables;
//! - the completed record is the same record every store writes, so the coordinator's
//!   `get`/claim paths replay it too.
//!
//! The flow of [`PostgresStore::run_steps`]:
//! 1. one statement (`STEPS_CLAIM`) starts the run on a free or expired key, resumes
//!    it when its owner's lease ended, or finds the record that holds the key;
//! 2. the action calls its steps through [`StepRun`]; each phase commits its work with
//!    the new recovery point, fenced (see `run.rs`);
//! 3. the completion writes the completed record, fenced by the owner's token (the
//!    same statement as [`ReservationStore::complete`]).
//!
//! Invariants:
//! - of concurrent claims exactly one owns the run (the row lock of `ON CONFLICT … DO
//!   UPDATE … WHERE`, judged on the newest row version, on the server's clock);
//! - a live lease is never taken over: the resume condition is `lease_expires_at <=
//!   statement_timestamp()`;
//! - when an attempt fails (a step's error, a lost lease, storage), its owner ends its
//!   lease (best effort) so the retry need not wait; a crash leaves the lease to end.
//!
//! [`ReservationStore::complete`]: idempotency_core::ReservationStore::complete

mod error;
mod journal;
mod key;
mod options;
mod run;

use idempotency_core::{
    Clock, Fence, Finished, IdempotencyError, KeyWatch, Lease, RecordId, ReservationStore,
    ResultAdapter, SerdeAdapter,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::Row;

pub use error::StepsError;
pub use key::StepKey;
pub use options::StepsOptions;
pub use run::{StepContext, StepRun};

use crate::constants::{MAX_CLAIM_ATTEMPTS, STEPS_POLL};
use crate::errors::storage_error;
use crate::record_text::RecordText;
use crate::replay::{Replay, check_fingerprint, replay};
use crate::statements;
use crate::store::{PostgresStore, decode, micros};
use crate::transaction::{ActionFuture, FencingToken, InFlight, Outcome};
use journal::Journal;

/// What the claim of a run answered.
enum Claimed {
    /// This call owns the run (new or resumed).
    Owner {
        fence: FencingToken,
        run_id: String,
        journal: Journal,
    },
    /// A finished record holds the key.
    Finished(Box<idempotency_core::IdempotencyRecord>),
    /// A live owner holds the key (a run, or another caller's reservation).
    Busy,
}

impl PostgresStore {
    /// Runs a multi-step `action` at most once per `id`: its steps (database phases
    /// and external calls, see [`StepRun`]) commit one by one, each with the run's
    /// recovery point; an attempt that stops halfway (an error, a crash, a lost
    /// connection) leaves its committed steps, and a retry resumes after the last of
    /// them, never repeating one. External calls get a [`StepKey`], the same on every
    /// attempt, for the provider to deduplicate by.
    ///
    /// - No record: the action runs from its first step.
    /// - An unfinished run whose owner's lease ended (on the server's clock): this call
    ///   takes it over with a new fencing token and the action runs again, its
    ///   committed steps returning their stored outputs without running.
    /// - A live owner: wait for it (replay its result, or resume if it gives up), or
    ///   fail at once, as `options` say ([`InFlight`]).
    /// - A completed record: its value is replayed, no step runs:
    ///   [`Outcome::Replayed`] (or [`IdempotencyError::KeyReuse`] when both
    ///   fingerprints are there and differ, for an unfinished run too).
    /// - When the action returns `Ok`, its value is stored (as JSON, through
    ///   [`SerdeAdapter`], as the coordinator stores it) and replayed from then on:
    ///   [`Outcome::Ran`]. When it returns `Err`, nothing more is written: the run
    ///   stays resumable, and its lease is ended so a retry resumes at once.
    ///
    /// A failure that must not be retried (a declined card) is a result, not an `Err`:
    /// make `T` hold it (an enum, or an HTTP response with its status), as Stripe
    /// stores its final response, errors included.
    ///
    /// # Errors
    /// [`StepsError::Action`] with a step's error (or one the action returned);
    /// [`StepsError::LeaseLost`] when another owner took the run over;
    /// [`StepsError::Diverged`] when the steps differ from those committed;
    /// [`StepsError::Idempotency`] with storage errors, invalid `options`,
    /// [`IdempotencyError::InProgress`], [`IdempotencyError::KeyReuse`], values that
    /// cannot be stored or read back; [`StepsError::StoredError`] when the key holds a
    /// stored error.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn charge(amount: i64, idempotency_key: &str) -> Result<String, sqlx::Error> { Ok(String::new()) }
    /// # async fn run(store: idempotency_postgres::PostgresStore) -> Result<(), Box<dyn std::error::Error>> {
    /// use idempotency_core::RecordId;
    /// use idempotency_postgres::StepsOptions;
    ///
    /// let id = RecordId::new("ride.charge", "key-1")?;
    /// let outcome = store
    ///     .run_steps(&id, None, StepsOptions::new(), |run| {
    ///         Box::pin(async move {
    ///             let ride: i64 = run
    ///                 .phase("create_ride", |conn, _| {
    ///                     Box::pin(async move {
    ///                         sqlx::query_scalar("INSERT INTO rides DEFAULT VALUES RETURNING id")
    ///                             .fetch_one(&mut *conn)
    ///                             .await
    ///                     })
    ///                 })
    ///                 .await?;
    ///             let charge_id = run
    ///                 .external("charge", |key| async move { charge(4200, key.as_str()).await })
    ///                 .await?;
    ///             run.phase("save_charge", |conn, _| {
    ///                 Box::pin(async move {
    ///                     sqlx::query("UPDATE rides SET charge_id = $1 WHERE id = $2")
    ///                         .bind(charge_id)
    ///                         .bind(ride)
    ///                         .execute(&mut *conn)
    ///                         .await?;
    ///                     Ok(())
    ///                 })
    ///             })
    ///             .await?;
    ///             Ok(ride)
    ///         })
    ///     })
    ///     .await?;
    /// println!("ride {} (replayed: {})", outcome.value(), outcome.is_replayed());
    /// # Ok(()) }
    /// ```
    pub async fn run_steps<'a, T, E, F>(
        &'a self,
        id: &'a RecordId,
        fingerprint: Option<&str>,
        options: StepsOptions,
        action: F,
    ) -> Result<Outcome<T>, StepsError<E>>
    where
        T: Serialize + DeserializeOwned + Send,
        E: Send,
        // `&'r mut StepRun<'a>` implies `'a: 'r`, so the action's future may borrow what
        // outlives the call, not only `'static` data.
        F: for<'r> FnOnce(&'r mut StepRun<'a>) -> ActionFuture<'r, T, StepsError<E>> + Send,
    {
        options.check()?;
        let operation = id.operation();
        let lease = Lease::new(id.clone(), fingerprint, Clock::system());
        let mut watch = None;
        let (fence, run_id, journal) = loop {
            match self.claim_run(&lease, &options).await? {
                Claimed::Owner {
                    fence,
                    run_id,
                    journal,
                } => break (fence, run_id, journal),
                Claimed::Finished(record) => {
                    return match replay(&record, fingerprint)? {
                        Replay::Value(value) => Ok(Outcome::Replayed(value)),
                        Replay::StoredError(raw) => Err(StepsError::StoredError(raw)),
                    };
                }
                Claimed::Busy if options.in_flight() == InFlight::Fail => {
                    return Err(IdempotencyError::in_progress(operation, id.key()).into());
                }
                Claimed::Busy => match watch.as_mut() {
                    // Watching from before the next claim: a completion or release
                    // after it wakes us; a lease that ends sends nothing, so poll too.
                    None => watch = Some(self.watch(id).await?),
                    Some(watch) => {
                        watch.changed(STEPS_POLL).await;
                    }
                },
            }
        };
        drop(watch);
        let mut run = StepRun::new(self, id, lease, fence, run_id, options.lease(), journal);
        let value = match action(&mut run).await {
            Ok(value) => value,
            Err(e) => {
                if !e.is_lease_lost() {
                    run.release().await;
                }
                return Err(e);
            }
        };
        match self.complete_run(&run, &value, &options).await {
            Ok(()) => Ok(Outcome::Ran { value, fence }),
            Err(e) => {
                if !e.is_lease_lost() {
                    run.release().await;
                }
                Err(e)
            }
        }
    }

    /// Starts, resumes or finds the run of `lease`'s key.
    async fn claim_run(
        &self,
        lease: &Lease,
        options: &StepsOptions,
    ) -> Result<Claimed, IdempotencyError> {
        let operation = lease.operation();
        let fail = |e| storage_error(Some(operation), e);
        // Any clock will do for the text: the statement writes the server's times.
        let pending = RecordText::of(&lease.pending_record(options.retention())?)?;
        for _ in 0..MAX_CLAIM_ATTEMPTS {
            let row = self
                .query(statements::STEPS_CLAIM)
                .bind(self.prefix())
                .bind(operation)
                .bind(lease.key())
                .bind(lease.fingerprint())
                .bind(lease.token())
                .bind(&pending.head)
                .bind(&pending.tail)
                .bind(micros(options.lease()))
                .bind(micros(options.retention()))
                .fetch_optional(self.pool())
                .await
                .map_err(fail)?;
            // No row: the key's row was committed after this statement's snapshot; a
            // new statement sees it.
            let Some(row) = row else { continue };
            if row.try_get::<bool, _>(0).map_err(fail)? {
                let fence: i64 = row.try_get(1).map_err(fail)?;
                let run_id: String = row.try_get(2).map_err(fail)?;
                let state: String = row.try_get(3).map_err(fail)?;
                return Ok(Claimed::Owner {
                    fence: FencingToken::new(fence.unsigned_abs()),
                    run_id,
                    journal: Journal::parse(&state)?,
                });
            }
            let status: String = row.try_get(4).map_err(fail)?;
            if status == "pending" {
                // An unfinished run under another request is key reuse, not progress.
                let stored: Option<String> = row.try_get(5).map_err(fail)?;
                check_fingerprint(
                    operation,
                    lease.key(),
                    stored.as_deref(),
                    lease.fingerprint(),
                )?;
                return Ok(Claimed::Busy);
            }
            let text: String = row.try_get(6).map_err(fail)?;
            return Ok(Claimed::Finished(Box::new(decode(
                &text,
                operation,
                lease.key(),
            )?)));
        }
        Err(IdempotencyError::storage(
            Some(operation),
            "the claim found the key changing under it on every attempt",
        ))
    }

    /// Writes the completed record, fenced by the owner's token.
    async fn complete_run<T: Serialize + DeserializeOwned, E>(
        &self,
        run: &StepRun<'_>,
        value: &T,
        options: &StepsOptions,
    ) -> Result<(), StepsError<E>> {
        let lease = run.lease();
        let operation = lease.operation();
        let raw = ResultAdapter::<T>::encode(&SerdeAdapter, value)?;
        let mut conn = self
            .pool()
            .acquire()
            .await
            .map_err(|e| storage_error(Some(operation), e))?;
        let fence = self
            .finish_on(&mut conn, lease, Finished::Value(&raw), options.ttl())
            .await
            .map_err(|e| e.into_kit(operation))?;
        match fence {
            // Vacated: the row's retention ended under a run that outlived it; the key
            // was free, so the record is written.
            Fence::Held | Fence::Vacated => Ok(()),
            _ => Err(StepsError::LeaseLost {
                step: "complete".to_owned(),
            }),
        }
    }
}
