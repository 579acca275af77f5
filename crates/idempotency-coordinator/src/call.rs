//! The call builder: `coordinator.call(op, key).fingerprint(..).ttl(..).run(action)`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use idempotency_core::{
    FencingToken, IdempotencyError, ReservationStore, ResultAdapter, SerdeAdapter,
};

use crate::action::{Action, Fenced, Parts, Storing};
use crate::coordinator::{CallOptions, Coordinator};
use crate::drain::Refused;
use crate::error_policy::{ErrorPolicy, ReleaseOnError, StoreErrors};
use crate::modes::{InFlight, OnStorageError};
use crate::outcome::Outcome;

/// One call being set up; finish it with [`Call::run`] (or a variant).
#[derive(Debug)]
#[must_use = "a call does nothing until `run` is awaited"]
pub struct Call<'a, S, A = SerdeAdapter, P = ReleaseOnError> {
    coordinator: &'a Coordinator<S>,
    operation: &'a str,
    key: Option<&'a str>,
    options: CallOptions,
    adapter: A,
    errors: P,
}

impl<S: ReservationStore> Coordinator<S> {
    /// Starts a call: `operation`, and the idempotency key (`None`: no idempotency, the
    /// action just runs).
    pub fn call<'a>(&'a self, operation: &'a str, key: Option<&'a str>) -> Call<'a, S> {
        Call {
            coordinator: self,
            operation,
            key,
            options: CallOptions::default(),
            adapter: SerdeAdapter,
            errors: ReleaseOnError,
        }
    }
}

