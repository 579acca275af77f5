//! What a transactional call hands its action and returns.

use std::error::Error;
use std::fmt;

use idempotency_core::{FencingToken, IdempotencyError, RawValue, RecordId};

/// What the action of a transactional call is told. It borrows the call's identity for
/// `'a`, which also lets the action's future borrow what lives that long.
#[derive(Debug, Clone, Copy)]
pub struct TxContext<'a> {
    id: &'a RecordId,
    fence: FencingToken,
}

impl<'a> TxContext<'a> {
    pub(crate) fn new(id: &'a RecordId, fence: FencingToken) -> Self {
        Self { id, fence }
    }

    /// The record's identity (operation and key).
    pub fn id(&self) -> &'a RecordId {
        self.id
    }

    /// The fencing token of this claim.
    pub fn fence(&self) -> FencingToken {
        self.fence
    }
}

/// How a transactional call or a multi-step run ended well.
///
/// # Examples
/// ```
/// use idempotency_postgres::Outcome;
/// let replayed = Outcome::Replayed(7);
/// assert!(replayed.is_replayed());
/// assert_eq!(replayed.into_value(), 7);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<T> {
    /// The action ran (a multi-step run: resumed or from its start) and its record
    /// is committed (a transactional call: together with its writes).
    Ran {
        /// What the action returned.
        value: T,
        /// The fencing token the action was given (a multi-step run: this owner's).
        fence: FencingToken,
    },
    /// An earlier call had completed: its result, replayed; the action did not run.
    Replayed(T),
}

impl<T> Outcome<T> {
    /// The value, whichever way it came.
    pub fn into_value(self) -> T {
        match self {
            Self::Ran { value, .. } | Self::Replayed(value) => value,
        }
    }

    /// The value, whichever way it came.
    pub fn value(&self) -> &T {
        match self {
            Self::Ran { value, .. } | Self::Replayed(value) => value,
        }
    }

    /// Whether the result was replayed (the action did not run).
    pub fn is_replayed(&self) -> bool {
        matches!(self, Self::Replayed(_))
    }
}

/// Why a transactional call failed. In every case nothing of this call was committed.
///
/// # Examples
/// ```
/// use idempotency_core::IdempotencyError;
/// use idempotency_postgres::RunError;
/// let busy: RunError<std::io::Error> = IdempotencyError::in_progress("op", "k").into();
/// assert!(busy.as_idempotency().is_some());
/// let failed: RunError<&str> = RunError::Action("declined");
/// assert_eq!(failed.into_action(), Some("declined"));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum RunError<E> {
    /// The action failed; its writes and the claim were rolled back, the key is free.
    Action(E),
    /// The kit failed: storage, [`IdempotencyError::InProgress`],
    /// [`IdempotencyError::KeyReuse`], a result that cannot be encoded or decoded.
    Idempotency(IdempotencyError),
    /// The key holds an error stored by a non-transactional call (through the
    /// coordinator): its JSON, for the caller to decode.
    StoredError(Box<RawValue>),
}

impl<E> RunError<E> {
    /// The kit's error, if it is one.
    pub fn as_idempotency(&self) -> Option<&IdempotencyError> {
        match self {
            Self::Idempotency(e) => Some(e),
            _ => None,
        }
    }

    /// The action's error, if it is one.
    pub fn into_action(self) -> Option<E> {
        match self {
            Self::Action(e) => Some(e),
            _ => None,
        }
    }
}

impl<E> From<IdempotencyError> for RunError<E> {
    fn from(e: IdempotencyError) -> Self {
        Self::Idempotency(e)
    }
}

impl<E: fmt::Display> fmt::Display for RunError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Action(e) => write!(f, "the action failed: {e}"),
            Self::Idempotency(e) => fmt::Display::fmt(e, f),
            Self::StoredError(_) => f.write_str("the key holds a stored error"),
        }
    }
}

impl<E: Error + 'static> Error for RunError<E> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::Action(e) => Some(e),
            Self::Idempotency(e) => Some(e),
            Self::StoredError(_) => None,
        }
    }
}
