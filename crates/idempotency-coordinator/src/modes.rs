//! The coordinator's modes.

use serde::{Deserialize, Serialize};

/// What a second caller gets while the first one's action still runs under the key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InFlight {
    /// Wait for the first caller's result (woken when it completes), for at most a
    /// lease; if the reservation vanishes, claim the key and run.
    #[default]
    Wait,
    /// Fail at once with [`IdempotencyError::InProgress`](crate::IdempotencyError::InProgress).
    Raise,
    /// No reservation: read, run, insert-if-absent, and on a collision return the
    /// winner's stored value (the Python library's flow before 0.5.0). Concurrent
    /// duplicates may run the action more than once.
    Run,
}

/// What a call gets when the store fails before the action runs (claim or read).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStorageError {
    /// Run the action unprotected (at-least-once), logging and counting the failure.
    #[default]
    Run,
    /// Fail with the storage error; the action does not run (fail closed).
    Raise,
}
