//! The protocol as a state machine: our callers and the Python client, one FIFO
//! connection each, the store, and the faults.

use idempotency_core::{RawValue, check_storable, unstorable_reason};
use stateright::{Model, Property};

use crate::config::{Config, Failures, InFlight, Kind, Mode, OnStorageError};
use crate::defect::Defect;
use crate::store::{
    ClientId, Finish, LEASE_SECS, Op, Reply, Stored, Writer, apply, result_text, server_now,
};

/// How many unreadable values one claim takes over before giving up (as the Redis store).
const TAKEOVER_ROUNDS: u8 = 3;

/// Where a client is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Not started.
    Idle,
    /// Its claim (or takeover) is in flight.
    AwaitClaim,
    /// Its `GET` is in flight: the server refused the claim with an error reply, and a
    /// server that refuses writes still serves reads.
    AwaitRead,
    /// Another caller holds the key; it will look again.
    Waiting,
    /// It holds the key (or runs without it) and runs the action.
    Running,
    /// A renewal is in flight.
    AwaitRenew,
    /// The completion is in flight.
    AwaitComplete,
    /// The final release is in flight.
    AwaitRelease,
    /// The Python client's `SET NX` is in flight.
    PyAwaitClaim,
    /// The Python client's `GET` is in flight.
    PyAwaitGet,
    /// Finished (or cancelled and not detached).
    Done,
}

/// How a running client holds the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Holding {
    /// Claimed.
    Lease,
    /// Fail-open after a storage error on the claim.
    Unconfirmed,
    /// Defect 4: an unreadable value and no reservation at all.
    Unprotected,
}

/// What a caller got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A value: the value of client `.0`'s execution.
    Value(ClientId),
    /// An error of the action, stored: the error of client `.0`'s execution (its own, or
    /// replayed from the `stored_error` record).
    Error(ClientId),
    /// `InProgress`.
    InProgress,
    /// An error (storage, data, the action's own failure).
    Failed,
    /// `ResultNotStorable`: the key's action ran but its result could not be stored (a
    /// data error; no value).
    NotStorable,
    /// The caller was cancelled.
    Cancelled,
}

/// A request on a client's connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Req {
    /// The command.
    pub op: Op,
    /// Whether the client still waits for its reply (not after a cancellation, nor for a
    /// guard's release).
    pub awaited: bool,
    /// Already applied once; the client re-sends it after a reconnect.
    pub resent: bool,
}

/// One client.
// Allowed: these flags are independent facts about a client; the state stays flat so
// the checker hashes it cheaply.
#[allow(clippy::struct_excessive_bools)]
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Client {
    /// Where it is.
    pub phase: Phase,
    /// The release guard is armed.
    pub guard: bool,
    /// Its connection: requests are applied in order.
    pub pipe: Vec<Req>,
    /// The action's side effect happened.
    pub effect: bool,
    /// The call counted its lease as lost (a renewal found it lost, or the completion's
    /// fence said so: core's [`Fence::lease_lost`](idempotency_core::Fence::lease_lost));
    /// counted once per call, as the coordinator counts `LeaseLost`.
    pub lost: bool,
    /// How its own execution ended (set when it completes or fails).
    pub finish: Option<Finish>,
    /// Ghost: its reservation expired while it held it and ran.
    pub expired: bool,
    /// Ghost: its completion was re-sent after a lost reply (the reply it reads is the
    /// second send's).
    pub completion_resent: bool,
    /// How it holds the key while running.
    pub holding: Holding,
    /// Renewals left.
    pub renewals: u8,
    /// Looks at the key left while waiting.
    pub patience: u8,
    /// Takeovers made by this claim.
    pub takeovers: u8,
    /// The caller is gone (detached task still running).
    pub caller_gone: bool,
    /// Ghost: the server refused its claim with an error reply and it read the key.
    pub read_after_refusal: bool,
    /// What the caller got.
    pub outcome: Option<Outcome>,
}

