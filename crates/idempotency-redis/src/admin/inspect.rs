//! One key, read whole: its value (or its `DUMP` for another Redis type), its TTL and its
//! memory, in one atomic script call.

use std::time::Duration;

use fred::prelude::{LuaInterface, Value};
use idempotency_core::{IdempotencyRecord, RecordId, Result, is_abandoned};
use time::OffsetDateTime;

use super::Admin;
use crate::errors::classify;

/// What [`Inspection::owner_label`] says of a reservation without an owner token: the
/// Python library 0.5.0 writes none.
pub const NO_OWNER_LABEL: &str = "python/no owner";

/// Reads a key atomically: nil when absent, else `{type, pttl, value, memory}` where
/// `value` is the string itself or, for another type, its `DUMP` (so an eviction can be
/// made conditional on it), and `memory` is `MEMORY USAGE` (-1 when refused).
pub(super) const READ_SCRIPT: &str = r"
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then return false end
local pttl = redis.call('PTTL', KEYS[1])
local value
if t == 'string' then value = redis.call('GET', KEYS[1]) else value = redis.call('DUMP', KEYS[1]) end
local ok, mem = pcall(redis.call, 'MEMORY', 'USAGE', KEYS[1])
if not ok or type(mem) ~= 'number' then mem = -1 end
return {t, pttl, value, mem}
";

/// What a key holds, as far as the libraries are concerned.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Content {
    /// A record either library can read.
    Record(Box<IdempotencyRecord>),
    /// A string neither library can read as a record (not UTF-8, not JSON, JSON of
    /// another shape, empty).
    Unreadable {
        /// Why, as the decoder says it.
        reason: String,
    },
    /// A value of another Redis type than string (a hash, a list, …).
    WrongType,
}

/// One key as found by [`Admin::inspect`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Inspection {
    /// The Redis key.
    pub redis_key: String,
    /// The identity the key was derived from.
    pub id: RecordId,
    /// The Redis type (`string` for every record).
    pub redis_type: String,
    /// The time to live Redis holds (`PTTL`); `None` when the key has no expiry.
    pub pttl: Option<Duration>,
    /// `MEMORY USAGE` of the key in bytes, when the server answered it.
    pub memory_bytes: Option<u64>,
    /// The bytes read: the string value, or the `DUMP` payload of another type. An
    /// eviction removes the key only while it still holds exactly these.
    pub raw: Vec<u8>,
    /// What the bytes are.
    pub content: Content,
    /// The server's time when read (`None` when the server refuses `TIME`).
    pub server_time: Option<OffsetDateTime>,
}

impl Inspection {
    /// The record, when the value is one.
    pub fn record(&self) -> Option<&IdempotencyRecord> {
        match &self.content {
            Content::Record(r) => Some(r),
            _ => None,
        }
    }

