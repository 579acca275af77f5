//! A model of the Postgres store's protocol on one key: the claim statement (insert, or
//! take over an expired pending row), the fenced completion, and the transactional call
//! (`run_in_transaction`: the key's advisory lock, the claim, the business write and the
//! completion in one transaction that commits or aborts as a whole), with a client crash
//! between any two steps (its transaction aborts, its locks go; the client comes back as
//! a retry).
//!
//! Two kinds of client share the key: transactional ones, and reservation ones (the
//! coordinator on the store: claim, an effect outside the database, fenced completion),
//! whose lease may end while they are slow ([`PgAction::Expire`]) so that another claim
//! takes the key over. What Postgres does is restated at the grain the protocol relies
//! on: each statement one atomic step on the committed state, a transaction's writes
//! private until its commit, a row written by an open transaction locked against the
//! others' statements (they wait), the advisory lock held until the transaction ends.
//!
//! [`PgVariant::CompletionOutsideTransaction`] is the broken variant: the claim and the
//! completion are written on another connection, committed at once, while the business
//! write stays in the transaction.

use stateright::{Checker, Model, Property};

/// Which implementation of the transactional call the model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PgVariant {
    /// The store's: the record in the business transaction.
    InTransaction,
    /// Broken: the claim and the completion committed on another connection.
    CompletionOutsideTransaction,
}

/// A client of the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PgKind {
    /// `run_in_transaction`.
    Transactional,
    /// The coordinator on the store: claim, an external effect, fenced completion.
    Reservation,
}

/// What the model explores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgConfig {
    /// The clients, each making one call (and its retries after crashes).
    pub clients: Vec<PgKind>,
    /// Crashes allowed over the run (each anywhere, of any client).
    pub crashes: u8,
    /// Lease expiries of reservation clients allowed over the run.
    pub expiries: u8,
    /// The implementation.
    pub variant: PgVariant,
}

impl PgConfig {
    /// Two transactional clients and a reservation one, two crashes, one expiry.
    pub fn mixed() -> Self {
        Self {
            clients: vec![
                PgKind::Transactional,
                PgKind::Transactional,
                PgKind::Reservation,
            ],
            crashes: 2,
            expiries: 1,
            variant: PgVariant::InTransaction,
        }
    }

    /// The same with `variant`.
    #[must_use]
    pub fn with_variant(mut self, variant: PgVariant) -> Self {
        self.variant = variant;
        self
    }
}

/// The key's row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Row {
    /// Claimed by `owner` under `fence`; `live` until its lease ends.
    Pending {
        /// The client that claimed it.
        owner: u8,
        /// Its fencing token.
        fence: u8,
        /// Whether the lease still runs.
        live: bool,
    },
    /// Completed with the value of execution `value`.
    Completed {
        /// The execution whose result it holds.
        value: u8,
    },
}

/// Where a client is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// About to call (first time, or a retry after a crash).
    Idle,
    /// Transactional: holds the key's advisory lock.
    Locked,
    /// Holds the claim under `fence`.
    Claimed(u8),
    /// Did its effect, execution `exec`.
    Wrote(u8, u8),
    /// Transactional: wrote the completion, not committed yet.
    Finished(u8),
    /// Committed (or completed) with `value`; the caller has not had it yet.
    Committed(u8),
    /// Returned `Some(value)`, or failed (`None`: in progress, or the lease lost).
    Done(Option<u8>),
}

/// The whole system.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PgState {
    /// The committed row.
    pub row: Option<Row>,
    /// The committed effects (business rows, or external effects), by execution.
    pub effects: Vec<u8>,
    /// Per client: its step, its transaction's private row and effect.
    pub clients: Vec<(Step, Option<Row>, Option<u8>)>,
    /// The holder of the key's advisory lock.
    pub lock: Option<u8>,
    /// Takeovers of an expired reservation (each may excuse one more effect).
    pub takeovers: u8,
    /// Crashes left.
    pub crashes: u8,
    /// Expiries left.
    pub expiries: u8,
    /// Retries that got a value after a crash of their client.
    pub replayed_after_crash: bool,
    next_fence: u8,
    next_exec: u8,
    crashed: Vec<bool>,
}

/// A step of the system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PgAction {
    /// Transactional: `BEGIN` and the advisory lock.
    Lock(u8),
    /// The claim statement.
    Claim(u8),
    /// The effect: a write in the transaction, or an external call.
    Effect(u8),
    /// The completion statement.
    Finish(u8),
    /// Transactional: `COMMIT`.
    Commit(u8),
    /// The caller gets the value.
    Reply(u8),
    /// The client's process dies (`SIGKILL`): its transaction aborts.
    Crash(u8),
    /// The reservation's lease ends.
    Expire,
}

