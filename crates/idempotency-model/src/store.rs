//! The store as Redis executes it: abstract values, their real bytes, and one atomic step
//! per command or script.
//!
//! Every ownership and liveness decision goes through the core's own functions on the
//! real encoded record ([`holds_lease`], [`is_abandoned`], [`IdempotencyRecord::from_json`]),
//! so the model cannot drift from them. What the Lua scripts do around those decisions is
//! restated in [`apply`]; `tests/lua_agreement.rs` runs the real scripts on a real
//! redis-server and checks they agree with [`apply`] on every modelled value.

use std::cell::RefCell;
use std::collections::HashMap;

use idempotency_core::{
    Fence, IdempotencyRecord, RawValue, RecordParts, RecordStatus, holds_lease, is_abandoned,
    looks_finished, unstorable_marker,
};
use time::OffsetDateTime;

use crate::defect::Defect;

/// A client of the model (an index into the configuration's client list).
pub type ClientId = u8;

/// The operation name every modelled record carries.
pub const OPERATION: &str = "model.op";

/// The lease, in seconds (the coordinator's default is longer; only the ratio to the
/// clock skews matters).
pub const LEASE_SECS: i64 = 3;

/// The server's clock. Time does not advance in the model: every step happens within a
/// lease, and expiry is a fault step ([`crate::Action::ExpireLease`]).
pub fn server_now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The owner token of one of our clients: fixed per client, 32 hex digits like the real
/// ones.
pub fn token(client: ClientId) -> String {
    format!("{:032x}", 0xA000 + u32::from(client))
}

/// The Redis key name of model key `key`.
pub fn key_name(key: u8) -> String {
    format!("k{key}")
}

/// Who wrote a pending record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Writer {
    /// One of our clients (the record carries its owner token).
    Ours(ClientId),
    /// The Python 0.5.0 client (no owner token).
    Python(ClientId),
}

impl Writer {
    /// The client behind the writer.
    pub fn client(self) -> ClientId {
        match self {
            Self::Ours(c) | Self::Python(c) => c,
        }
    }
}

/// How an execution ended, as its final record stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Finish {
    /// A result (status `completed`).
    Value,
    /// An error of the action the error policy stores (status `stored_error`): retries
    /// replay it as an error instead of running the action again.
    Error,
    /// A result the record decoder refuses (status `completed`, a string cut inside an
    /// emoji: a lone surrogate escape). Structurally a finished record
    /// ([`looks_finished`]) that no client reads; only the defect
    /// [`Defect::UnstorableResultWritten`] writes it.
    Unstorable,
    /// The stored error the coordinator writes when its result is not storable (status
    /// `stored_error`, core's [`unstorable_marker`]): retries get `ResultNotStorable`, a
    /// data error with no value. Holds no user data (`mentions` is ignored).
    NotStorable,
}

/// A value under a key, as the model tracks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stored {
    /// A pending record; `skew` is the clock offset (seconds) of whoever stamped it.
    Pending {
        /// Who reserved the key.
        writer: Writer,
        /// The stamping clock's offset from the server's, in seconds.
        skew: i8,
    },
    /// A final record holding the value (or stored error) of execution `exec` (the
    /// executing client). `mentions` is a token whose owner text (`"owner":"<token>"`)
    /// appears inside the result: results are user data and may contain any text.
    Completed {
        /// The client whose execution produced the value.
        exec: ClientId,
        /// A value (`completed`) or a stored error (`stored_error`; never Python's).
        finish: Finish,
        /// Written by the Python client (no owner, its bytes differ).
        python: bool,
        /// A client whose owner object appears inside the result.
        mentions: Option<ClientId>,
    },
    /// Bytes no JSON decoder accepts.
    NotJson,
    /// JSON that is not a record (an array).
    NotRecord,
    /// A pending record of an owner long gone: past its `expires_at` by more than
    /// `ABANDONED_AFTER` on the server's clock, with no TTL (written by hand).
    Abandoned,
    /// A value of another Redis type (a hash).
    WrongType,
}