/// What happened to one key, for the properties (ghost state: the protocol never reads
/// it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ledger {
    /// Side effects of our callers' actions.
    pub effects: u8,
    /// Side effects of the Python client's actions.
    pub python_effects: u8,
    /// Leases that expired while their owner was still running (the environment's
    /// count of lease losses).
    pub lease_losses: u8,
    /// Lost leases as our callers count them (`LeaseLost`): from the renewal's and the
    /// completion's fence, by core's own decision functions.
    pub counted_losses: u8,
    /// A caller of ours whose reservation expired while it ran read its completion's
    /// reply and did not count the loss.
    pub loss_uncounted: bool,
    /// Python writes (`SET`, `DEL`) over a record that was not its own reservation.
    pub python_clobbers: u8,
    /// Actions run fail-open after a storage error on the claim: the server did not
    /// answer, or it refused the claim and the key held nothing to answer from.
    pub fail_open_runs: u8,
    /// Actions run fail-open after the server refused the claim with an error reply
    /// while the key held a value it would have served to a `GET` (a record, finished
    /// or pending, or unreadable bytes): counted by the coordinator as fail-open runs,
    /// but not a loss fail-open allows (the server answered), so not excused.
    pub blind_runs: u8,
    /// Attached calls cancelled after their action's side effect (at least once).
    pub cancelled_after_effect: u8,
    /// Completions lost on the way (the result was never stored).
    pub unstored: u8,
    /// Releases lost on the way (the record waits for its TTL).
    pub releases_lost: u8,
    /// One of our writes changed or deleted a completed record.
    pub completed_clobbered: bool,
    /// One of our writes changed or deleted another owner's live reservation.
    pub stolen: bool,
}

impl Ledger {
    /// Effects allowed beyond the first: every counted loss may cost one run (a blind
    /// run is none).
    pub fn excused(&self) -> u8 {
        self.lease_losses
            + self.python_clobbers
            + self.fail_open_runs
            + self.cancelled_after_effect
            + self.unstored
    }
}

/// The whole system.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    /// The value under each key.
    pub store: Vec<Option<Stored>>,
    /// The clients.
    pub clients: Vec<Client>,
    /// Per key, what happened.
    pub ledger: Vec<Ledger>,
    /// Network faults left.
    pub network_faults: u8,
    /// Lease losses left.
    pub lease_losses: u8,
    /// Cancellations left.
    pub cancellations: u8,
    /// The plant is still to come.
    pub plant: bool,
    /// Spells of refused writes left.
    pub write_refusals: u8,
    /// The server refuses every write (an error reply, nothing written) and serves reads.
    pub refusing: bool,
}

/// A step of the system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// A client starts its call.
    Start(ClientId),
    /// The action's side effect happens.
    Effect(ClientId),
    /// The owner renews.
    Renew(ClientId),
    /// The owner completes.
    Complete(ClientId),
    /// The owner completes with a result the record decoder refuses (a lone surrogate
    /// escape): the coordinator writes a stored error marking it not storable.
    CompleteUnstorable(ClientId),
    /// The action fails (the key is released for a retry).
    Fail(ClientId),
    /// A waiter looks at the key again (a wake-up or the safety poll).
    Poll(ClientId),
    /// The caller is cancelled.
    Cancel(ClientId),
    /// The store applies the client's next request and the reply arrives.
    Deliver(ClientId),
    /// The request is lost before the store sees it; the client gets an error.
    LoseRequest(ClientId),
    /// The store applies the request; the reply is lost and the client gets an error.
    LoseReply(ClientId),
    /// The store applies the request, the reply is lost, and the client re-sends it after
    /// reconnecting (it is applied again later).
    Resend(ClientId),
    /// The reservation under the key expires while its owner is slow (a lease loss).
    ExpireLease(u8),
    /// The configured value is planted under the empty key.
    Plant(u8),
    /// The server begins refusing writes (`NOREPLICAS`, `OOM`, `READONLY`, `MISCONF`);
    /// reads are still served.
    RefuseWrites,
    /// The server accepts writes again.
    AcceptWrites,
}

/// The model: a configuration to explore.
#[derive(Clone, Debug)]
pub struct ProtocolModel {
    /// What is explored.
    pub config: Config,
}

impl ProtocolModel {
    /// A model of `config`.
    pub fn new(config: Config) -> Self {
        Self { config }
    }

    fn kind(&self, c: ClientId) -> Kind {
        self.config.clients[usize::from(c)].0
    }

    fn key(&self, c: ClientId) -> u8 {
        self.config.clients[usize::from(c)].1
    }

    fn skew(&self, c: ClientId) -> i8 {
        self.config.clients[usize::from(c)].2
    }

    fn has(&self, d: Defect) -> bool {
        self.config.defect == Some(d)
    }

    /// Whether no step is enabled (every behaviour of the bounded model ends in one).
    pub fn is_terminal(&self, state: &State) -> bool {
        let mut actions = Vec::new();
        self.actions(state, &mut actions);
        actions.is_empty()
    }

    /// The final record client `c` writes: its value or stored error; results carry any
    /// text, so ours echo the owner object of the next client of ours.
    fn final_record(&self, c: ClientId, finish: Finish) -> Stored {
        let python = self.kind(c) == Kind::Python;
        let n = self.config.clients.len() as u8;
        let mentions = (1..n)
            .map(|i| (c + i) % n)
            .find(|&m| self.kind(m) == Kind::Ours && !python && finish != Finish::NotStorable);
        Stored::Completed {
            exec: c,
            finish,
            python,
            mentions,
        }
    }

