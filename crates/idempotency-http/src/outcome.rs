//! What the layer did with a request: on the response, on the request the handler gets,
//! and on the layer's span.

use std::fmt;

use idempotency_coordinator::Outcome;

/// What the layer did with one request.
///
/// Every response that passes the layer carries it as an extension (read it in an outer
/// middleware: `response.extensions().get::<HttpOutcome>()`); the request a handler
/// receives carries [`HttpOutcome::Executed`] when it runs under a key and
/// [`HttpOutcome::Bypassed`] when it passes through (replays never reach the handler);
/// the layer's `idempotency_http` span records it as its `outcome` field.
///
/// # Examples
/// ```
/// use idempotency_http::HttpOutcome;
/// assert_eq!(HttpOutcome::Replayed.as_str(), "replayed");
/// assert!(HttpOutcome::Executed.ran_handler());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HttpOutcome {
    /// The key was free: the handler ran (its response stored when the policy allows).
    Executed,
    /// A stored response was replayed; the handler did not run.
    Replayed,
    /// The request waited for the first one with its key, then got its response replayed.
    WaitedThenReplayed,
    /// The first request with the key gave it up while this one waited: this one ran.
    TookOver,
    /// The store was down and the layer fails open: the handler ran unprotected.
    Unprotected,
    /// 409: the first request with the key is still in flight.
    Conflict,
    /// 422: the key was used for another request.
    Mismatch,
    /// 503: the store was down and the layer fails closed; the handler did not run.
    Unavailable,
    /// 400/413: the key or the request was refused before anything ran.
    Rejected,
    /// Not covered (another method, or no key where it is optional): passed through.
    Bypassed,
    /// The stored response could not be replayed, or the layer failed otherwise (500).
    Failed,
}

impl HttpOutcome {
    /// The name used on the span, in snake case: the coordinator's
    /// ([`Outcome::as_str`]) for the outcomes both have.
    pub fn as_str(self) -> &'static str {
        self.shared().map_or_else(|label| label, Outcome::as_str)
    }

    /// Whether the handler ran for this request (as [`Outcome::ran_action`] says for the
    /// outcomes both have; none of the layer's own).
    pub fn ran_handler(self) -> bool {
        self.shared().is_ok_and(Outcome::ran_action)
    }

    /// The coordinator's outcome of the same name, or the label of one only the layer
    /// has (refusals and failures before or around the call).
    fn shared(self) -> Result<Outcome, &'static str> {
        match self {
            Self::Executed => Ok(Outcome::Executed),
            Self::Replayed => Ok(Outcome::Replayed),
            Self::WaitedThenReplayed => Ok(Outcome::WaitedThenReplayed),
            Self::TookOver => Ok(Outcome::TookOver),
            Self::Unprotected => Ok(Outcome::Unprotected),
            Self::Bypassed => Ok(Outcome::Bypassed),
            Self::Conflict => Err("conflict"),
            Self::Mismatch => Err("mismatch"),
            Self::Unavailable => Err("unavailable"),
            Self::Rejected => Err("rejected"),
            Self::Failed => Err("failed"),
        }
    }
}

impl From<Outcome> for HttpOutcome {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Executed => Self::Executed,
            Outcome::Replayed => Self::Replayed,
            Outcome::WaitedThenReplayed => Self::WaitedThenReplayed,
            Outcome::TookOver => Self::TookOver,
            Outcome::Unprotected => Self::Unprotected,
            // `Outcome` is non-exhaustive: a new way of getting a value without running
            // is reported as bypassed until this layer names it.
            _ => Self::Bypassed,
        }
    }
}

impl fmt::Display for HttpOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
