//! Fenced reservations on Redis (protocol v2): one round trip per step, one key per
//! script.
//!
//! - `claim`: `SET key pending NX GET PX lease` (the Lua `claim` script on servers before
//!   7.0). Nil: ours. A value: decoded here; our own pending record (a re-sent claim whose
//!   first reply was lost) is ours; an unreadable value is taken over by the `takeover`
//!   script, which replaces it only if it still holds exactly those bytes.
//! - `complete`/`renew`/`release`: scripts that decode the stored value with `cjson` and
//!   act only when it is a pending record whose `owner` is our token (`complete` also on
//!   an empty key, and reports success when it finds exactly the record it writes).

use std::sync::atomic::Ordering;
use std::time::Duration;

use fred::prelude::{Expiration, KeysInterface, SetOptions, Value};
use idempotency_core::{
    Claim, Fence, FencingToken, Finished, IdempotencyError, IdempotencyRecord, Lease, RecordId,
    ReservationStore, Result, holds_lease, is_abandoned, looks_finished,
};

use crate::errors::{Refusal, label, refusal};
use crate::store::RedisStore;
use crate::wake::RedisWatch;

/// How many unreadable values one claim takes over before giving up: each round needs
/// another writer to plant a new unreadable value between our read and our script.
const TAKEOVER_ROUNDS: usize = 3;

/// How long a key's fence counter lives after its last token: tokens carry the server's
/// clock in microseconds, so one issued after the counter expired is still larger.
const FENCE_COUNTER_LIFETIME: Duration = Duration::from_secs(7 * 86_400);

