//! Support for the `#[idempotent]` expansion. Not a public API.

use idempotency_core::{IdempotencyError, fingerprint_of};
use serde::Serialize;

/// Builds the fingerprint of the named parameters.
#[derive(Debug, Default)]
pub struct Fingerprint(serde_json::Map<String, serde_json::Value>);

impl Fingerprint {
    /// Starts an empty set of named values.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one named value.
    ///
    /// # Errors
    /// When the value has no JSON form.
    pub fn field<T: Serialize + ?Sized>(
        mut self,
        name: &str,
        value: &T,
    ) -> Result<Self, IdempotencyError> {
        let value = serde_json::to_value(value).map_err(IdempotencyError::serialization)?;
        self.0.insert(name.to_owned(), value);
        Ok(self)
    }

    /// The fingerprint.
    ///
    /// # Errors
    /// When hashing fails.
    pub fn finish(self) -> Result<Option<String>, IdempotencyError> {
        fingerprint_of(&self.0).map(Some)
    }
}

/// The key parameter as an owned key (`Option<String>`, `Option<&str>`, `&Option<String>`).
pub fn key_of<K: AsRef<str>>(key: Option<K>) -> Option<String> {
    key.map(|k| k.as_ref().to_owned())
}
