//! What happened to a call: returned by the `*_with_outcome` runs and recorded on the
//! call's span.

use std::fmt;

/// How a call got its value.
///
/// Errors have no outcome value: an in-flight conflict is
/// [`IdempotencyError::InProgress`](crate::IdempotencyError::InProgress), a key
/// reuse [`IdempotencyError::KeyReuse`](crate::IdempotencyError::KeyReuse), and
/// both are also recorded on the span (`conflict`, `key_reuse`), as is a replayed stored
/// error (`replayed`, whether or not the call waited for it). An action error that is
/// not stored records no outcome.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), idempotency_coordinator::IdempotencyError> {
/// use idempotency_coordinator::{Coordinator, IdempotencyError, Outcome};
///
/// let coordinator = Coordinator::in_memory();
/// let run = || async { Ok::<_, IdempotencyError>(7u32) };
/// let (_, first) = coordinator.call("op", Some("k")).run_with_outcome(run).await?;
/// let (_, retry) = coordinator.call("op", Some("k")).run_with_outcome(run).await?;
/// assert_eq!((first, retry), (Outcome::Executed, Outcome::Replayed));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The key was free: this call ran the action. Its result was stored unless the
    /// store failed or the lease was lost meanwhile (both counted in the metrics).
    Executed,
    /// A completed record was there: its stored value was returned; nothing ran.
    Replayed,
    /// Another caller held the key; this call waited for it and returned its result.
    WaitedThenReplayed,
    /// Another caller held the key and gave it up (released, or its lease ran out) while
    /// this call waited: this call claimed the key and ran the action.
    TookOver,
    /// The store failed before the action and `on_storage_error` is `run`: the action
    /// ran without a confirmed reservation (at least once, not at most once).
    Unprotected,
    /// No idempotency: no key was given, or the coordinator is disabled.
    Bypassed,
}

impl Outcome {
    /// The name recorded on the call's span (`outcome` field), in snake case.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Executed => "executed",
            Self::Replayed => "replayed",
            Self::WaitedThenReplayed => "waited_then_replayed",
            Self::TookOver => "took_over",
            Self::Unprotected => "unprotected",
            Self::Bypassed => "bypassed",
        }
    }

    /// Whether the action ran in this call.
    pub fn ran_action(self) -> bool {
        matches!(
            self,
            Self::Executed | Self::TookOver | Self::Unprotected | Self::Bypassed
        )
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
