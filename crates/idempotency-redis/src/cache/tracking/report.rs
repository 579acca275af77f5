//! What the heartbeat task reports to the invalidation task: each master's liveness as
//! it answers, the masters that are late, or that the masters are unknown.

use std::time::Instant;

use fred::types::config::Server;

use super::retrack::LossSnapshot;

/// What the heartbeat task tells the invalidation task.
pub(super) enum HeartbeatReport {
    /// One master's answer to a liveness check, sent as soon as it arrives (a slow
    /// master delays no other's).
    MasterReply(MasterLiveness),
    /// A master's check has been outstanding for a quarter of an interval: its
    /// partitions stop being served until it answers (a flush it would report is not
    /// served for longer than that).
    Late(Vec<usize>),
    /// The masters are not known (a cluster without state).
    Unknown,
}

/// One master's answer to a liveness check.
pub(super) struct MasterLiveness {
    /// When the check was sent to it (after tracking was switched on, if it was).
    pub(super) sent: Instant,
    /// The losses that concerned it when the check began.
    pub(super) stamp: LossSnapshot,
    /// The master (`None`: the one server of a standalone or sentinel set-up).
    pub(super) server: Option<Server>,
    /// The partitions of the entries it holds when the check was sent.
    pub(super) parts: Vec<usize>,
    /// It answered that this connection tracks in broadcast mode.
    pub(super) ok: bool,
    /// Tracking was switched on again on it before the check.
    pub(super) retracked: bool,
    /// It dropped keys without naming them since its last answer (a `FLUSHALL`,
    /// `FLUSHDB` or `SWAPDB`: this process's marker was not as it left it, or the
    /// master's counts of those commands changed), or this process stalled past the
    /// marker's lifetime.
    pub(super) flushed: bool,
}