impl<'a, S: ReservationStore, A, P> Call<'a, S, A, P> {
    /// The record's lifetime (an operation override from settings wins over it).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.options.ttl = Some(ttl);
        self
    }

    /// The request's fingerprint (see [`fingerprint_of`](crate::fingerprint_of)).
    pub fn fingerprint(mut self, fingerprint: impl Into<String>) -> Self {
        self.options.fingerprint = Some(fingerprint.into());
        self
    }

    /// Sets or clears the fingerprint.
    pub fn maybe_fingerprint(mut self, fingerprint: Option<String>) -> Self {
        self.options.fingerprint = fingerprint;
        self
    }

    /// What this call does when another caller holds the key, overriding the
    /// coordinator's mode for this call only.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), idempotency_coordinator::IdempotencyError> {
    /// use idempotency_coordinator::{Coordinator, InFlight};
    /// let coordinator = Coordinator::in_memory();
    /// let value: u8 = coordinator
    ///     .call("op", Some("k"))
    ///     .in_flight(InFlight::Raise)
    ///     .run(|| async { Ok::<_, idempotency_coordinator::IdempotencyError>(1) })
    ///     .await?;
    /// assert_eq!(value, 1);
    /// # Ok(()) }
    /// ```
    pub fn in_flight(mut self, in_flight: InFlight) -> Self {
        self.options.in_flight = Some(in_flight);
        self
    }

    /// How long this call waits for the holder of the key (in [`InFlight::Wait`]) before
    /// giving up with [`IdempotencyError::InProgress`]; default one lease. A holder that
    /// finishes within it is replayed; one that gives the key up lets this call run.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.options.max_wait = Some(max_wait);
        self
    }

    /// What this call does when the store fails before the action, overriding the
    /// coordinator's mode for this call only (an HTTP route that must fail closed on a
    /// coordinator that fails open, or the reverse).
    pub fn on_storage_error(mut self, mode: OnStorageError) -> Self {
        self.options.on_storage_error = Some(mode);
        self
    }

    /// How the result is stored and read back (default [`SerdeAdapter`]).
    pub fn adapter<B>(self, adapter: B) -> Call<'a, S, B, P> {
        Call {
            coordinator: self.coordinator,
            operation: self.operation,
            key: self.key,
            options: self.options,
            adapter,
            errors: self.errors,
        }
    }

    /// Stores the action's errors that `when` selects, so every retry gets the same error
    /// instead of running the action again; other errors release the key (the default for
    /// all errors). The error type must be serde-serializable; it is stored as JSON with
    /// the record status `stored_error`, which the Python library 0.5.0 reads as a
    /// corrupted record (it never replays it as a success).
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use idempotency_coordinator::{Coordinator, IdempotencyError};
    ///
    /// #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    /// enum ChargeError { Declined, Unavailable, Idempotency(String) }
    /// impl From<IdempotencyError> for ChargeError {
    ///     fn from(e: IdempotencyError) -> Self { Self::Idempotency(e.to_string()) }
    /// }
    ///
    /// let coordinator = Coordinator::in_memory();
    /// let charge = |outcome| {
    ///     coordinator
    ///         .call("payment.charge", Some("k-1"))
    ///         .store_errors(|e: &ChargeError| *e == ChargeError::Declined)
    ///         .run(move || async move { outcome })
    /// };
    /// assert_eq!(charge(Err::<u64, _>(ChargeError::Declined)).await, Err(ChargeError::Declined));
    /// // The retry replays the stored decline; its own action does not run.
    /// assert_eq!(charge(Ok(1999)).await, Err(ChargeError::Declined));
    /// # }
    /// ```
    pub fn store_errors<E, F>(self, when: F) -> Call<'a, S, A, StoreErrors<F>>
    where
        F: Fn(&E) -> bool,
    {
        Call {
            coordinator: self.coordinator,
            operation: self.operation,
            key: self.key,
            options: self.options,
            adapter: self.adapter,
            errors: StoreErrors(when),
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
    /// As [`Coordinator::execute`]; a stored error of an earlier run (see
    /// [`Call::store_errors`]).
    pub async fn run<T, E, F, Fut>(self, action: F) -> Result<T, E>
    where
        A: ResultAdapter<T>,
        P: ErrorPolicy<E>,
        E: From<IdempotencyError>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run_with_outcome(action).await.map(|(value, _)| value)
    }

    /// [`Call::run`], also returning how the call got its value (see [`Outcome`]).
    ///
    /// # Errors
    /// As [`Call::run`].
    pub async fn run_with_outcome<T, E, F, Fut>(self, action: F) -> Result<(T, Outcome), E>
    where
        A: ResultAdapter<T>,
        P: ErrorPolicy<E>,
        E: From<IdempotencyError>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run_action(action).await
    }

    /// [`Call::run`] of an action that takes its run's fencing token: a number larger
    /// than that of every earlier owner of the key (see [`FencingToken`]), for the action
    /// to make its downstream writes conditional on, so an owner that stalled past its
    /// lease cannot overwrite a newer owner's effect. The token costs one round trip
    /// before the action starts. `None` when the action runs unprotected (no key, a
    /// disabled coordinator, fail-open after the claim failed on storage); a reservation
    /// lost before the action starts does not run it (the call fails with
    /// [`IdempotencyError::InProgress`]), and neither does a token the store fails to
    /// give (the call fails with that error, whatever `on_storage_error` says: the
    /// action asked for a fence).
    ///
    /// # Errors
    /// As [`Call::run`].
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), idempotency_coordinator::IdempotencyError> {
    /// use idempotency_coordinator::{Coordinator, FencingToken};
    ///
    /// let coordinator = Coordinator::in_memory();
    /// let token = coordinator
    ///     .call("ledger.post", Some("k-1"))
    ///     .run_fenced(|fence: Option<FencingToken>| async move {
    ///         // e.g. UPDATE ledger SET …, fence = $n WHERE id = $id AND fence < $n
    ///         Ok::<_, idempotency_coordinator::IdempotencyError>(fence.map(FencingToken::get))
    ///     })
    ///     .await?;
    /// assert!(token.is_some());
    /// # Ok(()) }
    /// ```
    pub async fn run_fenced<T, E, F, Fut>(self, action: F) -> Result<T, E>
    where
        A: ResultAdapter<T>,
        P: ErrorPolicy<E>,
        E: From<IdempotencyError>,
        F: FnOnce(Option<FencingToken>) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run_action(Fenced(action))
            .await
            .map(|(value, _)| value)
    }

    /// [`Call::run_fenced`], also returning how the call got its value.
    ///
    /// # Errors
    /// As [`Call::run`].
    pub async fn run_fenced_with_outcome<T, E, F, Fut>(self, action: F) -> Result<(T, Outcome), E>
    where
        A: ResultAdapter<T>,
        P: ErrorPolicy<E>,
        E: From<IdempotencyError>,
        F: FnOnce(Option<FencingToken>) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run_action(Fenced(action)).await
    }

    async fn run_action<T, E, F>(self, action: F) -> Result<(T, Outcome), E>
    where
        A: ResultAdapter<T>,
        P: ErrorPolicy<E>,
        E: From<IdempotencyError>,
        F: Action<T, E>,
    {
        let storing = Storing {
            adapter: &self.adapter,
            errors: &self.errors,
        };
        let job = Parts { storing, action };
        self.coordinator
            .execute_with(self.operation, self.key, &self.options, job)
            .await
    }
}

