//! The result adapter trait: how an action's value becomes stored JSON and back.

use std::fmt::Debug;

use serde_json::value::RawValue;

#[cfg(doc)]
use crate::error::IdempotencyError;
use crate::error::Result;

/// Encodes a value to stored JSON and decodes it back, fallibly.
///
/// # Examples
/// ```
/// # fn main() -> Result<(), idempotency_core::IdempotencyError> {
/// use idempotency_core::{ResultAdapter, SerdeAdapter};
/// let adapter = SerdeAdapter;
/// let raw = adapter.encode(&vec![1, 2])?;
/// let back: Vec<u32> = adapter.decode(&raw)?;
/// assert_eq!(back, vec![1, 2]);
/// # Ok(()) }
/// ```
pub trait ResultAdapter<T>: Send + Sync + Debug {
    /// The value as JSON text to store.
    ///
    /// # Errors
    /// [`IdempotencyError::Serialization`] when it has no storable form.
    fn encode(&self, value: &T) -> Result<Box<RawValue>>;

    /// The value back from stored JSON text.
    ///
    /// # Errors
    /// [`IdempotencyError::Serialization`] when the text is not a `T`.
    fn decode(&self, raw: &RawValue) -> Result<T>;
}
