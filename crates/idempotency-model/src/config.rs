//! What one model run explores: the clients, the keys, the fault budgets, and which
//! known defect (if any) is put back.

use crate::defect::Defect;
use crate::store::Stored;

/// What a client is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A caller of our coordinator.
    Ours,
    /// The Python library 0.5.0: `SET NX` to claim, plain `SET` to renew and complete,
    /// `DEL` to release, no owner token.
    Python,
}

/// What the coordinator does while another caller holds the key (`InFlight`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InFlight {
    /// Wait (for at most `patience` looks at the key), then `InProgress`.
    Wait,
    /// `InProgress` at once.
    Raise,
}

/// What the coordinator does when the claim fails with a storage error (`OnStorageError`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OnStorageError {
    /// Fail closed: the call fails (the guard releases what the claim may have written).
    Raise,
    /// Fail open: run the action without a confirmed reservation (counted).
    Run,
}

/// How our callers run the action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// `Call::run`: cancellation drops the action and releases the key (at least once
    /// after the action started; counted).
    Attached,
    /// `Call::run_detached`: cancellation stops the caller waiting; the task finishes.
    Detached,
}

/// Whether and how our callers' actions fail (Python's failures always `DEL` the key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Failures {
    /// Actions never fail.
    Never,
    /// An action may fail with an error the policy does not store: the key is released
    /// for a retry.
    Released,
    /// An action may fail with an error the policy stores: `complete_with_error` writes a
    /// `stored_error` record under the completion's fence, and retries replay the error.
    Stored,
}

/// One model configuration.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// The clients: what each is, its key, and its clock's offset from the server's (s).
    pub clients: Vec<(Kind, u8, i8)>,
    /// How many keys (clients name theirs).
    pub keys: u8,
    /// The defect put back, if any.
    pub defect: Option<Defect>,
    /// Waiting mode of our callers.
    pub in_flight: InFlight,
    /// Fail open or closed.
    pub on_storage_error: OnStorageError,
    /// Attached or detached calls.
    pub mode: Mode,
    /// How many times a waiter looks at the key again before `InProgress`.
    pub patience: u8,
    /// How many renewals an owner may make.
    pub renewals: u8,
    /// Whether actions may fail, and what our callers do with the error.
    pub failures: Failures,
    /// Network faults in total: lost requests, lost replies, re-sent commands.
    pub network_faults: u8,
    /// Lease expiries while the owner is slow.
    pub lease_losses: u8,
    /// Caller cancellations.
    pub cancellations: u8,
    /// A value planted (once, into an empty key), if any.
    pub plant: Option<Stored>,
    /// Spells in which the server refuses every write (`NOREPLICAS`, `OOM`, `READONLY`,
    /// `MISCONF`: an error reply, nothing written) but still answers `GET`; each spell
    /// ends at any step.
    pub write_refusals: u8,
    /// Our callers' results may be unstorable (a string cut inside an emoji: a lone
    /// surrogate escape the record decoder refuses): every completion with a value is
    /// either kind.
    pub unstorable_results: bool,
}

impl Config {
    /// Two of our callers on one key, every fault kind once (no plant, no Python).
    pub fn two_callers() -> Self {
        Self {
            clients: vec![(Kind::Ours, 0, 0), (Kind::Ours, 0, 0)],
            keys: 1,
            defect: None,
            in_flight: InFlight::Wait,
            on_storage_error: OnStorageError::Raise,
            mode: Mode::Detached,
            patience: 1,
            renewals: 1,
            failures: Failures::Never,
            network_faults: 1,
            lease_losses: 1,
            cancellations: 1,
            plant: None,
            write_refusals: 0,
            unstorable_results: false,
        }
    }

    /// Three of our callers on one key, clocks apart by more than a lease, and a value
    /// planted.
    pub fn three_callers(plant: Stored) -> Self {
        Self {
            clients: vec![(Kind::Ours, 0, 0), (Kind::Ours, 0, 5), (Kind::Ours, 0, -5)],
            renewals: 0,
            lease_losses: 0,
            cancellations: 0,
            plant: Some(plant),
            ..Self::two_callers()
        }
    }

    /// Two of our callers and the Python client on one key: Python renews with a plain
    /// `SET` of its ownerless pending record and `DEL`s the key when its action fails
    /// (ours release theirs), and a lease may run out under either.
    pub fn with_python() -> Self {
        Self {
            clients: vec![(Kind::Ours, 0, 0), (Kind::Python, 0, 0), (Kind::Ours, 0, 0)],
            network_faults: 0,
            cancellations: 0,
            failures: Failures::Released,
            ..Self::two_callers()
        }
    }

    /// Two of our callers whose actions may fail with a stored error, every fault kind
    /// once: the error is written under the completion's fence and replayed.
    pub fn stored_errors() -> Self {
        Self {
            failures: Failures::Stored,
            ..Self::two_callers()
        }
    }

    /// Two of our callers, fail-open, and a spell in which the server refuses writes but
    /// serves reads: a refused claim reads the key (a finished record replays, a
    /// reservation waits, an unreadable value refuses the call) and only an empty key
    /// runs fail-open. One network fault and one lease loss (no renewal, no
    /// cancellation: neither meets the refusal in a new way).
    pub fn refused_writes() -> Self {
        Self {
            on_storage_error: OnStorageError::Run,
            write_refusals: 1,
            renewals: 0,
            cancellations: 0,
            ..Self::two_callers()
        }
    }

    /// Two of our callers, fail-open, a value planted and a spell of refused writes: a
    /// refused takeover leaves the value, and the call waits (an abandoned reservation)
    /// or is refused (an unreadable value). One network fault.
    pub fn refused_takeovers(plant: Stored) -> Self {
        Self {
            plant: Some(plant),
            lease_losses: 0,
            ..Self::refused_writes()
        }
    }

    /// Two of our callers whose results may be unstorable: the coordinator checks the
    /// result before completing and writes a stored error marking it not storable; the
    /// caller gets its value, every retry a data error. One network fault, one lease loss,
    /// one renewal (no cancellation: it does not meet the result in a new way).
    pub fn unstorable_results() -> Self {
        Self {
            unstorable_results: true,
            cancellations: 0,
            ..Self::two_callers()
        }
    }

    /// Two keys, two callers each, sharing one budget of each fault but cancellation
    /// (the suite's size; [`Config::two_keys_full`] adds a cancellation).
    pub fn two_keys() -> Self {
        Self {
            clients: vec![
                (Kind::Ours, 0, 0),
                (Kind::Ours, 0, 3),
                (Kind::Ours, 1, -3),
                (Kind::Ours, 1, 0),
            ],
            keys: 2,
            renewals: 0,
            cancellations: 0,
            ..Self::two_callers()
        }
    }

    /// [`Config::two_keys`] with a cancellation too (about half a million states: run
    /// in release mode, see `docs/reliability.md`).
    pub fn two_keys_full() -> Self {
        Self {
            cancellations: 1,
            ..Self::two_keys()
        }
    }

    /// The same configuration with `defect` put back.
    #[must_use]
    pub fn with_defect(mut self, defect: Defect) -> Self {
        self.defect = Some(defect);
        self
    }
}