impl Stored {
    /// The value's bytes as they sit in Redis (`None` for a hash).
    pub fn bytes(self, key: u8) -> Option<Vec<u8>> {
        let key_name = key_name(key);
        let record = |result: String, status, expires_at, owner: Option<String>| {
            let raw = RawValue::from_string(result).ok()?;
            IdempotencyRecord::from_parts(RecordParts {
                operation: OPERATION.to_owned(),
                idempotency_key: key_name.clone(),
                result: raw,
                created_at: server_now(),
                expires_at,
                status,
                fingerprint: None,
                owner,
            })
            .ok()
            .map(|r| r.to_json().into_bytes())
        };
        let lease = time::Duration::seconds(LEASE_SECS);
        match self {
            Self::Pending { writer, skew } => record(
                "null".to_owned(),
                RecordStatus::Pending,
                server_now() + time::Duration::seconds(i64::from(skew)) + lease,
                match writer {
                    Writer::Ours(c) => Some(token(c)),
                    Writer::Python(_) => None,
                },
            ),
            Self::Completed {
                exec,
                finish,
                python,
                mentions,
            } => {
                let status = match finish {
                    Finish::Value | Finish::Unstorable => RecordStatus::Completed,
                    Finish::Error | Finish::NotStorable => RecordStatus::StoredError,
                };
                let result = result_text(exec, finish, mentions);
                let mut bytes = record(
                    result,
                    status,
                    server_now() + time::Duration::hours(1),
                    None,
                )?;
                if python {
                    // The Python library writes its own field order; only the bytes differ.
                    bytes.insert(bytes.len() - 1, b' ');
                }
                Some(bytes)
            }
            Self::NotJson => Some(b"\xff{not json".to_vec()),
            Self::NotRecord => Some(b"[1,2]".to_vec()),
            Self::Abandoned => record(
                "null".to_owned(),
                RecordStatus::Pending,
                server_now() - time::Duration::hours(2),
                Some(format!("{:032x}", 0xDEAD)),
            ),
            Self::WrongType => None,
        }
    }

    /// The decoded record, as the coordinator and every reader decode it.
    pub fn record(self, key: u8) -> Option<IdempotencyRecord> {
        if let Some(known) = DECODED.with_borrow(|decoded| decoded.get(&(self, key)).cloned()) {
            return known;
        }
        let record = self
            .bytes(key)
            .and_then(|b| IdempotencyRecord::from_json(&b, OPERATION, &key_name(key)).ok());
        DECODED.with_borrow_mut(|decoded| decoded.insert((self, key), record.clone()));
        record
    }

    /// Whether this is the pending record of client `client`'s lease, decided by the
    /// core's [`holds_lease`] on the decoded bytes (or, with the substring defect, by
    /// searching the bytes for the owner text, as the scripts once did).
    pub fn held_by(self, key: u8, client: ClientId, defect: Option<Defect>) -> bool {
        if defect == Some(Defect::OwnerBySubstring) {
            let needle = format!("\"owner\":\"{}\"", token(client));
            return self
                .bytes(key)
                .is_some_and(|b| String::from_utf8_lossy(&b).contains(needle.as_str()));
        }
        self.record(key)
            .is_some_and(|r| holds_lease(&r, &token(client)))
    }

    /// Whether these are bytes that are, by their structure, a finished record
    /// (core's [`looks_finished`]: status `completed` or `stored_error`) that the record
    /// decoder refuses: its action ran, so a claim refuses the call rather than take
    /// it over.
    pub fn finished_unreadable(self, key: u8) -> bool {
        self.bytes(key).is_some_and(|b| looks_finished(&b)) && self.record(key).is_none()
    }

    /// Whether a claim must take this value over: unreadable, or an abandoned
    /// reservation on the server's clock ([`is_abandoned`]). (A finished record that
    /// cannot be read is refused first: [`Stored::finished_unreadable`].)
    pub fn needs_takeover(self, key: u8) -> bool {
        match self {
            Self::WrongType => false,
            _ => self
                .record(key)
                .is_none_or(|r| is_abandoned(&r, server_now())),
        }
    }

    /// Whether `cjson` reads the bytes (what `complete.lua` asks before its owner check).
    pub fn is_json(self, key: u8) -> bool {
        self.bytes(key)
            .is_some_and(|b| serde_json::from_slice::<serde_json::Value>(&b).is_ok())
    }
}

/// The JSON text of the result a final record of execution `exec` holds: a value
/// (`{"v":exec}`), a stored error (`{"e":exec}`), a value cut inside an emoji
/// (`{"v":exec,"cut":"\ud83d"}`, which the record decoder refuses), each echoing the
/// owner object of client `mentions` if any, or core's [`unstorable_marker`] naming
/// the execution.
pub fn result_text(exec: ClientId, finish: Finish, mentions: Option<ClientId>) -> String {
    let (field, cut) = match finish {
        Finish::Value => ("v", ""),
        Finish::Error => ("e", ""),
        Finish::Unstorable => ("v", ",\"cut\":\"\\ud83d\""),
        Finish::NotStorable => {
            let reason = format!("the result of execution {exec} cannot be read back");
            return unstorable_marker(&reason).get().to_owned();
        }
    };
    match mentions {
        None => format!("{{\"{field}\":{exec}{cut}}}"),
        Some(m) => format!(
            "{{\"{field}\":{exec}{cut},\"echo\":{{\"owner\":\"{}\"}}}}",
            token(m)
        ),
    }
}