    /// What client `c` answers with its own execution's ending.
    fn own_outcome(state: &State, c: ClientId) -> Outcome {
        match state.clients[usize::from(c)].finish {
            // Its result, stored or not: the caller gets its value.
            Some(Finish::Value | Finish::Unstorable | Finish::NotStorable) => Outcome::Value(c),
            Some(Finish::Error) => Outcome::Error(c),
            None => Outcome::Failed,
        }
    }

    fn send(state: &mut State, c: ClientId, op: Op, awaited: bool) {
        state.clients[usize::from(c)].pipe.push(Req {
            op,
            awaited,
            resent: false,
        });
    }

    fn finish(state: &mut State, c: ClientId, outcome: Outcome) {
        let client = &mut state.clients[usize::from(c)];
        client.phase = Phase::Done;
        client.guard = false;
        if !client.caller_gone {
            client.outcome = Some(outcome);
        }
    }

    /// Applies `c`'s next request on the store; the reply, and bookkeeping.
    fn apply_head(&self, state: &mut State, c: ClientId) -> Reply {
        let op = state.clients[usize::from(c)].pipe[0].op;
        if state.refusing && op.writes() {
            return Reply::Refused;
        }
        let k = self.key(c);
        let before = state.store[usize::from(k)];
        let (after, reply) = apply(k, before, op, c, self.skew(c), self.config.defect);
        let ledger = &mut state.ledger[usize::from(k)];
        if after != before {
            match (self.kind(c), before) {
                (Kind::Python, Some(Stored::Pending { writer, .. }))
                    if writer == Writer::Python(c) => {}
                (Kind::Python, Some(_)) => ledger.python_clobbers += 1,
                (Kind::Ours, Some(Stored::Completed { .. })) => ledger.completed_clobbered = true,
                (Kind::Ours, Some(Stored::Pending { writer, .. })) if writer != Writer::Ours(c) => {
                    ledger.stolen = true;
                }
                _ => {}
            }
        }
        state.store[usize::from(k)] = after;
        reply
    }

    /// Our caller `c` runs after a storage error on the claim, or fails, as
    /// `on_storage_error` says. `excused`: the run is a loss fail-open allows (the
    /// server did not answer, or the key held nothing it could answer from).
    fn storage_error(&self, state: &mut State, c: ClientId, excused: bool) {
        let ci = usize::from(c);
        match self.config.on_storage_error {
            OnStorageError::Raise => {
                // The guard stays armed: dropping the call releases what the claim may
                // have written.
                if state.clients[ci].guard {
                    Self::send(state, c, Op::Release, false);
                }
                Self::finish(state, c, Outcome::Failed);
            }
            OnStorageError::Run => {
                let ledger = &mut state.ledger[usize::from(self.key(c))];
                if excused {
                    ledger.fail_open_runs += 1;
                } else {
                    ledger.blind_runs += 1;
                }
                let client = &mut state.clients[ci];
                client.phase = Phase::Running;
                client.holding = Holding::Unconfirmed;
            }
        }
    }

    /// Our caller `c` reads the reply of its claim or takeover `op` (`None`: no answer,
    /// a storage error).
    fn on_claim(&self, state: &mut State, c: ClientId, op: Op, reply: Option<Reply>) {
        let k = self.key(c);
        let ci = usize::from(c);
        match reply {
            None => self.storage_error(state, c, true),
            Some(Reply::Refused) if self.has(Defect::RefusedWriteFailsOpen) => {
                // Taken for an unreachable server: the key is not read. The run is a loss
                // fail-open allows only where the read would have found nothing either.
                let nothing = matches!(state.store[usize::from(k)], None | Some(Stored::WrongType));
                self.storage_error(state, c, nothing);
            }
            // The server refuses writes but serves reads: the key is read, after a claim
            // and after a takeover alike (a re-sent takeover may have landed before the
            // refusals began: then the key holds our own reservation, which is ours).
            Some(Reply::Refused) => {
                debug_assert!(matches!(op, Op::Claim | Op::Takeover(_)));
                Self::send(state, c, Op::Get, true);
                let client = &mut state.clients[ci];
                client.phase = Phase::AwaitRead;
                client.read_after_refusal = true;
            }
            Some(Reply::Nil) => Self::acquired(state, c),
            Some(Reply::WrongType | Reply::Done(_) | Reply::Fenced(_)) => {
                Self::finish(state, c, Outcome::Failed);
            }
            // A finished record no client can read: its action ran, so the call is
            // refused (a data error), never taken over and run again.
            Some(Reply::Found(v))
                if v.finished_unreadable(k) && !self.has(Defect::UnstorableResultWritten) =>
            {
                Self::finish(state, c, Outcome::Failed);
            }
            Some(Reply::Found(v)) if v.needs_takeover(k) => {
                if self.has(Defect::UnreadableRunsUnprotected) && v.record(k).is_none() {
                    let client = &mut state.clients[ci];
                    client.phase = Phase::Running;
                    client.holding = Holding::Unprotected;
                    client.guard = false;
                } else if state.clients[ci].takeovers < TAKEOVER_ROUNDS {
                    state.clients[ci].takeovers += 1;
                    Self::send(state, c, Op::Takeover(v), true);
                    state.clients[ci].phase = Phase::AwaitClaim;
                } else {
                    Self::finish(state, c, Outcome::InProgress);
                }
            }
            Some(Reply::Found(v)) => self.on_found(state, c, v),
        }
    }

