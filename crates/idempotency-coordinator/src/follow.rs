//! Following a flight of in-process coalescing (see `coalesce.rs`): a follower waits on
//! its leader's phases and finishes from them, or claims when the leader leaves.

use std::time::{Duration, Instant};

use idempotency_core::{ErrorType, IdempotencyError, RecordId, ReservationStore};
use tokio::sync::watch;

use crate::action::Codec;
use crate::coalesce::{Phase, Prior};
use crate::coordinator::{Coordinator, Failed, Flow};
use crate::modes::{InFlight, OnStorageError};
use crate::outcome::Outcome;

/// The longest a follower waits, standing in for "no limit" (`max_wait(Duration::MAX)`).
const LONGEST_WAIT: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// How following a flight ended.
pub(crate) enum Followed<T, E> {
    /// The call's result (a replay, `KeyReuse`, `InProgress`, a decode error).
    Done(std::result::Result<(T, Outcome), Failed<E>>),
    /// The leader left without an outcome: join again (and maybe lead).
    Lead,
    /// Go to the store alone.
    Alone,
}

impl<S: ReservationStore> Coordinator<S> {
    /// Waits on a flight's phases and finishes this call from them (invariants 4 and 6).
    pub(crate) async fn follow<T, E, C: Codec<T, E>>(
        &self,
        mut rx: watch::Receiver<Phase>,
        id: &RecordId,
        flow: &Flow<'_>,
        codec: &C,
        prior: &mut Prior,
    ) -> Followed<T, E> {
        let mut closed = false;
        loop {
            let phase = rx.borrow_and_update().clone();
            match phase {
                Phase::Claiming | Phase::Held if closed => {
                    // Unreachable while invariant 3 holds (a ticket always publishes a
                    // terminal phase); claiming is the safe answer anyway.
                    return Followed::Lead;
                }
                Phase::Claiming => {}
                Phase::Held => {
                    self.note_held(id, flow, prior);
                    if flow.in_flight == InFlight::Raise {
                        return Followed::Done(Err(Failed::Library(
                            IdempotencyError::in_progress(id.operation(), id.key()),
                        )));
                    }
                }
                Phase::Found { record, waited } => {
                    if waited {
                        self.note_held(id, flow, prior);
                    }
                    if let Err(e) =
                        self.check_fingerprint(&record, flow.options.fingerprint.as_deref())
                    {
                        return Followed::Done(Err(e.into()));
                    }
                    if record.is_pending() {
                        // A leader shares a pending record only with a key reuse, which
                        // the check above refused for its own fingerprint: claim to be sure.
                        return Followed::Lead;
                    }
                    let outcome = if prior.waited {
                        Outcome::WaitedThenReplayed
                    } else {
                        Outcome::Replayed
                    };
                    return Followed::Done(
                        self.replay(&record, codec).map(|value| (value, outcome)),
                    );
                }
                Phase::StoreDown { message, held } => {
                    if held {
                        self.note_held(id, flow, prior);
                    }
                    if flow.on_storage_error == OnStorageError::Run && !prior.waited {
                        return Followed::Alone;
                    }
                    let e = IdempotencyError::storage(
                        Some(id.operation()),
                        std::io::Error::other(format!(
                            "a concurrent call's claim of this key failed: {message}"
                        )),
                    );
                    self.inner
                        .metrics
                        .record_error(id.operation(), ErrorType::StorageReserve);
                    tracing::warn!(error = %e.log_message(), "idempotency storage failed before the action");
                    return Followed::Done(Err(e.into()));
                }
                Phase::Vacated => return Followed::Lead,
                Phase::Alone => return Followed::Alone,
            }
            let changed = match prior.deadline {
                Some(deadline) => {
                    let deadline = tokio::time::Instant::from_std(deadline);
                    if let Ok(changed) = tokio::time::timeout_at(deadline, rx.changed()).await {
                        changed
                    } else {
                        tracing::warn!(
                            "idempotency key still in flight after the wait; refusing the call"
                        );
                        return Followed::Done(Err(Failed::Library(
                            IdempotencyError::in_progress(id.operation(), id.key()),
                        )));
                    }
                }
                None => rx.changed().await,
            };
            // Closed: the last phase sent is still read once more above.
            closed = changed.is_err();
        }
    }

    /// The key is known held: count this call's collision once and start its wait.
    pub(crate) fn note_held(&self, id: &RecordId, flow: &Flow<'_>, prior: &mut Prior) {
        prior.waited = true;
        if !prior.collided {
            prior.collided = true;
            self.inner.metrics.record_collision(id.operation());
            tracing::info!(in_flight = ?flow.in_flight, "idempotency key in flight (in this process)");
        }
        if prior.deadline.is_none() {
            // A wait the clock cannot add (`Duration::MAX`: as long as it takes) is held
            // to a year, which no lease outlives; never to "now", which would give up at
            // once.
            let patience = flow
                .options
                .max_wait
                .unwrap_or(self.inner.lease)
                .min(LONGEST_WAIT);
            let now = Instant::now();
            prior.deadline = Some(now.checked_add(patience).unwrap_or(now));
        }
    }
}
