//! The reserved flow: claim the key (or replay, or wait), run under the lease, complete.

use std::sync::Arc;
use std::time::{Duration, Instant};

use idempotency_core::{
    Claim, ErrorClass, ErrorType, IdempotencyError, IdempotencyRecord, LatencyMethod, Lease,
    RawValue, RecordId, RecordStatus, ReservationStore, Result,
};

use crate::action::{Codec, Job};
use crate::coalesce::{Joined, Phase, Prior, Ticket};
use crate::coordinator::{Coordinator, Failed, Flow};
use crate::follow::Followed;
use crate::lease::{LeaseLoss, ReleaseGuard, run_renewing};
use crate::modes::{InFlight, OnStorageError};
use crate::outcome::Outcome;
use crate::wait::Waiter;

/// What the claim step decided.
enum Claimed {
    /// A finished record (another call's result or stored error) to replay; `waited`
    /// when this call waited for its holder first.
    Replay {
        record: IdempotencyRecord,
        waited: bool,
    },
    /// The key holds our pending record: run under the lease. `took_over` when another
    /// caller held the key first and gave it up while this call waited.
    Owned { took_over: bool },
    /// The store failed and `on_storage_error` is `run`: run without a confirmed
    /// reservation (our claim may still have landed; the fenced completion covers both).
    Unconfirmed,
}

/// Whether the call holds a confirmed reservation while its action runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Holding {
    /// Claimed: renew while running; a lost fence is a lease loss.
    Lease,
    /// Fail-open after a store failure: no renewal; a lost fence only means another
    /// caller's record is there.
    Unconfirmed,
}

/// How the completion went.
enum Completion {
    /// A final record is under the key: ours (`ours`), or a newer owner's that stands.
    Written { ours: bool },
    /// Nothing to write (an error not stored, a result that cannot be encoded, a record
    /// that cannot be built): the reservation should go.
    NothingToWrite,
    /// The store failed: the reservation should go, without waiting on the store again.
    StoreFailed,
}

/// What a finished action leaves under the key.
enum Finish {
    /// Its result.
    Value(Option<Box<RawValue>>),
    /// A stored error.
    Error(Box<RawValue>),
}

impl<S: ReservationStore> Coordinator<S> {
    pub(crate) async fn execute_reserved<T, E, J: Job<T, E>>(
        &self,
        id: RecordId,
        flow: &Flow<'_>,
        job: J,
    ) -> std::result::Result<(T, Outcome), Failed<E>> {
        let codec = job.codec();
        // In-process coalescing (see `coalesce.rs`): lead this key's one claim in the
        // process, or follow the caller that leads it.
        let mut prior = Prior::default();
        let mut ticket = None;
        if let Some(coalescer) = &self.inner.coalescer {
            loop {
                match coalescer.join(&id, flow.options.fingerprint.as_deref()) {
                    Joined::Leader(t) => {
                        ticket = Some(t);
                        break;
                    }
                    Joined::Alone => break,
                    Joined::Follower(rx) => {
                        // Boxed: following is the contended path; inline it would grow
                        // every call's future.
                        let followed =
                            Box::pin(self.follow(rx, &id, flow, &codec, &mut prior)).await;
                        match followed {
                            Followed::Done(done) => return done,
                            Followed::Lead => {}
                            Followed::Alone => break,
                        }
                    }
                }
            }
        }
        // Invariant: the owner token exists and the guard is armed before the claim is
        // sent, so dropping this future at any await from here on (a client disconnect,
        // a timeout) releases whatever our claim wrote; the release is fenced, so it is
        // harmless when nothing was written. The guard is disarmed only after the last
        // write of this call.
        let lease = Lease::new(id, flow.options.fingerprint.as_deref(), self.inner.clock);
        let mut guard = ReleaseGuard::new(Arc::clone(&self.inner), lease);
        match self.claim(guard.lease(), flow, &mut ticket, &prior).await {
            Ok(Claimed::Replay { record, waited }) => {
                // Every claim of this call was answered with another's record: ours wrote
                // nothing.
                guard.disarm();
                let value = self.replay(&record, &codec);
                // Shared whatever this call's own decoding made of it (followers decode
                // with their own adapters).
                if let Some(ticket) = ticket {
                    ticket.finish(move || Phase::Found {
                        record: Arc::new(record),
                        waited,
                    });
                }
                let outcome = if waited {
                    Outcome::WaitedThenReplayed
                } else {
                    Outcome::Replayed
                };
                Ok((value?, outcome))
            }
            Ok(Claimed::Owned { took_over }) => {
                let outcome = if took_over {
                    Outcome::TookOver
                } else {
                    Outcome::Executed
                };
                self.run_owned(guard, flow.ttl, job, Holding::Lease, ticket)
                    .await
                    .map(|value| (value, outcome))
            }
            Ok(Claimed::Unconfirmed) => self
                .run_owned(guard, flow.ttl, job, Holding::Unconfirmed, None)
                .await
                .map(|value| (value, Outcome::Unprotected)),
            // A failed store may have applied the claim before its reply was lost: the
            // guard's release (on drop) removes it. Any other error came with a reply
            // that wrote nothing.
            Err(e) if e.is_storage() => Err(e.into()),
            Err(e) => {
                guard.disarm();
                Err(e.into())
            }
        }
    }

