//! The flow without reservations ([`InFlight::Run`](crate::InFlight::Run)): read, run,
//! insert-if-absent. Concurrent duplicates may both run; no write is unconditional.

use std::time::{Duration, Instant};

use idempotency_core::{
    ErrorType, IdempotencyRecord, LatencyMethod, Lease, RawValue, RecordId, RecordStatus,
    ReservationStore,
};

use crate::action::{Codec, Job};
use crate::coordinator::{CallOptions, Coordinator, Failed, Flow};
use crate::modes::OnStorageError;
use crate::outcome::Outcome;

impl<S: ReservationStore> Coordinator<S> {
    pub(crate) async fn execute_unreserved<T, E, J: Job<T, E>>(
        &self,
        id: &RecordId,
        flow: &Flow<'_>,
        job: J,
    ) -> std::result::Result<(T, Outcome), Failed<E>> {
        let codec = job.codec();
        let inner = &self.inner;
        let (ttl, options) = (flow.ttl, flow.options);
        let operation = id.operation();
        let started = Instant::now();
        let read = inner.store.get(id).await;
        inner.metrics.record_latency(
            operation,
            LatencyMethod::Get,
            started.elapsed().as_secs_f64(),
        );
        let mut outcome = Outcome::Executed;
        match read {
            Ok(Some(record)) => {
                self.check_fingerprint(&record, options.fingerprint.as_deref())?;
                if !record.is_pending() {
                    let value = self.replay(&record, &codec)?;
                    return Ok((value, Outcome::Replayed));
                }
            }
            Ok(None) => inner.metrics.record_miss(operation),
            Err(e) => {
                inner.metrics.record_error(operation, ErrorType::StorageGet);
                // Only an outage may fail open; data that is not a record is refused.
                if !e.is_storage() || flow.on_storage_error == OnStorageError::Raise {
                    return Err(e.into());
                }
                outcome = Outcome::Unprotected;
            }
        }
        let done = job.start(None).await;
        // Encoded before the write, so no `&T` is held across an await.
        let (raw, status) = match &done {
            Ok(value) => match self.encode(operation, &codec, value) {
                Ok(raw) => (Some(raw), RecordStatus::Completed),
                // The action ran: the key keeps that its result could not be stored.
                Err(reason) => (
                    Some(idempotency_core::unstorable_marker(&reason)),
                    RecordStatus::StoredError,
                ),
            },
            Err(e) => (
                codec
                    .encode_error(e)
                    .map(|stored| self.storable_error(operation, stored)),
                RecordStatus::StoredError,
            ),
        };
        let Some(raw) = raw else {
            return done.map(|value| (value, outcome)).map_err(Failed::Action);
        };
        // On a collision the winner's value, when it is a completed record for the same
        // request (the action ran here too: the mode's documented cost).
        let winner = self
            .store_unreserved(id, ttl, options, status, &raw)
            .await
            .filter(|record| !record.is_stored_error())
            .and_then(|record| codec.decode_value(record.result()).ok());
        match winner {
            Some(value) => Ok((value, outcome)),
            None => done.map(|value| (value, outcome)).map_err(Failed::Action),
        }
    }

    /// Stores a finished record with insert-if-absent; on a collision, the winner's
    /// record when it is a finished record for the same request.
    async fn store_unreserved(
        &self,
        id: &RecordId,
        ttl: Duration,
        options: &CallOptions,
        status: RecordStatus,
        raw: &RawValue,
    ) -> Option<IdempotencyRecord> {
        let inner = &self.inner;
        let operation = id.operation();
        let fingerprint = options.fingerprint.as_deref();
        let lease = Lease::new(id.clone(), fingerprint, inner.clock);
        let now = inner.clock.now();
        let record = if status == RecordStatus::StoredError {
            lease.stored_error_record_at(now, raw, ttl)
        } else {
            lease.completed_record_at(now, raw, ttl)
        }
        .ok()?;
        let started = Instant::now();
        let written = inner.store.save(&record).await;
        inner.metrics.record_latency(
            operation,
            LatencyMethod::Save,
            started.elapsed().as_secs_f64(),
        );
        match written {
            Ok(()) => {
                inner.record_created(id, status, ttl);
                None
            }
            Err(e) if e.is_collision() => {
                inner.metrics.record_collision(operation);
                let winner = inner.store.get(id).await.ok().flatten()?;
                if self.check_fingerprint(&winner, fingerprint).is_err() || winner.is_pending() {
                    return None;
                }
                Some(winner)
            }
            Err(e) => {
                inner
                    .metrics
                    .record_error(operation, ErrorType::StorageSave);
                tracing::warn!(error = %e.log_message(), "could not store the result");
                None
            }
        }
    }
}
