//! Result adapters: how an action's value becomes stored JSON and back.

use std::fmt::Debug;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::error::{IdempotencyError, Result};
use crate::json_text::to_result_json;

/// Encodes a value to stored JSON and decodes it back, fallibly.
///
/// # Examples
/// ```
/// # fn main() -> Result<(), idempotency_core::IdempotencyError> {
/// use idempotency_core::{ResultAdapter, SerdeAdapter};
/// let adapter = SerdeAdapter::<Vec<u32>>::new();
/// let raw = adapter.encode(&vec![1, 2])?;
/// assert_eq!(adapter.decode(&raw)?, vec![1, 2]);
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

/// The adapter for any `Serialize + DeserializeOwned` type (the role of the Python
/// library's `PydanticResultAdapter`). A stored `null` decodes only into types that
/// accept it (`Option`, `()`).
pub struct SerdeAdapter<T>(PhantomData<fn() -> T>);

impl<T> SerdeAdapter<T> {
    /// The adapter.
    pub const fn new() -> Self {
        Self(PhantomData)
    }
}

impl<T> Default for SerdeAdapter<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for SerdeAdapter<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for SerdeAdapter<T> {}

impl<T> Debug for SerdeAdapter<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SerdeAdapter<{}>", std::any::type_name::<T>())
    }
}

impl<T: Serialize + DeserializeOwned> ResultAdapter<T> for SerdeAdapter<T> {
    fn encode(&self, value: &T) -> Result<Box<RawValue>> {
        to_result_json(value)
    }

    fn decode(&self, raw: &RawValue) -> Result<T> {
        serde_json::from_str(raw.get()).map_err(IdempotencyError::serialization)
    }
}

/// The adapter for results that already are JSON ([`serde_json::Value`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonAdapter;

impl ResultAdapter<serde_json::Value> for JsonAdapter {
    fn encode(&self, value: &serde_json::Value) -> Result<Box<RawValue>> {
        to_result_json(value)
    }

    fn decode(&self, raw: &RawValue) -> Result<serde_json::Value> {
        serde_json::from_str(raw.get()).map_err(IdempotencyError::serialization)
    }
}

impl ResultAdapter<Box<RawValue>> for JsonAdapter {
    fn encode(&self, value: &Box<RawValue>) -> Result<Box<RawValue>> {
        Ok(value.clone())
    }

    fn decode(&self, raw: &RawValue) -> Result<Box<RawValue>> {
        Ok(raw.to_owned())
    }
}

/// The adapter for actions that return `()`: stores `null`, decodes anything to `()`.
#[derive(Debug, Clone, Copy, Default)]
pub struct VoidAdapter;

impl ResultAdapter<()> for VoidAdapter {
    fn encode(&self, (): &()) -> Result<Box<RawValue>> {
        Ok(RawValue::NULL.to_owned())
    }

    fn decode(&self, _: &RawValue) -> Result<()> {
        Ok(())
    }
}