    /// Reserves the key, finds the record to replay, or waits for the caller that holds
    /// it. A leader's `ticket` tells its followers when the key is held, and shares a
    /// storage failure, a key reuse or a data fault at once.
    async fn claim(
        &self,
        lease: &Lease,
        flow: &Flow<'_>,
        ticket: &mut Option<Ticket<'_>>,
        prior: &Prior,
    ) -> Result<Claimed> {
        let inner = &self.inner;
        let operation = lease.operation();
        let mut waiter: Option<Waiter<S::Watch>> = None;
        loop {
            let started = Instant::now();
            let claimed = inner.store.claim(lease, inner.lease).await;
            if waiter.is_none() {
                // The call's reservation round trip; a waiter's re-claims are not (they
                // would count one observation per wake-up or poll). A follower that leads
                // after its leader left makes its first claim here.
                inner.metrics.record_latency(
                    operation,
                    LatencyMethod::Reserve,
                    started.elapsed().as_secs_f64(),
                );
            }
            let record = match claimed {
                Ok(Claim::Acquired) => {
                    // A waiter that takes the key over runs the action: a miss too.
                    inner.metrics.record_miss(operation);
                    tracing::debug!(key = lease.key(), "idempotency miss: running the action");
                    if let Some(ticket) = ticket {
                        ticket.held();
                    }
                    return Ok(Claimed::Owned {
                        took_over: waiter.is_some() || prior.waited,
                    });
                }
                Ok(Claim::Found(record)) => record,
                Err(e) if e.is_storage() => {
                    inner
                        .metrics
                        .record_error(operation, ErrorType::StorageReserve);
                    tracing::warn!(error = %e.log_message(), "idempotency storage failed before the action");
                    let held = waiter.is_some() || prior.waited;
                    if let Some(ticket) = ticket.take() {
                        ticket.finish(|| Phase::StoreDown {
                            message: e.to_string().into(),
                            held,
                        });
                    }
                    return match flow.on_storage_error {
                        // A waiter has seen a live holder (itself, or the flight it
                        // followed): running now would run next to it. Only a call that
                        // never found the key held fails open.
                        OnStorageError::Run if !held => Ok(Claimed::Unconfirmed),
                        OnStorageError::Run | OnStorageError::Raise => Err(e),
                    };
                }
                Err(e) => {
                    if e.class() == ErrorClass::Data {
                        // A value of another type under the key: never run over it.
                        inner.metrics.record_error(operation, ErrorType::StorageGet);
                        tracing::error!(error = %e.log_message(), "the key holds data that is not a record; refusing the call");
                    }
                    if let Some(ticket) = ticket.take() {
                        ticket.finish(|| Phase::Alone);
                    }
                    return Err(e);
                }
            };
            // Before the pending check on purpose: a waiter with another payload is
            // refused now rather than handed someone else's result later.
            if let Err(e) = self.check_fingerprint(&record, lease.fingerprint()) {
                // Followers share this call's fingerprint: each refuses the same record.
                if let Some(ticket) = ticket.take() {
                    let held_first = waiter.is_some() || prior.waited;
                    ticket.finish(move || Phase::Found {
                        record: Arc::new(record),
                        waited: held_first,
                    });
                }
                return Err(e);
            }
            if !record.is_pending() {
                return Ok(Claimed::Replay {
                    record,
                    waited: waiter.is_some() || prior.waited,
                });
            }
            let waiter = match &mut waiter {
                Some(w) => w,
                None => {
                    if !prior.collided {
                        inner.metrics.record_collision(operation);
                        tracing::info!(in_flight = ?flow.in_flight, "idempotency key in flight");
                    }
                    if let Some(ticket) = ticket {
                        ticket.held();
                    }
                    // A follower that leads now keeps the patience it has left.
                    let patience = match prior.deadline {
                        Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                        None => flow.options.max_wait.unwrap_or(inner.lease),
                    };
                    waiter.insert(Waiter::new(patience))
                }
            };
            if flow.in_flight == InFlight::Raise {
                return Err(IdempotencyError::in_progress(operation, lease.key()));
            }
            if !waiter
                .wait(&inner.store, lease.id(), inner.safety_poll)
                .await
            {
                tracing::warn!("idempotency key still in flight after the wait; refusing the call");
                return Err(IdempotencyError::in_progress(operation, lease.key()));
            }
        }
    }

