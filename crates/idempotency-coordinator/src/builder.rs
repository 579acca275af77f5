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
    // Only typed fields: `settings()` translates a settings value into them once, and
    // every setter writes the same fields, so the last call wins whatever its kind, and
    // `build` checks one set of values.
    store: S,
    policy: IdempotencyDomainService,
    // Why the policy of the last `settings()` could not be made (then `policy` is the
    // one before); cleared by `policy()`.
    policy_problems: Vec<FieldProblem>,
    // The settings' problems no setter replaces (the key prefix).
    settings_problems: Vec<FieldProblem>,
    metrics: Arc<dyn IdempotencyMetrics>,
    enabled: bool,
    in_flight: InFlight,
    on_storage_error: OnStorageError,
    lease: Duration,
    // The field `lease` came from, for its problems: `lease` or the settings'
    // `in_flight_lease_seconds`.
    lease_field: LeaseField,
    operation_ttls: HashMap<String, Duration>,
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
            .field("enabled", &self.enabled)
            .field("in_flight", &self.in_flight)
            .field("on_storage_error", &self.on_storage_error)
            .field("lease", &self.lease)
            .field("operation_ttls", &self.operation_ttls)
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
        let defaults = IdempotencySettings::default();
        Self {
            store,
            policy: IdempotencyDomainService::default(),
            policy_problems: Vec::new(),
            settings_problems: Vec::new(),
            metrics: Arc::new(NoopMetrics),
            enabled: defaults.enabled,
            in_flight: defaults.in_flight,
            on_storage_error: defaults.on_storage_error,
            lease: defaults.lease(),
            lease_field: LeaseField::Settings,
            operation_ttls: HashMap::new(),
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
        self.policy_problems.clear();
        self
    }

    /// Turns the coordinator on or off (off: every call just runs its action).
    #[must_use]
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// What concurrent duplicates get (default [`InFlight::Wait`]).
    #[must_use]
    pub fn in_flight(mut self, mode: InFlight) -> Self {
        self.in_flight = mode;
        self
    }

    /// The reservation lease (default 30 s), to the millisecond; [`build`](Self::build)
    /// refuses one under 1 s.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self.lease_field = LeaseField::Builder;
        self
    }

    /// What a call gets when the store fails before the action (default run).
    #[must_use]
    pub fn on_storage_error(mut self, mode: OnStorageError) -> Self {
        self.on_storage_error = mode;
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
    /// the store and the wiring), the TTL policy, the lease and the per-operation TTLs
    /// included: each replaces what an earlier call set, and a later setter replaces it.
    /// Invalid settings are reported by [`build`](Self::build), every problem at once.
    #[must_use]
    pub fn settings(mut self, settings: &IdempotencySettings) -> Self {
        self.enabled = settings.enabled;
        self.in_flight = settings.in_flight;
        self.on_storage_error = settings.on_storage_error;
        self.coalesce = settings.coalesce;
        match settings.domain_service() {
            Ok(policy) => {
                self.policy = policy;
                self.policy_problems.clear();
            }
            Err(e) => self.policy_problems = e.problems().to_vec(),
        }
        self.lease = settings.lease();
        self.lease_field = LeaseField::Settings;
        self.operation_ttls = settings
            .operation_ttls
            .iter()
            .map(|(operation, secs)| (operation.clone(), Duration::from_secs(*secs)))
            .collect();
        self.settings_problems = settings.key_prefix_problems();
        self
    }

    /// The coordinator.
    ///
    /// # Errors
    /// [`IdempotencyError::Validation`] listing every invalid setting.
    pub fn build(self) -> Result<Coordinator<S>> {
        let mut problems = self.settings_problems.clone();
        problems.extend(self.policy_problems.iter().cloned());
        // One source of truth for TTL bounds: the policy the coordinator will use.
        problems.extend(operation_ttl_problems(
            self.operation_ttls.iter().map(|(op, ttl)| (op, *ttl)),
            self.policy.min_ttl(),
            self.policy.max_ttl(),
        ));
        problems.extend(self.lease_field.problems(self.lease));
        if !problems.is_empty() {
            return Err(IdempotencyError::validation(problems));
        }
        Ok(self.build_unchecked())
    }

    /// Builds without validating: for settings known to be valid (the defaults).
    fn build_unchecked(self) -> Coordinator<S> {
        Coordinator {
            inner: Arc::new(Inner {
                store: self.store,
                policy: self.policy,
                metrics: self.metrics,
                enabled: self.enabled,
                in_flight: self.in_flight,
                lease: self.lease,
                on_storage_error: self.on_storage_error,
                operation_ttls: self.operation_ttls,
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

/// Where the lease came from, so its problems name the field the user set.
#[derive(Debug, Clone, Copy)]
enum LeaseField {
    /// [`CoordinatorBuilder::lease`], to the millisecond.
    Builder,
    /// The settings' `in_flight_lease_seconds` (or the default).
    Settings,
}

impl LeaseField {
    /// The problems of `lease`: at least 1 s, at most a day.
    fn problems(self, lease: Duration) -> Option<FieldProblem> {
        let (field, low, high) = match self {
            Self::Builder => (
                "lease",
                "must be at least 1 s",
                "must be at most a day".to_owned(),
            ),
            Self::Settings => (
                "in_flight_lease_seconds",
                "must be at least 1",
                format!("must be at most {}", MAX_IN_FLIGHT_LEASE.as_secs()),
            ),
        };
        if lease < MIN_IN_FLIGHT_LEASE {
            Some(FieldProblem::new(field, "greater_than_equal", low))
        } else if lease > MAX_IN_FLIGHT_LEASE {
            Some(FieldProblem::new(field, "less_than_equal", high))
        } else {
            None
        }
    }
}