impl<S: ReservationStore, A, P> Call<'_, S, A, P> {
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
    /// # async fn main() -> Result<(), idempotency_coordinator::IdempotencyError> {
    /// let coordinator = idempotency_coordinator::Coordinator::in_memory();
    /// let charge: u64 = coordinator
    ///     .call("payment.charge", Some("k-1"))
    ///     .run_detached(|| async { Ok::<_, idempotency_coordinator::IdempotencyError>(1999) })
    ///     .await?;
    /// assert_eq!(charge, 1999);
    /// # Ok(()) }
    /// ```
    pub async fn run_detached<T, E, F, Fut>(self, action: F) -> Result<T, E>
    where
        A: ResultAdapter<T> + Send + Sync + 'static,
        P: ErrorPolicy<E> + Send + Sync + 'static,
        T: Send + 'static,
        E: From<IdempotencyError> + Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        self.run_detached_with_outcome(action)
            .await
            .map(|(value, _)| value)
    }

    /// [`Call::run_detached`], also returning how the call got its value (see
    /// [`Outcome`]).
    ///
    /// # Errors
    /// As [`Call::run_detached`].
    pub async fn run_detached_with_outcome<T, E, F, Fut>(self, action: F) -> Result<(T, Outcome), E>
    where
        A: ResultAdapter<T> + Send + Sync + 'static,
        P: ErrorPolicy<E> + Send + Sync + 'static,
        T: Send + 'static,
        E: From<IdempotencyError> + Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        self.spawn_action(action).await
    }

    /// [`Call::run_detached`] of an action that takes its run's fencing token (see
    /// [`Call::run_fenced`]).
    ///
    /// # Errors
    /// As [`Call::run_detached`].
    pub async fn run_detached_fenced<T, E, F, Fut>(self, action: F) -> Result<(T, Outcome), E>
    where
        A: ResultAdapter<T> + Send + Sync + 'static,
        P: ErrorPolicy<E> + Send + Sync + 'static,
        T: Send + 'static,
        E: From<IdempotencyError> + Send + 'static,
        F: FnOnce(Option<FencingToken>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        self.spawn_action(Fenced(action)).await
    }

    async fn spawn_action<T, E, F>(self, action: F) -> Result<(T, Outcome), E>
    where
        A: ResultAdapter<T> + Send + Sync + 'static,
        P: ErrorPolicy<E> + Send + Sync + 'static,
        T: Send + 'static,
        E: From<IdempotencyError> + Send + 'static,
        F: Action<T, E> + Send + 'static,
        F::Fut: Send + 'static,
    {
        let coordinator = self.coordinator.clone();
        let operation = self.operation.to_owned();
        let key = self.key.map(str::to_owned);
        let options = self.options;
        let adapter = self.adapter;
        let errors = self.errors;
        let cancelled = || IdempotencyError::Cancelled {
            operation: self.operation.to_owned(),
            key: self.key.map(str::to_owned),
        };
        // Refused once the coordinator drains (a shutdown is under way), and past the
        // bound on detached calls in flight (work that outlives its callers).
        let ticket = match coordinator.inner.detached.enter() {
            Ok(ticket) => ticket,
            Err(Refused::Draining) => return Err(cancelled().into()),
            Err(Refused::Full(limit)) => {
                tracing::warn!(
                    operation = self.operation,
                    limit,
                    "too many detached calls in flight; refusing this one"
                );
                return Err(IdempotencyError::Overloaded {
                    operation: self.operation.to_owned(),
                    limit,
                }
                .into());
            }
        };
        let ticket_id = ticket.id();
        let detached = Arc::clone(&coordinator.inner.detached);
        let task = tokio::spawn(async move {
            let _ticket = ticket;
            let storing = Storing {
                adapter: &adapter,
                errors: &errors,
            };
            let job = Parts { storing, action };
            coordinator
                .execute_with(&operation, key.as_deref(), &options, job)
                .await
        });
        detached.register(ticket_id, task.abort_handle());
        match task.await {
            Ok(outcome) => outcome,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(cancelled().into()),
        }
    }
}
