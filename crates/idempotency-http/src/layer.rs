//! The layer and its builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderName, Method, StatusCode};
use idempotency_coordinator::{
    Coordinator, CoordinatorBuilder, IdempotencyError, InFlight, OnStorageError, ReservationStore,
};
use tower_layer::Layer;

use crate::config::{Config, KeyRequirement, LayerStats, StorageDown, WhileInFlight};
use crate::decision::HttpIdempotency;
use crate::fingerprint::FingerprintBy;
use crate::scope::ClientScope;
use crate::service::IdempotencyService;

/// A tower [`Layer`] honouring the `Idempotency-Key` header: the first request with a
/// key runs the inner service (to completion, even if the client goes away) and its
/// response is stored; retries get that response replayed with `Idempotent-Replayed:
/// true`.
///
/// # Examples
/// ```
/// # fn main() -> Result<(), idempotency_coordinator::IdempotencyError> {
/// use idempotency_http::{IdempotencyLayer, KeyRequirement};
///
/// let layer = IdempotencyLayer::builder(idempotency_coordinator::MemoryStore::new())
///     .with_key_requirement(KeyRequirement::Required)
///     .build()?;
/// // axum: Router::new().route("/orders", post(create)).layer(layer)
/// # drop(layer);
/// # Ok(()) }
/// ```
pub struct IdempotencyLayer<S> {
    coordinator: Coordinator<S>,
    config: Arc<Config>,
}

impl<S> Clone for IdempotencyLayer<S> {
    fn clone(&self) -> Self {
        Self {
            coordinator: self.coordinator.clone(),
            config: Arc::clone(&self.config),
        }
    }
}

impl<S> fmt::Debug for IdempotencyLayer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("coordinator", &self.coordinator)
            .field("config", &self.config)
            .finish()
    }
}

impl<S: ReservationStore> IdempotencyLayer<S> {
    /// A builder over `store`, with the coordinator's defaults for everything the layer
    /// does not set itself (the in-flight and storage-down modes are the layer's).
    pub fn builder(store: S) -> IdempotencyLayerBuilder<S> {
        Self::builder_from(Coordinator::builder(store))
    }

    /// A builder over a configured coordinator builder (metrics, lease, TTL policy);
    /// the layer's in-flight and storage-down modes apply to its calls.
    pub fn builder_from(coordinator: CoordinatorBuilder<S>) -> IdempotencyLayerBuilder<S> {
        IdempotencyLayerBuilder {
            coordinator: Source::Build(Box::new(coordinator)),
            config: Config::default(),
        }
    }

    /// A builder over a coordinator already built, to share it (one store connection,
    /// one set of metrics) between the layers of different routes, each with its own
    /// configuration: the in-flight and storage-down modes, the maximum wait, the TTL
    /// and everything else are per layer (per call on the coordinator).
    ///
    /// # Examples
    /// ```
    /// # fn main() -> Result<(), idempotency_coordinator::IdempotencyError> {
    /// use std::time::Duration;
    /// use idempotency_coordinator::Coordinator;
    /// use idempotency_http::{IdempotencyLayer, WhileInFlight};
    ///
    /// let coordinator = Coordinator::in_memory();
    /// let orders = IdempotencyLayer::on(coordinator.clone()).build()?;
    /// let payments = IdempotencyLayer::on(coordinator)
    ///     .with_in_flight(WhileInFlight::Wait)
    ///     .with_max_wait(Duration::from_secs(5))
    ///     .build()?;
    /// // axum: .route("/orders", post(create).layer(orders))
    /// //       .route("/payments", post(pay).layer(payments))
    /// # drop((orders, payments));
    /// # Ok(()) }
    /// ```
    pub fn on(coordinator: Coordinator<S>) -> IdempotencyLayerBuilder<S> {
        IdempotencyLayerBuilder {
            coordinator: Source::Ready(coordinator),
            config: Config::default(),
        }
    }

    /// The layer's counters.
    pub fn stats(&self) -> Arc<LayerStats> {
        Arc::clone(&self.config.stats)
    }

    /// The coordinator the layer runs on.
    pub fn coordinator(&self) -> &Coordinator<S> {
        &self.coordinator
    }
}

