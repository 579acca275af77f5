//! The action of a call, as one bound: a closure that makes the future doing the work.

use std::future::Future;

use idempotency_core::IdempotencyError;

/// What a call runs at most once: `FnOnce() -> impl Future<Output = Result<T, E>>`, with
/// an error type that can carry the library's errors. One bound instead of four on every
/// step of the flow; implemented for every such closure.
pub(crate) trait Action<T, E: From<IdempotencyError>> {
    /// The future doing the work.
    type Fut: Future<Output = Result<T, E>>;

    /// Starts the work.
    fn start(self) -> Self::Fut;
}

impl<T, E, F, Fut> Action<T, E> for F
where
    E: From<IdempotencyError>,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    type Fut = Fut;

    fn start(self) -> Fut {
        self()
    }
}