/// Each committed effect at most once, beyond the takeovers of an expired lease.
pub const EFFECT_ONCE: &str = "each effect at most once";
/// A completed record's value is a committed effect's.
pub const RECORD_HAS_EFFECT: &str = "a completed record has its effect";
/// Without takeovers every caller that got a value got the record's.
pub const SAME_VALUE: &str = "every caller gets the committed value";
/// A committed pending row of a transactional client belongs to an open transaction
/// (else it holds the key for 24 hours: stuck).
pub const NO_STUCK_KEY: &str = "no key stuck by a crash";
/// The properties that must always hold.
pub const PG_SAFETY: [&str; 4] = [EFFECT_ONCE, RECORD_HAS_EFFECT, SAME_VALUE, NO_STUCK_KEY];

/// The model.
#[derive(Clone, Debug)]
pub struct PostgresModel {
    config: PgConfig,
}

impl PostgresModel {
    /// The model of `config`.
    pub fn new(config: PgConfig) -> Self {
        Self { config }
    }

    fn kind(&self, c: u8) -> PgKind {
        self.config.clients[usize::from(c)]
    }

    /// Whether an open transaction other than `c`'s holds the row (its statements wait).
    fn row_locked(state: &PgState, c: u8) -> bool {
        state
            .clients
            .iter()
            .enumerate()
            .any(|(i, (_, private, _))| usize::from(c) != i && private.is_some())
    }

    fn outside(&self) -> bool {
        self.config.variant == PgVariant::CompletionOutsideTransaction
    }
}

fn mid_transaction(step: Step) -> bool {
    matches!(
        step,
        Step::Locked | Step::Claimed(_) | Step::Wrote(..) | Step::Finished(_)
    )
}

impl Model for PostgresModel {
    type State = PgState;
    type Action = PgAction;

    fn init_states(&self) -> Vec<PgState> {
        let n = self.config.clients.len();
        vec![PgState {
            row: None,
            effects: Vec::new(),
            clients: vec![(Step::Idle, None, None); n],
            lock: None,
            takeovers: 0,
            crashes: self.config.crashes,
            expiries: self.config.expiries,
            replayed_after_crash: false,
            next_fence: 1,
            next_exec: 1,
            crashed: vec![false; n],
        }]
    }

    fn actions(&self, state: &PgState, actions: &mut Vec<PgAction>) {
        for (i, (step, _, _)) in state.clients.iter().enumerate() {
            let c = u8::try_from(i).unwrap_or(u8::MAX);
            let tx = self.kind(c) == PgKind::Transactional;
            let locked = Self::row_locked(state, c);
            match *step {
                Step::Idle if tx && state.lock.is_none() => actions.push(PgAction::Lock(c)),
                Step::Idle if tx => {}
                // A reservation client waits while the key is held by a live claim.
                Step::Idle => {
                    let held = matches!(state.row, Some(Row::Pending { live: true, .. }));
                    if !locked && !held {
                        actions.push(PgAction::Claim(c));
                    }
                }
                Step::Locked if !locked => actions.push(PgAction::Claim(c)),
                Step::Claimed(_) => actions.push(PgAction::Effect(c)),
                Step::Wrote(..) if tx || !locked => actions.push(PgAction::Finish(c)),
                Step::Finished(_) => actions.push(PgAction::Commit(c)),
                Step::Committed(_) => actions.push(PgAction::Reply(c)),
                _ => {}
            }
            if state.crashes > 0 && !matches!(step, Step::Done(_)) {
                actions.push(PgAction::Crash(c));
            }
        }
        if state.expiries > 0
            && let Some(Row::Pending {
                owner, live: true, ..
            }) = state.row
            && self.kind(owner) == PgKind::Reservation
        {
            actions.push(PgAction::Expire);
        }
    }