    /// The record's status (`pending`, `completed`, `stored_error`), or `unreadable` or
    /// `wrong-type` for a value that is not a record.
    pub fn status_label(&self) -> &'static str {
        match &self.content {
            Content::Record(r) => r.status().as_str(),
            Content::Unreadable { .. } => "unreadable",
            Content::WrongType => "wrong-type",
        }
    }

    /// Whether the value is not a record (unreadable or of another type).
    pub fn is_unreadable(&self) -> bool {
        !matches!(self.content, Content::Record(_))
    }

    /// The owner token of a reservation of this kit; [`NO_OWNER_LABEL`] for a reservation
    /// without one (the Python library's); `-` for completed records (neither library
    /// keeps an owner once the action finished) and values that are not records.
    pub fn owner_label(&self) -> String {
        match self.record() {
            Some(r) => match r.owner() {
                Some(owner) => owner.to_owned(),
                None if r.is_pending() => NO_OWNER_LABEL.to_owned(),
                None => "-".to_owned(),
            },
            None => "-".to_owned(),
        }
    }

    /// Whether this is a reservation whose owner may still be running: pending, and
    /// either Redis will expire the key (its lease has not run out, whatever the writer's
    /// clock stamped) or it is not abandoned by the server's clock. Claims take over the
    /// same ones (a key with no TTL, an hour past its `expires_at`); without the server's
    /// time, every pending record counts as live.
    pub fn is_live_reservation(&self) -> bool {
        match (self.record(), self.server_time) {
            (Some(r), Some(now)) => {
                r.is_pending() && (self.pttl.is_some() || !is_abandoned(r, now))
            }
            (Some(r), None) => r.is_pending(),
            (None, _) => false,
        }
    }

    /// Whether the record's own `expires_at` has passed by the server's clock (the
    /// libraries then treat it as absent; Redis removes it within a second or two).
    pub fn is_expired(&self) -> bool {
        match (self.record(), self.server_time) {
            (Some(r), Some(now)) => r.is_expired_at(now),
            _ => false,
        }
    }

    /// The first 200 characters of the value (lossy UTF-8), for showing an unreadable one.
    pub fn raw_preview(&self) -> String {
        let text = String::from_utf8_lossy(&self.raw);
        let mut preview: String = text.chars().take(200).collect();
        if text.chars().count() > 200 {
            preview.push('…');
        }
        preview
    }

    /// A summary without the result (what `list` prints): `redis_key`, `operation`, `key`,
    /// `status`, `owner` (the token or `null`), `owner_label`, `created_at`, `expires_at`
    /// (as stored, `null` for a non-record), `pttl_ms` (`null`: no expiry),
    /// `memory_bytes`, `size_bytes`, `expired`.
    pub fn summary_json(&self) -> serde_json::Value {
        let stored = self
            .record()
            .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.to_json()).ok())
            .unwrap_or(serde_json::Value::Null);
        serde_json::json!({
            "redis_key": self.redis_key,
            "operation": self.id.operation(),
            "key": self.id.key(),
            "status": self.status_label(),
            "owner": self.record().and_then(IdempotencyRecord::owner),
            "owner_label": self.owner_label(),
            "created_at": stored.get("created_at"),
            "expires_at": stored.get("expires_at"),
            "pttl_ms": self.pttl.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            "memory_bytes": self.memory_bytes,
            "size_bytes": self.raw.len(),
            "expired": self.is_expired(),
        })
    }

    /// [`Inspection::to_json`] as text, with the stored result written exactly as it is
    /// stored (an integer beyond 64 bits keeps every digit; [`serde_json::Value`] would
    /// round it to a float). What `inspect --json` prints.
    pub fn to_json_text(&self) -> String {
        let mut rest = self.to_json();
        if let Some(map) = rest.as_object_mut() {
            map.remove("result");
        }
        let mut text = rest.to_string();
        if text.ends_with('}') {
            text.pop();
            if text.len() > 1 {
                text.push(',');
            }
            text.push_str("\"result\":");
            text.push_str(self.record().map_or("null", |r| r.result().get()));
            text.push('}');
        }
        text
    }

    /// Everything (`inspect --json` prints it through [`Inspection::to_json_text`]): the summary, then `redis_type`,
    /// `fingerprint`, `result` (the stored JSON value), and for a value that is not a
    /// record `error` (why) and `raw_preview`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut out = self.summary_json();
        if let Some(map) = out.as_object_mut() {
            map.insert("redis_type".into(), self.redis_type.clone().into());
            let record = self.record();
            map.insert(
                "fingerprint".into(),
                record.and_then(IdempotencyRecord::fingerprint).into(),
            );
            let result = record.map_or(serde_json::Value::Null, |r| {
                r.result_value()
                    .unwrap_or_else(|_| r.result().get().to_owned().into())
            });
            map.insert("result".into(), result);
            match &self.content {
                Content::Record(_) => {}
                Content::Unreadable { reason } => {
                    map.insert("error".into(), reason.clone().into());
                    map.insert("raw_preview".into(), self.raw_preview().into());
                }
                Content::WrongType => {
                    map.insert(
                        "error".into(),
                        format!("the key holds a {}, not a string", self.redis_type).into(),
                    );
                }
            }
        }
        out
    }
}

/// An error and its sources, joined by `: `.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Reads the typed parts of a [`READ_SCRIPT`] reply.
fn parts(reply: Value) -> Option<(String, i64, Vec<u8>, i64)> {
    let Value::Array(items) = reply else {
        return None;
    };
    let mut items = items.into_iter();
    let redis_type = items.next()?.as_string()?;
    let pttl = items.next()?.as_i64()?;
    let raw = items.next()?.as_bytes()?.to_vec();
    let memory = items.next()?.as_i64()?;
    Some((redis_type, pttl, raw, memory))
}

impl Admin {
    /// Reads one key: `None` when Redis has nothing under it.
    ///
    /// A value neither library can read is returned as [`Content::Unreadable`] or
    /// [`Content::WrongType`], never as an error.
    ///
    /// # Errors
    /// [`IdempotencyError::Storage`](idempotency_core::IdempotencyError::Storage) when
    /// Redis fails or cannot be reached.
    pub async fn inspect(&self, id: &RecordId) -> Result<Option<Inspection>> {
        let redis_key = self.store.redis_key(id);
        self.inspect_key(id.clone(), redis_key).await
    }

    pub(super) async fn inspect_key(
        &self,
        id: RecordId,
        redis_key: String,
    ) -> Result<Option<Inspection>> {
        let client = self.store.client_for(&redis_key);
        let reply: Value = client
            .eval(READ_SCRIPT, redis_key.as_str(), Vec::<Value>::new())
            .await
            .map_err(|e| classify(&id, e))?;
        if reply.is_null() {
            return Ok(None);
        }
        let Some((redis_type, pttl, raw, memory)) = parts(reply) else {
            return Err(classify(
                &id,
                fred::error::Error::new(
                    fred::error::ErrorKind::Protocol,
                    "unexpected reply to the inspect script",
                ),
            ));
        };
        let content = if redis_type != "string" {
            Content::WrongType
        } else if raw.is_empty() {
            Content::Unreadable {
                reason: "the value is empty".to_owned(),
            }
        } else {
            match IdempotencyRecord::from_json(&raw, id.operation(), id.key()) {
                Ok(record) => Content::Record(Box::new(record)),
                Err(e) => Content::Unreadable {
                    reason: with_sources(&e),
                },
            }
        };
        let server_time = self.store.inner.server_clock.now(client).await;
        Ok(Some(Inspection {
            redis_key,
            id,
            redis_type,
            pttl: u64::try_from(pttl).ok().map(Duration::from_millis),
            memory_bytes: u64::try_from(memory).ok(),
            raw,
            content,
            server_time,
        }))
    }
}
