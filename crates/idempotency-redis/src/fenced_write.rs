//! Downstream writes fenced by a [`FencingToken`]: what an action on this kit uses to
//! make its effect in Redis conditional on its run's token, so an owner that stalled past
//! its lease cannot overwrite the newer owner's effect.

use fred::prelude::{Client, Value};
use idempotency_core::{FencingToken, IdempotencyError, Result};

use crate::scripts::Script;

/// Writes `value` into the hash at `key` (fields `value` and `fence`) only when `token`
/// is larger than the token of the write it holds: one round trip, atomic on the server.
/// `true` when written; `false` when refused (the key holds a newer owner's write).
///
/// # Errors
/// [`IdempotencyError::Storage`] when Redis cannot be reached or refuses the script.
///
/// # Examples
/// ```no_run
/// # async fn example(client: fred::prelude::Client, fence: idempotency_core::FencingToken)
/// # -> Result<(), idempotency_core::IdempotencyError> {
/// // Inside `coordinator.call(..).run_fenced(|fence| …)`:
/// let written = idempotency_redis::set_if_newer(&client, "balance:acct-7", "1999", fence).await?;
/// if !written {
///     // A newer owner of this idempotency key has written already: do nothing more.
/// }
/// # Ok(()) }
/// ```
pub async fn set_if_newer(
    client: &Client,
    key: &str,
    value: &str,
    token: FencingToken,
) -> Result<bool> {
    // Made per call: a SHA-1 of a short script, cheap beside the round trip.
    let script = Script::new(include_str!("../lua/set_if_newer.lua"));
    let reply = script
        .run(
            client,
            key,
            vec![Value::from(value), Value::from(token.get().to_string())],
        )
        .await
        .map_err(|e| IdempotencyError::storage(None, e))?;
    Ok(matches!(reply, Value::Integer(1)))
}