thread_local! {
    /// Each value's decoded record, per key: encoding and decoding are pure, and the
    /// checker asks about the same few values at every step.
    static DECODED: RefCell<HashMap<(Stored, u8), Option<IdempotencyRecord>>> =
        RefCell::new(HashMap::new());
}

/// A command or script sent to the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `SET key pending NX GET PX lease` (ours).
    Claim,
    /// `takeover.lua` with the value found unreadable.
    Takeover(Stored),
    /// `renew.lua`.
    Renew,
    /// `complete.lua` with our final record (a completed record, or a stored error:
    /// `complete_with_error` sends the same script).
    Complete(Stored),
    /// `release.lua`.
    Release,
    /// `delete_if_equal.lua` with the bytes read: deletes only while the key holds
    /// exactly them (the repository's removal of an expired record it read, the admin
    /// eviction). Not sent by the model's callers (not on the claim path); checked
    /// against the real script.
    DeleteIfEqual(Stored),
    /// Defect: a plain `DEL` of a record judged expired by a client clock.
    Del,
    /// Defect: an unconditional `SET` of our completed record.
    Replace(Stored),
    /// Python: `SET key pending NX`.
    PySetNx,
    /// Python: plain `SET` of its pending record with no owner token (its renewal,
    /// `repository.replace`, whatever the key holds).
    PySetPending,
    /// Python: plain `SET` of its completed record.
    PySetCompleted(Stored),
    /// Python: `DEL` (its release after the action failed, whatever the key holds).
    PyDel,
    /// Python: `GET`.
    PyGet,
    /// Ours: `GET`, after the server refused the claim with an error reply.
    Get,
}

impl Op {
    /// Whether the command writes (a server that refuses writes answers it with an
    /// error and applies nothing): everything but `GET`.
    pub fn writes(self) -> bool {
        !matches!(self, Self::Get | Self::PyGet)
    }
}

/// A reply from the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Nil (a claim or takeover that wrote ours, a GET of an empty key).
    Nil,
    /// A value (a claim that found it, a GET).
    Found(Stored),
    /// A fenced script's answer (`renew.lua`, `complete.lua`, `release.lua`), as the
    /// Redis store reads the script's integer ([`Fence::from_script_reply`]).
    Fenced(Fence),
    /// A plain command's OK/nil or count (`SET NX`, `SET`, `DEL`).
    Done(bool),
    /// `WRONGTYPE`.
    WrongType,
    /// The error reply of a server that refuses writes (`NOREPLICAS`, `OOM`,
    /// `READONLY`, `MISCONF`): nothing was written. Never an answer of [`apply`] (the
    /// refusal is a fault of the model's state, not of the scripts).
    Refused,
}

/// The integer a fenced script answers with `fence` (the inverse of
/// [`Fence::from_script_reply`] on the scripts' replies): 1 held, 2 vacated, 0 lost.
pub fn script_reply(fence: Fence) -> i64 {
    match fence {
        Fence::Held => 1,
        Fence::Vacated => 2,
        _ => 0,
    }
}

