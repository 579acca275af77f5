//! The service: key → scope → fingerprint → coordinator call → stored or replayed response.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use idempotency_coordinator::{Coordinator, ErrorClass, IdempotencyError, ReservationStore};
use tower_service::Service;
use tracing::Instrument;

use crate::body::{BoxError, Buffered, ResponseBody, boxed, buffer};
use crate::config::{Config, KeyRequirement};
use crate::fingerprint::fingerprint_by;
use crate::key::{KeyProblem, parse_key};
use crate::outcome::HttpOutcome;
use crate::problem::Problem;
use crate::scope::{client_scope, operation_label, storage_key, unrouted_label};
use crate::stored::StoredResponse;

/// The service made by [`IdempotencyLayer`](crate::IdempotencyLayer).
pub struct IdempotencyService<I, S> {
    inner: I,
    coordinator: Coordinator<S>,
    config: Arc<Config>,
}

impl<I: Clone, S> Clone for IdempotencyService<I, S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            coordinator: self.coordinator.clone(),
            config: Arc::clone(&self.config),
        }
    }
}

impl<I: fmt::Debug, S> fmt::Debug for IdempotencyService<I, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyService")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<I, S> IdempotencyService<I, S> {
    pub(crate) fn new(inner: I, coordinator: Coordinator<S>, config: Arc<Config>) -> Self {
        Self {
            inner,
            coordinator,
            config,
        }
    }
}

/// The future of [`IdempotencyService`].
pub type ResponseFuture<E> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, E>> + Send + 'static>>;

/// How the handler's run ended, as the coordinator sees it: `Ok` is stored, every `Err`
/// releases the key.
enum ActionError<E> {
    /// The coordinator refused or failed the call.
    Idempotency(IdempotencyError),
    /// A response that is returned to this client but not stored.
    NotStored(Response<ResponseBody>),
    /// The inner service failed.
    Service(E),
}

impl<E> From<IdempotencyError> for ActionError<E> {
    fn from(e: IdempotencyError) -> Self {
        Self::Idempotency(e)
    }
}

/// The wrapped service as the layer drives it: it answers `Request<ReqB>` with a
/// `Response<ResB>`, and it and its future move into a spawned task (the handler runs
/// detached). The bounds written once, for the `Service` impl and the handler.
pub trait Handler<ReqB, ResB>:
    Service<Request<ReqB>, Response = Response<ResB>, Future: Send + 'static, Error: Send + 'static>
    + Send
    + 'static
{
}

impl<I, ReqB, ResB> Handler<ReqB, ResB> for I where
    I: Service<
            Request<ReqB>,
            Response = Response<ResB>,
            Future: Send + 'static,
            Error: Send + 'static,
        > + Send
        + 'static
{
}

/// A request body the layer can buffer (to fingerprint it) and rebuild for the handler.
pub trait RequestBody:
    Body<Data: Send, Error: Into<BoxError>> + From<Bytes> + Send + 'static
{
}

impl<B> RequestBody for B where
    B: Body<Data: Send, Error: Into<BoxError>> + From<Bytes> + Send + 'static
{
}

/// A response body of the handler the layer can buffer (to store it) or pass on.
pub trait HandlerBody: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static {}

impl<B> HandlerBody for B where B: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static {}

impl<I, S, ReqB, ResB> Service<Request<ReqB>> for IdempotencyService<I, S>
where
    // The `Service` bound names `ResB` for the impl (a bound's own parameters do not).
    I: Service<Request<ReqB>, Response = Response<ResB>> + Handler<ReqB, ResB> + Clone,
    S: ReservationStore,
    ReqB: RequestBody,
    ResB: HandlerBody,
{
    type Response = Response<ResponseBody>;
    type Error = I::Error;
    type Future = ResponseFuture<I::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        // The clone takes the place of the service that was polled ready, which handles
        // this request.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let coordinator = self.coordinator.clone();
        let config = Arc::clone(&self.config);
        let span = tracing::info_span!(
            "idempotency_http",
            method = %request.method(),
            outcome = tracing::field::Empty
        );
        Box::pin(
            async move {
                let mut response = handle(inner, coordinator, config, request).await?;
                let outcome = response
                    .extensions()
                    .get::<HttpOutcome>()
                    .copied()
                    .unwrap_or(HttpOutcome::Bypassed);
                response.extensions_mut().insert(outcome);
                tracing::Span::current().record("outcome", outcome.as_str());
                Ok(response)
            }
            .instrument(span),
        )
    }
}

/// A response carrying the layer's outcome as an extension.
fn marked(mut response: Response<ResponseBody>, outcome: HttpOutcome) -> Response<ResponseBody> {
    response.extensions_mut().insert(outcome);
    response
}