    /// Runs the action, then completes or releases the reservation, and disarms the guard.
    /// A leader's `ticket` shares the record it wrote; dropped otherwise (after the
    /// release when there is one), it lets a follower claim.
    async fn run_owned<T, E, J: Job<T, E>>(
        &self,
        mut guard: ReleaseGuard<S>,
        ttl: Duration,
        job: J,
        holding: Holding,
        mut ticket: Option<Ticket<'_>>,
    ) -> std::result::Result<T, Failed<E>> {
        let codec = job.codec();
        // A fenced action gets its run's token before it starts (one round trip); a
        // reservation that is gone by then (taken over) does not run it.
        let fence = match holding {
            Holding::Lease if job.fenced() => {
                match self.inner.store.fencing_token(guard.lease()).await {
                    Ok(Some(token)) => Some(token),
                    Ok(None) => {
                        let lease = guard.lease();
                        return Err(Failed::Library(IdempotencyError::in_progress(
                            lease.operation(),
                            lease.key(),
                        )));
                    }
                    Err(e) => return Err(Failed::Library(e)),
                }
            }
            Holding::Lease | Holding::Unconfirmed => None,
        };
        let (outcome, loss) = match holding {
            Holding::Lease => {
                // A renewal that fails or finds the lease lost ends the flight: local
                // callers then go to the store, which lets one of them take the key over
                // once the lease runs out, as a caller in another process would.
                let doubt = || drop(ticket.take());
                run_renewing(&self.inner, guard.lease(), job.start(fence), doubt).await
            }
            Holding::Unconfirmed => (job.start(fence).await, LeaseLoss::NotSeen),
        };
        let lease = guard.lease();
        // Encoded before any await, so the call's future holds no `&T` or `&E` across one
        // (a detached call then needs `T: Send` only).
        let (finish, outcome) = match outcome {
            Ok(value) => match self.encode(lease.operation(), &codec, &value) {
                Ok(result) => (Finish::Value(Some(result)), Ok(value)),
                // The action ran: the key keeps that its result could not be stored.
                Err(reason) => (
                    Finish::Error(idempotency_core::unstorable_marker(&reason)),
                    Ok(value),
                ),
            },
            Err(e) => match codec.encode_error(&e) {
                Some(stored) => (
                    Finish::Error(self.storable_error(lease.operation(), stored)),
                    Err(Failed::Action(e)),
                ),
                // Failures are not cached: free the key so the retry runs again.
                None => (Finish::Value(None), Err(Failed::Action(e))),
            },
        };
        match self.complete(lease, ttl, &finish, loss, holding).await {
            Completion::Written { ours } => {
                guard.disarm();
                // Another owner's record stands after a lost fence (`!ours`): the
                // ticket's drop lets a follower claim and find it.
                if let Some(ticket) = ticket
                    && ours
                {
                    ticket.finish(|| {
                        let (lease, now) = (guard.lease(), self.inner.clock.now());
                        let written = match &finish {
                            Finish::Value(Some(raw)) => lease.completed_record_at(now, raw, ttl),
                            Finish::Error(raw) => lease.stored_error_record_at(now, raw, ttl),
                            Finish::Value(None) => return Phase::Vacated,
                        };
                        written.map_or(Phase::Vacated, |record| Phase::Found {
                            record: Arc::new(record),
                            waited: true,
                        })
                    });
                }
            }
            Completion::NothingToWrite => {
                // Awaited: a retry right after this call returns must find the key free.
                self.release(lease).await;
                guard.disarm();
            }
            // The store just failed: a release now would most likely wait out another
            // command timeout on the caller's path. It goes in the background; a retry
            // meanwhile finds the key still held (409 or a wait), and once the release
            // lands (or the lease ends) runs the action again: the result was never
            // stored (at least once, counted as `storage_save_error`).
            Completion::StoreFailed => guard.release_in_background(),
        }
        outcome
    }