    /// Our caller `c` reads the key after the server refused its claim (`None`: the read
    /// failed too).
    fn on_read(&self, state: &mut State, c: ClientId, reply: Option<Reply>) {
        let k = self.key(c);
        match reply {
            // Nothing under the key (or no answer, or a hash: the read fails): only now
            // may the caller's mode decide.
            None | Some(Reply::Nil | Reply::WrongType) => self.storage_error(state, c, true),
            // An unreadable value refuses the call (a data error), never runs.
            Some(Reply::Found(v)) if v.record(k).is_none() => {
                Self::finish(state, c, Outcome::Failed);
            }
            // A record: answered as a claim that found it.
            Some(Reply::Found(v)) => self.on_found(state, c, v),
            Some(_) => Self::finish(state, c, Outcome::Failed),
        }
    }

    /// Our caller `c` holds the key.
    fn acquired(state: &mut State, c: ClientId) {
        let client = &mut state.clients[usize::from(c)];
        client.phase = Phase::Running;
        client.holding = Holding::Lease;
        client.guard = true;
    }

    /// Our caller `c` found the record `v` (readable, not to be taken over): its own
    /// reservation, a finished record to replay, or someone else's reservation.
    fn on_found(&self, state: &mut State, c: ClientId, v: Stored) {
        let k = self.key(c);
        let ci = usize::from(c);
        // Our own pending record: a re-sent claim found its first write.
        if v.held_by(k, c, None) && !self.has(Defect::ResentClaimNotRecognised) {
            Self::acquired(state, c);
            return;
        }
        if let Stored::Completed { exec, .. } = v {
            // As the coordinator replays a record: a stored error marking a result
            // not storable (core's `unstorable_reason`) is `ResultNotStorable`.
            let outcome = match v.record(k) {
                Some(r) if r.is_stored_error() && unstorable_reason(r.result()).is_some() => {
                    Outcome::NotStorable
                }
                Some(r) if r.is_stored_error() => Outcome::Error(exec),
                Some(_) => Outcome::Value(exec),
                None => Outcome::Failed,
            };
            Self::finish(state, c, outcome);
            return;
        }
        let client_now = server_now() + time::Duration::seconds(i64::from(self.skew(c)));
        let looks_dead = v.record(k).is_some_and(|r| r.is_expired_at(client_now));
        let client = &mut state.clients[ci];
        if self.has(Defect::ClientClockLiveness) && looks_dead && client.patience > 0 {
            client.patience -= 1;
            Self::send(state, c, Op::Del, false);
            Self::send(state, c, Op::Claim, true);
        } else if self.config.in_flight == InFlight::Raise || client.patience == 0 {
            Self::finish(state, c, Outcome::InProgress);
        } else {
            client.phase = Phase::Waiting;
        }
    }

