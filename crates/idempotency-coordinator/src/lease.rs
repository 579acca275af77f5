//! Holding a reservation while the action runs: renewal, and release on cancellation.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;

use idempotency_core::{ErrorType, Lease, ReservationStore};

use crate::coordinator::Inner;

/// Drives `action` to completion while renewing the lease every third of a lease.
/// Returns the action's output and whether the lease was found lost (counted once; no
/// renewal is tried after that). `doubt` is called (once) as soon as a renewal fails or
/// finds the lease lost: from then on the caller cannot vouch that it holds the key.
///
/// Invariant: a renewal that has started is always finished before this returns, even
/// when the action completes meanwhile, so no renewal write is cut off mid-way and none
/// lands after the completion that follows.
pub(crate) async fn run_renewing<S: ReservationStore, Fut: Future>(
    inner: &Inner<S>,
    lease: &Lease,
    action: Fut,
    doubt: impl FnOnce(),
) -> (Fut::Output, LeaseLoss) {
    let period = inner.lease / 3;
    let mut action = pin!(action);
    let mut doubt = Some(doubt);
    loop {
        tokio::select! {
            biased;
            out = &mut action => return (out, LeaseLoss::NotSeen),
            () = tokio::time::sleep(period) => {
                // Boxed: renewals are rare (every lease/3), and inline they would grow every
                // call's future by the size of a store round trip.
                let loss = {
                    let mut renewal = Box::pin(renew(inner, lease, &mut doubt));
                    tokio::select! {
                        biased;
                        loss = &mut renewal => loss,
                        out = &mut action => return (out, renewal.await),
                    }
                };
                if loss == LeaseLoss::Counted {
                    if let Some(doubt) = doubt.take() {
                        doubt();
                    }
                    // Someone else holds the key now: renewing is futile.
                    return (action.await, LeaseLoss::Counted);
                }
            }
        }
    }
}

/// Whether the renewals found the lease lost while the action ran. A loss they found is
/// counted there, so the completion does not count it again.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaseLoss {
    /// No renewal found the lease lost (or none ran).
    NotSeen,
    /// A renewal found it lost, and counted it.
    Counted,
}

/// One renewal; [`LeaseLoss::Counted`] when the lease turned out lost. A failed renewal
/// calls `doubt`.
async fn renew<S: ReservationStore>(
    inner: &Inner<S>,
    lease: &Lease,
    doubt: &mut Option<impl FnOnce()>,
) -> LeaseLoss {
    match inner.store.renew(lease, inner.lease).await {
        // Written: still ours (a renewal never vacates: it writes only over our own
        // reservation). The decision is core's, shared with the model.
        Ok(fence) if fence.written() => LeaseLoss::NotSeen,
        Ok(_) => {
            inner
                .metrics
                .record_error(lease.operation(), ErrorType::LeaseLost);
            tracing::warn!("reservation lost while the action runs; a duplicate may run");
            LeaseLoss::Counted
        }
        Err(e) => {
            inner
                .metrics
                .record_error(lease.operation(), ErrorType::StorageRenew);
            tracing::warn!(error = %e.log_message(), "could not renew the reservation");
            if let Some(doubt) = doubt.take() {
                doubt();
            }
            LeaseLoss::NotSeen
        }
    }
}

/// Releases the reservation when the call's future is dropped before it finished.
pub(crate) struct ReleaseGuard<S: ReservationStore> {
    inner: Arc<Inner<S>>,
    lease: Lease,
    armed: bool,
}

impl<S: ReservationStore> ReleaseGuard<S> {
    pub(crate) fn new(inner: Arc<Inner<S>>, lease: Lease) -> Self {
        Self {
            inner,
            lease,
            armed: true,
        }
    }

    pub(crate) fn lease(&self) -> &Lease {
        &self.lease
    }

    /// The call finished its own writes; nothing to do on drop.
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl<S: ReservationStore> ReleaseGuard<S> {
    /// Releases the reservation in a spawned task and disarms: for a call whose store
    /// just failed, so the caller does not wait out another timeout for the release.
    /// Fenced like every release: harmless if the failed write did land.
    pub(crate) fn release_in_background(mut self) {
        self.armed = false;
        spawn_release(
            &self.inner,
            &self.lease,
            "the store failed; releasing in the background",
        );
    }
}

impl<S: ReservationStore> Drop for ReleaseGuard<S> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // Cancelled mid-call. The release only deletes our own pending record, so it is
        // harmless if a completion already landed.
        spawn_release(
            &self.inner,
            &self.lease,
            "call cancelled; releasing its reservation",
        );
    }
}

/// Releases `lease` in a spawned task. Without a runtime (shutdown) the lease simply
/// expires.
fn spawn_release<S: ReservationStore>(inner: &Arc<Inner<S>>, lease: &Lease, why: &'static str) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let inner = Arc::clone(inner);
    let lease = lease.clone();
    // A drain waits for this release too.
    let ticket = inner.detached.release_ticket();
    handle.spawn(async move {
        let _ticket = ticket;
        tracing::info!(operation = lease.operation(), "{why}");
        if let Err(e) = inner.store.release(&lease).await {
            inner
                .metrics
                .record_error(lease.operation(), ErrorType::StorageRelease);
            tracing::warn!(error = %e.log_message(), "could not release the reservation; it expires with its lease");
        }
    });
}