    #[allow(clippy::too_many_lines)] // one arm per statement, each short
    fn next_state(&self, last: &PgState, action: PgAction) -> Option<PgState> {
        let mut s = last.clone();
        match action {
            PgAction::Lock(c) => {
                s.lock = Some(c);
                s.clients[usize::from(c)].0 = Step::Locked;
            }
            PgAction::Claim(c) => {
                let ci = usize::from(c);
                let tx = self.kind(c) == PgKind::Transactional;
                let end = |s: &mut PgState, value: Option<u8>| {
                    s.clients[ci].0 = Step::Done(value);
                    if s.lock == Some(c) {
                        s.lock = None;
                    }
                    if value.is_some() && s.crashed[ci] {
                        s.replayed_after_crash = true;
                    }
                };
                match s.row {
                    Some(Row::Completed { value }) => end(&mut s, Some(value)),
                    // A live claim of a reservation client: `InProgress`.
                    Some(Row::Pending { live: true, .. }) => end(&mut s, None),
                    free => {
                        if matches!(free, Some(Row::Pending { live: false, .. })) {
                            s.takeovers += 1;
                        }
                        let fence = s.next_fence;
                        s.next_fence += 1;
                        let row = Row::Pending {
                            owner: c,
                            fence,
                            live: true,
                        };
                        if tx && !self.outside() {
                            s.clients[ci].1 = Some(row);
                        } else {
                            s.row = Some(row);
                        }
                        s.clients[ci].0 = Step::Claimed(fence);
                    }
                }
            }
            PgAction::Effect(c) => {
                let ci = usize::from(c);
                let Step::Claimed(fence) = s.clients[ci].0 else {
                    return None;
                };
                let exec = s.next_exec;
                s.next_exec += 1;
                if self.kind(c) == PgKind::Transactional {
                    s.clients[ci].2 = Some(exec);
                } else {
                    s.effects.push(exec);
                }
                s.clients[ci].0 = Step::Wrote(fence, exec);
            }
            PgAction::Finish(c) => {
                let ci = usize::from(c);
                let Step::Wrote(fence, exec) = s.clients[ci].0 else {
                    return None;
                };
                let private = self.kind(c) == PgKind::Transactional && !self.outside();
                let current = if private { s.clients[ci].1 } else { s.row };
                // The fenced completion: only the claim's own pending row.
                let ours = matches!(current, Some(Row::Pending { fence: f, .. }) if f == fence);
                let done = Row::Completed { value: exec };
                if ours && private {
                    s.clients[ci].1 = Some(done);
                } else if ours {
                    s.row = Some(done);
                }
                s.clients[ci].0 = match (self.kind(c), ours) {
                    (PgKind::Transactional, true) => Step::Finished(exec),
                    (PgKind::Reservation, true) => Step::Committed(exec),
                    // The lease was lost: the call fails.
                    (_, false) => Step::Done(None),
                };
            }
            PgAction::Commit(c) => {
                let ci = usize::from(c);
                let Step::Finished(exec) = s.clients[ci].0 else {
                    return None;
                };
                if let Some(row) = s.clients[ci].1.take() {
                    s.row = Some(row);
                }
                if let Some(effect) = s.clients[ci].2.take() {
                    s.effects.push(effect);
                }
                s.lock = None;
                s.clients[ci].0 = Step::Committed(exec);
            }
            PgAction::Reply(c) => {
                let ci = usize::from(c);
                let Step::Committed(value) = s.clients[ci].0 else {
                    return None;
                };
                s.clients[ci].0 = Step::Done(Some(value));
            }
            PgAction::Crash(c) => {
                let ci = usize::from(c);
                // The connection drops: the server aborts the transaction and frees its
                // locks; the committed state stays. The process restarts and retries.
                s.clients[ci] = (Step::Idle, None, None);
                if s.lock == Some(c) {
                    s.lock = None;
                }
                s.crashes -= 1;
                s.crashed[ci] = true;
            }
            PgAction::Expire => {
                if let Some(Row::Pending { live, .. }) = &mut s.row {
                    *live = false;
                }
                s.expiries -= 1;
            }
        }
        s.effects.sort_unstable();
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(EFFECT_ONCE, |_, s: &PgState| {
                s.effects.len() <= 1 + usize::from(s.takeovers)
            }),
            Property::always(RECORD_HAS_EFFECT, |_, s: &PgState| match s.row {
                Some(Row::Completed { value }) => s.effects.contains(&value),
                _ => true,
            }),
            Property::always(SAME_VALUE, |_, s: &PgState| {
                if s.takeovers > 0 {
                    return true;
                }
                let record = match s.row {
                    Some(Row::Completed { value }) => Some(value),
                    _ => None,
                };
                s.clients.iter().all(|(step, _, _)| match step {
                    Step::Done(Some(v)) => record == Some(*v),
                    _ => true,
                })
            }),
            Property::always(NO_STUCK_KEY, |m: &Self, s: &PgState| match s.row {
                Some(Row::Pending { owner, .. }) if m.kind(owner) == PgKind::Transactional => {
                    mid_transaction(s.clients[usize::from(owner)].0)
                }
                _ => true,
            }),
            Property::sometimes(
                "a retry after a crash gets the committed value",
                |_, s: &PgState| s.replayed_after_crash,
            ),
            Property::sometimes("an expired reservation is taken over", |_, s: &PgState| {
                s.takeovers > 0
            }),
        ]
    }
}

/// What one exhaustive run of the Postgres model found.
#[derive(Debug)]
pub struct PgChecked {
    /// Distinct states explored.
    pub states: usize,
    /// Each violated safety property with the actions of a shortest counterexample.
    pub violations: Vec<(&'static str, Vec<PgAction>)>,
    /// The `sometimes` properties never reached (the model would be too narrow).
    pub unreached: Vec<&'static str>,
}

/// Explores every reachable state of `model` breadth first.
pub fn check_postgres(model: PostgresModel) -> PgChecked {
    let properties = model.properties();
    let checker = model.checker().spawn_bfs().join();
    let violations = PG_SAFETY
        .iter()
        .filter_map(|name| {
            checker
                .discovery(name)
                .map(|path| (*name, path.into_actions()))
        })
        .collect();
    let unreached = properties
        .iter()
        .filter(|p| !PG_SAFETY.contains(&p.name))
        .filter(|p| checker.discovery(p.name).is_none())
        .map(|p| p.name)
        .collect();
    PgChecked {
        states: checker.unique_state_count(),
        violations,
        unreached,
    }
}