    /// Client `c` reads the reply to `op` (`None`: an error instead of the reply).
    fn on_reply(&self, state: &mut State, c: ClientId, op: Op, reply: Option<Reply>) {
        let ci = usize::from(c);
        let phase = state.clients[ci].phase;
        match (self.kind(c), phase) {
            (Kind::Ours, Phase::AwaitClaim) => self.on_claim(state, c, op, reply),
            (Kind::Ours, Phase::AwaitRead) => self.on_read(state, c, reply),
            (_, Phase::AwaitRenew) => {
                let k = usize::from(self.key(c));
                let client = &mut state.clients[ci];
                client.phase = Phase::Running;
                // As `run_renewing` decides: a renewal that was not written lost the lease.
                if let Some(Reply::Fenced(fence)) = reply
                    && !fence.written()
                    && !client.lost
                {
                    client.lost = true;
                    state.ledger[k].counted_losses += 1;
                }
            }
            (Kind::Ours, Phase::AwaitComplete) => match reply {
                Some(Reply::Fenced(fence)) => {
                    // As the coordinator's `complete` decides, with core's functions: a
                    // lost lease (another record, or ours gone: `Vacated`) is counted
                    // once per call, when the call held a confirmed lease.
                    let k = usize::from(self.key(c));
                    let client = &mut state.clients[ci];
                    if fence.lease_lost() && client.holding == Holding::Lease && !client.lost {
                        client.lost = true;
                        state.ledger[k].counted_losses += 1;
                    }
                    // Not required of a re-sent completion: the first send wrote (and
                    // its lost reply said 2), the second finds exactly its record and
                    // answers 1, so the loss goes uncounted. A known gap of the
                    // implementation (docs/reliability.md), not a double run: the check
                    // fails without this exclusion.
                    if client.expired && !client.lost && !client.completion_resent {
                        state.ledger[k].loss_uncounted = true;
                    }
                    let outcome = Self::own_outcome(state, c);
                    Self::finish(state, c, outcome);
                }
                Some(Reply::Done(_)) => {
                    let outcome = Self::own_outcome(state, c);
                    Self::finish(state, c, outcome);
                }
                _ => {
                    // Not stored: free the key for a retry, then answer the value.
                    Self::send(state, c, Op::Release, true);
                    state.clients[ci].phase = Phase::AwaitRelease;
                }
            },
            (Kind::Python, Phase::AwaitComplete) => Self::finish(state, c, Outcome::Value(c)),
            (_, Phase::AwaitRelease) => {
                let outcome = Self::own_outcome(state, c);
                Self::finish(state, c, outcome);
            }
            (Kind::Python, Phase::PyAwaitClaim) => match reply {
                Some(Reply::Done(true)) => {
                    let client = &mut state.clients[ci];
                    client.phase = Phase::Running;
                    client.holding = Holding::Lease;
                }
                Some(Reply::Done(false)) => {
                    Self::send(state, c, Op::PyGet, true);
                    state.clients[ci].phase = Phase::PyAwaitGet;
                }
                _ => Self::finish(state, c, Outcome::Failed),
            },
            (Kind::Python, Phase::PyAwaitGet) => match reply {
                Some(Reply::Found(Stored::Completed {
                    exec,
                    finish: Finish::Value,
                    ..
                })) => {
                    Self::finish(state, c, Outcome::Value(exec));
                }
                Some(Reply::Found(Stored::Pending { .. })) => {
                    Self::finish(state, c, Outcome::InProgress);
                }
                _ => Self::finish(state, c, Outcome::Failed),
            },
            // A reply nobody waits for any more.
            _ => {}
        }
    }

    /// The store applies (or loses) a client's next request.
    fn network(&self, s: &mut State, action: Action) {
        match action {
            Action::Deliver(c) => {
                let reply = self.apply_head(s, c);
                let req = s.clients[usize::from(c)].pipe.remove(0);
                if reply == Reply::Refused {
                    self.unwritten(s, c, req.op);
                }
                if req.resent && matches!(req.op, Op::Complete(_)) {
                    s.clients[usize::from(c)].completion_resent = true;
                }
                if req.awaited {
                    self.on_reply(s, c, req.op, Some(reply));
                }
            }
            Action::LoseRequest(c) => {
                s.network_faults -= 1;
                let req = s.clients[usize::from(c)].pipe.remove(0);
                self.unwritten(s, c, req.op);
                if req.awaited {
                    self.on_reply(s, c, req.op, None);
                }
            }
            Action::LoseReply(c) => {
                s.network_faults -= 1;
                let reply = self.apply_head(s, c);
                let req = s.clients[usize::from(c)].pipe.remove(0);
                if reply == Reply::Refused {
                    self.unwritten(s, c, req.op);
                }
                if req.awaited {
                    self.on_reply(s, c, req.op, None);
                }
            }
            Action::Resend(c) => {
                s.network_faults -= 1;
                self.apply_head(s, c);
                s.clients[usize::from(c)].pipe[0].resent = true;
            }
            _ => {}
        }
    }

    /// A write that never landed (lost on the way, or refused for the last time and not
    /// re-sent): counted in the key's ledger as what it leaves undone.
    fn unwritten(&self, s: &mut State, c: ClientId, op: Op) {
        let ledger = &mut s.ledger[usize::from(self.key(c))];
        match op {
            Op::Complete(_) | Op::Replace(_) => ledger.unstored += 1,
            // Python does not release after a failed completion: its reservation waits
            // for its TTL.
            Op::PySetCompleted(_) => {
                ledger.unstored += 1;
                ledger.releases_lost += 1;
            }
            Op::Release | Op::PyDel => ledger.releases_lost += 1,
            _ => {}
        }
    }

