//! The flow without reservations ([`InFlight::Run`](crate::InFlight::Run)): read, run,
//! insert-if-absent. Concurrent duplicates may both run; no write is unconditional.

use std::time::{Duration, Instant};

use idempotency_core::{
    ErrorType, IdempotencyError, LatencyMethod, Lease, RawValue, RecordId, ReservationStore,
    ResultAdapter,
};

use crate::action::Action;
use crate::coordinator::{CallOptions, Coordinator};
use crate::modes::OnStorageError;

impl<S: ReservationStore> Coordinator<S> {
    pub(crate) async fn execute_unreserved<T, E, A, F>(
        &self,
        id: &RecordId,
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
        let inner = &self.inner;
        let operation = id.operation();
        let started = Instant::now();
        let read = inner.store.get(id).await;
        inner.metrics.record_latency(
            operation,
            LatencyMethod::Get,
            started.elapsed().as_secs_f64(),
        );
        match read {
            Ok(Some(record)) => {
                self.check_fingerprint(&record, options.fingerprint.as_deref())?;
                if !record.is_pending() {
                    return Ok(self.replay(&record, adapter)?);
                }
            }
            Ok(None) => inner.metrics.record_miss(operation),
            Err(e) => {
                inner.metrics.record_error(operation, ErrorType::StorageGet);
                // Only an outage may fail open; data that is not a record is refused.
                if !e.is_storage() || inner.on_storage_error == OnStorageError::Raise {
                    return Err(e.into());
                }
            }
        }
        let value = action.start().await?;
        // Encoded before the write, so no `&T` is held across an await.
        let Some(raw) = self.encode(operation, adapter, &value) else {
            return Ok(value);
        };
        Ok(self
            .store_unreserved(id, ttl, options, adapter, &raw)
            .await
            .unwrap_or(value))
    }

    /// Stores a result with insert-if-absent; on a collision, the winner's value when it
    /// is a completed record for the same request.
    async fn store_unreserved<T, A: ResultAdapter<T>>(
        &self,
        id: &RecordId,
        ttl: Duration,
        options: &CallOptions,
        adapter: &A,
        raw: &RawValue,
    ) -> Option<T> {
        let inner = &self.inner;
        let operation = id.operation();
        let fingerprint = options.fingerprint.as_deref();
        let record = Lease::new(id.clone(), fingerprint, inner.clock)
            .completed_record(raw, ttl)
            .ok()?;
        let started = Instant::now();
        let written = inner.store.save(&record).await;
        inner.metrics.record_latency(
            operation,
            LatencyMethod::Save,
            started.elapsed().as_secs_f64(),
        );
        match written {
            Ok(()) => None,
            Err(e) if e.is_collision() => {
                inner.metrics.record_collision(operation);
                let winner = inner.store.get(id).await.ok().flatten()?;
                if self.check_fingerprint(&winner, fingerprint).is_err() || winner.is_pending() {
                    return None;
                }
                adapter.decode(winner.result()).ok()
            }
            Err(e) => {
                inner
                    .metrics
                    .record_error(operation, ErrorType::StorageSave);
                tracing::warn!(error = %e, "could not store the result");
                None
            }
        }
    }
}
