//! fred errors as kit errors, and their metric labels.

use fred::error::{Error, ErrorKind};
use idempotency_core::{ErrorType, IdempotencyError, RecordId};

/// The metric label of a driver error (a fixed set).
pub(crate) fn label(e: &Error) -> ErrorType {
    match e.kind() {
        ErrorKind::IO | ErrorKind::Canceled | ErrorKind::Routing | ErrorKind::Backpressure => {
            ErrorType::Connection
        }
        ErrorKind::Timeout => ErrorType::Timeout,
        ErrorKind::Auth | ErrorKind::Config | ErrorKind::Url => ErrorType::Storage,
        _ => ErrorType::Response,
    }
}

/// The code of a Redis error reply (`OOM`, `NOREPLICAS`, `READONLY`, `ERR`, …): `Some`
/// when the server answered the command with an error, `None` when it could not be
/// reached or did not answer (I/O, timeout, cancellation, routing, a full buffer).
pub(crate) fn reply_code(e: &Error) -> Option<&str> {
    match e.kind() {
        ErrorKind::Unknown
        | ErrorKind::InvalidArgument
        | ErrorKind::InvalidCommand
        | ErrorKind::Auth
        | ErrorKind::Cluster => {}
        _ => return None,
    }
    let code = e.details().split_whitespace().next()?;
    (code.len() >= 2 && code.bytes().all(|b| b.is_ascii_uppercase())).then_some(code)
}

/// Whether the command got no answer at all (I/O, timeout, cancellation, a full buffer,
/// no route): what opens the fail-fast breaker. An error reply is an answer.
pub(crate) fn unanswered(e: &Error) -> bool {
    reply_code(e).is_none()
        && matches!(
            e.kind(),
            ErrorKind::IO
                | ErrorKind::Timeout
                | ErrorKind::Canceled
                | ErrorKind::Backpressure
                | ErrorKind::Routing
        )
}

/// What an error reply to a write says about the deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The client is not allowed to run the command, or the server does not know it
    /// (`NOPERM`, `NOAUTH`, `WRONGPASS`, `ERR unknown command`): the deployment is wrong,
    /// and no call may run unprotected because of it. Always fails closed.
    Configuration,
    /// The server refuses the write for now and may still serve reads (`NOREPLICAS`,
    /// `OOM`, `MISCONF`, `READONLY` do; `BUSY`, `LOADING`, `MASTERDOWN`, `CLUSTERDOWN`
    /// refuse the read as well; another `ERR`): the claim reads the key before anything
    /// falls to `on_storage_error`, which decides when the read is refused too.
    Write,
}

/// How to treat an error reply to a write, or `None` when the server did not answer.
pub(crate) fn refusal(e: &Error) -> Option<Refusal> {
    let code = reply_code(e)?;
    let details = e.details();
    // Before Redis 7 the claim is a script, and a refusal inside it comes wrapped
    // (`ERR Error running script … NOPERM …`, `… No permissions …`): read the whole reply.
    let configuration = matches!(code, "NOPERM" | "NOAUTH" | "WRONGPASS")
        || details.contains("NOPERM")
        || details.contains("No permissions")
        || (code == "ERR"
            && (details.contains("unknown command") || details.contains("unknown subcommand")));
    Some(if configuration {
        Refusal::Configuration
    } else {
        Refusal::Write
    })
}

/// Whether the server refused the command because the key holds another Redis type: a
/// permanent fault of the data under that key, not an outage.
pub(crate) fn is_wrong_type(e: &Error) -> bool {
    e.details().contains("WRONGTYPE")
}

/// The kit error of a driver error on one key: a data error naming the key when the key
/// holds a value of another type (so fail-open never runs the action over it), a storage
/// error otherwise.
pub(crate) fn classify(id: &RecordId, e: Error) -> IdempotencyError {
    if is_wrong_type(&e) {
        IdempotencyError::CorruptedRecord {
            operation: id.operation().to_owned(),
            key: id.key().to_owned(),
            source: Box::new(e),
        }
    } else {
        storage(id.operation(), e)
    }
}

/// A storage error carrying the driver's error as its source: `StorageRefused` when the
/// server answered with an error reply, `Storage` when it could not be reached.
pub(crate) fn storage(operation: &str, e: Error) -> IdempotencyError {
    match reply_code(&e).map(str::to_owned) {
        Some(code) => IdempotencyError::storage_refused(Some(operation), &code, e),
        None => IdempotencyError::storage(Some(operation), e),
    }
}

#[cfg(test)]
mod tests {
    use super::{Refusal, refusal};
    use fred::error::{Error, ErrorKind};

    #[test]
    fn refusals_that_mean_a_wrong_deployment_fail_closed() {
        let reply = |text: &str| Error::new(ErrorKind::Unknown, text.to_owned());
        for text in [
            "NOPERM User app has no permissions to run the 'set' command",
            "ERR Error running script (call to f_1): @user_script:1: NOPERM No permissions to access a key",
            "ERR Error running script: @user_script:3: No permissions to run the 'set' command",
            "ERR unknown command 'SET', with args beginning with:",
        ] {
            assert_eq!(
                refusal(&reply(text)),
                Some(Refusal::Configuration),
                "{text}"
            );
        }
        for text in [
            "OOM command not allowed when used memory > 'maxmemory'.",
            "NOREPLICAS Not enough good replicas to write.",
            "READONLY You can't write against a read only replica.",
        ] {
            assert_eq!(refusal(&reply(text)), Some(Refusal::Write), "{text}");
        }
        assert_eq!(
            refusal(&Error::new(ErrorKind::IO, "Connection refused")),
            None
        );
    }
}
