//! Every statement the store sends (the SQL is in `sql/*.sql`). Times are always the server's
//! (`statement_timestamp()`: one value for the whole statement); durations travel as
//! microseconds (`bigint`).
//!
//! Concurrency invariants, enforced by the statements themselves:
//! - a key has one row (the primary key); of concurrent claims exactly one inserts it or
//!   takes it over (`ON CONFLICT … DO UPDATE … WHERE` locks the newest version of the
//!   row and judges the expiry on it), the others find it;
//! - an expired row counts as absent to every statement, swept or not;
//! - every fenced write (`finish`, `renew`, `release`) names the owner token in the same
//!   statement that writes, so a stale owner's write changes nothing;
//! - wake-ups (`pg_notify`) are sent by the statement that completes, releases or
//!   deletes, and are delivered when its transaction commits.

/// Params: 1 prefix, 2 operation, 3 key, 4 fingerprint, 5 owner token, 6 head, 7 tail,
/// 8 lease (µs). Rows: `acquired`, `record`, `fence`, `status`; none when the row
/// that stopped the insert was committed after this statement's snapshot (run it again).
///
/// Under READ COMMITTED the fallback read sees the statement's snapshot, which may miss
/// a row another claim committed while this one waited on it; `ON CONFLICT` itself sees
/// that row, so the statement returns nothing rather than a wrong answer.
pub(crate) const CLAIM: &str = include_str!("../sql/claim.sql");

/// Params: as [`CLAIM`], and 9 the record text a claim found and could not decode. Takes
/// over a pending row holding exactly that text (nobody can hold a key through a record
/// no client can read); a finished row is never taken over. A row (`fence`) when taken.
pub(crate) const TAKEOVER: &str = include_str!("../sql/takeover.sql");

/// Params: 1 prefix, 2 operation, 3 key, 4 owner token, 5 status, 6 fingerprint, 7 head,
/// 8 tail, 9 TTL (µs), 10 channel, 11 payload. One row: `written` (0/1), `woken`,
/// `held` (the key held our live reservation), `resent` (it holds exactly the record
/// this call writes: an earlier send of it succeeded).
pub(crate) const FINISH: &str = include_str!("../sql/finish.sql");

/// Params: 1 prefix, 2 operation, 3 key, 4 owner token, 5 head, 6 tail, 7 lease (µs).
/// A row (`fence`) when our live reservation was renewed.
pub(crate) const RENEW: &str = include_str!("../sql/renew.sql");

/// Params: 1 prefix, 2 operation, 3 key, 4 owner token, 5 channel, 6 payload. One row:
/// `gone` (0/1), `woken`.
pub(crate) const RELEASE: &str = include_str!("../sql/release.sql");

/// Params: 1 prefix, 2 operation, 3 key. A row (`record`) when the key is live.
pub(crate) const GET: &str = include_str!("../sql/get.sql");

/// Params: 1 prefix, 2 operations, 3 keys (arrays). Rows: `idempotency_key`, `record`.
pub(crate) const GET_MANY: &str = include_str!("../sql/get_many.sql");

/// Params: 1 prefix, then arrays: 2 operations, 3 keys, 4 statuses, 5 fingerprints,
/// 6 owners, 7 records, 8 TTLs (µs). Rows (`idempotency_key`) of the records written:
/// those whose key was free or expired.
pub(crate) const SAVE: &str = include_str!("../sql/save.sql");

/// Params: 1 prefix, 2 operation, 3 key, 4 status, 5 fingerprint, 6 owner, 7 record,
/// 8 TTL (µs), 9 channel, 10 payload. Writes whatever is there; wakes waiters when the
/// record is finished.
pub(crate) const REPLACE: &str = include_str!("../sql/replace.sql");

/// Params: 1 prefix, 2 operations, 3 keys (arrays), 4 channel. One row: `live` (how
/// many of the deleted rows had not expired), `woken`.
pub(crate) const DELETE: &str = include_str!("../sql/delete.sql");

/// Params: 1 limit. Deletes up to that many expired rows, skipping rows another
/// transaction holds (a claim taking one over), so it never waits for a claim and a
/// claim waits for it at most for the length of this statement. The row is judged
/// expired again at delete time, on its newest version.
pub(crate) const SWEEP: &str = include_str!("../sql/sweep.sql");

