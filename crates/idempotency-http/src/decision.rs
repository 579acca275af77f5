//! The framework-neutral core of the layer: request parts in, a decision out. The tower
//! service ([`IdempotencyService`](crate::IdempotencyService)) is one user of it; a
//! handler of another framework (or a hand-written server on `hyper`) can drive the same
//! steps and get the same behaviour:
//!
//! 1. [`HttpIdempotency::admit`]: the method and the `Idempotency-Key` header decide
//!    whether the request is the layer's ([`Admission::Idempotent`]), passes untouched
//!    ([`Admission::Bypass`]) or is refused at once ([`Admission::Refuse`]);
//! 2. the caller reads the body, at most [`HttpIdempotency::max_request_body`] bytes
//!    ([`HttpIdempotency::refusal`] with [`Problem::RequestTooLarge`] past that);
//! 3. [`HttpIdempotency::plan`]: the operation, the storage key (scoped to the client)
//!    and the request's fingerprint;
//! 4. [`HttpIdempotency::run`]: the handler runs at most once per key under the
//!    coordinator, and every request gets the response to send: the handler's, a
//!    replay, or a problem.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use http::request::Parts;
use idempotency_coordinator::{Coordinator, ErrorClass, IdempotencyError, ReservationStore};

use crate::body::{Buffered, HandlerBody, ResponseBody, buffer, full};
use crate::config::{Config, KeyRequirement};
use crate::fingerprint::fingerprint_by;
use crate::key::{KeyProblem, parse_key};
use crate::outcome::HttpOutcome;
use crate::problem::Problem;
use crate::scope::{client_scope, operation_label, storage_key, unrouted_label};
use crate::stored::StoredResponse;

/// The layer's decisions, for any framework; made by
/// [`IdempotencyLayer::decisions`](crate::IdempotencyLayer::decisions). Cheap to clone.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use idempotency_http::{Admission, IdempotencyLayer};
///
/// let decisions = IdempotencyLayer::builder(idempotency_coordinator::MemoryStore::new())
///     .build()?
///     .decisions();
/// let request = Request::post("/orders")
///     .header("idempotency-key", "\"k-1\"")
///     .body(Bytes::from_static(b"{\"sku\":1}"))?;
/// let (mut parts, body) = request.into_parts();
/// let Admission::Idempotent(admitted) = decisions.admit(&parts) else {
///     unreachable!("a POST with a key is the layer's")
/// };
/// let plan = decisions.plan(&mut parts, &admitted, &body);
/// let handler = || async { Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(Bytes::from("made")))) };
/// let first = decisions.run(&plan, handler).await?;
/// let again = decisions.run(&plan, handler).await?;
/// assert_eq!(first.status(), again.status());
/// assert!(again.headers().contains_key("idempotent-replayed"));
/// # Ok(()) }
/// ```
pub struct HttpIdempotency<S> {
    coordinator: Coordinator<S>,
    config: Arc<Config>,
}

impl<S> Clone for HttpIdempotency<S> {
    fn clone(&self) -> Self {
        Self {
            coordinator: self.coordinator.clone(),
            config: Arc::clone(&self.config),
        }
    }
}

impl<S> std::fmt::Debug for HttpIdempotency<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpIdempotency")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What [`HttpIdempotency::admit`] decides from the request's head.
#[derive(Debug)]
#[non_exhaustive]
pub enum Admission {
    /// Not the layer's (a method it does not cover, or no key where keys are optional):
    /// hand the request to the handler untouched.
    Bypass,
    /// Refused before anything ran (a missing, repeated or malformed key): send this.
    Refuse(Response<ResponseBody>),
    /// The layer's: read the body, then [`HttpIdempotency::plan`].
    Idempotent(Admitted),
}

/// A request the layer takes: its parsed key. Made only by [`HttpIdempotency::admit`].
#[derive(Debug)]
pub struct Admitted {
    key: String,
}

/// How an admitted request runs: its operation label, its storage key and its
/// fingerprint. Made by [`HttpIdempotency::plan`].
#[derive(Debug, Clone)]
pub struct Plan {
    operation: String,
    storage_key: String,
    fingerprint: String,
}

impl Plan {
    /// The operation label (`"{METHOD} {route}"`), as metrics and the store see it.
    pub fn operation(&self) -> &str {
        &self.operation
    }

