//! Fenced reservations on Redis: one round trip per step, one key per script.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fred::prelude::{Expiration, KeysInterface, SetOptions, Value};
use idempotency_core::{
    Claim, Fence, IdempotencyError, IdempotencyRecord, Lease, RawValue, RecordParts, RecordStatus,
    ReservationStore, Result, new_reservation, validate_identifiers,
};
use time::OffsetDateTime;

use crate::store::RedisStore;
use crate::wake::RedisWatch;

/// Whether the servers take `SET … NX GET` (Redis 7.0+). Cleared on the first syntax
/// error, after which claims go through the Lua script.
static NATIVE_CLAIM: AtomicBool = AtomicBool::new(true);

/// The JSON fragment that marks a pending record as ours. A JSON string never holds an
/// unescaped `"`, so this byte sequence can only be the `owner` field itself.
fn owner_fragment(token: &str) -> String {
    format!("\"owner\":\"{token}\"")
}

fn fence(value: &Value) -> Fence {
    if value.as_i64() == Some(1) {
        Fence::Held
    } else {
        Fence::Lost
    }
}

fn lease_ms(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX).max(1)
}

impl ReservationStore for RedisStore {
    type Watch = RedisWatch;

    async fn claim(
        &self,
        operation: &str,
        key: &str,
        lease: Duration,
        fingerprint: Option<&str>,
    ) -> Result<Claim> {
        let (operation, key) = validate_identifiers(operation, key)?;
        let redis_key = self.redis_key(operation, key);
        // A found record that turns out expired is deleted and the claim tried again; a
        // few rounds suffice since each needs a record to expire in between.
        for _ in 0..3 {
            let (pending, held) = new_reservation(operation, key, lease, fingerprint)?;
            let json = pending.to_json();
            let reply = if NATIVE_CLAIM.load(Ordering::Relaxed) {
                let native = self
                    .client()
                    .set::<Value, _, _>(
                        redis_key.as_str(),
                        json.as_str(),
                        Some(Expiration::PX(lease_ms(lease))),
                        Some(SetOptions::NX),
                        true,
                    )
                    .await;
                match native {
                    Err(e) if e.details().to_ascii_lowercase().contains("syntax error") => {
                        NATIVE_CLAIM.store(false, Ordering::Relaxed);
                        continue;
                    }
                    other => other,
                }
            } else {
                let args = vec![Value::from(json), Value::from(lease_ms(lease))];
                self.inner
                    .scripts
                    .claim
                    .run(self.client(), &redis_key, args)
                    .await
            };
            let value = reply.map_err(|e| self.fail(operation, e))?;
            if value.is_null() {
                return Ok(Claim::Acquired(held));
            }
            if let Some(record) = self.decode_found(operation, key, &redis_key, value).await? {
                return Ok(Claim::Found(record));
            }
        }
        Err(IdempotencyError::in_progress(operation, key))
    }

    async fn complete(&self, lease: &Lease, record: &IdempotencyRecord) -> Result<Fence> {
        let operation = lease.operation();
        let ttl = self.write_ttl(record)?;
        let args = vec![
            Value::from(owner_fragment(lease.token())),
            Value::from(record.to_json()),
            Value::from(ttl),
        ];
        let redis_key = self.redis_key(operation, lease.key());
        let reply = self
            .inner
            .scripts
            .complete
            .run(self.client(), &redis_key, args)
            .await;
        Ok(fence(&reply.map_err(|e| self.fail(operation, e))?))
    }

    async fn renew(&self, lease: &Lease, duration: Duration) -> Result<Fence> {
        let operation = lease.operation();
        let now = OffsetDateTime::now_utc();
        let renewed = IdempotencyRecord::from_parts(RecordParts {
            operation: operation.to_owned(),
            idempotency_key: lease.key().to_owned(),
            result: RawValue::NULL.to_owned(),
            created_at: lease.created_at().unwrap_or(now),
            expires_at: now + duration,
            status: RecordStatus::Pending,
            fingerprint: lease.fingerprint().map(str::to_owned),
            owner: Some(lease.token().to_owned()),
        })?;
        let args = vec![
            Value::from(owner_fragment(lease.token())),
            Value::from(renewed.to_json()),
            Value::from(lease_ms(duration)),
        ];
        let redis_key = self.redis_key(operation, lease.key());
        let reply = self
            .inner
            .scripts
            .renew
            .run(self.client(), &redis_key, args)
            .await;
        Ok(fence(&reply.map_err(|e| self.fail(operation, e))?))
    }

    async fn release(&self, lease: &Lease) -> Result<Fence> {
        let operation = lease.operation();
        let redis_key = self.redis_key(operation, lease.key());
        let args = vec![Value::from(owner_fragment(lease.token()))];
        let reply = self
            .inner
            .scripts
            .release
            .run(self.client(), &redis_key, args)
            .await;
        Ok(fence(&reply.map_err(|e| self.fail(operation, e))?))
    }

    async fn watch(&self, operation: &str, key: &str) -> Result<RedisWatch> {
        let (operation, key) = validate_identifiers(operation, key)?;
        self.inner
            .wake
            .watch(self.redis_key(operation, key))
            .await
            .map_err(|e| self.fail(operation, e))
    }
}
