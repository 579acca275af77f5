//! Validation of operation names and idempotency keys, and the validated identity every
//! layer carries.

use std::fmt;
use std::sync::Arc;

use crate::constants::{KEY_SEPARATOR, MAX_KEY_LENGTH, MAX_OPERATION_LENGTH};
use crate::error::{FieldProblem, IdempotencyError, Result};

/// The identity of one record: a validated `(operation, idempotency_key)` pair, trimmed,
/// within length, free of `:`.
///
/// Built once at the edge (the coordinator parses the caller's strings into it) and carried
/// by every layer below, so nothing re-validates and an unvalidated pair cannot reach a
/// store. Cheap to clone (one shared allocation holding `operation:key`, which is also the
/// storage key's tail: see [`RecordId::as_str`]).
///
/// # Examples
/// ```
/// # fn main() -> Result<(), idempotency_core::IdempotencyError> {
/// let id = idempotency_core::RecordId::new("  user.create ", " k-1 ")?;
/// assert_eq!(id.operation(), "user.create");
/// assert_eq!(id.key(), "k-1");
/// assert_eq!(id.as_str(), "user.create:k-1");
/// # Ok(()) }
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId {
    // `operation:key`; `split` is the byte index of the separator. Invariant: both halves
    // passed `validate_identifiers`, so neither contains the separator and the split is
    // unambiguous.
    text: Arc<str>,
    split: usize,
}

impl RecordId {
    /// Validates both identifiers, reporting every problem at once.
    ///
    /// # Errors
    /// [`IdempotencyError::Validation`] listing each problem of each field.
    pub fn new(operation: &str, key: &str) -> Result<Self> {
        let (operation, key) = validate_identifiers(operation, key)?;
        let mut text = String::with_capacity(operation.len() + key.len() + 1);
        text.push_str(operation);
        text.push(KEY_SEPARATOR);
        text.push_str(key);
        Ok(Self {
            text: text.into(),
            split: operation.len(),
        })
    }

    /// An identity of identifiers that were validated when their record was made (every
    /// way to make an [`IdempotencyRecord`](crate::IdempotencyRecord) validates them), so
    /// a record's identity is never validated twice.
    pub(crate) fn from_validated(operation: &str, key: &str) -> Self {
        debug_assert!(validate_identifiers(operation, key).is_ok());
        let mut text = String::with_capacity(operation.len() + key.len() + 1);
        text.push_str(operation);
        text.push(KEY_SEPARATOR);
        text.push_str(key);
        Self {
            text: text.into(),
            split: operation.len(),
        }
    }

    /// The trimmed operation name.
    pub fn operation(&self) -> &str {
        &self.text[..self.split]
    }

    /// The trimmed idempotency key.
    pub fn key(&self) -> &str {
        &self.text[self.split + KEY_SEPARATOR.len_utf8()..]
    }

    /// `operation:key`, the tail of every storage key of the record.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Splits into `(operation, key)`.
    pub fn into_parts(self) -> (String, String) {
        (self.operation().to_owned(), self.key().to_owned())
    }
}

impl fmt::Debug for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordId")
            .field("operation", &self.operation())
            .field("key", &self.key())
            .finish()
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The former name of [`RecordId`].
pub type Identifiers = RecordId;

/// Validates and trims an operation and a key without allocating; returns the trimmed
/// slices.
///
/// Both are counted in Unicode characters after trimming leading and trailing
/// whitespace: the operation must have 1 to [`MAX_OPERATION_LENGTH`], the key 1 to
/// [`MAX_KEY_LENGTH`], and neither may contain `:`.
///
/// # Errors
/// [`IdempotencyError::Validation`] listing every problem of both fields.
///
/// # Examples
/// ```
/// let refused = idempotency_core::validate_identifiers("", "a:b").err();
/// assert_eq!(refused.map(|e| e.problems().len()), Some(2));
/// ```
pub fn validate_identifiers<'a>(operation: &'a str, key: &'a str) -> Result<(&'a str, &'a str)> {
    let operation = operation.trim();
    let key = key.trim();
    let mut problems = Vec::new();
    check_field("operation", operation, MAX_OPERATION_LENGTH, &mut problems);
    check_field("idempotency_key", key, MAX_KEY_LENGTH, &mut problems);
    if problems.is_empty() {
        Ok((operation, key))
    } else {
        Err(IdempotencyError::validation(problems))
    }
}

pub(crate) fn check_field(field: &str, value: &str, max: usize, problems: &mut Vec<FieldProblem>) {
    // Byte length bounds the character count from above, so most values skip the count.
    let too_long = value.len() > max && value.chars().count() > max;
    if value.is_empty() {
        problems.push(FieldProblem::new(
            field,
            "string_too_short",
            "must have at least 1 character",
        ));
    } else if too_long {
        problems.push(FieldProblem::new(
            field,
            "string_too_long",
            format!("must have at most {max} characters"),
        ));
    }
    if value.contains(KEY_SEPARATOR) {
        problems.push(FieldProblem::new(
            field,
            "value_error",
            "cannot contain ':'",
        ));
    }
}

/// Checks a storage key prefix: empty, or ending with the separator `:`. Without the
/// separator one prefix runs into the operation: `svc:t1` with operation `0op` and
/// `svc:t10` with operation `op` would share `svc:t10op:…`, so listing or evicting under
/// one prefix would touch another's records. Control characters are refused too (they
/// would reach operators' terminals through the CLI).
///
/// # Errors
/// [`IdempotencyError::Configuration`] saying what to change.
///
/// # Examples
/// ```
/// use idempotency_core::validate_key_prefix;
/// assert!(validate_key_prefix("svc:idem:").is_ok());
/// assert!(validate_key_prefix("").is_ok());
/// assert!(validate_key_prefix("svc:t1").is_err());
/// ```
pub fn validate_key_prefix(prefix: &str) -> Result<()> {
    if prefix.chars().any(char::is_control) {
        return Err(IdempotencyError::configuration(
            "the key prefix holds a control character",
            None,
        ));
    }
    if !prefix.is_empty() && !prefix.ends_with(crate::constants::KEY_SEPARATOR) {
        return Err(IdempotencyError::configuration(
            format!(
                "the key prefix {prefix:?} must end with ':' (else it runs into the operation and collides with other prefixes): use {:?}",
                format!("{prefix}:")
            ),
            None,
        ));
    }
    Ok(())
}
