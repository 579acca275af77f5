//! Building a [`Coordinator`]: store, policy, metrics, modes, clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use idempotency_core::constants::{MAX_IN_FLIGHT_LEASE, MIN_IN_FLIGHT_LEASE};
use idempotency_core::{
    Clock, FieldProblem, IdempotencyDomainService, IdempotencyError, IdempotencyMetrics,
    MemoryStore, NoopMetrics, ReservationStore, Result,
};

use crate::coalesce::Coalescer;

/// Detached calls in flight on one coordinator, by default.
pub const DEFAULT_MAX_DETACHED: usize = 1024;
use crate::coordinator::{Coordinator, Inner, WAIT_SAFETY_POLL};
use crate::hook::{RecordCreated, RecordCreatedHook};
use crate::modes::{InFlight, OnStorageError};
use crate::settings::{IdempotencySettings, operation_ttl_problems};

/// Builds a [`Coordinator`].
///
/// # Examples
/// ```
/// # fn main() -> Result<(), idempotency_coordinator::IdempotencyError> {
/// use std::time::Duration;
/// use idempotency_coordinator::{Coordinator, InFlight, MemoryStore};
/// use idempotency_coordinator::IdempotencyDomainService;
/// let policy = IdempotencyDomainService::new(Duration::from_secs(30), Duration::from_secs(1), Duration::from_secs(600))?;
/// let coordinator = Coordinator::builder(MemoryStore::new())
///     .policy(policy)
///     .in_flight(InFlight::Raise)
///     .lease(Duration::from_millis(1500))
///     .build()?;
/// # let _ = coordinator;
/// # Ok(()) }
/// ```
pub struct CoordinatorBuilder<S> {
    store: S,
    policy: IdempotencyDomainService,
    metrics: Arc<dyn IdempotencyMetrics>,
    settings: IdempotencySettings,
    // Set by `lease()`; wins over the settings' whole seconds.
    lease: Option<Duration>,
    // Set by `operation_ttl()`, exactly; each wins over the settings' whole seconds.
    operation_ttls: HashMap<String, Duration>,
    // Whether `policy()` set the policy after the settings (then it is the one TTL
    // bounds are checked against).
    policy_given: bool,
    safety_poll: Duration,
    clock: Clock,
    on_record_created: Option<Arc<RecordCreatedHook>>,
    coalesce: bool,
    max_detached: usize,
}

impl<S: std::fmt::Debug> std::fmt::Debug for CoordinatorBuilder<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorBuilder")
            .field("store", &self.store)
            .field("policy", &self.policy)
            .field("settings", &self.settings)
            .field("lease", &self.lease)
            .field("on_record_created", &self.on_record_created.is_some())
            .field("coalesce", &self.coalesce)
            .finish_non_exhaustive()
    }
}

impl<S: ReservationStore> Coordinator<S> {
    /// A builder over `store` with default settings.
    pub fn builder(store: S) -> CoordinatorBuilder<S> {
        CoordinatorBuilder::new(store)
    }
}

impl<S: ReservationStore> CoordinatorBuilder<S> {
    fn new(store: S) -> Self {
        Self {
            store,
            policy: IdempotencyDomainService::default(),
            metrics: Arc::new(NoopMetrics),
            settings: IdempotencySettings::default(),
            lease: None,
            operation_ttls: HashMap::new(),
            policy_given: false,
            safety_poll: WAIT_SAFETY_POLL,
            clock: Clock::system(),
            on_record_created: None,
            coalesce: false,
            max_detached: DEFAULT_MAX_DETACHED,
        }
    }