    /// The final record our caller `c` writes for a value: its result, or, when the
    /// result is unstorable and core's [`check_storable`] refuses it (as the
    /// coordinator's `encode` checks it), the stored error marking it not storable.
    fn value_record(&self, c: ClientId, unstorable: bool) -> Stored {
        if !unstorable {
            return self.final_record(c, Finish::Value);
        }
        let result = self.final_record(c, Finish::Unstorable);
        let Stored::Completed {
            exec,
            finish,
            mentions,
            ..
        } = result
        else {
            return result;
        };
        let storable = RawValue::from_string(result_text(exec, finish, mentions))
            .is_ok_and(|raw| check_storable(&raw).is_ok());
        if storable || self.has(Defect::UnstorableResultWritten) {
            result
        } else {
            self.final_record(c, Finish::NotStorable)
        }
    }

    fn cancel(&self, state: &mut State, c: ClientId) {
        let ci = usize::from(c);
        let k = usize::from(self.key(c));
        let detached = self.config.mode == Mode::Detached;
        let client = &mut state.clients[ci];
        client.outcome = Some(Outcome::Cancelled);
        client.caller_gone = true;
        let started = client.effect
            && matches!(
                client.phase,
                Phase::Running | Phase::AwaitRenew | Phase::AwaitComplete
            );
        if detached && !(self.has(Defect::DetachedReleasesOnCancel) && started) {
            // The task runs on, to completion, whatever happens to the caller.
            return;
        }
        for req in &mut client.pipe {
            req.awaited = false;
        }
        let guard = client.guard;
        client.phase = Phase::Done;
        client.guard = false;
        if guard {
            Self::send(state, c, Op::Release, false);
        }
        if started && !detached {
            state.ledger[k].cancelled_after_effect += 1;
        }
    }
}

