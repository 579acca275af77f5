//! The coordinator: one action per key, its result replayed to every retry.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use idempotency_core::{
    Clock, ErrorType, IdempotencyDomainService, IdempotencyError, IdempotencyMetrics,
    IdempotencyRecord, RawValue, RecordId, RecordStatus, ReservationStore, Result, ResultAdapter,
};
use tracing::Instrument;

use crate::action::{Codec, Job, Parts, Storing};
use crate::coalesce::Coalescer;
use crate::error_policy::ReleaseOnError;
use crate::hook::{RecordCreated, RecordCreatedHook};
use crate::modes::{InFlight, OnStorageError};
use crate::outcome::Outcome;

/// How often a waiter re-reads the key when no wake-up came: the safety net behind push
/// wake-ups, so a lost message costs at most this much.
pub const WAIT_SAFETY_POLL: Duration = Duration::from_millis(250);

/// Per-call options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallOptions {
    /// The record's lifetime (an operation override from settings wins over it).
    pub ttl: Option<Duration>,
    /// The request's fingerprint; a record with another one is a key reuse.
    pub fingerprint: Option<String>,
    /// What this call does when another caller holds the key (default: the
    /// coordinator's mode).
    pub in_flight: Option<InFlight>,
    /// How long this call waits for the holder of the key in [`InFlight::Wait`] before
    /// [`IdempotencyError::InProgress`] (default: one lease).
    pub max_wait: Option<Duration>,
    /// What this call does when the store fails before the action (default: the
    /// coordinator's mode).
    pub on_storage_error: Option<OnStorageError>,
}

/// How one reserved call behaves: its modes, TTL and options, resolved once.
pub(crate) struct Flow<'a> {
    pub(crate) in_flight: InFlight,
    pub(crate) on_storage_error: OnStorageError,
    pub(crate) ttl: Duration,
    pub(crate) options: &'a CallOptions,
}

/// Why a call failed, kept apart until the end so the outcome can be named.
pub(crate) enum Failed<E> {
    /// The library's own error (validation, conflict, key reuse, storage, data).
    Library(IdempotencyError),
    /// The action's error, from this call's run.
    Action(E),
    /// A stored error of an earlier run, replayed.
    Replayed(E),
}

impl<E: From<IdempotencyError>> Failed<E> {
    /// The error the caller gets.
    pub(crate) fn into_error(self) -> E {
        match self {
            Self::Library(e) => e.into(),
            Self::Action(e) | Self::Replayed(e) => e,
        }
    }

    /// The outcome recorded on the span for this failure, when it has one.
    fn span_name(&self) -> Option<&'static str> {
        match self {
            Self::Library(IdempotencyError::InProgress { .. }) => Some("conflict"),
            Self::Library(IdempotencyError::KeyReuse { .. }) => Some("key_reuse"),
            Self::Replayed(_) => Some("replayed"),
            Self::Library(_) | Self::Action(_) => None,
        }
    }
}

impl<E> From<IdempotencyError> for Failed<E> {
    fn from(e: IdempotencyError) -> Self {
        Self::Library(e)
    }
}

/// Runs async actions at most once per `(operation, idempotency key)` and replays the
/// stored result to retries.
///
/// Generic over its store `S` (static dispatch: no boxing on the hot path). `Clone +
/// Send + Sync` and cheap to clone (one `Arc`): build it once, inject it into services.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), idempotency_coordinator::IdempotencyError> {
/// use idempotency_coordinator::Coordinator;
///
/// let coordinator = Coordinator::in_memory();
/// let first: u32 = coordinator.call("order.create", Some("key-1")).run(|| async { Ok::<_, idempotency_coordinator::IdempotencyError>(42) }).await?;
/// let retry: u32 = coordinator.call("order.create", Some("key-1")).run(|| async { Ok::<_, idempotency_coordinator::IdempotencyError>(7) }).await?;
/// assert_eq!((first, retry), (42, 42));
/// # Ok(()) }
/// ```
pub struct Coordinator<S> {
    pub(crate) inner: Arc<Inner<S>>,
}

