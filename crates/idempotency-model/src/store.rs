//! The store as Redis executes it: abstract values, their real bytes, and one atomic step
//! per command or script.
//!
//! Every ownership and liveness decision goes through the core's own functions on the
//! real encoded record ([`holds_lease`], [`is_abandoned`], [`IdempotencyRecord::from_json`]),
//! so the model cannot drift from them. What the Lua scripts do around those decisions is
//! restated in [`apply`]; `tests/lua_agreement.rs` runs the real scripts on a real
//! redis-server and checks they agree with [`apply`] on every modelled value.

use idempotency_core::{
    IdempotencyRecord, RawValue, RecordParts, RecordStatus, holds_lease, is_abandoned,
};
use time::OffsetDateTime;

use crate::config::Defect;

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
    /// A completed record holding the value of execution `exec` (the executing client).
    /// `mentions` is a token whose owner text (`"owner":"<token>"`) appears inside the
    /// result: results are user data and may contain any text.
    Completed {
        /// The client whose execution produced the value.
        exec: ClientId,
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
                python,
                mentions,
            } => {
                let result = match mentions {
                    None => format!("{{\"v\":{exec}}}"),
                    Some(m) => format!("{{\"v\":{exec},\"echo\":{{\"owner\":\"{}\"}}}}", token(m)),
                };
                let mut bytes = record(
                    result,
                    RecordStatus::Completed,
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
        let bytes = self.bytes(key)?;
        IdempotencyRecord::from_json(&bytes, OPERATION, &key_name(key)).ok()
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

    /// Whether a claim must take this value over: unreadable, or an abandoned
    /// reservation on the server's clock ([`is_abandoned`]).
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

/// A command or script sent to the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `SET key pending NX GET PX lease` (ours).
    Claim,
    /// `takeover.lua` with the value found unreadable.
    Takeover(Stored),
    /// `renew.lua`.
    Renew,
    /// `complete.lua` with our completed record.
    Complete,
    /// `release.lua`.
    Release,
    /// Defect: a plain `DEL` of a record judged expired by a client clock.
    Del,
    /// Defect: an unconditional `SET` of our completed record.
    Replace,
    /// Python: `SET key pending NX`.
    PySetNx,
    /// Python: plain `SET` of its pending record (renew).
    PySetPending,
    /// Python: plain `SET` of its completed record.
    PySetCompleted,
    /// Python: `DEL` (release after a failure).
    PyDel,
    /// Python: `GET`.
    PyGet,
}

/// A reply from the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reply {
    /// Nil (a claim or takeover that wrote ours, a GET of an empty key).
    Nil,
    /// A value (a claim that found it, a GET).
    Found(Stored),
    /// A script's 1/0, or `SET NX`'s OK/nil.
    Done(bool),
    /// `WRONGTYPE`.
    WrongType,
}

/// One atomic step of the store: the value under the key after `op` of `client` and the
/// reply. `completed` is the completed record `client` writes (its result, with whatever
/// text the result carries).
pub fn apply(
    key: u8,
    current: Option<Stored>,
    op: Op,
    client: ClientId,
    completed: Stored,
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
        Op::Renew | Op::Complete | Op::Release if wrong_type => (current, Reply::WrongType),
        Op::Renew if held => (Some(ours), Reply::Done(true)),
        Op::Complete if current == Some(completed) => (current, Reply::Done(true)),
        // Written over nothing, our own reservation, or bytes that are not JSON at all.
        Op::Complete if current.is_none_or(|v| held || !v.is_json(key)) => {
            (Some(completed), Reply::Done(true))
        }
        Op::Release if held => (None, Reply::Done(true)),
        Op::Renew | Op::Complete | Op::Release => (current, Reply::Done(false)),
        Op::Del | Op::PyDel => (None, Reply::Done(current.is_some())),
        Op::Replace | Op::PySetCompleted => (Some(completed), Reply::Done(true)),
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
        Op::PyGet => match current {
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
    }
}
