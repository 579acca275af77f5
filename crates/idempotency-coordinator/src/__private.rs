//! Support for the `#[idempotent]` expansion. Not a public API.

use std::collections::BTreeMap;

use idempotency_core::{IdempotencyError, RawValue, canonical_json, fingerprint_of};
use serde::Serialize;

/// Builds the fingerprint of the named parameters, exactly as `fingerprint_of` over the
/// same named values would (each value canonicalised by the same serializer: integers of
/// any width, floats as Python writes them).
#[derive(Debug, Default)]
pub struct Fingerprint(BTreeMap<String, Box<RawValue>>);

impl Fingerprint {
    /// Starts an empty set of named values.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one named value.
    ///
    /// # Errors
    /// A fingerprint error when the value has no JSON form.
    pub fn field<T: Serialize + ?Sized>(
        mut self,
        name: &str,
        value: &T,
    ) -> Result<Self, IdempotencyError> {
        let text = canonical_json(value)?;
        let raw = RawValue::from_string(text).map_err(IdempotencyError::fingerprint)?;
        self.0.insert(name.to_owned(), raw);
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
