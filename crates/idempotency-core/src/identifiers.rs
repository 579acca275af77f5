//! Validation of operation names and idempotency keys.

use crate::constants::{KEY_SEPARATOR, MAX_KEY_LENGTH, MAX_OPERATION_LENGTH};
use crate::error::{FieldProblem, IdempotencyError, Result};

/// A validated `(operation, idempotency_key)` pair: trimmed, within length, free of `:`.
///
/// # Examples
/// ```
/// # fn main() -> Result<(), idempotency_core::IdempotencyError> {
/// let ids = idempotency_core::Identifiers::new("  user.create ", " k-1 ")?;
/// assert_eq!(ids.operation(), "user.create");
/// assert_eq!(ids.key(), "k-1");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identifiers {
    operation: String,
    key: String,
}

impl Identifiers {
    /// Validates both identifiers, reporting every problem at once.
    ///
    /// # Errors
    /// [`IdempotencyError::Validation`] listing each problem of each field.
    pub fn new(operation: &str, key: &str) -> Result<Self> {
        let (operation, key) = validate_identifiers(operation, key)?;
        Ok(Self {
            operation: operation.to_owned(),
            key: key.to_owned(),
        })
    }

    /// The trimmed operation name.
    pub fn operation(&self) -> &str {
        &self.operation
    }

    /// The trimmed idempotency key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Splits into `(operation, key)`.
    pub fn into_parts(self) -> (String, String) {
        (self.operation, self.key)
    }
}

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
/// let err = idempotency_core::validate_identifiers("", "a:b").unwrap_err();
/// assert_eq!(err.problems().len(), 2);
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
