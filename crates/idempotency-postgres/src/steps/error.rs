//! Why a multi-step run failed.

use std::error::Error;
use std::fmt;

use idempotency_core::{IdempotencyError, RawValue};

/// Why a multi-step run (or one of its steps) failed. Phases committed before the
/// failure stay committed; a retry of the run resumes after the last of them.
///
/// # Examples
/// ```
/// use idempotency_core::IdempotencyError;
/// use idempotency_postgres::StepsError;
/// let busy: StepsError<std::io::Error> = IdempotencyError::in_progress("op", "k").into();
/// assert!(busy.as_idempotency().is_some());
/// let lost: StepsError<&str> = StepsError::LeaseLost { step: "capture".to_owned() };
/// assert!(lost.is_lease_lost());
/// let failed: StepsError<&str> = StepsError::Action("declined");
/// assert_eq!(failed.into_action(), Some("declined"));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum StepsError<E> {
    /// A step failed: a phase's work rolled back (the phases before it stay), or an
    /// external call failed. Not stored: a retry resumes at this step. A failure that
    /// must be replayed (a declined card) is a value: return it as the run's result.
    Action(E),
    /// The run was taken over by another owner (this owner's lease ended on the
    /// server's clock and a retry claimed the run): the phase `step` rolled back, and
    /// this owner can commit nothing more.
    LeaseLost {
        /// The step whose commit was refused (or the completion, `"complete"`, or a
        /// renewal, `"renew"`).
        step: String,
    },
    /// The steps called differ from those the run committed: `step` was called where
    /// the run had committed `committed` (the action's code changed between the
    /// attempt and its retry), or a name was used twice in one run.
    Diverged {
        /// The step called.
        step: String,
        /// The committed step at that place (`None`: the name was used already).
        committed: Option<String>,
    },
    /// The kit failed: storage, [`IdempotencyError::InProgress`],
    /// [`IdempotencyError::KeyReuse`], invalid settings, a value that cannot be encoded
    /// or a stored one that cannot be decoded.
    Idempotency(IdempotencyError),
    /// The key holds an error stored by a non-transactional call (through the
    /// coordinator): its JSON, for the caller to decode.
    StoredError(Box<RawValue>),
}

impl<E> StepsError<E> {
    /// The kit's error, if it is one.
    pub fn as_idempotency(&self) -> Option<&IdempotencyError> {
        match self {
            Self::Idempotency(e) => Some(e),
            _ => None,
        }
    }

    /// The step's error, if it is one.
    pub fn into_action(self) -> Option<E> {
        match self {
            Self::Action(e) => Some(e),
            _ => None,
        }
    }

    /// Whether another owner took the run over.
    pub fn is_lease_lost(&self) -> bool {
        matches!(self, Self::LeaseLost { .. })
    }
}

impl<E> From<IdempotencyError> for StepsError<E> {
    fn from(e: IdempotencyError) -> Self {
        Self::Idempotency(e)
    }
}

impl<E: fmt::Display> fmt::Display for StepsError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Action(e) => write!(f, "the step failed: {e}"),
            Self::LeaseLost { step } => {
                write!(
                    f,
                    "another owner took the run over; step {step:?} rolled back"
                )
            }
            Self::Diverged {
                step,
                committed: Some(committed),
            } => write!(
                f,
                "step {step:?} was called where the run committed step {committed:?}"
            ),
            Self::Diverged {
                step,
                committed: None,
            } => write!(f, "step {step:?} was called twice in one run"),
            Self::Idempotency(e) => fmt::Display::fmt(e, f),
            Self::StoredError(_) => f.write_str("the key holds a stored error"),
        }
    }
}

impl<E: Error + 'static> Error for StepsError<E> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::Action(e) => Some(e),
            Self::Idempotency(e) => Some(e),
            Self::LeaseLost { .. } | Self::Diverged { .. } | Self::StoredError(_) => None,
        }
    }
}
