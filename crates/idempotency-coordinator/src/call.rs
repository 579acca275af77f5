//! The call builder: `coordinator.call(op, key).fingerprint(..).ttl(..).run(action)`.

use std::future::Future;
use std::time::Duration;

use idempotency_core::{IdempotencyError, ReservationStore, ResultAdapter, SerdeAdapter};

use crate::coordinator::{CallOptions, Coordinator};

/// One call being set up; finish it with [`Call::run`].
#[derive(Debug)]
#[must_use = "a call does nothing until `run` is awaited"]
pub struct Call<'a, S, A = SerdeAdapter> {
    coordinator: &'a Coordinator<S>,
    operation: &'a str,
    key: Option<&'a str>,
    options: CallOptions,
    adapter: A,
}

impl<'a, S: ReservationStore> Call<'a, S> {
    pub(crate) fn new(
        coordinator: &'a Coordinator<S>,
        operation: &'a str,
        key: Option<&'a str>,
    ) -> Self {
        Self {
            coordinator,
            operation,
            key,
            options: CallOptions::default(),
            adapter: SerdeAdapter,
        }
    }
}

impl<'a, S: ReservationStore, A> Call<'a, S, A> {
    /// The record's lifetime (an operation override from settings wins over it).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.options.ttl = Some(ttl);
        self
    }

    /// The request's fingerprint (see [`idempotency_core::fingerprint_of`]).
    pub fn fingerprint(mut self, fingerprint: impl Into<String>) -> Self {
        self.options.fingerprint = Some(fingerprint.into());
        self
    }

    /// Sets or clears the fingerprint.
    pub fn maybe_fingerprint(mut self, fingerprint: Option<String>) -> Self {
        self.options.fingerprint = fingerprint;
        self
    }

    /// How the result is stored and read back (default [`SerdeAdapter`]).
    pub fn adapter<B>(self, adapter: B) -> Call<'a, S, B> {
        Call {
            coordinator: self.coordinator,
            operation: self.operation,
            key: self.key,
            options: self.options,
            adapter,
        }
    }

    /// Runs the action at most once for the key and returns its value, or the stored
    /// value of an earlier call.
    ///
    /// # Errors
    /// As [`Coordinator::execute`].
    pub async fn run<T, E, F, Fut>(self, action: F) -> Result<T, E>
    where
        A: ResultAdapter<T>,
        E: From<IdempotencyError>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.coordinator
            .execute(
                self.operation,
                self.key,
                &self.options,
                &self.adapter,
                action,
            )
            .await
    }
}
