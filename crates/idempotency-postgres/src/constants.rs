//! The store's fixed names and bounds.

use std::time::Duration;

/// The table that holds the records (created by [`migrate`](crate::migrate)).
pub const TABLE: &str = "idempotency_records";

/// The `NOTIFY` channel completions, releases and deletes are announced on. The payload
/// is the record's storage key: the store's key prefix, then `operation:key`.
pub const NOTIFY_CHANNEL: &str = "idempotency_records";

/// How many expired rows one [`PostgresStore::sweep_expired`](crate::PostgresStore::sweep_expired)
/// call deletes at most, unless told otherwise.
pub const DEFAULT_SWEEP_LIMIT: u32 = 1000;

/// How long the pending row of a transactional call lives: the longest lease the kit
/// allows (24 hours). The row is never committed as pending (the completion replaces it in the
/// same transaction) and nobody else sees it while the transaction is open, so it must
/// simply not expire under a long action: the completion checks that it still holds it.
pub const TRANSACTION_LEASE: Duration = Duration::from_secs(86_400);

/// How long the owner of a multi-step run holds it unless told otherwise: renewed by
/// every committed phase (and by [`StepRun::renew`](crate::StepRun::renew)).
pub const DEFAULT_STEPS_LEASE: Duration = Duration::from_secs(30);

/// How long the row of an unfinished multi-step run is kept (from its last claim)
/// unless told otherwise: a retry within it resumes the run; after it the key is free
/// and a retry starts afresh (24 hours, as Stripe keeps its keys).
pub const DEFAULT_STEPS_RETENTION: Duration = Duration::from_secs(86_400);

/// The shortest lease a multi-step run takes (the kit's shortest lease).
pub const MIN_STEPS_LEASE: Duration = Duration::from_secs(1);

/// The key prefix of a store unless configured otherwise (the kit's default, as on Redis).
pub const DEFAULT_KEY_PREFIX: &str = "idempotency:";

/// How long a transactional call's record is replayed unless told otherwise (the kit's
/// default TTL: 30 minutes).
pub const DEFAULT_TTL: Duration = Duration::from_secs(30 * 60);

/// How often a claim re-runs its statement when it saw neither its own write nor a live
/// row (a row committed by another claim after the statement took its snapshot).
pub(crate) const MAX_CLAIM_ATTEMPTS: usize = 8;

/// How often a waiting multi-step call looks at the key again when no wake-up came
/// (a lease that ends sends none).
pub(crate) const STEPS_POLL: Duration = Duration::from_millis(100);

/// How often the listener task checks whether its store is gone.
pub(crate) const LISTENER_CHECK_EVERY: Duration = Duration::from_secs(30);
