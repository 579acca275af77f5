//! What the steps of a reservation answer: a claim's outcome ([`Claim`]), a fenced
//! write's ([`Fence`]), and what a completion writes ([`Finished`]).

use serde_json::value::RawValue;

use crate::record::{IdempotencyRecord, RecordStatus};

/// The outcome of [`ReservationStore::claim`](crate::ReservationStore::claim).
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The key now holds our pending record (written by this claim, by an earlier send of
    /// it, or by taking over an unreadable value or an abandoned reservation).
    Acquired,
    /// The key holds this record (completed: a hit; pending: someone else's action runs).
    Found(IdempotencyRecord),
}

/// Whether a fenced write found our reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fence {
    /// It was ours (or, for `complete`, the key already held exactly our completed
    /// record: a re-sent completion) and the write was made.
    Held,
    /// Another owner's record (or a completed one) is there; nothing was written.
    Lost,
    /// `complete` only: our reservation was gone (it expired, was removed, or was
    /// overwritten by bytes no client can read) and nobody else's record was there, so
    /// the write was made. The lease was lost while the action ran: a duplicate may have
    /// run and given the key up meanwhile, so callers count it as a lost lease.
    Vacated,
}

/// What a completion writes over its reservation: the action's result, or an error of
/// the action stored so that retries replay it (status [`RecordStatus::StoredError`]).
#[derive(Debug, Clone, Copy)]
pub enum Finished<'a> {
    /// The action's result, as JSON text (status [`RecordStatus::Completed`]).
    Value(&'a RawValue),
    /// A stored error of the action, as JSON text (status [`RecordStatus::StoredError`]).
    Error(&'a RawValue),
}

impl<'a> Finished<'a> {
    /// The status of the record it makes.
    ///
    /// # Examples
    /// ```
    /// use idempotency_core::{Finished, RawValue, RecordStatus};
    /// let null = RawValue::NULL;
    /// assert_eq!(Finished::Value(null).status(), RecordStatus::Completed);
    /// assert_eq!(Finished::Error(null).status(), RecordStatus::StoredError);
    /// ```
    pub fn status(self) -> RecordStatus {
        match self {
            Self::Value(_) => RecordStatus::Completed,
            Self::Error(_) => RecordStatus::StoredError,
        }
    }

    /// The JSON text stored as the record's result.
    pub fn raw(self) -> &'a RawValue {
        match self {
            Self::Value(raw) | Self::Error(raw) => raw,
        }
    }
}

impl Fence {
    /// The fence a fenced Redis script answers with its integer reply: 1 held, 2 vacated
    /// (`complete.lua` only: written though our reservation was gone), anything else
    /// lost (nothing written).
    ///
    /// # Examples
    /// ```
    /// use idempotency_core::Fence;
    /// assert_eq!(Fence::from_script_reply(Some(2)), Fence::Vacated);
    /// assert_eq!(Fence::from_script_reply(None), Fence::Lost);
    /// ```
    pub fn from_script_reply(reply: Option<i64>) -> Self {
        match reply {
            Some(1) => Self::Held,
            Some(2) => Self::Vacated,
            _ => Self::Lost,
        }
    }

    /// Whether the write was made: our record now stands under the key (`Held`, or
    /// `Vacated` for a completion into a key our reservation had left).
    ///
    /// # Examples
    /// ```
    /// use idempotency_core::Fence;
    /// assert!(Fence::Vacated.written());
    /// assert!(!Fence::Lost.written());
    /// ```
    pub fn written(self) -> bool {
        matches!(self, Self::Held | Self::Vacated)
    }

    /// Whether the caller's lease was lost while its action ran, so a duplicate may have
    /// run: another record was there (`Lost`), or our reservation was gone when the
    /// completion was written (`Vacated`). Callers count it as a lost lease
    /// (`ErrorType::LeaseLost`), once per call.
    ///
    /// # Examples
    /// ```
    /// use idempotency_core::Fence;
    /// assert!(Fence::Vacated.lease_lost());
    /// assert!(!Fence::Held.lease_lost());
    /// ```
    pub fn lease_lost(self) -> bool {
        !matches!(self, Self::Held)
    }
}