    /// The key the record is stored under (a hash of the client's scope, the method, the
    /// route and the key).
    pub fn storage_key(&self) -> &str {
        &self.storage_key
    }
}

/// How the handler's run ended, as the coordinator sees it: `Ok` is stored, every `Err`
/// releases the key.
enum ActionError<E> {
    /// The coordinator refused or failed the call.
    Idempotency(IdempotencyError),
    /// A response that is returned to this client but not stored.
    NotStored(Response<ResponseBody>),
    /// The handler failed.
    Handler(E),
}

impl<E> From<IdempotencyError> for ActionError<E> {
    fn from(e: IdempotencyError) -> Self {
        Self::Idempotency(e)
    }
}

impl<S> HttpIdempotency<S> {
    pub(crate) fn new(coordinator: Coordinator<S>, config: Arc<Config>) -> Self {
        Self {
            coordinator,
            config,
        }
    }

    /// The most request body bytes the layer reads (to fingerprint it); a longer body is
    /// refused with [`Problem::RequestTooLarge`] before any claim.
    pub fn max_request_body(&self) -> usize {
        self.config.max_request_body
    }

    /// The response of a problem, as the layer sends it (its `type` base, `Retry-After`
    /// where it applies), marked with the problem's [`HttpOutcome`].
    pub fn refusal(&self, problem: Problem) -> Response<ResponseBody> {
        marked(
            problem.response(&self.config.problem_base, self.config.retry_after),
            problem.outcome(),
        )
    }

    /// Step 1: whether the request is the layer's, from its method and key header.
    pub fn admit(&self, parts: &Parts) -> Admission {
        let config = &self.config;
        if !config.methods.contains(&parts.method) {
            return Admission::Bypass;
        }
        match parse_key(
            &parts.headers.get_all(&config.key_header),
            config.max_key_chars,
        ) {
            Ok(Some(key)) => Admission::Idempotent(Admitted { key }),
            Ok(None) => match config.requirement {
                KeyRequirement::Required => Admission::Refuse(self.refusal(Problem::KeyMissing)),
                KeyRequirement::Optional => Admission::Bypass,
            },
            Err(KeyProblem::Repeated) => Admission::Refuse(self.refusal(Problem::KeyRepeated)),
            Err(
                KeyProblem::Empty
                | KeyProblem::TooLong
                | KeyProblem::NotUtf8
                | KeyProblem::Malformed,
            ) => Admission::Refuse(self.refusal(Problem::KeyMalformed)),
        }
    }

    /// Step 3: the operation, the client-scoped storage key and the fingerprint of an
    /// admitted request whose body was read. Marks the request's extensions with
    /// [`HttpOutcome::Executed`], which is what the handler sees when it runs.
    pub fn plan(&self, parts: &mut Parts, admitted: &Admitted, body: &Bytes) -> Plan {
        let config = &self.config;
        // The route: configured, or axum's matched route, both bounded sets; else the URI
        // path, which is unbounded: it then decides the storage key (keys of two paths
        // never meet) but not the label (metrics, the readable part of the Redis key).
        let known_route = config.operation.clone().or_else(|| matched_path(parts));
        let operation = match &known_route {
            Some(route) => operation_label(&parts.method, route),
            None => unrouted_label(&parts.method),
        };
        let route = known_route.unwrap_or_else(|| parts.uri.path().to_owned());
        let scope = client_scope(&config.scope, parts);
        let storage_key = storage_key(scope.as_deref(), &parts.method, &route, &admitted.key);
        let fingerprint = fingerprint_by(
            &config.fingerprint_by,
            parts,
            &config.fingerprint_headers,
            body,
        );
        parts.extensions.insert(HttpOutcome::Executed);
        Plan {
            operation,
            storage_key,
            fingerprint,
        }
    }
}

