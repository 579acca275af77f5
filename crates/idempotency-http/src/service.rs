//! The tower service: the layer's decisions ([`HttpIdempotency`]) driven for a tower
//! `Service`, which reads the request body and runs the wrapped service as the handler.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use idempotency_coordinator::ReservationStore;
use tower_service::Service;
use tracing::Instrument;

use crate::body::{BoxError, HandlerBody, ResponseBody, boxed};
use crate::decision::{Admission, HttpIdempotency, marked};
use crate::outcome::HttpOutcome;
use crate::problem::Problem;

/// The service made by [`IdempotencyLayer`](crate::IdempotencyLayer).
pub struct IdempotencyService<I, S> {
    inner: I,
    decisions: HttpIdempotency<S>,
}

impl<I: Clone, S> Clone for IdempotencyService<I, S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            decisions: self.decisions.clone(),
        }
    }
}

impl<I: fmt::Debug, S> fmt::Debug for IdempotencyService<I, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyService")
            .field("inner", &self.inner)
            .field("decisions", &self.decisions)
            .finish()
    }
}

impl<I, S> IdempotencyService<I, S> {
    pub(crate) fn new(inner: I, decisions: HttpIdempotency<S>) -> Self {
        Self { inner, decisions }
    }
}

/// The future of [`IdempotencyService`].
pub type ResponseFuture<E> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, E>> + Send + 'static>>;

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
        let decisions = self.decisions.clone();
        let span = tracing::info_span!(
            "idempotency_http",
            method = %request.method(),
            outcome = tracing::field::Empty
        );
        Box::pin(
            async move {
                let mut response = handle(inner, &decisions, request).await?;
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

/// The layer's steps on one request (see [`HttpIdempotency`]): admit, read the body,
/// plan, run the handler under the coordinator.
async fn handle<I, S, ReqB, ResB>(
    mut inner: I,
    decisions: &HttpIdempotency<S>,
    request: Request<ReqB>,
) -> Result<Response<ResponseBody>, I::Error>
where
    I: Handler<ReqB, ResB>,
    S: ReservationStore,
    ReqB: RequestBody,
    ResB: HandlerBody,
{
    let (mut parts, body) = request.into_parts();
    let admitted = match decisions.admit(&parts) {
        Admission::Idempotent(admitted) => admitted,
        Admission::Refuse(response) => return Ok(response),
        Admission::Bypass => {
            return pass_through(inner, Request::from_parts(parts, body)).await;
        }
    };
    let body = match read_body(body, decisions.max_request_body()).await {
        Ok(body) => body,
        Err(problem) => return Ok(decisions.refusal(problem)),
    };
    let plan = decisions.plan(&mut parts, &admitted, &body);
    let request = Request::from_parts(parts, ReqB::from(body));
    decisions
        .run(&plan, move || async move { inner.call(request).await })
        .await
}

/// The request body, read up to `limit` bytes (the fingerprint needs all of it).
async fn read_body<ReqB: RequestBody>(body: ReqB, limit: usize) -> Result<Bytes, Problem> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(Problem::RequestTooLarge),
        Err(e) => {
            tracing::debug!(error = %e, "request body failed while being read");
            Err(Problem::KeyMalformed)
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