impl<S> Clone for Coordinator<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S> fmt::Debug for Coordinator<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coordinator")
            .field("enabled", &self.inner.enabled)
            .field("in_flight", &self.inner.in_flight)
            .field("lease", &self.inner.lease)
            .field("on_storage_error", &self.inner.on_storage_error)
            .field("coalesce", &self.inner.coalescer.is_some())
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner<S> {
    pub(crate) store: S,
    pub(crate) policy: IdempotencyDomainService,
    pub(crate) metrics: Arc<dyn IdempotencyMetrics>,
    pub(crate) enabled: bool,
    pub(crate) in_flight: InFlight,
    pub(crate) lease: Duration,
    pub(crate) on_storage_error: OnStorageError,
    pub(crate) operation_ttls: HashMap<String, Duration>,
    pub(crate) safety_poll: Duration,
    pub(crate) clock: Clock,
    pub(crate) on_record_created: Option<Arc<RecordCreatedHook>>,
    /// In-process coalescing of concurrent calls per key (`None`: off).
    pub(crate) coalescer: Option<Coalescer>,
    /// The detached calls and background releases, for [`Coordinator::drain`].
    pub(crate) detached: Arc<crate::drain::Detached>,
}

impl<S> Inner<S> {
    /// Tells the hook, if any, that `id`'s record was stored.
    pub(crate) fn record_created(&self, id: &RecordId, status: RecordStatus, ttl: Duration) {
        if let Some(hook) = &self.on_record_created {
            hook(&RecordCreated {
                operation: id.operation(),
                idempotency_key: id.key(),
                status,
                ttl,
            });
        }
    }
}

impl<S: ReservationStore> Coordinator<S> {
    /// The store.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// Runs `action` at most once per `(operation, key)`, the primitive behind
    /// [`Coordinator::call`].
    ///
    /// # Errors
    /// The action's error; or, converted into `E`: validation of the identifiers or of
    /// the TTL, [`IdempotencyError::InProgress`], [`IdempotencyError::KeyReuse`], a data
    /// error when the key holds something that cannot be replayed or taken over, and the
    /// storage error when `on_storage_error` is `raise` and the store failed before the
    /// action.
    pub async fn execute<T, E, A, F, Fut>(
        &self,
        operation: &str,
        key: Option<&str>,
        options: &CallOptions,
        adapter: &A,
        action: F,
    ) -> std::result::Result<T, E>
    where
        A: ResultAdapter<T>,
        E: From<IdempotencyError>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
    {
        let storing = Storing {
            adapter,
            errors: &ReleaseOnError,
        };
        self.execute_with(operation, key, options, Parts { storing, action })
            .await
            .map(|(value, _)| value)
    }

    /// [`Coordinator::execute`] of a call's parts (with its error policy), returning the
    /// call's [`Outcome`].
    pub(crate) async fn execute_with<T, E, J>(
        &self,
        operation: &str,
        key: Option<&str>,
        options: &CallOptions,
        job: J,
    ) -> std::result::Result<(T, Outcome), E>
    where
        J: Job<T, E>,
        E: From<IdempotencyError>,
    {
        let Some(key) = key.filter(|_| self.inner.enabled) else {
            return job
                .start(None)
                .await
                .map(|value| (value, Outcome::Bypassed));
        };
        // The one validation of the call: everything below carries the typed identity.
        let id = RecordId::new(operation, key)?;
        let ttl = self.resolve_ttl(id.operation(), options.ttl)?;
        let span = tracing::info_span!(
            "idempotency",
            operation = id.operation(),
            outcome = tracing::field::Empty
        );
        let flow = Flow {
            in_flight: options.in_flight.unwrap_or(self.inner.in_flight),
            on_storage_error: options
                .on_storage_error
                .unwrap_or(self.inner.on_storage_error),
            ttl,
            options,
        };
        let call = async move {
            let done = if flow.in_flight == InFlight::Run {
                self.execute_unreserved(&id, &flow, job).await
            } else {
                self.execute_reserved(id, &flow, job).await
            };
            if let Some(name) = match &done {
                Ok((_, outcome)) => Some(outcome.as_str()),
                Err(failed) => failed.span_name(),
            } {
                tracing::Span::current().record("outcome", name);
            }
            done.map_err(Failed::into_error)
        };
        call.instrument(span).await
    }

    fn resolve_ttl(&self, operation: &str, ttl: Option<Duration>) -> Result<Duration> {
        let ttl = self.inner.operation_ttls.get(operation).copied().or(ttl);
        self.inner.policy.resolve_ttl(ttl)
    }

    /// Refuses a record made for another request (both fingerprints present and
    /// different), counting the key reuse.
    pub(crate) fn check_fingerprint(
        &self,
        record: &IdempotencyRecord,
        given: Option<&str>,
    ) -> Result<()> {
        match (record.fingerprint(), given) {
            (Some(stored), Some(given)) if stored != given => {
                self.inner
                    .metrics
                    .record_error(record.operation(), ErrorType::KeyReuse);
                tracing::warn!("idempotency key reused for a different request");
                Err(IdempotencyError::KeyReuse {
                    operation: record.operation().to_owned(),
                    key: record.idempotency_key().to_owned(),
                    stored: stored.to_owned(),
                    given: given.to_owned(),
                })
            }
            _ => Ok(()),
        }
    }

