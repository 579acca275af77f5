//! The coordinator: one action per key, its result replayed to every retry.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use idempotency_core::{
    Claim, Fence, IdempotencyDomainService, IdempotencyError, IdempotencyMetrics,
    IdempotencyRecord, KeyWatch, Lease, MemoryStore, NoopMetrics, ReservationStore, Result,
    ResultAdapter, error_type, validate_identifiers,
};
use tracing::Instrument;

use crate::call::Call;
use crate::lease::{ReleaseGuard, run_renewing};
use crate::modes::{InFlight, OnStorageError};
use crate::settings::IdempotencySettings;

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
/// # async fn main() -> Result<(), idempotency_core::IdempotencyError> {
/// use idempotency_coordinator::Coordinator;
///
/// let coordinator = Coordinator::in_memory();
/// let first: u32 = coordinator.call("order.create", Some("key-1")).run(|| async { Ok::<_, idempotency_core::IdempotencyError>(42) }).await?;
/// let retry: u32 = coordinator.call("order.create", Some("key-1")).run(|| async { Ok::<_, idempotency_core::IdempotencyError>(7) }).await?;
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
}

/// Builds a [`Coordinator`].
#[derive(Debug)]
pub struct CoordinatorBuilder<S> {
    store: S,
    policy: IdempotencyDomainService,
    metrics: Arc<dyn IdempotencyMetrics>,
    settings: IdempotencySettings,
    safety_poll: Duration,
}

impl<S: ReservationStore> CoordinatorBuilder<S> {
    /// The metrics collector (default: none).
    #[must_use]
    pub fn metrics(mut self, metrics: Arc<dyn IdempotencyMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The TTL policy (default: 30 minutes in 60 s to 24 h).
    #[must_use]
    pub fn policy(mut self, policy: IdempotencyDomainService) -> Self {
        self.policy = policy;
        self.settings.default_ttl_minutes = policy.default_ttl().as_secs() / 60;
        self.settings.min_ttl_seconds = policy.min_ttl().as_secs();
        self.settings.max_ttl_seconds = policy.max_ttl().as_secs();
        self
    }

    /// Turns the coordinator on or off (off: every call just runs its action).
    #[must_use]
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.settings.enabled = enabled;
        self
    }

    /// What concurrent duplicates get (default [`InFlight::Wait`]).
    #[must_use]
    pub fn in_flight(mut self, mode: InFlight) -> Self {
        self.settings.in_flight = mode;
        self
    }

    /// The reservation lease in whole seconds (default 30; at least 1).
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.settings.in_flight_lease_seconds = lease.as_secs();
        self
    }

    /// What a call gets when the store fails before the action (default run).
    #[must_use]
    pub fn on_storage_error(mut self, mode: OnStorageError) -> Self {
        self.settings.on_storage_error = mode;
        self
    }

    /// A per-operation TTL that wins over the call's.
    #[must_use]
    pub fn operation_ttl(mut self, operation: impl Into<String>, ttl: Duration) -> Self {
        self.settings
            .operation_ttls
            .insert(operation.into(), ttl.as_secs());
        self
    }

    /// How often a waiter re-reads the key when no wake-up arrives (default 250 ms).
    #[must_use]
    pub fn wait_safety_poll(mut self, interval: Duration) -> Self {
        self.safety_poll = interval.max(Duration::from_millis(1));
        self
    }

    /// Takes every setting from `settings` (the key prefix and metrics switch belong to
    /// the store and the wiring).
    #[must_use]
    pub fn settings(mut self, settings: &IdempotencySettings) -> Self {
        self.settings = settings.clone();
        if let Ok(policy) = settings.domain_service() {
            self.policy = policy;
        }
        self
    }

    /// The coordinator.
    ///
    /// # Errors
    /// [`IdempotencyError::Validation`] listing every invalid setting.
    pub fn build(self) -> Result<Coordinator<S>> {
        self.settings.validate()?;
        Ok(self.build_unchecked())
    }

    /// Builds without validating: for settings known to be valid (the defaults).
    fn build_unchecked(self) -> Coordinator<S> {
        let s = self.settings;
        Coordinator {
            inner: Arc::new(Inner {
                store: self.store,
                policy: self.policy,
                metrics: self.metrics,
                enabled: s.enabled,
                in_flight: s.in_flight,
                lease: Duration::from_secs(s.in_flight_lease_seconds),
                on_storage_error: s.on_storage_error,
                operation_ttls: s
                    .operation_ttls
                    .into_iter()
                    .map(|(k, v)| (k, Duration::from_secs(v)))
                    .collect(),
                safety_poll: self.safety_poll,
            }),
        }
    }
}

