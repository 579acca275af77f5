//! The key a step hands to an external provider.

use std::fmt;

use sha2::{Digest, Sha256};

/// The idempotency key of one step of one run, for an external provider to deduplicate
/// by (Stripe's `Idempotency-Key` header, a message id): the same on every attempt of
/// the run, whoever owns it, and different for every step, every key, and every later
/// run under the same key (once the first run's record expired).
///
/// 64 lowercase hex digits: SHA-256 over the store's key prefix, the operation, the
/// idempotency key, the run's id and the step's name, each prefixed with its length, so
/// no two different inputs give the same text to hash. It reveals none of them.
///
/// # Examples
/// ```
/// use idempotency_postgres::StepKey;
/// fn send(key: &StepKey) -> (&'static str, String) {
///     ("Idempotency-Key", key.to_string())
/// }
/// # let _ = send;
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StepKey(String);

/// Versions the derivation: a change of it must change every key.
const DOMAIN: &[u8] = b"idempotency-kit step key v1";

impl StepKey {
    /// The key of `step` in the run `run_id` of the record `prefix` + `operation:key`.
    pub(crate) fn derive(
        prefix: &str,
        operation: &str,
        key: &str,
        run_id: &str,
        step: &str,
    ) -> Self {
        let mut hash = Sha256::new();
        for part in [
            DOMAIN,
            prefix.as_bytes(),
            operation.as_bytes(),
            key.as_bytes(),
            run_id.as_bytes(),
            step.as_bytes(),
        ] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        let digest = hash.finalize();
        let mut text = String::with_capacity(64);
        for byte in digest {
            text.push(char::from(HEX[usize::from(byte >> 4)]));
            text.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        Self(text)
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl fmt::Display for StepKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for StepKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::StepKey;

    #[test]
    fn the_same_inputs_give_the_same_key_and_any_change_another() {
        let key = StepKey::derive("idempotency:", "pay", "k-1", "run-1", "charge");
        assert_eq!(
            key,
            StepKey::derive("idempotency:", "pay", "k-1", "run-1", "charge")
        );
        assert_eq!(key.as_str().len(), 64);
        assert!(
            key.as_str()
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        for other in [
            StepKey::derive("other:", "pay", "k-1", "run-1", "charge"),
            StepKey::derive("idempotency:", "pay2", "k-1", "run-1", "charge"),
            StepKey::derive("idempotency:", "pay", "k-2", "run-1", "charge"),
            StepKey::derive("idempotency:", "pay", "k-1", "run-2", "charge"),
            StepKey::derive("idempotency:", "pay", "k-1", "run-1", "refund"),
            // The parts are length-prefixed: moving a boundary changes the key.
            StepKey::derive("idempotency:", "pa", "yk-1", "run-1", "charge"),
        ] {
            assert_ne!(key, other);
        }
    }
}
