//! Errors as RFC 9457 `application/problem+json`, with stable `type` URIs. A problem
//! never names the key, the tenant or a fingerprint. The `type` URIs identify; under the
//! default base they never resolve (see [`crate::DEFAULT_PROBLEM_BASE`]).

use crate::outcome::HttpOutcome;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};

use crate::body::{ResponseBody, full};

/// The problems the layer answers with; the `type` URI is the configured base followed
/// by [`Problem::slug`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Problem {
    /// 400: the method requires a key and the request has none.
    KeyMissing,
    /// 400: the key is empty, too long, not UTF-8 or not a well-formed sf-string.
    KeyMalformed,
    /// 400: the key header was given more than once.
    KeyRepeated,
    /// 409: a request with this key is still being processed.
    KeyInFlight,
    /// 413: the request body is over the buffering limit.
    RequestTooLarge,
    /// 422: the key was used with a different request.
    KeyReused,
    /// 503: the idempotency store is unavailable (fail closed).
    StorageUnavailable,
    /// 500: the stored response cannot be replayed, or the response failed.
    Internal,
}

impl Problem {
    /// What the layer did with a request answered by this problem.
    pub fn outcome(self) -> HttpOutcome {
        match self {
            Self::KeyMissing | Self::KeyMalformed | Self::KeyRepeated | Self::RequestTooLarge => {
                HttpOutcome::Rejected
            }
            Self::KeyInFlight => HttpOutcome::Conflict,
            Self::KeyReused => HttpOutcome::Mismatch,
            Self::StorageUnavailable => HttpOutcome::Unavailable,
            Self::Internal => HttpOutcome::Failed,
        }
    }

    /// The last segment of the `type` URI.
    pub fn slug(self) -> &'static str {
        match self {
            Self::KeyMissing => "idempotency-key-missing",
            Self::KeyMalformed => "idempotency-key-malformed",
            Self::KeyRepeated => "idempotency-key-repeated",
            Self::KeyInFlight => "idempotency-key-in-flight",
            Self::RequestTooLarge => "idempotency-request-too-large",
            Self::KeyReused => "idempotency-key-reused",
            Self::StorageUnavailable => "idempotency-storage-unavailable",
            Self::Internal => "idempotency-internal",
        }
    }

    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            Self::KeyMissing | Self::KeyMalformed | Self::KeyRepeated => StatusCode::BAD_REQUEST,
            Self::KeyInFlight => StatusCode::CONFLICT,
            Self::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::KeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::StorageUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::KeyMissing => "Idempotency-Key is missing",
            Self::KeyMalformed => "Idempotency-Key is malformed",
            Self::KeyRepeated => "Idempotency-Key is given more than once",
            Self::KeyInFlight => "A request with this Idempotency-Key is being processed",
            Self::RequestTooLarge => "The request body is too large for an idempotent request",
            Self::KeyReused => "Idempotency-Key is already used with a different request",
            Self::StorageUnavailable => "Idempotency storage is unavailable",
            Self::Internal => "Idempotency processing failed",
        }
    }

    fn detail(self) -> &'static str {
        match self {
            Self::KeyMissing => "This operation requires an Idempotency-Key header.",
            Self::KeyMalformed => {
                "The key must be 1 to the allowed number of UTF-8 characters, bare or as a quoted string."
            }
            Self::KeyRepeated => "Send exactly one Idempotency-Key header.",
            Self::KeyInFlight => {
                "Retry after the time given in Retry-After; the first request is still being processed."
            }
            Self::RequestTooLarge => "The body is over the size buffered for fingerprinting.",
            Self::KeyReused => "Use a new key for a different request.",
            Self::StorageUnavailable => {
                "Retry after the time given in Retry-After; nothing was processed."
            }
            Self::Internal => "The request could not be processed idempotently.",
        }
    }

    /// The response: problem JSON, and `Retry-After` on 409 and 503.
    pub(crate) fn response(self, base: &str, retry_after: Duration) -> Response<ResponseBody> {
        let doc = serde_json::json!({
            "type": format!("{base}{}", self.slug()),
            "title": self.title(),
            "status": self.status().as_u16(),
            "detail": self.detail(),
        });
        let mut response = Response::new(full(Bytes::from(doc.to_string())));
        *response.status_mut() = self.status();
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if matches!(self, Self::KeyInFlight | Self::StorageUnavailable) {
            let secs = retry_after.as_secs().max(1);
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
