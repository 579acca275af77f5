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

impl<S: ReservationStore> Coordinator<S> {
    /// Starts a call: `operation`, and the idempotency key (`None`: no idempotency, the
    /// action just runs).
    pub fn call<'a>(&'a self, operation: &'a str, key: Option<&'a str>) -> Call<'a, S> {
        Call::new(self, operation, key)
    }
}

impl<'a, S: ReservationStore> Call<'a, S> {
    fn new(coordinator: &'a Coordinator<S>, operation: &'a str, key: Option<&'a str>) -> Self {
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
    /// On cancellation (this future dropped, as HTTP servers do when the client goes
    /// away): before the action started, nothing ran and the key is released; after it
    /// started, the action is dropped mid-way and the key is released, so a retry runs
    /// the action again (at least once, not at most once). For actions with side
    /// effects prefer [`Call::run_detached`].
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

impl<S: ReservationStore, A> Call<'_, S, A> {
    /// Runs the call in a spawned task that finishes whatever happens to the caller: the
    /// action runs to completion, its result is stored, and a retry replays it. Dropping
    /// the returned future only stops waiting for the outcome. This is the mode for
    /// actions with side effects (payments, emails) behind anything that can cancel the
    /// caller (an HTTP server dropping a disconnected request, a timeout).
    ///
    /// A panic in the action is resumed in the caller (the key is released, so a retry
    /// runs again).
    ///
    /// # Errors
    /// As [`Coordinator::execute`]; [`IdempotencyError::Cancelled`] if the runtime shut
    /// down before the task finished.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), idempotency_core::IdempotencyError> {
    /// let coordinator = idempotency_coordinator::Coordinator::in_memory();
    /// let charge: u64 = coordinator
    ///     .call("payment.charge", Some("k-1"))
    ///     .run_detached(|| async { Ok::<_, idempotency_core::IdempotencyError>(1999) })
    ///     .await?;
    /// assert_eq!(charge, 1999);
    /// # Ok(()) }
    /// ```
    pub async fn run_detached<T, E, F, Fut>(self, action: F) -> Result<T, E>
    where
        A: ResultAdapter<T> + Send + Sync + 'static,
        T: Send + 'static,
        E: From<IdempotencyError> + Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let coordinator = self.coordinator.clone();
        let operation = self.operation.to_owned();
        let key = self.key.map(str::to_owned);
        let options = self.options;
        let adapter = self.adapter;
        let task = tokio::spawn(async move {
            coordinator
                .execute(&operation, key.as_deref(), &options, &adapter, action)
                .await
        });
        match task.await {
            Ok(outcome) => outcome,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(IdempotencyError::Cancelled {
                operation: self.operation.to_owned(),
                key: self.key.map(str::to_owned),
            }
            .into()),
        }
    }
}
