//! Why a command failed, and its exit code.

use std::fmt;
use std::process::ExitCode;

use idempotency_core::IdempotencyError;

/// A failed command. Each kind has its documented exit code (`docs/operations.md`).
#[derive(Debug)]
#[non_exhaustive]
pub(crate) enum Failure {
    /// Exit 1: the key holds nothing (inspect, evict, watch).
    NotFound(String),
    /// Exit 1: evict refused (a live reservation without `--force`, or the key changed
    /// under it).
    Refused(String),
    /// Exit 2: bad arguments or configuration (a bad URL, no URL, an unreadable settings
    /// file, an invalid operation or key).
    Usage(String),
    /// Exit 3: the store refused the connection, timed out or failed a command.
    Connection(String),
    /// Exit 4: the key holds a value that is not a record (inspect, watch).
    Data(String),
    /// Exit 5: watch timed out with the reservation still live.
    TimedOut(String),
}

impl Failure {
    /// The process exit code.
    pub(crate) fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            Self::NotFound(_) | Self::Refused(_) => 1,
            Self::Usage(_) => 2,
            Self::Connection(_) => 3,
            Self::Data(_) => 4,
            Self::TimedOut(_) => 5,
        })
    }

    /// A kit error from a store command or an identity check.
    pub(crate) fn from_kit(e: &IdempotencyError) -> Self {
        let text = chain(e);
        if e.is_storage() {
            Self::Connection(format!("store command failed: {text}"))
        } else if e.is_validation() {
            Self::Usage(format!("invalid operation or key: {text}"))
        } else {
            Self::Data(text)
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (label, text) = match self {
            Self::NotFound(t) => ("not found", t),
            Self::Refused(t) => ("refused", t),
            Self::Usage(t) => ("usage", t),
            Self::Connection(t) => ("connection", t),
            Self::Data(t) => ("data", t),
            Self::TimedOut(t) => ("timed out", t),
        };
        write!(f, "error ({label}): {text}")
    }
}

/// An error and its sources, joined by `: `.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}
