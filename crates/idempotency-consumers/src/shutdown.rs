//! What a consumer reports when it stopped.

/// How a graceful shutdown ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stopped {
    /// Handlers still running when the grace period ended, cut there: their keys were
    /// released and their messages come back (JetStream after `ack_wait`, AMQP when the
    /// channel closes).
    pub cut: usize,
    /// Deliveries received but not started before the shutdown, sent back at once.
    pub returned: usize,
}
