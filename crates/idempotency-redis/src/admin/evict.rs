//! Removing one record, conditional on the bytes inspected.

use fred::prelude::{LuaInterface, Value};
use idempotency_core::{RecordId, Result};

use super::{Admin, Inspection};
use crate::errors::{classify, is_wrong_type};

/// Deletes a key of another type than string only while its `DUMP` is the one inspected.
/// KEYS[1] the key; ARGV[1] the `DUMP` payload read. Returns the number of keys deleted.
const DELETE_IF_DUMP_EQUAL: &str = r"
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'none' and t ~= 'string' and redis.call('DUMP', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// The outcome of [`Admin::evict`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Eviction {
    /// The key was removed; this is what it held.
    Removed {
        /// The key as inspected just before it was removed.
        removed: Box<Inspection>,
        /// Whether a live reservation was removed (only with `force`).
        forced: bool,
    },
    /// Redis holds nothing under the key.
    NotFound {
        /// The Redis key.
        redis_key: String,
    },
    /// The key holds a live reservation and `force` was not given; nothing was removed.
    LiveReservation(Box<Inspection>),
    /// The key changed between the read and the removal (another writer); nothing was
    /// removed. Inspect it again.
    Changed(Box<Inspection>),
}

impl Admin {
    /// Removes the record under `id` when it is completed or unreadable, or when it is a
    /// live reservation and `force` is set (the returned inspection names its owner).
    ///
    /// The key is deleted only while it still holds exactly the bytes inspected (the
    /// store's `delete_if_equal` script; a `DUMP` comparison for another Redis type), so a
    /// record written meanwhile (a new reservation, a completion) is never removed.
    ///
    /// # Errors
    /// [`IdempotencyError::Storage`](idempotency_core::IdempotencyError::Storage) when
    /// Redis fails or cannot be reached.
    pub async fn evict(&self, id: &RecordId, force: bool) -> Result<Eviction> {
        match self.inspect(id).await? {
            None => Ok(Eviction::NotFound {
                redis_key: self.store.redis_key(id),
            }),
            Some(found) => self.evict_inspected(found, force).await,
        }
    }

    /// Removes what an earlier [`Admin::inspect`] found, under the same rules as
    /// [`Admin::evict`]: only while the key still holds exactly those bytes.
    ///
    /// # Errors
    /// As [`Admin::evict`].
    pub async fn evict_inspected(&self, found: Inspection, force: bool) -> Result<Eviction> {
        let live = found.is_live_reservation();
        if live && !force {
            return Ok(Eviction::LiveReservation(Box::new(found)));
        }
        let client = self.store.client_for(&found.redis_key);
        let args = vec![Value::Bytes(found.raw.clone().into())];
        let reply = if found.redis_type == "string" {
            self.store
                .inner
                .scripts
                .delete_if_equal
                .run(client, &found.redis_key, args)
                .await
        } else {
            client
                .eval::<Value, _, _, _>(DELETE_IF_DUMP_EQUAL, found.redis_key.as_str(), args)
                .await
        };
        let deleted = match reply {
            Ok(v) => v.as_i64() == Some(1),
            // The string became another type meanwhile: changed.
            Err(e) if is_wrong_type(&e) => false,
            Err(e) => return Err(classify(&found.id, e)),
        };
        Ok(if deleted {
            // The Redis key holds the client's key: at debug only (docs/security.md).
            tracing::debug!(redis_key = found.redis_key, "evicted this key");
            tracing::info!(
                operation = found.id.operation(),
                status = found.status_label(),
                owner = found.owner_label(),
                forced = live,
                "evicted"
            );
            Eviction::Removed {
                removed: Box::new(found),
                forced: live,
            }
        } else {
            Eviction::Changed(Box::new(found))
        })
    }
}
