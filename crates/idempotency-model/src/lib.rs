//! A model of the reservation protocol v2, explored exhaustively with
//! [`stateright`](https://docs.rs/stateright).
//!
//! The model holds clients that claim, wait, run, renew, complete and release (our
//! coordinator's flow, the release guard armed before the claim, fail-open/closed,
//! detached mode) and a Python 0.5.0 client that claims with `SET NX` and writes with
//! plain `SET`/`DEL`; the store as Redis executes it (each command or script one atomic
//! step, one FIFO connection per client); and the faults: lost requests, lost replies
//! after the command was applied, commands re-sent after a reconnect, caller
//! cancellation at every step, lease expiry while the owner is slow, client clocks that
//! disagree, and corrupt, wrong-type or abandoned values planted under a key.
//!
//! Every "is this record ours" and "is this record dead" decision is made by the core's
//! own [`holds_lease`](idempotency_core::holds_lease),
//! [`is_abandoned`](idempotency_core::is_abandoned) and record decoder on the real
//! encoded bytes; what the Lua scripts do around them is restated in [`store::apply`],
//! and a test runs the real scripts on a real redis-server against it.
//!
//! The properties ([`model::SAFETY`]) and the defects of issue 10 that the checker finds
//! when put back ([`Defect`]) are described in `docs/reliability.md` ("The model").
//!
//! # Examples
//! ```
//! use idempotency_model::{Config, ProtocolModel, check};
//! let checked = check(ProtocolModel::new(Config::two_callers()));
//! assert!(checked.violations.is_empty(), "{:?}", checked.violations);
//! ```

pub mod config;
pub mod model;
pub mod store;

use stateright::{Checker, Model};

pub use config::{Config, Defect, InFlight, Kind, Mode, OnStorageError};
pub use model::{Action, ProtocolModel, SAFETY, State};

/// What one exhaustive run found.
#[derive(Debug)]
pub struct Checked {
    /// Distinct states explored.
    pub states: usize,
    /// Each violated safety property with the actions of a shortest counterexample.
    pub violations: Vec<(&'static str, Vec<Action>)>,
}

/// Explores every reachable state of `model` (breadth first, so counterexamples are
/// shortest) and reports the violated safety properties.
pub fn check(model: ProtocolModel) -> Checked {
    let checker = model.checker().spawn_bfs().join();
    let violations = SAFETY
        .iter()
        .filter_map(|name| {
            checker
                .discovery(name)
                .map(|path| (*name, path.into_actions()))
        })
        .collect();
    Checked {
        states: checker.unique_state_count(),
        violations,
    }
}