    /// Stores the result (or stored error) over our reservation.
    async fn complete(
        &self,
        lease: &Lease,
        ttl: Duration,
        finish: &Finish,
        loss: LeaseLoss,
        holding: Holding,
    ) -> Completion {
        let inner = &self.inner;
        let operation = lease.operation();
        let started = Instant::now();
        let status = match finish {
            Finish::Value(None) => return Completion::NothingToWrite,
            Finish::Value(Some(_)) => RecordStatus::Completed,
            Finish::Error(_) => RecordStatus::StoredError,
        };
        let write = || async {
            match finish {
                Finish::Value(Some(result)) => inner.store.complete(lease, result, ttl).await,
                Finish::Error(error) => inner.store.complete_with_error(lease, error, ttl).await,
                Finish::Value(None) => Ok(idempotency_core::Fence::Lost),
            }
        };
        // The action ran: a server that answers but refuses the write (a failover, a
        // moment of `OOM`, `NOREPLICAS` while a replica catches up) is asked again, for
        // up to half a lease, while our reservation (fenced) still holds the key. Giving
        // up at once would release the key and let a retry run the action again.
        let mut outcome = write().await;
        let mut pause = Duration::from_millis(10);
        while matches!(&outcome, Err(e) if e.is_storage() && !e.is_unreachable())
            && started.elapsed() + pause < inner.lease / 2
        {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
            outcome = write().await;
        }
        inner.metrics.record_latency(
            operation,
            LatencyMethod::Save,
            started.elapsed().as_secs_f64(),
        );
        match outcome {
            Ok(fence) => {
                // The fence's meaning is core's (`Fence::lease_lost`, `Fence::written`),
                // shared with the model that checks this flow. A lost lease (another
                // record there, or ours gone when the result was written: a duplicate may
                // have run and given the key up meanwhile) is counted once per call (the
                // renewal may have seen it first), though a vacated key now holds ours.
                if fence.lease_lost() && holding == Holding::Lease && loss == LeaseLoss::NotSeen {
                    inner.metrics.record_error(operation, ErrorType::LeaseLost);
                    if fence.written() {
                        tracing::warn!(
                            "the reservation was gone when the result was stored; a duplicate may have run"
                        );
                    }
                }
                if fence.written() {
                    inner.record_created(lease.id(), status, ttl);
                    Completion::Written { ours: true }
                } else {
                    tracing::warn!("the key holds another caller's record; it stands");
                    Completion::Written { ours: false }
                }
            }
            Err(e) => {
                inner
                    .metrics
                    .record_error(operation, ErrorType::StorageSave);
                tracing::warn!(error = %e.log_message(), "could not store the result");
                if e.is_storage() {
                    Completion::StoreFailed
                } else {
                    Completion::NothingToWrite
                }
            }
        }
    }

    pub(crate) async fn release(&self, lease: &Lease) {
        // Boxed: the failure path should not grow every call's future.
        if let Err(e) = Box::pin(self.inner.store.release(lease)).await {
            self.inner
                .metrics
                .record_error(lease.operation(), ErrorType::StorageRelease);
            tracing::warn!(error = %e.log_message(), "could not release the reservation; it expires with its lease");
        }
    }
}