    /// The stored result of a finished record, decoded: the value, or the stored error
    /// of an earlier run. A result this call cannot decode is an error (counted), never a
    /// reason to run the action again: it ran once already.
    pub(crate) fn replay<T, E>(
        &self,
        record: &IdempotencyRecord,
        codec: &impl Codec<T, E>,
    ) -> std::result::Result<T, Failed<E>> {
        let decoded = if record.is_stored_error() {
            if let Some(reason) = idempotency_core::unstorable_reason(record.result()) {
                self.inner
                    .metrics
                    .record_error(record.operation(), ErrorType::Decode);
                return Err(Failed::Library(IdempotencyError::ResultNotStorable {
                    operation: record.operation().to_owned(),
                    key: record.idempotency_key().to_owned(),
                    reason,
                }));
            }
            codec.decode_error(record.result()).map(Err)
        } else {
            codec.decode_value(record.result()).map(Ok)
        };
        match decoded {
            Ok(replayed) => {
                self.inner.metrics.record_hit(record.operation());
                tracing::debug!("idempotency hit: replaying the stored result");
                replayed.map_err(Failed::Replayed)
            }
            Err(e) => {
                self.inner
                    .metrics
                    .record_error(record.operation(), ErrorType::Decode);
                tracing::error!(error = %e.log_message(), "stored result cannot be decoded into this call's type");
                Err(Failed::Library(e))
            }
        }
    }

    /// A stored error as it will be written: itself when every client can read it back,
    /// else the marker of a result that could not be stored (the action ran and failed
    /// with an error its policy stores: releasing the key would let a retry run again).
    pub(crate) fn storable_error(&self, operation: &str, stored: Box<RawValue>) -> Box<RawValue> {
        match idempotency_core::check_storable(&stored) {
            Ok(()) => stored,
            Err(e) => {
                self.inner
                    .metrics
                    .record_error(operation, ErrorType::RecordValidation);
                tracing::error!(error = %e.log_message(), "the stored error cannot be stored; retries get an error, the action does not run again");
                idempotency_core::unstorable_marker(&e.to_string())
            }
        }
    }

    /// The stored form of a result, or why it has none (reported and counted): the
    /// adapter cannot encode it, or the record holding it would not read back (see
    /// [`idempotency_core::check_storable`]). The action has run by then: the caller gets
    /// its value, and the key keeps the fact that the result could not be stored, so no
    /// retry runs the action again.
    pub(crate) fn encode<T, E>(
        &self,
        operation: &str,
        codec: &impl Codec<T, E>,
        value: &T,
    ) -> std::result::Result<Box<RawValue>, String> {
        let checked = codec
            .encode_value(value)
            .and_then(|raw| idempotency_core::check_storable(&raw).map(|()| raw));
        checked.map_err(|e| {
            self.inner
                .metrics
                .record_error(operation, ErrorType::RecordValidation);
            tracing::error!(error = %e.log_message(), "the result cannot be stored; retries get an error, the action does not run again");
            e.to_string()
        })
    }
}

impl<S: ReservationStore> Coordinator<S> {
    /// Drains the detached calls (`run_detached`, the HTTP layer's handlers) before a
    /// shutdown: new detached calls are refused at once with
    /// [`IdempotencyError::Cancelled`](crate::IdempotencyError::Cancelled) (a 503: retry
    /// elsewhere), the running ones get until `deadline` to finish and store their
    /// results, and those still running then are cut while the runtime still runs, so
    /// their reservations are released (awaited for up to 2 s) instead of staying pending
    /// for a lease. Attached calls (`run`) are not affected: they end with their callers.
    ///
    /// Call it after the server stopped taking requests (axum's graceful shutdown) and
    /// before the runtime ends. Clones of the coordinator share the drain.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use idempotency_coordinator::{Coordinator, IdempotencyError};
    /// let coordinator = Coordinator::in_memory();
    /// let drained = coordinator.drain(std::time::Duration::from_secs(10)).await;
    /// assert_eq!(drained.cut, 0);
    /// let refused = coordinator
    ///     .call("mail.send", Some("k"))
    ///     .run_detached(|| async { Ok::<_, IdempotencyError>(1) })
    ///     .await;
    /// assert!(matches!(refused, Err(IdempotencyError::Cancelled { .. })));
    /// # }
    /// ```
    pub fn drain(
        &self,
        deadline: Duration,
    ) -> impl std::future::Future<Output = crate::drain::Drained> + Send + 'static {
        let detached = Arc::clone(&self.inner.detached);
        async move { detached.drain(deadline).await }
    }
}