impl Coordinator<MemoryStore> {
    /// A coordinator on a fresh in-memory store with default settings: the embedded
    /// default for tests and single-process services.
    pub fn in_memory() -> Self {
        Coordinator::builder(MemoryStore::new()).build_unchecked()
    }
}

/// What the claim step decided.
enum Step<T> {
    /// A stored result, decoded.
    Hit(T),
    /// The key is ours: run under the lease.
    Owned(Lease),
    /// Run without a reservation; `replace_after` when a record nobody can use sits
    /// under the key and the result should take its place.
    Unprotected { replace_after: bool },
}

impl<S: ReservationStore> Coordinator<S> {
    /// A builder over `store` with default settings.
    pub fn builder(store: S) -> CoordinatorBuilder<S> {
        CoordinatorBuilder {
            store,
            policy: IdempotencyDomainService::default(),
            metrics: Arc::new(NoopMetrics),
            settings: IdempotencySettings::default(),
            safety_poll: WAIT_SAFETY_POLL,
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// Starts a call: `operation`, and the idempotency key (`None`: no idempotency, the
    /// action just runs).
    pub fn call<'a>(&'a self, operation: &'a str, key: Option<&'a str>) -> Call<'a, S> {
        Call::new(self, operation, key)
    }

    /// Runs `action` at most once per `(operation, key)`, the primitive behind
    /// [`Coordinator::call`].
    ///
    /// # Errors
    /// The action's error; or, converted into `E`: validation of the identifiers or of
    /// the TTL, [`IdempotencyError::InProgress`], [`IdempotencyError::KeyReuse`], and the
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
        let Some(key) = key.filter(|_| self.inner.enabled) else {
            return action().await;
        };
        let (operation, key) = validate_identifiers(operation, key)?;
        let ttl = self.resolve_ttl(operation, options.ttl)?;
        let span = tracing::info_span!("idempotency", operation);
        async move {
            if self.inner.in_flight == InFlight::Run {
                return self
                    .execute_unreserved(operation, key, ttl, options, adapter, action)
                    .await;
            }
            match self
                .claim(operation, key, options.fingerprint.as_deref(), adapter)
                .await?
            {
                Step::Hit(value) => Ok(value),
                Step::Owned(lease) => self.run_owned(lease, ttl, adapter, action).await,
                Step::Unprotected { replace_after } => {
                    let value = action().await?;
                    if replace_after {
                        self.store_unreserved(operation, key, ttl, options, adapter, &value, true)
                            .await;
                    }
                    Ok(value)
                }
            }
        }
        .instrument(span)
        .await
    }

    fn resolve_ttl(&self, operation: &str, ttl: Option<Duration>) -> Result<Duration> {
        let ttl = self.inner.operation_ttls.get(operation).copied().or(ttl);
        self.inner.policy.resolve_ttl(ttl)
    }

    fn check_fingerprint(&self, record: &IdempotencyRecord, given: Option<&str>) -> Result<()> {
        match (record.fingerprint(), given) {
            (Some(stored), Some(given)) if stored != given => {
                self.inner
                    .metrics
                    .record_error(record.operation(), error_type::KEY_REUSE);
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

    /// Reserves the key, replays what holds it, or waits for the caller that holds it.
    async fn claim<T, A: ResultAdapter<T>>(
        &self,
        operation: &str,
        key: &str,
        fingerprint: Option<&str>,
        adapter: &A,
    ) -> Result<Step<T>> {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.lease;
        let mut waiting = false;
        let mut watch: Option<Option<S::Watch>> = None;
        loop {
            let started = Instant::now();
            let claimed = inner
                .store
                .claim(operation, key, inner.lease, fingerprint)
                .await;
            inner
                .metrics
                .record_latency(operation, "reserve", started.elapsed().as_secs_f64());
            let record = match claimed {
                Ok(Claim::Acquired(lease)) => {
                    if !waiting {
                        inner.metrics.record_miss(operation);
                    }
                    tracing::debug!(key, "idempotency miss: running the action");
                    return Ok(Step::Owned(lease));
                }
                Ok(Claim::Found(record)) => record,
                Err(e) if e.is_storage() => {
                    inner
                        .metrics
                        .record_error(operation, error_type::STORAGE_RESERVE);
                    tracing::warn!(error = %e, "idempotency storage failed before the action");
                    return match inner.on_storage_error {
                        OnStorageError::Raise => Err(e),
                        OnStorageError::Run => Ok(Step::Unprotected {
                            replace_after: false,
                        }),
                    };
                }
                Err(e) if e.class() == idempotency_core::ErrorClass::Data => {
                    // A record nobody can read: the action runs and its result replaces it.
                    inner
                        .metrics
                        .record_error(operation, error_type::STORAGE_GET);
                    tracing::warn!(error = %e, "unreadable idempotency record; running the action");
                    return Ok(Step::Unprotected {
                        replace_after: true,
                    });
                }
                Err(e) => return Err(e),
            };
            // Before the pending check on purpose: a waiter with another payload is
            // refused now rather than handed someone else's result later.
            self.check_fingerprint(&record, fingerprint)?;
            if !record.is_pending() {
                return Ok(match adapter.decode(record.result()) {
                    Ok(value) => {
                        inner.metrics.record_hit(operation);
                        tracing::debug!(key, "idempotency hit: replaying the stored result");
                        Step::Hit(value)
                    }
                    Err(e) => {
                        inner.metrics.record_error(operation, error_type::DECODE);
                        tracing::warn!(error = %e, "stored result cannot be decoded; running the action");
                        Step::Unprotected {
                            replace_after: true,
                        }
                    }
                });
            }
            if !waiting {
                waiting = true;
                inner.metrics.record_collision(operation);
                tracing::info!(in_flight = ?inner.in_flight, "idempotency key in flight");
            }
            if inner.in_flight == InFlight::Raise {
                return Err(IdempotencyError::in_progress(operation, key));
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(
                    "idempotency key still in flight after a whole lease; refusing the call"
                );
                return Err(IdempotencyError::in_progress(operation, key));
            }
            match &mut watch {
                // First sight of the reservation: subscribe, then look again at once, so a
                // completion between our claim and the subscription is not missed.
                None => {
                    watch = Some(Box::pin(inner.store.watch(operation, key)).await.ok());
                }
                Some(Some(w)) => {
                    w.changed((deadline - now).min(inner.safety_poll)).await;
                }
                // No subscription could be made: poll.
                Some(None) => tokio::time::sleep((deadline - now).min(inner.safety_poll)).await,
            }
        }
    }

    /// Runs the action under our lease, then completes or releases the reservation.
    async fn run_owned<T, E, A, F, Fut>(
        &self,
        lease: Lease,
        ttl: Duration,
        adapter: &A,
        action: F,
    ) -> std::result::Result<T, E>
    where
        A: ResultAdapter<T>,
        E: From<IdempotencyError>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
    {
        // Invariant: from here until the guard is disarmed, dropping this future (a
        // client disconnect, a timeout) releases the reservation, so a retry does not wait
        // out the lease. The guard is disarmed only after the last write of this call.
        let mut guard = ReleaseGuard::new(Arc::clone(&self.inner), lease);
        let (outcome, lost) = run_renewing(&self.inner, guard.lease(), action()).await;
        let lease = guard.lease();
        match outcome {
            Err(e) => {
                // Failures are not cached: free the key so the retry runs again.
                self.release(lease).await;
                guard.disarm();
                Err(e)
            }
            Ok(value) => {
                if !self.complete(lease, ttl, adapter, &value, lost).await {
                    self.release(lease).await;
                }
                guard.disarm();
                Ok(value)
            }
        }
    }

    /// Stores the result over our reservation; `false` when nothing was stored and the
    /// reservation should go.
    async fn complete<T, A: ResultAdapter<T>>(
        &self,
        lease: &Lease,
        ttl: Duration,
        adapter: &A,
        value: &T,
        lost_already: bool,
    ) -> bool {
        let inner = &self.inner;
        let operation = lease.operation();
        let Some(record) = self.record_of(
            operation,
            lease.key(),
            ttl,
            lease.fingerprint(),
            adapter,
            value,
        ) else {
            return false;
        };
        let started = Instant::now();
        let outcome = inner.store.complete(lease, &record).await;
        inner
            .metrics
            .record_latency(operation, "save", started.elapsed().as_secs_f64());
        match outcome {
            Ok(Fence::Held) => true,
            Ok(Fence::Lost) => {
                // One loss, counted once per call (the renewal may have seen it first).
                if !lost_already {
                    inner
                        .metrics
                        .record_error(operation, error_type::LEASE_LOST);
                }
                tracing::warn!(
                    "reservation was taken over before completion; the newer record stands"
                );
                true
            }
            Err(e) => {
                inner
                    .metrics
                    .record_error(operation, error_type::STORAGE_SAVE);
                tracing::warn!(error = %e, "could not store the result");
                false
            }
        }
    }

    /// The completed record of a result, or `None` (reported and counted) when the
    /// adapter cannot encode it or the TTL is refused. The action has run by then:
    /// raising would make the caller retry a completed operation, so the value is
    /// returned uncached instead.
    fn record_of<T, A: ResultAdapter<T>>(
        &self,
        operation: &str,
        key: &str,
        ttl: Duration,
        fingerprint: Option<&str>,
        adapter: &A,
        value: &T,
    ) -> Option<IdempotencyRecord> {
        let record = adapter.encode(value).and_then(|raw| {
            self.inner
                .policy
                .create_record_raw(operation, key, raw, Some(ttl), fingerprint)
        });
        match record {
            Ok(record) => Some(record),
            Err(e) => {
                self.inner
                    .metrics
                    .record_error(operation, error_type::RECORD_VALIDATION);
                tracing::error!(error = %e, "result cannot be stored; this call is not cached");
                None
            }
        }
    }

    async fn release(&self, lease: &Lease) {
        // Boxed: the failure path should not grow every call's future.
        if let Err(e) = Box::pin(self.inner.store.release(lease)).await {
            self.inner
                .metrics
                .record_error(lease.operation(), error_type::STORAGE_RELEASE);
            tracing::warn!(error = %e, "could not release the reservation; it expires with its lease");
        }
    }

    /// The flow without reservations ([`InFlight::Run`]).
    async fn execute_unreserved<T, E, A, F, Fut>(
        &self,
        operation: &str,
        key: &str,
        ttl: Duration,
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
        let inner = &self.inner;
        let started = Instant::now();
        let read = inner.store.get(operation, key).await;
        inner
            .metrics
            .record_latency(operation, "get", started.elapsed().as_secs_f64());
        match read {
            Ok(Some(record)) => {
                self.check_fingerprint(&record, options.fingerprint.as_deref())?;
                if !record.is_pending() {
                    match adapter.decode(record.result()) {
                        Ok(value) => {
                            inner.metrics.record_hit(operation);
                            return Ok(value);
                        }
                        Err(_) => inner.metrics.record_error(operation, error_type::DECODE),
                    }
                }
            }
            Ok(None) => inner.metrics.record_miss(operation),
            Err(e) => {
                inner
                    .metrics
                    .record_error(operation, error_type::STORAGE_GET);
                if e.is_storage() && inner.on_storage_error == OnStorageError::Raise {
                    return Err(e.into());
                }
            }
        }
        let value = action().await?;
        Ok(self
            .store_unreserved(operation, key, ttl, options, adapter, &value, false)
            .await
            .unwrap_or(value))
    }

    /// Stores a result without a reservation: insert-if-absent (returning the winner's
    /// value on a collision) or, with `replace`, over whatever is there.
    #[allow(clippy::too_many_arguments)]
    async fn store_unreserved<T, A: ResultAdapter<T>>(
        &self,
        operation: &str,
        key: &str,
        ttl: Duration,
        options: &CallOptions,
        adapter: &A,
        value: &T,
        replace: bool,
    ) -> Option<T> {
        let inner = &self.inner;
        let fingerprint = options.fingerprint.as_deref();
        let record = self.record_of(operation, key, ttl, fingerprint, adapter, value)?;
        let started = Instant::now();
        let written = if replace {
            inner.store.replace(&record).await
        } else {
            inner.store.save(&record).await
        };
        inner
            .metrics
            .record_latency(operation, "save", started.elapsed().as_secs_f64());
        match written {
            Ok(()) => None,
            Err(e) if e.is_collision() => {
                inner.metrics.record_collision(operation);
                let winner = inner.store.get(operation, key).await.ok().flatten()?;
                if self.check_fingerprint(&winner, fingerprint).is_err() || winner.is_pending() {
                    return None;
                }
                adapter.decode(winner.result()).ok()
            }
            Err(e) => {
                inner
                    .metrics
                    .record_error(operation, error_type::STORAGE_SAVE);
                tracing::warn!(error = %e, "could not store the result");
                None
            }
        }
    }
}
