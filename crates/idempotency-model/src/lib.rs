//! A model of the reservation protocol v2, explored exhaustively with
//! [`stateright`](https://docs.rs/stateright).
//!
//! The model holds clients that claim, wait, run, renew, complete (a value, or an error
//! the policy stores: a `stored_error` record under the same fence) and release (our
//! coordinator's flow, the release guard armed before the claim, fail-open/closed,
//! detached mode) and a Python 0.5.0 client that claims with `SET NX`, renews with a
//! plain `SET` of its ownerless pending record and `DEL`s the key when its action fails; the store as Redis executes it (each command or script one atomic
//! step, one FIFO connection per client); and the faults: lost requests, lost replies
//! after the command was applied, commands re-sent after a reconnect, caller
//! cancellation at every step, lease expiry while the owner is slow, client clocks that
//! disagree, corrupt, wrong-type or abandoned values planted under a key, a server that
//! refuses writes (an error reply, nothing written) while it still serves reads, and
//! results the record decoder would refuse (checked with core's
//! [`check_storable`](idempotency_core::check_storable) before completing; a finished
//! record no client reads is recognised by core's
//! [`looks_finished`](idempotency_core::looks_finished) and never taken over).
//!
//! Every "is this record ours" and "is this record dead" decision is made by the core's
//! own [`holds_lease`](idempotency_core::holds_lease),
//! [`is_abandoned`](idempotency_core::is_abandoned) and record decoder on the real
//! encoded bytes, and what a fenced script's answer means (written? a lost lease to
//! count?) by the core's [`Fence`](idempotency_core::Fence) functions the Redis store
//! and the coordinator use; what the Lua scripts do around them is restated in [`store::apply`],
//! and a test runs the real scripts on a real redis-server against it.
//!
//! The Postgres store's protocol (the claim, the takeover and the transactional commit,
//! with a client crash between any two steps) is a model of its own:
//! [`postgres::PostgresModel`], checked with [`postgres::check_postgres`].
//!
//! The properties ([`model::SAFETY`]) and the known defects that the checker finds when
//! put back ([`Defect`]) are described in `docs/reliability.md` ("The model").
//!
//! # Examples
//! ```
//! use idempotency_model::{Config, ProtocolModel, check};
//! let checked = check(ProtocolModel::new(Config::two_callers()));
//! assert!(checked.violations.is_empty(), "{:?}", checked.violations);
//! ```

pub mod config;
pub mod defect;
pub mod model;
pub mod postgres;
pub mod store;

use stateright::{Checker, Model};

pub use config::{Config, Failures, InFlight, Kind, Mode, OnStorageError};
pub use defect::Defect;
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
