//! The reserved flow: claim the key (or replay, or wait), run under the lease, complete.

use std::sync::Arc;
use std::time::{Duration, Instant};

use idempotency_core::{
    Claim, ErrorClass, ErrorType, Fence, IdempotencyError, LatencyMethod, Lease, RawValue,
    RecordId, ReservationStore, Result, ResultAdapter,
};

use crate::action::Action;
use crate::coordinator::{CallOptions, Coordinator};
use crate::lease::{ReleaseGuard, run_renewing};
use crate::modes::{InFlight, OnStorageError};
use crate::wait::Waiter;

/// What the claim step decided.
enum Claimed<T> {
    /// A stored result, decoded.
    Hit(T),
    /// The key holds our pending record: run under the lease.
    Owned,
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

impl<S: ReservationStore> Coordinator<S> {
    pub(crate) async fn execute_reserved<T, E, A, F>(
        &self,
        id: RecordId,
        ttl: Duration,
        options: &CallOptions,
        adapter: &A,
        action: F,
    ) -> std::result::Result<T, E>
    where
        A: ResultAdapter<T>,
        E: From<IdempotencyError>,
        F: Action<T, E>,
    {
        // Invariant: the owner token exists and the guard is armed before the claim is
        // sent, so dropping this future at any await from here on (a client disconnect,
        // a timeout) releases whatever our claim wrote; the release is fenced, so it is
        // harmless when nothing was written. The guard is disarmed only after the last
        // write of this call.
        let lease = Lease::new(id, options.fingerprint.as_deref(), self.inner.clock);
        let mut guard = ReleaseGuard::new(Arc::clone(&self.inner), lease);
        match self.claim(guard.lease(), adapter).await {
            Ok(Claimed::Hit(value)) => {
                // Every claim of this call was answered with another's record: ours wrote
                // nothing.
                guard.disarm();
                Ok(value)
            }
            Ok(Claimed::Owned) => {
                self.run_owned(guard, ttl, adapter, action, Holding::Lease)
                    .await
            }
            Ok(Claimed::Unconfirmed) => {
                self.run_owned(guard, ttl, adapter, action, Holding::Unconfirmed)
                    .await
            }
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

    /// Reserves the key, replays what holds it, or waits for the caller that holds it.
    async fn claim<T, A: ResultAdapter<T>>(
        &self,
        lease: &Lease,
        adapter: &A,
    ) -> Result<Claimed<T>> {
        let inner = &self.inner;
        let operation = lease.operation();
        let mut waiter: Option<Waiter<S::Watch>> = None;
        loop {
            let started = Instant::now();
            let claimed = inner.store.claim(lease, inner.lease).await;
            inner.metrics.record_latency(
                operation,
                LatencyMethod::Reserve,
                started.elapsed().as_secs_f64(),
            );
            let record = match claimed {
                Ok(Claim::Acquired) => {
                    if waiter.is_none() {
                        inner.metrics.record_miss(operation);
                    }
                    tracing::debug!(key = lease.key(), "idempotency miss: running the action");
                    return Ok(Claimed::Owned);
                }
                Ok(Claim::Found(record)) => record,
                Err(e) if e.is_storage() => {
                    inner
                        .metrics
                        .record_error(operation, ErrorType::StorageReserve);
                    tracing::warn!(error = %e, "idempotency storage failed before the action");
                    return match inner.on_storage_error {
                        OnStorageError::Raise => Err(e),
                        OnStorageError::Run => Ok(Claimed::Unconfirmed),
                    };
                }
                Err(e) => {
                    if e.class() == ErrorClass::Data {
                        // A value of another type under the key: never run over it.
                        inner.metrics.record_error(operation, ErrorType::StorageGet);
                        tracing::error!(error = %e, key = lease.key(), "the key holds data that is not a record; refusing the call");
                    }
                    return Err(e);
                }
            };
            // Before the pending check on purpose: a waiter with another payload is
            // refused now rather than handed someone else's result later.
            self.check_fingerprint(&record, lease.fingerprint())?;
            if !record.is_pending() {
                return self.replay(&record, adapter).map(Claimed::Hit);
            }
            let waiter = match &mut waiter {
                Some(w) => w,
                None => {
                    inner.metrics.record_collision(operation);
                    tracing::info!(in_flight = ?inner.in_flight, "idempotency key in flight");
                    waiter.insert(Waiter::new(inner.lease))
                }
            };
            if inner.in_flight == InFlight::Raise {
                return Err(IdempotencyError::in_progress(operation, lease.key()));
            }
            if !waiter
                .wait(&inner.store, lease.id(), inner.safety_poll)
                .await
            {
                tracing::warn!(
                    "idempotency key still in flight after a whole lease; refusing the call"
                );
                return Err(IdempotencyError::in_progress(operation, lease.key()));
            }
        }
    }

    /// Runs the action, then completes or releases the reservation, and disarms the guard.
    async fn run_owned<T, E, A, F>(
        &self,
        mut guard: ReleaseGuard<S>,
        ttl: Duration,
        adapter: &A,
        action: F,
        holding: Holding,
    ) -> std::result::Result<T, E>
    where
        A: ResultAdapter<T>,
        E: From<IdempotencyError>,
        F: Action<T, E>,
    {
        let (outcome, lost) = match holding {
            Holding::Lease => run_renewing(&self.inner, guard.lease(), action.start()).await,
            Holding::Unconfirmed => (action.start().await, false),
        };
        let lease = guard.lease();
        match outcome {
            Err(e) => {
                // Failures are not cached: free the key so the retry runs again.
                self.release(lease).await;
                guard.disarm();
                Err(e)
            }
            Ok(value) => {
                // Encoded before any await, so the call's future holds no `&T` across one
                // (a detached call then needs `T: Send` only).
                let result = self.encode(lease.operation(), adapter, &value);
                if !self.complete(lease, ttl, result, lost, holding).await {
                    self.release(lease).await;
                }
                guard.disarm();
                Ok(value)
            }
        }
    }

    /// Stores the result over our reservation; `false` when nothing was stored and the
    /// reservation should go.
    async fn complete(
        &self,
        lease: &Lease,
        ttl: Duration,
        result: Option<Box<RawValue>>,
        lost_already: bool,
        holding: Holding,
    ) -> bool {
        let inner = &self.inner;
        let operation = lease.operation();
        let Some(result) = result else {
            return false;
        };
        let started = Instant::now();
        let outcome = inner.store.complete(lease, &result, ttl).await;
        inner.metrics.record_latency(
            operation,
            LatencyMethod::Save,
            started.elapsed().as_secs_f64(),
        );
        match outcome {
            Ok(Fence::Held) => true,
            Ok(Fence::Lost) => {
                // One loss, counted once per call (the renewal may have seen it first).
                if holding == Holding::Lease && !lost_already {
                    inner.metrics.record_error(operation, ErrorType::LeaseLost);
                }
                tracing::warn!("the key holds another caller's record; it stands");
                true
            }
            Err(e) => {
                inner
                    .metrics
                    .record_error(operation, ErrorType::StorageSave);
                tracing::warn!(error = %e, "could not store the result");
                false
            }
        }
    }

    pub(crate) async fn release(&self, lease: &Lease) {
        // Boxed: the failure path should not grow every call's future.
        if let Err(e) = Box::pin(self.inner.store.release(lease)).await {
            self.inner
                .metrics
                .record_error(lease.operation(), ErrorType::StorageRelease);
            tracing::warn!(error = %e, "could not release the reservation; it expires with its lease");
        }
    }
}