impl Model for ProtocolModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let client = Client {
            phase: Phase::Idle,
            guard: false,
            pipe: Vec::new(),
            effect: false,
            lost: false,
            finish: None,
            expired: false,
            completion_resent: false,
            holding: Holding::Lease,
            renewals: self.config.renewals,
            patience: self.config.patience,
            takeovers: 0,
            caller_gone: false,
            read_after_refusal: false,
            outcome: None,
        };
        vec![State {
            store: vec![None; usize::from(self.config.keys)],
            clients: vec![client; self.config.clients.len()],
            ledger: vec![Ledger::default(); usize::from(self.config.keys)],
            network_faults: self.config.network_faults,
            lease_losses: self.config.lease_losses,
            cancellations: self.config.cancellations,
            plant: self.config.plant.is_some(),
            write_refusals: self.config.write_refusals,
            refusing: false,
        }]
    }

    fn actions(&self, state: &State, actions: &mut Vec<Action>) {
        for (ci, client) in state.clients.iter().enumerate() {
            let c = ci as ClientId;
            let ours = self.kind(c) == Kind::Ours;
            match client.phase {
                Phase::Idle => actions.push(Action::Start(c)),
                Phase::Running => {
                    if client.effect {
                        actions.push(Action::Complete(c));
                        if ours && self.config.unstorable_results {
                            actions.push(Action::CompleteUnstorable(c));
                        }
                    } else {
                        actions.push(Action::Effect(c));
                        if client.renewals > 0 && !client.lost && client.holding == Holding::Lease {
                            actions.push(Action::Renew(c));
                        }
                        let fails = match self.kind(c) {
                            Kind::Ours => self.config.failures != Failures::Never,
                            // Python releases (DEL) on a failure, like our `Released`.
                            Kind::Python => self.config.failures == Failures::Released,
                        };
                        if fails {
                            actions.push(Action::Fail(c));
                        }
                    }
                }
                Phase::Waiting => actions.push(Action::Poll(c)),
                _ => {}
            }
            let cancellable = !matches!(
                client.phase,
                Phase::Idle | Phase::Done | Phase::PyAwaitClaim | Phase::PyAwaitGet
            );
            if ours && cancellable && !client.caller_gone && state.cancellations > 0 {
                actions.push(Action::Cancel(c));
            }
            if let Some(head) = client.pipe.first() {
                actions.push(Action::Deliver(c));
                if state.network_faults > 0 {
                    actions.push(Action::LoseRequest(c));
                    actions.push(Action::LoseReply(c));
                    if !head.resent {
                        actions.push(Action::Resend(c));
                    }
                }
            }
        }
        for (k, value) in state.store.iter().enumerate() {
            let k = k as u8;
            match value {
                Some(Stored::Pending { writer, .. })
                    if state.lease_losses > 0
                        && state.clients[usize::from(writer.client())].phase != Phase::Done =>
                {
                    actions.push(Action::ExpireLease(k));
                }
                None if state.plant => actions.push(Action::Plant(k)),
                _ => {}
            }
        }
        if state.refusing {
            actions.push(Action::AcceptWrites);
        } else if state.write_refusals > 0 && state.clients.iter().any(|c| c.phase != Phase::Done) {
            actions.push(Action::RefuseWrites);
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Start(c) => {
                let ours = self.kind(c) == Kind::Ours;
                let client = &mut s.clients[usize::from(c)];
                // The token exists and the guard is armed before the claim is sent.
                client.guard = ours && !self.has(Defect::GuardArmedAfterClaim);
                client.phase = if ours {
                    Phase::AwaitClaim
                } else {
                    Phase::PyAwaitClaim
                };
                Self::send(&mut s, c, if ours { Op::Claim } else { Op::PySetNx }, true);
            }
            Action::Effect(c) => {
                s.clients[usize::from(c)].effect = true;
                let ledger = &mut s.ledger[usize::from(self.key(c))];
                match self.kind(c) {
                    Kind::Ours => ledger.effects += 1,
                    Kind::Python => ledger.python_effects += 1,
                }
            }
            Action::Renew(c) => {
                let op = match self.kind(c) {
                    Kind::Ours => Op::Renew,
                    Kind::Python => Op::PySetPending,
                };
                let client = &mut s.clients[usize::from(c)];
                client.renewals -= 1;
                client.phase = Phase::AwaitRenew;
                Self::send(&mut s, c, op, true);
            }
            Action::Complete(c) | Action::CompleteUnstorable(c) => {
                let done = self.value_record(c, matches!(action, Action::CompleteUnstorable(_)));
                let op = match (self.kind(c), s.clients[usize::from(c)].holding) {
                    (Kind::Python, _) => Op::PySetCompleted(done),
                    (Kind::Ours, Holding::Unprotected) => Op::Replace(done),
                    (Kind::Ours, _) => Op::Complete(done),
                };
                let client = &mut s.clients[usize::from(c)];
                client.finish = Some(Finish::Value);
                client.phase = Phase::AwaitComplete;
                Self::send(&mut s, c, op, true);
            }
            Action::Fail(c) => {
                let (op, phase) = match (self.kind(c), self.config.failures) {
                    (Kind::Python, _) => (Op::PyDel, Phase::AwaitRelease),
                    (Kind::Ours, Failures::Stored) => {
                        s.clients[usize::from(c)].finish = Some(Finish::Error);
                        let error = self.final_record(c, Finish::Error);
                        (Op::Complete(error), Phase::AwaitComplete)
                    }
                    (Kind::Ours, _) => (Op::Release, Phase::AwaitRelease),
                };
                s.clients[usize::from(c)].phase = phase;
                Self::send(&mut s, c, op, true);
            }
            Action::Poll(c) => {
                let client = &mut s.clients[usize::from(c)];
                client.patience -= 1;
                client.phase = Phase::AwaitClaim;
                Self::send(&mut s, c, Op::Claim, true);
            }
            Action::Cancel(c) => {
                s.cancellations -= 1;
                self.cancel(&mut s, c);
            }
            Action::Deliver(_)
            | Action::LoseRequest(_)
            | Action::LoseReply(_)
            | Action::Resend(_) => self.network(&mut s, action),
            Action::ExpireLease(k) => {
                s.lease_losses -= 1;
                if let Some(Stored::Pending {
                    writer: Writer::Ours(c),
                    ..
                }) = s.store[usize::from(k)]
                {
                    let client = &mut s.clients[usize::from(c)];
                    let running = matches!(
                        client.phase,
                        Phase::Running | Phase::AwaitRenew | Phase::AwaitComplete
                    );
                    if running && client.holding == Holding::Lease {
                        client.expired = true;
                    }
                }
                s.store[usize::from(k)] = None;
                s.ledger[usize::from(k)].lease_losses += 1;
            }
            Action::Plant(k) => {
                s.plant = false;
                s.store[usize::from(k)] = self.config.plant;
            }
            Action::RefuseWrites => {
                s.write_refusals -= 1;
                s.refusing = true;
            }
            Action::AcceptWrites => s.refusing = false,
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(AT_MOST_ONCE, |_, s: &State| {
                s.ledger
                    .iter()
                    .all(|l| l.effects + l.python_effects <= 1 + l.excused())
            }),
            Property::always(COMPLETED_STANDS, |_, s: &State| {
                s.ledger.iter().all(|l| !l.completed_clobbered)
            }),
            Property::always(NO_STEALING, |_, s: &State| {
                s.ledger.iter().all(|l| !l.stolen)
            }),
            Property::always(ONE_VALUE, one_value),
            Property::always(LOSSES_COUNTED, |_, s: &State| {
                s.ledger.iter().all(|l| !l.loss_uncounted)
            }),
            Property::always(EVENTUALLY_FREE, |m: &Self, s: &State| {
                !m.is_terminal(s) || eventually_free(s)
            }),
            Property::always(WAITERS_TERMINATE, |m: &Self, s: &State| {
                !m.is_terminal(s) || s.clients.iter().all(|c| c.phase == Phase::Done)
            }),
            Property::sometimes(REPLAYED, |m: &Self, s: &State| {
                s.clients.iter().enumerate().any(|(c, client)| {
                    matches!(client.outcome, Some(Outcome::Value(e)) if usize::from(e) != c)
                        && m.kind(c as ClientId) == Kind::Ours
                })
            }),
            Property::sometimes(REPLAYED_ERROR, |m: &Self, s: &State| {
                s.clients.iter().enumerate().any(|(c, client)| {
                    matches!(client.outcome, Some(Outcome::Error(e)) if usize::from(e) != c)
                        && m.kind(c as ClientId) == Kind::Ours
                })
            }),
            Property::sometimes(REFUSED_REPLAYED, |_, s: &State| {
                s.clients.iter().enumerate().any(|(c, client)| {
                    client.read_after_refusal
                        && matches!(client.outcome, Some(Outcome::Value(e)) if usize::from(e) != c)
                })
            }),
            Property::sometimes(NOT_STORABLE_REFUSED, |_, s: &State| {
                s.clients
                    .iter()
                    .any(|client| client.outcome == Some(Outcome::NotStorable))
            }),
        ]
    }
}

