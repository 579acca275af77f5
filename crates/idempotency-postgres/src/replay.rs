//! What a call finds under a key that holds a record: the fingerprint check and the
//! stored value, shared by the transactional mode and multi-step runs.

use idempotency_core::{
    IdempotencyError, IdempotencyRecord, RawValue, ResultAdapter, SerdeAdapter, unstorable_reason,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A finished record, read back.
#[derive(Debug)]
pub(crate) enum Replay<T> {
    /// A completed record's value.
    Value(T),
    /// An error stored by a non-transactional call: its JSON.
    StoredError(Box<RawValue>),
}

/// [`IdempotencyError::KeyReuse`] when both fingerprints are there and differ.
pub(crate) fn check_fingerprint(
    operation: &str,
    key: &str,
    stored: Option<&str>,
    given: Option<&str>,
) -> Result<(), IdempotencyError> {
    match (stored, given) {
        (Some(stored), Some(given)) if stored != given => Err(IdempotencyError::KeyReuse {
            operation: operation.to_owned(),
            key: key.to_owned(),
            stored: stored.to_owned(),
            given: given.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// The answer of a key that holds a record: a live reservation is in progress; a
/// finished record is checked against the fingerprint and read back.
pub(crate) fn replay<T: Serialize + DeserializeOwned>(
    record: &IdempotencyRecord,
    fingerprint: Option<&str>,
) -> Result<Replay<T>, IdempotencyError> {
    if record.is_pending() {
        return Err(IdempotencyError::in_progress(
            record.operation(),
            record.idempotency_key(),
        ));
    }
    check_fingerprint(
        record.operation(),
        record.idempotency_key(),
        record.fingerprint(),
        fingerprint,
    )?;
    if record.is_stored_error() {
        if let Some(reason) = unstorable_reason(record.result()) {
            return Err(IdempotencyError::ResultNotStorable {
                operation: record.operation().to_owned(),
                key: record.idempotency_key().to_owned(),
                reason,
            });
        }
        return Ok(Replay::StoredError(record.result().to_owned()));
    }
    ResultAdapter::<T>::decode(&SerdeAdapter, record.result()).map(Replay::Value)
}
