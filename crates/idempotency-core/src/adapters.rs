//! The result adapters the kit ships: serde values, JSON values, and nothing.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::error::{IdempotencyError, Result};
use crate::traits::adapter::ResultAdapter;
use crate::wire::to_result_json;

/// Reads a stored result into `T`, as deep as a record holds one: a record never nests
/// beyond pydantic's 200 levels (the decoder refuses deeper ones, and `check_storable`
/// keeps them from being written), past `serde_json`'s default limit of 128.
fn from_result_text<T: DeserializeOwned>(text: &str) -> Result<T> {
    let mut de = serde_json::Deserializer::from_str(text);
    de.disable_recursion_limit();
    let value = T::deserialize(&mut de).map_err(IdempotencyError::serialization)?;
    de.end().map_err(IdempotencyError::serialization)?;
    Ok(value)
}

/// The adapter for any `Serialize + DeserializeOwned` type (the role of the Python
/// library's `PydanticResultAdapter`; the type is inferred from the action). A stored
/// `null` decodes only into types that accept it (`Option`, `()`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SerdeAdapter;

impl<T: Serialize + DeserializeOwned> ResultAdapter<T> for SerdeAdapter {
    fn encode(&self, value: &T) -> Result<Box<RawValue>> {
        to_result_json(value)
    }

    fn decode(&self, raw: &RawValue) -> Result<T> {
        from_result_text(raw.get())
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
        from_result_text(raw.get())
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