    /// The metrics collector (default: none).
    #[must_use]
    pub fn metrics(mut self, metrics: Arc<dyn IdempotencyMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Calls `hook` whenever a call of this coordinator stores a record (see
    /// [`RecordCreated`]).
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), idempotency_coordinator::IdempotencyError> {
    /// use idempotency_coordinator::{Coordinator, MemoryStore};
    ///
    /// let (seen, created) = std::sync::mpsc::channel();
    /// let coordinator = Coordinator::builder(MemoryStore::new())
    ///     .on_record_created(move |r| {
    ///         let _ = seen.send(r.idempotency_key.to_owned());
    ///     })
    ///     .build()?;
    /// let run = || async { Ok::<_, idempotency_coordinator::IdempotencyError>(1u8) };
    /// coordinator.call("op", Some("k-1")).run(run).await?;
    /// coordinator.call("op", Some("k-1")).run(run).await?; // a replay stores nothing
    /// assert_eq!(created.try_iter().collect::<Vec<_>>(), ["k-1"]);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn on_record_created(
        mut self,
        hook: impl Fn(&RecordCreated<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.on_record_created = Some(Arc::new(hook));
        self
    }

    /// The TTL policy (default: 30 minutes in 60 s to 24 h), kept exactly as given (a
    /// later [`CoordinatorBuilder::settings`] replaces it with the settings' policy).
    #[must_use]
    pub fn policy(mut self, policy: IdempotencyDomainService) -> Self {
        self.policy = policy;
        self.policy_given = true;
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

    /// The reservation lease (default 30 s), to the millisecond; [`build`](Self::build)
    /// refuses one under 1 s.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// What a call gets when the store fails before the action (default run).
    #[must_use]
    pub fn on_storage_error(mut self, mode: OnStorageError) -> Self {
        self.settings.on_storage_error = mode;
        self
    }

    /// A per-operation TTL that wins over the call's, kept exactly as given (1.5 s stays
    /// 1.5 s); [`build`](Self::build) refuses one outside the policy's TTL bounds. A
    /// later [`CoordinatorBuilder::settings`] replaces it with the settings' own.
    #[must_use]
    pub fn operation_ttl(mut self, operation: impl Into<String>, ttl: Duration) -> Self {
        self.operation_ttls.insert(operation.into(), ttl);
        self
    }

    /// At most `max` detached calls (`run_detached`, the HTTP layer's handlers) in flight
    /// at once on this coordinator and its clones (default 1024). A detached call keeps
    /// running after its caller leaves, so outer timeouts and concurrency limits do not
    /// bound it: without this bound, clients that send requests and hang up could pile up
    /// work without end. Past it a call is refused at once with
    /// [`IdempotencyError::Overloaded`](crate::IdempotencyError::Overloaded) (a 503), its
    /// action not run.
    #[must_use]
    pub fn max_detached(mut self, max: usize) -> Self {
        self.max_detached = max.max(1);
        self
    }

    /// Whether concurrent calls for the same `(operation, key)` in this process share one
    /// store claim (default: off). The first caller claims; the others wait in memory for
    /// its outcome and replay it (each decoding with its own adapter), or one of them
    /// claims when the first gives up the key; each keeps its own in-flight mode, maximum
    /// wait and fingerprint check. It costs an uncontended call about 0.1 µs (a lookup
    /// before the claim) and saves every duplicate's round trips: turn it on where bursts
    /// of duplicates hit one process (retry storms, redelivered batches, hot keys). See
    /// `docs/coordinator.md`, *In-process coalescing*.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), idempotency_coordinator::IdempotencyError> {
    /// use idempotency_coordinator::{Coordinator, MemoryStore, Outcome};
    ///
    /// let coordinator = Coordinator::builder(MemoryStore::new()).coalesce(true).build()?;
    /// let slow = || async {
    ///     tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    ///     Ok::<_, idempotency_coordinator::IdempotencyError>(7u8)
    /// };
    /// let first = coordinator.call("op", Some("k")).run_with_outcome(slow);
    /// let second = coordinator.call("op", Some("k")).run_with_outcome(slow);
    /// let (a, b) = tokio::join!(first, second);
    /// assert_eq!((a?.1, b?.1), (Outcome::Executed, Outcome::WaitedThenReplayed));
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn coalesce(mut self, on: bool) -> Self {
        self.coalesce = on;
        self
    }

    /// How often a waiter re-reads the key when no wake-up arrives (default 250 ms).
    #[must_use]
    pub fn wait_safety_poll(mut self, interval: Duration) -> Self {
        self.safety_poll = interval.max(Duration::from_millis(1));
        self
    }

    /// The wall clock records are stamped with (default: the system clock). Only the
    /// timestamps inside records depend on it: no client clock decides liveness.
    #[must_use]
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Takes every setting from `settings` (the key prefix and metrics switch belong to
    /// the store and the wiring), the TTL policy and the lease included.
    #[must_use]
    pub fn settings(mut self, settings: &IdempotencySettings) -> Self {
        self.settings = settings.clone();
        self.coalesce = settings.coalesce;
        self.lease = None;
        self.operation_ttls.clear();
        self.policy_given = false;
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
        // One source of truth for TTL bounds: the policy the coordinator will use (the
        // settings' own TTL fields only when they are that policy).
        let mut problems = if self.policy_given {
            self.settings
                .operation_ttl_problems(self.policy.min_ttl(), self.policy.max_ttl())
        } else {
            match self.settings.validate() {
                Ok(()) => Vec::new(),
                Err(e) => e
                    .problems()
                    .iter()
                    .filter(|p| p.field != "in_flight_lease_seconds")
                    .cloned()
                    .collect(),
            }
        };
        problems.extend(operation_ttl_problems(
            self.operation_ttls.iter().map(|(op, ttl)| (op, *ttl)),
            self.policy.min_ttl(),
            self.policy.max_ttl(),
        ));
        match self.lease {
            None => problems.extend(self.settings.lease_problems()),
            Some(l) if l < MIN_IN_FLIGHT_LEASE => problems.push(FieldProblem::new(
                "lease",
                "greater_than_equal",
                "must be at least 1 s",
            )),
            Some(l) if l > MAX_IN_FLIGHT_LEASE => problems.push(FieldProblem::new(
                "lease",
                "less_than_equal",
                "must be at most a day",
            )),
            Some(_) => {}
        }
        if !problems.is_empty() {
            return Err(IdempotencyError::validation(problems));
        }
        Ok(self.build_unchecked())
    }

    /// Builds without validating: for settings known to be valid (the defaults).
    fn build_unchecked(self) -> Coordinator<S> {
        let s = self.settings;
        let lease = self.lease.unwrap_or_else(|| s.lease());
        let operation_ttls: HashMap<String, Duration> = s
            .operation_ttls
            .into_iter()
            .map(|(k, v)| (k, Duration::from_secs(v)))
            .chain(self.operation_ttls)
            .collect();
        Coordinator {
            inner: Arc::new(Inner {
                store: self.store,
                policy: self.policy,
                metrics: self.metrics,
                enabled: s.enabled,
                in_flight: s.in_flight,
                lease,
                on_storage_error: s.on_storage_error,
                operation_ttls,
                safety_poll: self.safety_poll,
                clock: self.clock,
                on_record_created: self.on_record_created,
                coalescer: self.coalesce.then(Coalescer::new),
                detached: Arc::new(crate::drain::Detached::new(self.max_detached)),
            }),
        }
    }
}

impl Coordinator<MemoryStore> {
    /// A coordinator on a fresh in-memory store with default settings: the embedded
    /// default for tests and single-process services.
    pub fn in_memory() -> Self {
        CoordinatorBuilder::new(MemoryStore::new()).build_unchecked()
    }
}
