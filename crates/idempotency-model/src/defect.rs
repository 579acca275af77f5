//! The known defects the model can put back, one at a time, to show the checker finds
//! each.

/// A known defect, put back into the model one at a time to show the checker finds it:
/// the six of issue 10 (reservation protocol v2), then two fixed since (a refused claim
/// failing open, an unstorable result written).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Defect {
    /// 1. The claim path judges a found pending record's expiry with the reader's clock
    ///    and deletes it (plain `DEL`) when it looks expired, then claims again.
    ClientClockLiveness,
    /// 2. The release guard is armed only when the claim's reply arrives.
    GuardArmedAfterClaim,
    /// 3. A claim re-sent after a lost reply does not recognise its own pending record.
    ResentClaimNotRecognised,
    /// 4. An unreadable value makes the caller run the action without a reservation and
    ///    store the result with an unconditional `SET`.
    UnreadableRunsUnprotected,
    /// 5. The scripts' owner check searches the stored bytes for `"owner":"<token>"`
    ///    and ignores `status`.
    OwnerBySubstring,
    /// 6. Detached mode releases the key when the caller is cancelled after the action
    ///    started (the task is dropped with the caller).
    DetachedReleasesOnCancel,
    /// 7. An error reply to the claim (or to the takeover) from a server that refuses
    ///    writes but serves reads (`NOREPLICAS`, `OOM`, `READONLY`, `MISCONF`) is taken
    ///    for an unreachable server: fail-open runs the action without reading the key,
    ///    over whatever it holds.
    RefusedWriteFailsOpen,
    /// 8. A result the record decoder refuses (a lone surrogate escape) is written as a
    ///    completed record, and a claim takes over any value it cannot read, a finished
    ///    record included, and runs the action again.
    UnstorableResultWritten,
}

impl Defect {
    /// Every defect, in order.
    pub const ALL: [Self; 8] = [
        Self::ClientClockLiveness,
        Self::GuardArmedAfterClaim,
        Self::ResentClaimNotRecognised,
        Self::UnreadableRunsUnprotected,
        Self::OwnerBySubstring,
        Self::DetachedReleasesOnCancel,
        Self::RefusedWriteFailsOpen,
        Self::UnstorableResultWritten,
    ];
}
