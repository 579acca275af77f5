//! A hook called when a call stores a record: for audit logs, cache warm-ups or
//! counters of the application's own.

use std::time::Duration;

use idempotency_core::RecordStatus;

/// What a call stored: passed to the hook set with
/// [`CoordinatorBuilder::on_record_created`](crate::CoordinatorBuilder::on_record_created).
///
/// Called once per stored record, after the store confirmed the write (a completion that
/// found another caller's record, or a write that failed, calls nothing), on the task of
/// the call, before the call returns: keep it cheap and do not block or panic in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecordCreated<'a> {
    /// The operation.
    pub operation: &'a str,
    /// The idempotency key.
    pub idempotency_key: &'a str,
    /// `Completed`, or `StoredError` for an error kept by [`Call::store_errors`](crate::Call::store_errors).
    pub status: RecordStatus,
    /// How long the record lives.
    pub ttl: Duration,
}

/// The hook's type.
pub type RecordCreatedHook = dyn Fn(&RecordCreated<'_>) + Send + Sync;