impl<S: ReservationStore> HttpIdempotency<S> {
    /// Step 4: runs `handler` at most once per plan's key (detached: a client that goes
    /// away does not cut it short) and answers every request with the response to send:
    /// the handler's (stored when the store policy and the size limit allow, else
    /// returned and the key released), a replay of the stored one, or a problem (in
    /// flight, key reused, store unavailable). Each response carries its
    /// [`HttpOutcome`] as an extension.
    ///
    /// # Errors
    /// The handler's own error, returned as it is (the key is released).
    pub async fn run<F, Fut, B, E>(
        &self,
        plan: &Plan,
        handler: F,
    ) -> Result<Response<ResponseBody>, E>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Response<B>, E>> + Send + 'static,
        B: HandlerBody,
        E: Send + 'static,
    {
        let config = &self.config;
        let action = {
            let config = Arc::clone(config);
            move || async move { store_or_return(handler().await, &config).await }
        };
        let mut call = self
            .coordinator
            .call(&plan.operation, Some(&plan.storage_key))
            .fingerprint(plan.fingerprint.clone())
            .in_flight(config.in_flight)
            .on_storage_error(config.on_storage_error);
        if let Some(ttl) = config.ttl {
            call = call.ttl(ttl);
        }
        if let Some(max_wait) = config.max_wait {
            call = call.max_wait(max_wait);
        }
        let operation = plan.operation.as_str();
        match call.run_detached_with_outcome(action).await {
            Ok((stored, outcome)) => {
                let outcome = HttpOutcome::from(outcome);
                match stored.into_response(&config.replayed_header) {
                    Some(response) => {
                        tracing::debug!(operation, %outcome, "idempotent response");
                        Ok(marked(response, outcome))
                    }
                    None => {
                        tracing::error!(operation, "stored response cannot be replayed");
                        Ok(self.refusal(Problem::Internal))
                    }
                }
            }
            // Returned to this client, not stored: the handler ran.
            Err(ActionError::NotStored(response)) => Ok(marked(response, HttpOutcome::Executed)),
            Err(ActionError::Handler(e)) => Err(e),
            Err(ActionError::Idempotency(e)) => Ok(self.refusal(match e.class() {
                ErrorClass::Conflict => Problem::KeyInFlight,
                ErrorClass::KeyReuse => Problem::KeyReused,
                ErrorClass::Storage => Problem::StorageUnavailable,
                _ => {
                    tracing::error!(operation, error = %e.log_message(), "idempotent request failed");
                    Problem::Internal
                }
            })),
        }
    }
}

/// A response carrying the layer's outcome as an extension.
pub(crate) fn marked(
    mut response: Response<ResponseBody>,
    outcome: HttpOutcome,
) -> Response<ResponseBody> {
    response.extensions_mut().insert(outcome);
    response
}

/// Decides whether the handler's response is stored (the store policy, the size limit,
/// a body that completes), and buffers it when it is.
async fn store_or_return<B, E>(
    answered: Result<Response<B>, E>,
    config: &Config,
) -> Result<StoredResponse, ActionError<E>>
where
    B: HandlerBody,
{
    let response = answered.map_err(ActionError::Handler)?;
    let (parts, body) = response.into_parts();
    let storable = (config.store_policy)(parts.status);
    match buffer(body, config.max_response_body).await {
        Buffered::Complete(bytes) if storable => Ok(StoredResponse::new(
            parts,
            bytes,
            &config.deny_headers,
            &config.replayed_header,
        )),
        Buffered::Complete(bytes) => {
            config.stats.count_not_stored(false);
            tracing::debug!(
                status = parts.status.as_u16(),
                "response not stored by the policy; key released"
            );
            Err(ActionError::NotStored(Response::from_parts(
                parts,
                full(bytes),
            )))
        }
        Buffered::PassThrough(body) => {
            config.stats.count_not_stored(true);
            tracing::warn!(
                limit = config.max_response_body,
                "response body over the limit or with trailers: returned, not stored; key released"
            );
            Err(ActionError::NotStored(Response::from_parts(parts, body)))
        }
        Buffered::Failed(e) => {
            config.stats.count_not_stored(false);
            tracing::warn!(error = %e, "response body failed; key released");
            Err(ActionError::NotStored(
                Problem::Internal.response(&config.problem_base, config.retry_after),
            ))
        }
    }
}

#[cfg(feature = "axum")]
fn matched_path(parts: &Parts) -> Option<String> {
    parts
        .extensions
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
}

#[cfg(not(feature = "axum"))]
fn matched_path(_: &Parts) -> Option<String> {
    None
}