impl<S> IdempotencyLayer<S> {
    /// The layer's decisions without tower: the framework-neutral core its services run
    /// (see [`HttpIdempotency`]), for a handler of another framework.
    pub fn decisions(&self) -> HttpIdempotency<S> {
        HttpIdempotency::new(self.coordinator.clone(), Arc::clone(&self.config))
    }
}

impl<S, I> Layer<I> for IdempotencyLayer<S> {
    type Service = IdempotencyService<I, S>;

    fn layer(&self, inner: I) -> Self::Service {
        IdempotencyService::new(inner, self.decisions())
    }
}

/// Where the layer's coordinator comes from.
enum Source<S> {
    /// Built by the layer (boxed: a builder is large, and built once).
    Build(Box<CoordinatorBuilder<S>>),
    /// Given, possibly shared with other layers.
    Ready(Coordinator<S>),
}

/// Configures an [`IdempotencyLayer`]; finish with [`IdempotencyLayerBuilder::build`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct IdempotencyLayerBuilder<S> {
    coordinator: Source<S>,
    config: Config,
}

impl<S> fmt::Debug for IdempotencyLayerBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayerBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S: ReservationStore> IdempotencyLayerBuilder<S> {
    /// The request header carrying the key (default `Idempotency-Key`).
    pub fn with_key_header(mut self, name: HeaderName) -> Self {
        self.config.key_header = name;
        self
    }

    /// The response header marking a replay (default `Idempotent-Replayed`).
    pub fn with_replayed_header(mut self, name: HeaderName) -> Self {
        self.config.replayed_header = name;
        self
    }

    /// The longest key accepted, in characters (default 255).
    pub fn with_max_key_chars(mut self, max: usize) -> Self {
        self.config.max_key_chars = max;
        self
    }