async fn handle<I, S, ReqB, ResB>(
    mut inner: I,
    coordinator: Coordinator<S>,
    config: Arc<Config>,
    request: Request<ReqB>,
) -> Result<Response<ResponseBody>, I::Error>
where
    I: Handler<ReqB, ResB>,
    S: ReservationStore,
    ReqB: RequestBody,
    ResB: HandlerBody,
{
    let problem = |p: Problem| {
        Ok(marked(
            p.response(&config.problem_base, config.retry_after),
            p.outcome(),
        ))
    };
    if !config.methods.contains(request.method()) {
        return pass_through(inner, request).await;
    }
    let key = match parse_key(
        &request.headers().get_all(&config.key_header),
        config.max_key_chars,
    ) {
        Ok(Some(key)) => key,
        Ok(None) => {
            return match config.requirement {
                KeyRequirement::Required => problem(Problem::KeyMissing),
                KeyRequirement::Optional => pass_through(inner, request).await,
            };
        }
        Err(KeyProblem::Repeated) => return problem(Problem::KeyRepeated),
        Err(
            KeyProblem::Empty | KeyProblem::TooLong | KeyProblem::NotUtf8 | KeyProblem::Malformed,
        ) => {
            return problem(Problem::KeyMalformed);
        }
    };
    let (mut parts, body) = request.into_parts();
    let body = match Limited::new(body, config.max_request_body).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return problem(Problem::RequestTooLarge),
        Err(e) => {
            tracing::debug!(error = %e, "request body failed while being read");
            return problem(Problem::KeyMalformed);
        }
    };
    // The route: configured, or axum's matched route, both bounded sets; else the URI
    // path, which is unbounded: it then decides the storage key (keys of two paths never
    // meet) but not the label (metrics, the readable part of the Redis key).
    let known_route = config.operation.clone().or_else(|| matched_path(&parts));
    let operation = match &known_route {
        Some(route) => operation_label(&parts.method, route),
        None => unrouted_label(&parts.method),
    };
    let route = known_route.unwrap_or_else(|| parts.uri.path().to_owned());
    let scope = client_scope(&config.scope, &parts);
    let storage_key = storage_key(scope.as_deref(), &parts.method, &route, &key);
    let fingerprint = fingerprint_by(
        &config.fingerprint_by,
        &parts,
        &config.fingerprint_headers,
        &body,
    );
    // What the handler sees: it runs only when the layer executes the request.
    parts.extensions.insert(HttpOutcome::Executed);
    let request = Request::from_parts(parts, ReqB::from(body));

    let action = {
        let config = Arc::clone(&config);
        move || async move { run_handler(&mut inner, request, &config).await }
    };
    let mut call = coordinator
        .call(&operation, Some(&storage_key))
        .fingerprint(fingerprint)
        .in_flight(config.in_flight)
        .on_storage_error(config.on_storage_error);
    if let Some(ttl) = config.ttl {
        call = call.ttl(ttl);
    }
    if let Some(max_wait) = config.max_wait {
        call = call.max_wait(max_wait);
    }
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
                    problem(Problem::Internal)
                }
            }
        }
        // Returned to this client, not stored: the handler ran.
        Err(ActionError::NotStored(response)) => Ok(marked(response, HttpOutcome::Executed)),
        Err(ActionError::Service(e)) => Err(e),
        Err(ActionError::Idempotency(e)) => problem(match e.class() {
            ErrorClass::Conflict => Problem::KeyInFlight,
            ErrorClass::KeyReuse => Problem::KeyReused,
            ErrorClass::Storage => Problem::StorageUnavailable,
            _ => {
                tracing::error!(operation, error = %e.log_message(), "idempotent request failed");
                Problem::Internal
            }
        }),
    }
}

/// Runs the inner service and decides whether its response is stored.
async fn run_handler<I, ReqB, ResB>(
    inner: &mut I,
    request: Request<ReqB>,
    config: &Config,
) -> Result<StoredResponse, ActionError<I::Error>>
where
    I: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: HandlerBody,
{
    let response = inner.call(request).await.map_err(ActionError::Service)?;
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
                crate::body::full(bytes),
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

async fn pass_through<I, ReqB, ResB>(
    mut inner: I,
    mut request: Request<ReqB>,
) -> Result<Response<ResponseBody>, I::Error>
where
    I: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: HandlerBody,
{
    request.extensions_mut().insert(HttpOutcome::Bypassed);
    Ok(marked(
        inner.call(request).await?.map(boxed),
        HttpOutcome::Bypassed,
    ))
}

#[cfg(feature = "axum")]
fn matched_path(parts: &http::request::Parts) -> Option<String> {
    parts
        .extensions
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
}

#[cfg(not(feature = "axum"))]
fn matched_path(_: &http::request::Parts) -> Option<String> {
    None
}