/// "At most one effect per key outside counted losses."
pub const AT_MOST_ONCE: &str = "at most one effect per key outside counted losses";
/// "A completed record is never overwritten or deleted by a write of ours."
pub const COMPLETED_STANDS: &str = "a completed record is never overwritten or deleted by us";
/// "No write of ours changes or deletes another owner's live reservation."
pub const NO_STEALING: &str = "no live reservation is taken from its owner";
/// "Every caller that returns a value (or a stored error) returns the one execution's."
pub const ONE_VALUE: &str = "every returned value is the one execution's";
/// "A caller whose reservation expired while it ran, and that reads its completion's
/// reply, counts the lost lease" (the `LeaseLost` count a double run is excused by).
pub const LOSSES_COUNTED: &str = "a lease lost while running is counted";
/// "No key stays reserved after every client stopped."
pub const EVENTUALLY_FREE: &str = "eventually free";
/// "Every caller, waiters included, finishes."
pub const WAITERS_TERMINATE: &str = "waiters terminate";
/// Not a requirement: an example that a second caller replays the stored value (the
/// model is not vacuous).
pub const REPLAYED: &str = "a second caller replays the stored value";
/// Not a requirement: an example that a second caller replays a stored error.
pub const REPLAYED_ERROR: &str = "a second caller replays the stored error";
/// Not a requirement: an example that a caller whose claim the server refused reads the
/// key and replays the stored value.
pub const REFUSED_REPLAYED: &str = "a refused claim reads the key and replays the value";
/// Not a requirement: an example that a retry of a call whose result was not storable
/// gets `ResultNotStorable`.
pub const NOT_STORABLE_REFUSED: &str = "a retry gets ResultNotStorable";

/// Every safety property, by name.
pub const SAFETY: [&str; 7] = [
    AT_MOST_ONCE,
    COMPLETED_STANDS,
    NO_STEALING,
    ONE_VALUE,
    LOSSES_COUNTED,
    EVENTUALLY_FREE,
    WAITERS_TERMINATE,
];

fn one_value(m: &ProtocolModel, s: &State) -> bool {
    s.ledger.iter().enumerate().all(|(k, ledger)| {
        if ledger.excused() > 0 {
            return true;
        }
        let k = k as u8;
        let stored = match s.store[usize::from(k)] {
            Some(Stored::Completed { exec, finish, .. }) => match finish {
                // A value, readable or not.
                Finish::Value | Finish::Unstorable => Some((exec, Finish::Value)),
                Finish::Error => Some((exec, Finish::Error)),
                // No value: retries get `ResultNotStorable`, the caller its own value.
                Finish::NotStorable => None,
            },
            _ => None,
        };
        let mut values = s
            .clients
            .iter()
            .enumerate()
            .filter(|(c, _)| m.key(*c as ClientId) == k)
            .filter_map(|(_, c)| match c.outcome {
                Some(Outcome::Value(v)) => Some((v, Finish::Value)),
                Some(Outcome::Error(v)) => Some((v, Finish::Error)),
                _ => None,
            })
            .chain(stored);
        let first = values.next();
        values.all(|v| Some(v) == first)
    })
}

/// In a final state: no key holds a reservation, unless its release was lost on the way
/// (Redis's TTL then frees it within a lease).
fn eventually_free(s: &State) -> bool {
    s.store.iter().zip(&s.ledger).all(|(value, ledger)| {
        !matches!(value, Some(Stored::Pending { .. })) || ledger.releases_lost > 0
    })
}

/// The lease, for the docs: the skews in the configurations are measured against it.
pub const LEASE: i64 = LEASE_SECS;
