//! A call's parts below the facade, each as one bound: the action it runs ([`Action`]),
//! how its value and errors are stored ([`Codec`]), and both together ([`Job`]), so no
//! step of the flow repeats the bounds they stand for.

use std::future::Future;

use idempotency_core::{FencingToken, RawValue, Result, ResultAdapter};

use crate::error_policy::ErrorPolicy;

/// What a call runs at most once: `FnOnce() -> impl Future<Output = Result<T, E>>`
/// (implemented for every such closure), or a [`Fenced`] one that takes its run's
/// fencing token.
pub(crate) trait Action<T, E> {
    /// The future doing the work.
    type Fut: Future<Output = std::result::Result<T, E>>;

    /// Whether the action takes a fencing token (then the store is asked for one before
    /// it starts).
    const FENCED: bool;

    /// Starts the work; `fence` is the run's token (`None`: unprotected, or not asked).
    fn start(self, fence: Option<FencingToken>) -> Self::Fut;
}

impl<T, E, F, Fut> Action<T, E> for F
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = std::result::Result<T, E>>,
{
    type Fut = Fut;
    const FENCED: bool = false;

    fn start(self, _: Option<FencingToken>) -> Fut {
        self()
    }
}

/// An action that takes its run's fencing token: `FnOnce(Option<FencingToken>) -> …`.
pub(crate) struct Fenced<F>(pub(crate) F);

impl<T, E, F, Fut> Action<T, E> for Fenced<F>
where
    F: FnOnce(Option<FencingToken>) -> Fut,
    Fut: Future<Output = std::result::Result<T, E>>,
{
    type Fut = Fut;
    const FENCED: bool = true;

    fn start(self, fence: Option<FencingToken>) -> Fut {
        (self.0)(fence)
    }
}

/// How a call's value and its errors are written and read back: its result adapter and
/// error policy, as one bound.
pub(crate) trait Codec<T, E> {
    /// The stored form of a value.
    fn encode_value(&self, value: &T) -> Result<Box<RawValue>>;
    /// A stored value read back.
    fn decode_value(&self, stored: &RawValue) -> Result<T>;
    /// The stored form of an error, or `None` to release the key instead.
    fn encode_error(&self, error: &E) -> Option<Box<RawValue>>;
    /// A stored error read back.
    fn decode_error(&self, stored: &RawValue) -> Result<E>;
}

/// A call's adapter and error policy, borrowed together.
pub(crate) struct Storing<'a, A, P> {
    pub(crate) adapter: &'a A,
    pub(crate) errors: &'a P,
}

// Copied and cloned whatever `A` and `P` are: only references are held.
impl<A, P> Clone for Storing<'_, A, P> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A, P> Copy for Storing<'_, A, P> {}

impl<T, E, A: ResultAdapter<T>, P: ErrorPolicy<E>> Codec<T, E> for Storing<'_, A, P> {
    fn encode_value(&self, value: &T) -> Result<Box<RawValue>> {
        self.adapter.encode(value)
    }
    fn decode_value(&self, stored: &RawValue) -> Result<T> {
        self.adapter.decode(stored)
    }
    fn encode_error(&self, error: &E) -> Option<Box<RawValue>> {
        self.errors.encode(error)
    }
    fn decode_error(&self, stored: &RawValue) -> Result<E> {
        self.errors.decode(stored)
    }
}

/// One call's work below the facade: its action and how its outcome is stored. The one
/// bound every step of the flow names. (`T` and `E` stay parameters, not associated
/// types: a call's future must be provably `Send` for a spawned caller, which the
/// compiler cannot always see through projections.)
pub(crate) trait Job<T, E> {
    /// How the value and the error are stored.
    type Codec: Codec<T, E> + Copy;
    /// The future doing the work.
    type Fut: Future<Output = std::result::Result<T, E>>;

    /// How the outcome is stored (to replay a record before the action runs).
    fn codec(&self) -> Self::Codec;

    /// Whether the action takes a fencing token.
    fn fenced(&self) -> bool;

    /// Starts the action with its run's fencing token (`None`: unprotected, or not
    /// asked for).
    fn start(self, fence: Option<FencingToken>) -> Self::Fut;
}

/// The parts of one call: its adapter and error policy, and its action.
pub(crate) struct Parts<'a, A, P, F> {
    pub(crate) storing: Storing<'a, A, P>,
    pub(crate) action: F,
}

impl<'a, T, E, A, P, F> Job<T, E> for Parts<'a, A, P, F>
where
    A: ResultAdapter<T>,
    P: ErrorPolicy<E>,
    F: Action<T, E>,
{
    type Codec = Storing<'a, A, P>;
    type Fut = F::Fut;

    fn codec(&self) -> Storing<'a, A, P> {
        self.storing
    }

    fn fenced(&self) -> bool {
        F::FENCED
    }

    fn start(self, fence: Option<FencingToken>) -> F::Fut {
        self.action.start(fence)
    }
}