/// One atomic step of the store: the value under the key after `op` of `client` and the
/// reply. A completion carries the final record it writes (its result, or its stored
/// error, with whatever text the result carries).
pub fn apply(
    key: u8,
    current: Option<Stored>,
    op: Op,
    client: ClientId,
    skew: i8,
    defect: Option<Defect>,
) -> (Option<Stored>, Reply) {
    let ours = Stored::Pending {
        writer: Writer::Ours(client),
        skew,
    };
    let held = current.is_some_and(|v| v.held_by(key, client, defect));
    let wrong_type = current == Some(Stored::WrongType);
    match op {
        Op::Claim => match current {
            None => (Some(ours), Reply::Nil),
            Some(Stored::WrongType) => (current, Reply::WrongType),
            Some(v) => (current, Reply::Found(v)),
        },
        Op::Takeover(seen) => match current {
            Some(Stored::WrongType) => (current, Reply::WrongType),
            Some(v) if v != seen => (current, Reply::Found(v)),
            _ => (Some(ours), Reply::Nil),
        },
        Op::Renew | Op::Complete(_) | Op::Release | Op::DeleteIfEqual(_) if wrong_type => {
            (current, Reply::WrongType)
        }
        Op::Renew if held => (Some(ours), Reply::Fenced(Fence::Held)),
        // A re-sent completion finding exactly what it writes: already done.
        Op::Complete(done) if current == Some(done) => (current, Reply::Fenced(Fence::Held)),
        Op::Complete(done) if held => (Some(done), Reply::Fenced(Fence::Held)),
        // Written though our reservation was gone: nothing there, or bytes no client
        // reads (complete.lua answers 2), unless they are by their shape a finished
        // record (its action ran: it stands).
        Op::Complete(done)
            if current.is_none_or(|v| !v.is_json(key) && !v.finished_unreadable(key)) =>
        {
            (Some(done), Reply::Fenced(Fence::Vacated))
        }
        Op::Release if held => (None, Reply::Fenced(Fence::Held)),
        Op::Renew | Op::Complete(_) | Op::Release => (current, Reply::Fenced(Fence::Lost)),
        Op::DeleteIfEqual(seen) if current == Some(seen) => (None, Reply::Done(true)),
        Op::DeleteIfEqual(_) => (current, Reply::Done(false)),
        Op::Del | Op::PyDel => (None, Reply::Done(current.is_some())),
        Op::Replace(done) | Op::PySetCompleted(done) => (Some(done), Reply::Done(true)),
        Op::PySetNx => match current {
            None => (
                Some(Stored::Pending {
                    writer: Writer::Python(client),
                    skew,
                }),
                Reply::Done(true),
            ),
            Some(_) => (current, Reply::Done(false)),
        },
        Op::PySetPending => (
            Some(Stored::Pending {
                writer: Writer::Python(client),
                skew,
            }),
            Reply::Done(true),
        ),
        Op::PyGet | Op::Get => match current {
            None => (None, Reply::Nil),
            Some(Stored::WrongType) => (current, Reply::WrongType),
            Some(v) => (current, Reply::Found(v)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_modelled_value_decodes_as_intended() {
        let ours = Stored::Pending {
            writer: Writer::Ours(0),
            skew: 0,
        };
        assert!(ours.held_by(0, 0, None));
        assert!(!ours.held_by(0, 1, None));
        assert!(!ours.needs_takeover(0));
        let done = Stored::Completed {
            exec: 1,
            finish: Finish::Value,
            python: false,
            mentions: Some(0),
        };
        assert!(done.record(0).is_some());
        assert!(!done.held_by(0, 0, None));
        assert!(done.held_by(0, 0, Some(Defect::OwnerBySubstring)));
        assert!(Stored::NotJson.needs_takeover(0));
        assert!(Stored::NotRecord.needs_takeover(0));
        assert!(Stored::Abandoned.needs_takeover(0));
        assert!(!Stored::NotJson.is_json(0));
        assert!(Stored::NotRecord.is_json(0));
        let py = Stored::Pending {
            writer: Writer::Python(2),
            skew: 0,
        };
        assert!(py.record(0).is_some_and(|r| r.owner().is_none()));
        let error = Stored::Completed {
            exec: 1,
            finish: Finish::Error,
            python: false,
            mentions: Some(0),
        };
        assert!(error.record(0).is_some_and(|r| r.is_stored_error()));
        assert!(!error.held_by(0, 0, None));
        assert!(!error.needs_takeover(0));
        let cut = Stored::Completed {
            exec: 1,
            finish: Finish::Unstorable,
            python: false,
            mentions: Some(0),
        };
        assert!(cut.record(0).is_none());
        assert!(cut.finished_unreadable(0));
        assert!(cut.needs_takeover(0));
        assert!(!cut.is_json(0));
        let raw = RawValue::from_string(result_text(1, Finish::Unstorable, None));
        assert!(raw.is_ok_and(|raw| idempotency_core::check_storable(&raw).is_err()));
        let marker = Stored::Completed {
            exec: 1,
            finish: Finish::NotStorable,
            python: false,
            mentions: None,
        };
        assert!(
            marker.record(0).is_some_and(|r| r.is_stored_error()
                && idempotency_core::unstorable_reason(r.result()).is_some())
        );
        assert!(!marker.finished_unreadable(0));
        assert!(!marker.needs_takeover(0));
        assert!(!Stored::NotJson.finished_unreadable(0));
        assert!(!done.finished_unreadable(0));
        assert!(!error.finished_unreadable(0));
        assert!(
            error
                .record(0)
                .is_some_and(|r| idempotency_core::unstorable_reason(r.result()).is_none())
        );
    }
}