    /// The methods the layer covers (default POST and PATCH); other requests pass through.
    pub fn with_methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.config.methods = methods.into_iter().collect();
        self
    }

    /// Whether a covered request must carry a key (default optional).
    pub fn with_key_requirement(mut self, requirement: KeyRequirement) -> Self {
        self.config.requirement = requirement;
        self
    }

    /// A fixed route for the operation (for a layer on one route) instead of axum's
    /// `MatchedPath` or the URI path; the method is still part of the operation.
    pub fn with_route(mut self, route: impl Into<String>) -> Self {
        self.config.operation = Some(route.into());
        self
    }

    /// The tenant of a request (for example from an authentication extension): keys of
    /// different tenants never meet. `None` is a tenant of its own. Replaces the default
    /// scope by credentials.
    pub fn with_tenant(
        mut self,
        tenant: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.config.scope = ClientScope::Tenant(Arc::new(tenant));
        self
    }

    /// Cookies that carry the client's session: with the default scope by credentials,
    /// their values (with `Authorization`) decide whose key space a request is in. Name
    /// the session cookie of a cookie-authenticated API here (or use
    /// [`with_tenant`](Self::with_tenant)); other cookies (analytics, preferences) must
    /// stay out, or a retry whose cookie changed would get a key space of its own.
    pub fn with_session_cookies(
        mut self,
        names: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.config.scope = ClientScope::Credentials {
            cookies: names.into_iter().map(Into::into).collect(),
        };
        self
    }

    /// One key space for every client of a route: only for APIs with no credentials at
    /// all (any client can then replay another's response and probe its keys, which the
    /// IETF draft's "unique per client" keys rely on clients to avoid).
    pub fn with_shared_key_space(mut self) -> Self {
        self.config.scope = ClientScope::Shared;
        self
    }

    /// Request headers that are part of the fingerprint (default `Content-Type`).
    pub fn with_fingerprint_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.config.fingerprint_headers = names.into_iter().collect();
        self
    }

    /// Fingerprints JSON bodies by these members only (JSON pointers, RFC 6901, such as
    /// `/amount` or `/to/iban`), compared as JSON values: another key order, spacing or
    /// other members do not make a different request, a changed selected member does
    /// (422). A missing member counts as `null`; a body that is not JSON is compared
    /// whole. Method and route are part of the key's scope either way.
    ///
    /// # Examples
    /// ```
    /// # fn main() -> Result<(), idempotency_coordinator::IdempotencyError> {
    /// let layer = idempotency_http::IdempotencyLayer::builder(idempotency_coordinator::MemoryStore::new())
    ///     .with_fingerprint_json_pointers(["/amount", "/currency", "/to/iban"])
    ///     .build()?;
    /// # drop(layer);
    /// # Ok(()) }
    /// ```
    pub fn with_fingerprint_json_pointers(
        mut self,
        pointers: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.config.fingerprint_by =
            FingerprintBy::JsonPointers(pointers.into_iter().map(Into::into).collect());
        self
    }

    /// Fingerprints requests with the application's function over the parts and the
    /// buffered body (two requests with the same key and different strings → 422).
    pub fn with_fingerprint_fn(
        mut self,
        fingerprint: impl Fn(&Parts, &Bytes) -> String + Send + Sync + 'static,
    ) -> Self {
        self.config.fingerprint_by = FingerprintBy::Custom(Arc::new(fingerprint));
        self
    }

    /// The largest request body buffered for the fingerprint (default 1 MiB); larger → 413.
    pub fn with_max_request_body(mut self, bytes: usize) -> Self {
        self.config.max_request_body = bytes;
        self
    }

    /// The largest response body stored (default 1 MiB); a larger one is returned, not
    /// stored, and its key released.
    pub fn with_max_response_body(mut self, bytes: usize) -> Self {
        self.config.max_response_body = bytes;
        self
    }

    /// More response headers never stored nor replayed, added to the default list
    /// ([`DEFAULT_DENY_HEADERS`](crate::DEFAULT_DENY_HEADERS): `Set-Cookie` and the usual credential headers), on
    /// top of hop-by-hop headers, `Date` and any value marked sensitive.
    pub fn with_deny_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        for name in names {
            if !self.config.deny_headers.contains(&name) {
                self.config.deny_headers.push(name);
            }
        }
        self
    }

    /// Replaces the deny list, the default included: `Set-Cookie` and the credential
    /// headers are then stored and replayed unless listed. Only for responses known to
    /// carry no credential.
    pub fn replace_deny_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.config.deny_headers = names.into_iter().collect();
        self
    }

    /// Which responses are stored, by status (default [`store_by_default`](crate::store_by_default)).
    pub fn with_store_policy(
        mut self,
        policy: impl Fn(StatusCode) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.config.store_policy = Arc::new(policy);
        self
    }

    /// `Retry-After` on 409 and 503 (default 1 s; whole seconds, at least 1).
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.config.retry_after = after;
        self
    }

    /// The base of problem `type` URIs (default [`DEFAULT_PROBLEM_BASE`](crate::DEFAULT_PROBLEM_BASE)).
    pub fn with_problem_base(mut self, base: impl Into<String>) -> Self {
        self.config.problem_base = base.into();
        self
    }

    /// How long a stored response is replayed (default: the coordinator's TTL policy).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.config.ttl = Some(ttl);
        self
    }

    /// What a duplicate gets while the first request is in flight (default 409).
    pub fn with_in_flight(mut self, mode: WhileInFlight) -> Self {
        self.config.in_flight = match mode {
            WhileInFlight::Conflict => InFlight::Raise,
            WhileInFlight::Wait => InFlight::Wait,
        };
        self
    }

    /// How long a duplicate waits in [`WhileInFlight::Wait`] before its 409 (default:
    /// the coordinator's lease). Keep it under the clients' and proxies' timeouts.
    pub fn with_max_wait(mut self, max_wait: Duration) -> Self {
        self.config.max_wait = Some(max_wait);
        self
    }

    /// What a request gets when the store is down (default fail closed: 503).
    pub fn with_storage_down(mut self, mode: StorageDown) -> Self {
        self.config.on_storage_error = match mode {
            StorageDown::FailClosed => OnStorageError::Raise,
            StorageDown::FailOpen => OnStorageError::Run,
        };
        self
    }

    /// Builds the layer (and its coordinator, unless it was given one).
    ///
    /// # Errors
    /// The coordinator's configuration errors.
    pub fn build(self) -> Result<IdempotencyLayer<S>, IdempotencyError> {
        let coordinator = match self.coordinator {
            Source::Build(builder) => builder.build()?,
            Source::Ready(coordinator) => coordinator,
        };
        Ok(IdempotencyLayer {
            coordinator,
            config: Arc::new(self.config),
        })
    }
}