/// A fenced script's reply: 1 written over our reservation, 2 (`complete.lua` only)
/// written though our reservation was gone, anything else nothing written.
fn fence(value: &Value) -> Fence {
    // Core's decision, shared with the model that checks the scripts (`idempotency-model`).
    Fence::from_script_reply(value.as_i64())
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

impl RedisStore {
    /// One claim command: `SET … NX GET`, or the script where the server lacks it.
    async fn send_claim(
        &self,
        redis_key: &str,
        json: &str,
        lease_ms: i64,
    ) -> fred::prelude::FredResult<Value> {
        let client = self.client_for(redis_key);
        if self.inner.native_claim.load(Ordering::Relaxed) {
            let native = client
                .set::<Value, _, _>(
                    redis_key,
                    json,
                    Some(Expiration::PX(lease_ms)),
                    Some(SetOptions::NX),
                    true,
                )
                .await;
            match native {
                Err(e) if e.details().to_ascii_lowercase().contains("syntax error") => {
                    self.inner.native_claim.store(false, Ordering::Relaxed);
                }
                other => return other,
            }
        }
        let args = vec![Value::from(json), Value::from(lease_ms)];
        self.inner.scripts.claim.run(client, redis_key, args).await
    }

    /// Runs a fenced script on the lease's key and reads its 1/0 answer.
    async fn fenced(
        &self,
        script: &crate::scripts::Script,
        lease: &Lease,
        args: Vec<Value>,
    ) -> Result<Fence> {
        let redis_key = self.redis_key(lease.id());
        let reply = script
            .run(self.client_for(&redis_key), &redis_key, args)
            .await;
        Ok(fence(&reply.map_err(|e| self.fail_on(lease.id(), e))?))
    }

    /// Why a found value must be taken over, or `None` when it is a record to answer
    /// with. Never asks the server: an abandoned reservation is recognised only with a
    /// fresh sample of the server's clock, never by the local clock, and `takeover.lua`
    /// then takes it only if Redis will never expire the key.
    fn unusable(&self, decoded: &Result<IdempotencyRecord>) -> Option<Unusable> {
        match decoded {
            Err(e) => Some(Unusable::Unreadable(e.to_string())),
            // Only a pending record can be abandoned: a hit never reads the clock.
            Ok(record) if !record.is_pending() => None,
            Ok(record) => self
                .inner
                .server_clock
                .estimate()
                .filter(|now| is_abandoned(record, *now))
                .map(|_| Unusable::Abandoned),
        }
    }
}

impl RedisStore {
    /// A claim the server answered with an error reply. A server that refuses writes
    /// (`NOREPLICAS`, `OOM`, `MISCONF`, `READONLY`) still serves reads, so the key is
    /// read (`BUSY`, `LOADING`, `MASTERDOWN`, `CLUSTERDOWN` refuse the read too): a finished record is found (replayed, fingerprint checked), a reservation is
    /// found (the caller waits or is refused: a held key never fails open), an unreadable
    /// value refuses the call, and only an empty key (or a read that fails too) is a
    /// storage error, for the caller's `on_storage_error`. A configuration refusal
    /// (`NOPERM`, `NOAUTH`, an unknown command) is a configuration error: it always fails
    /// closed.
    async fn claim_refused(&self, lease: &Lease, e: fred::error::Error) -> Result<Claim> {
        let id = lease.id();
        let kind = refusal(&e).unwrap_or(Refusal::Write);
        // Counted, and `WRONGTYPE` made a data error here.
        let refused = self.fail_on(id, e);
        if !refused.is_storage() {
            return Err(refused);
        }
        if kind == Refusal::Configuration {
            tracing::error!(error = %refused.log_message(), "Redis refuses the claim command: check the user's ACL and the server");
            return Err(IdempotencyError::configuration(
                "Redis refused the claim command (ACL or server): no call runs unprotected because of it",
                Some(Box::new(refused)),
            ));
        }
        let redis_key = self.redis_key(id);
        let found: fred::prelude::FredResult<Value> =
            self.client_for(&redis_key).get(redis_key.as_str()).await;
        let bytes = match found {
            Ok(value) => match value.as_bytes() {
                Some(bytes) if !bytes.is_empty() => bytes.to_vec(),
                // Nothing under the key: only now may the caller's mode decide.
                _ => return Err(refused),
            },
            Err(read) => {
                self.inner
                    .metrics
                    .record_error(id.operation(), label(&read));
                return Err(refused);
            }
        };
        tracing::warn!(error = %refused.log_message(), "Redis refused the claim; answering from the key's value");
        match self.decode(id, &bytes) {
            // Our own reservation: a claim of ours landed before the server began
            // refusing (a command re-sent after a reconnect).
            Ok(record) if holds_lease(&record, lease.token()) => Ok(Claim::Acquired),
            Ok(record) => Ok(Claim::Found(record)),
            Err(unreadable) => Err(unreadable),
        }
    }

    /// A claim's or takeover's reply that is not a value: nil is ours; anything else a
    /// broken reply.
    fn nil_or_unexpected(&self, id: &RecordId, value: &Value, takeovers: usize) -> Result<Claim> {
        if value.is_null() {
            if takeovers > 0 {
                tracing::warn!(
                    operation = id.operation(),
                    "took the key over from a value no caller could use"
                );
            }
            return Ok(Claim::Acquired);
        }
        Err(self.fail(
            id.operation(),
            fred::error::Error::new(fred::error::ErrorKind::Protocol, "unexpected reply type"),
        ))
    }
}

/// Whether a value the decoder refused is, by its structure, a finished record (written
/// by a broken writer): its action ran, so the claim refuses it, never takes it over.
fn refuses_finished(id: &RecordId, bytes: &[u8], decoded: &Result<IdempotencyRecord>) -> bool {
    let Err(unreadable) = decoded else {
        return false;
    };
    if !looks_finished(bytes) {
        return false;
    }
    tracing::error!(
        operation = id.operation(),
        error = %unreadable.log_message(),
        "the key holds a finished record that cannot be read; refusing the call"
    );
    true
}

/// Why a claim tries to take a found value over.
enum Unusable {
    /// No client can read it (the decoder's error).
    Unreadable(String),
    /// A reservation past its `expires_at` by more than `ABANDONED_AFTER` on the server's
    /// clock: taken over only when the key has no expiry (nobody will ever free it).
    Abandoned,
}

impl Unusable {
    fn describe(&self) -> &str {
        match self {
            Self::Unreadable(why) => why,
            Self::Abandoned => "an abandoned reservation that Redis never expires",
        }
    }
}

impl ReservationStore for RedisStore {
    type Watch = RedisWatch;

    async fn claim(&self, lease: &Lease, duration: Duration) -> Result<Claim> {
        let id = lease.id();
        self.fail_fast(id.operation())?;
        let json = lease
            .pending_record_at(self.stamp(lease).await, duration)?
            .to_json();
        let redis_key = self.redis_key(id);
        let lease_ms = millis(duration);
        let mut reply = match self.send_claim(&redis_key, &json, lease_ms).await {
            Err(e) if crate::errors::unanswered(&e) => Err(e),
            Err(e) if refusal(&e).is_some() => {
                self.inner.breaker.answered();
                return self.claim_refused(lease, e).await;
            }
            answered => {
                self.inner.breaker.answered();
                answered
            }
        };
        let mut takeovers = 0;
        // The abandoned reservation the last takeover was refused on because Redis still
        // expires it: alive by Redis's word, so found, not taken over again.
        let mut refused: Option<Vec<u8>> = None;
        // Every reply is decoded, the last takeover's included: a takeover that wrote our
        // record answers nil, which is ours.
        loop {
            let value = reply.map_err(|e| self.fail_on(id, e))?;
            let Some(bytes) = value.as_bytes() else {
                return self.nil_or_unexpected(id, &value, takeovers);
            };
            let decoded = self.decode(id, bytes);
            if refuses_finished(id, bytes, &decoded) {
                return decoded.map(Claim::Found);
            }
            let why = match self.unusable(&decoded) {
                Some(Unusable::Abandoned) if refused.as_deref() == Some(bytes) => None,
                other => other,
            };
            let Some(why) = why else {
                return match decoded {
                    // Held by Redis, so alive: no client clock judges it. Our own pending
                    // record is a re-sent claim finding its first write.
                    Ok(record) if holds_lease(&record, lease.token()) => Ok(Claim::Acquired),
                    Ok(record) => Ok(Claim::Found(record)),
                    Err(e) => Err(e),
                };
            };
            if takeovers == TAKEOVER_ROUNDS {
                // Another writer keeps planting unreadable values: give up (each was counted
                // when decoded). The last reply was a value that is not ours, so nothing of
                // ours is under the key.
                return Err(IdempotencyError::in_progress(id.operation(), id.key()));
            }
            takeovers += 1;
            // Replaced only if it still holds exactly these bytes: exactly one claimer
            // wins, and it holds the key fenced before its action runs.
            // Debug only: an abandoned reservation Redis still expires is refused by the
            // script, and waiters would repeat the attempt on every look.
            tracing::debug!(
                operation = id.operation(),
                key = id.key(),
                found = why.describe(),
                "trying to take the key over"
            );
            let abandoned = matches!(why, Unusable::Abandoned);
            refused = abandoned.then(|| bytes.to_vec());
            let args = vec![
                Value::Bytes(bytes.to_vec().into()),
                Value::from(json.as_str()),
                Value::from(lease_ms),
                Value::from(if abandoned { "1" } else { "0" }),
            ];
            reply = self
                .inner
                .scripts
                .takeover
                .run(self.client_for(&redis_key), &redis_key, args)
                .await;
            reply = match reply {
                // The server answered but refuses writes: the key is read, as after a
                // refused claim (a re-sent takeover may have landed before the refusals
                // began: our own reservation is then ours). Never an unprotected run
                // over a value that is there.
                Err(e) if refusal(&e).is_some() => return self.claim_refused(lease, e).await,
                other => other,
            };
        }
    }

    /// With the `complete` script, stamped on the server's clock.
    async fn finish(&self, lease: &Lease, finished: Finished<'_>, ttl: Duration) -> Result<Fence> {
        let record = lease.finished_record_at(self.stamp(lease).await, finished, ttl)?;
        let args = vec![
            Value::from(lease.token()),
            Value::from(record.to_json()),
            Value::from(millis(ttl)),
        ];
        self.fenced(&self.inner.scripts.complete, lease, args).await
    }

    async fn renew(&self, lease: &Lease, duration: Duration) -> Result<Fence> {
        let renewed = lease.pending_record_at(self.stamp(lease).await, duration)?;
        let args = vec![
            Value::from(lease.token()),
            Value::from(renewed.to_json()),
            Value::from(millis(duration)),
        ];
        self.fenced(&self.inner.scripts.renew, lease, args).await
    }

    async fn release(&self, lease: &Lease) -> Result<Fence> {
        let args = vec![Value::from(lease.token())];
        self.fenced(&self.inner.scripts.release, lease, args).await
    }

    async fn fencing_token(&self, lease: &Lease) -> Result<Option<FencingToken>> {
        let redis_key = self.redis_key(lease.id());
        let fence_key = self
            .inner
            .slot_tags
            .get_or_init(crate::keys::SlotTags::new)
            .fence_key(&redis_key);
        let args = vec![
            Value::from(lease.token()),
            Value::from(millis(FENCE_COUNTER_LIFETIME)),
        ];
        let reply = self
            .inner
            .scripts
            .fence
            .run_on(
                self.client_for(&redis_key),
                vec![redis_key, fence_key],
                args,
            )
            .await
            .map_err(|e| self.fail_on(lease.id(), e))?;
        Ok(match reply {
            Value::Integer(n) if n > 0 => Some(FencingToken::new(n.unsigned_abs())),
            _ => None,
        })
    }

    async fn watch(&self, id: &RecordId) -> Result<RedisWatch> {
        self.inner
            .wake
            .watch(self.redis_key(id))
            .await
            .map_err(|e| self.fail(id.operation(), e))
    }
}
