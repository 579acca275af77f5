//! Which of an action's errors are stored and replayed to retries.

use idempotency_core::{IdempotencyError, RawValue, Result, ResultAdapter, SerdeAdapter};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Decides which errors of an action are stored under the key (and replayed to every
/// retry as the same error), and how they are written and read back.
///
/// The default, [`ReleaseOnError`], stores none: an error releases the key and the retry
/// runs the action again. [`StoreErrors`] stores the errors a predicate selects, as JSON.
/// A stored error is written with the status `stored_error`, which the Python library
/// 0.5.0 reads as a corrupted record: it never replays it as a success.
pub trait ErrorPolicy<E> {
    /// The stored form of `error`, or `None` to release the key instead.
    fn encode(&self, error: &E) -> Option<Box<RawValue>>;

    /// A stored error read back.
    ///
    /// # Errors
    /// A data error when the stored JSON is not an `E` (or this policy stores no errors).
    fn decode(&self, stored: &RawValue) -> Result<E>;
}

/// The default policy: no error is stored; an error releases the key.
///
/// A stored error found under the key (written by a caller with another policy) cannot
/// be replayed by this call and is reported as a data error, never run over.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReleaseOnError;

impl<E> ErrorPolicy<E> for ReleaseOnError {
    fn encode(&self, _: &E) -> Option<Box<RawValue>> {
        None
    }

    fn decode(&self, _: &RawValue) -> Result<E> {
        Err(IdempotencyError::serialization(
            "the key holds a stored error and this call stores none: give it the same error policy as its writer",
        ))
    }
}

/// Stores the errors `when` selects (as JSON through serde) so retries replay them; the
/// others release the key. Set with [`Call::store_errors`](crate::Call::store_errors).
///
/// Store only errors that are answers, not accidents: a declined card or a validation
/// failure (the retry would get the same), never a timeout or an outage (the retry
/// should run again).
#[derive(Debug, Clone, Copy)]
pub struct StoreErrors<F>(pub(crate) F);

impl<E, F> ErrorPolicy<E> for StoreErrors<F>
where
    E: Serialize + DeserializeOwned,
    F: Fn(&E) -> bool,
{
    fn encode(&self, error: &E) -> Option<Box<RawValue>> {
        if !(self.0)(error) {
            return None;
        }
        match ResultAdapter::<E>::encode(&SerdeAdapter, error) {
            Ok(raw) => Some(raw),
            Err(e) => {
                tracing::error!(error = %e.log_message(), "the error cannot be stored; the key is released");
                None
            }
        }
    }

    fn decode(&self, stored: &RawValue) -> Result<E> {
        ResultAdapter::<E>::decode(&SerdeAdapter, stored)
    }
}
