//! What a [`Fence`] means to the caller: one decision, shared by every store that reads a
//! script's reply, by the coordinator that counts lost leases, and by the model
//! (`idempotency-model`) that checks both, so none of them can drift from the others.
//! (Kept apart from `reservation.rs` only so the type's definition stays short.)

use super::reservation::Fence;

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