/// Params: 1 the record's storage key. Waits for, or tries, the transaction-scoped
/// advisory lock of a key (transactional calls only; released at commit or rollback).
/// The seed (`idem` in ASCII) keeps these lock numbers apart from an application's own.
pub(crate) const LOCK_KEY: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 1768187245))";

/// Params: 1 the record's storage key. One row: `locked`.
pub(crate) const TRY_LOCK_KEY: &str =
    "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 1768187245)) AS locked";

/// Params: 1 prefix, 2 operation, 3 key, 4 owner token. A row (`fence`) while the key
/// holds the owner's live pending record.
pub(crate) const FENCING_TOKEN: &str = include_str!("../sql/fencing_token.sql");

/// Params: 1 prefix, 2 operation, 3 key, 4 fingerprint, 5 owner token, 6 head, 7 tail,
/// 8 lease (µs), 9 retention (µs). Starts a multi-step run on a free or expired key (a
/// new `run_id`, no committed step), or resumes the run on a live pending row whose
/// lease ended on the server's clock and whose fingerprint does not differ (its
/// `run_id`, `recovery_point` and `step_state` kept); either way the row gets this
/// owner's token and a new fence. Rows: `acquired`, `fence`, `run_id`, `step_state`
/// (when acquired), `status`, `fingerprint`, `record` (the live row that holds the key
/// otherwise); none when that row was committed after this statement's snapshot (run
/// it again, as [`CLAIM`]).
///
/// A resume is an `ON CONFLICT … DO UPDATE … WHERE` as a takeover is: the newest version
/// of the row is locked and judged there, so of concurrent resumers exactly one wins,
/// and a phase committing meanwhile (which locks the row and renews the lease) makes
/// the others find a live lease.
pub(crate) const STEPS_CLAIM: &str = include_str!("../sql/steps_claim.sql");

/// Params: 1 prefix, 2 operation, 3 key, 4 owner token, 5 fence, 6 recovery point,
/// 7 step state, 8 lease (µs). Sent inside a phase's transaction, after the phase's own
/// work: writes the recovery point and the steps, and renews the lease, only while the
/// row is pending under this owner's token and fence. A row (`fence`) when written;
/// none when another owner took the run over (the phase then rolls back). The row lock
/// it takes is held until the phase commits, so no claim takes the run over between
/// this check and the commit.
pub(crate) const STEPS_COMMIT: &str = include_str!("../sql/steps_commit.sql");

/// Params: 1 prefix, 2 operation, 3 key, 4 owner token, 5 fence, 6 lease (µs). Renews
/// the lease of this owner's run. A row (`fence`) when renewed.
pub(crate) const STEPS_RENEW: &str = include_str!("../sql/steps_renew.sql");

/// Params: 1 prefix, 2 operation, 3 key, 4 owner token, 5 fence, 6 channel, 7 payload.
/// Ends this owner's lease now (the committed steps stay), so a retry resumes at once;
/// wakes waiters. One row: `released` (0/1), `woken`.
pub(crate) const STEPS_RELEASE: &str = include_str!("../sql/steps_release.sql");

/// Params: 1 prefix, 2 operation, 3 key. The row (expired or not) as the admin API reads
/// it: `operation`, `idempotency_key`, `status`, `fence`, `owner_token`, `record`,
/// `ttl_seconds`, `expired`, `row_bytes`.
pub(crate) const ADMIN_INSPECT: &str = include_str!("../sql/admin_inspect.sql");

/// Params: 1 prefix, 2 operation, 3 status (both nullable), 4 and 5 the last
/// (operation, key) seen, 6 page size. Rows as [`ADMIN_INSPECT`], in key order.
pub(crate) const ADMIN_LIST: &str = include_str!("../sql/admin_list.sql");

/// Params: 1 prefix, 2 operation, 3 key, 4 fence, 5 record, 6 channel, 7 force. One
/// row: `removed` (0/1), `woken`.
pub(crate) const ADMIN_EVICT: &str = include_str!("../sql/admin_evict.sql");

/// Params: 1 prefix, 2 operation (nullable). Rows: `operation`, `status`, `bucket`,
/// `rows`, `bytes`.
pub(crate) const ADMIN_STATS: &str = include_str!("../sql/admin_stats.sql");
