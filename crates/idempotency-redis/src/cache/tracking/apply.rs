//! The invalidation task: the server's invalidations, fred's connection events and the
//! checks' answers applied to the local entries, in order.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fred::interfaces::ClusterInterface;
use fred::prelude::{Client, ClientLike};
use fred::types::ClusterStateChange;
use fred::types::config::Server;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::mpsc;

use super::check::parts_of;
use super::report::{HeartbeatReport, MasterLiveness};
use super::retrack::RetrackFlags;
use crate::cache::entries::Entries;

pub(super) struct InvalidationApplier {
    pub(super) entries: Arc<Entries>,
    pub(super) prefix: Vec<u8>,
    pub(super) staleness: Duration,
    pub(super) retrack: RetrackFlags,
    pub(super) client: Client,
}

impl InvalidationApplier {
    pub(super) fn invalidate(&self, invalidation: &fred::types::client::Invalidation) {
        for key in &invalidation.keys {
            let Some(id) = key
                .as_bytes()
                .strip_prefix(self.prefix.as_slice())
                .and_then(|id| std::str::from_utf8(id).ok())
            else {
                continue;
            };
            self.entries.invalidate(id);
            self.entries
                .counters
                .invalidations
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A loss that cannot be pinned on one master: stop serving, drop everything, and
    /// switch tracking on again everywhere at the next check.
    pub(super) fn lost(&self) {
        self.entries.unfresh_all();
        self.retrack.all();
        self.entries.flush();
    }

    /// `server`'s connection was re-made or its check failed: stop serving and drop its
    /// partitions, and switch tracking on again there at the next check. Without a
    /// cluster (or a state that names it) this is [`InvalidationApplier::lost`].
    pub(super) fn node_lost(&self, server: Option<&Server>, parts: &[usize]) {
        if server.is_none() || parts.is_empty() || self.entries.partitions() == 1 {
            self.lost();
            return;
        }
        self.entries.unfresh(parts);
        self.retrack.server(server);
        self.entries.flush_parts(parts);
    }

    /// `server`'s connection failed, closed or was re-made (fred announces each).
    pub(super) fn connection_lost(&self, server: &Server) {
        if !self.client.is_clustered() {
            self.lost();
            return;
        }
        let state = self.client.cached_cluster_state();
        let parts = parts_of(state.as_ref(), Some(server));
        self.node_lost(Some(server), &parts);
    }

    /// fred's cluster state changed (it reports every refresh, see `LivenessCheck::run`).
    /// `Rebalance` (the same masters, slots maybe moved among them) needs nothing: every
    /// master announces writes to whatever keys it holds, and its connection is
    /// untouched. A master added (fred also reports a re-made connection as one) loses
    /// only its own slots; a master removed stops and flushes everything.
    pub(super) fn cluster_changed(&self, changes: &[ClusterStateChange]) {
        if changes
            .iter()
            .any(|change| matches!(change, ClusterStateChange::Remove(_)))
        {
            self.lost();
            return;
        }
        for change in changes {
            if let ClusterStateChange::Add(server) = change {
                self.connection_lost(server);
            }
        }
    }

    /// A check's answer from one master (every invalidation received before it applied).
    pub(super) fn confirmed(&self, node: &MasterLiveness) {
        // Invariant (freshness): a check begun before a loss of its master (or of
        // everything) freshens nothing; losses this very answer reports are recorded
        // below (`node_lost`), after this reading, and concern only its own master.
        let current = self.retrack.stamp(node.server.as_ref()) == node.stamp;
        if !node.ok {
            self.node_lost(node.server.as_ref(), &node.parts);
            return;
        }
        let counters = &self.entries.counters;
        if node.retracked {
            // Tracking was off there for a while: whatever was cached of it may be stale.
            counters.retracks.fetch_add(1, Ordering::Relaxed);
            self.flush_node(node);
        } else if node.flushed {
            // The master dropped keys without naming them (see the module's
            // documentation): the answer came after the drop, so this flush comes before
            // anything read from the emptied master is kept or served on this freshness.
            counters.server_flushes.fetch_add(1, Ordering::Relaxed);
            self.flush_node(node);
        }
        if !current {
            // A loss was seen after this check began (its tracking may be off now):
            // the next check, which re-tracks where needed, confirms again.
            return;
        }
        self.entries
            .fresh_until(&node.parts, node.sent, self.staleness);
    }

    pub(super) fn flush_node(&self, node: &MasterLiveness) {
        if node.server.is_none() || self.entries.partitions() == 1 {
            self.entries.flush();
        } else {
            self.entries.flush_parts(&node.parts);
        }
    }
}

/// What fred tells the invalidation task.
pub(super) struct DriverEvents {
    pub(super) invalidations: tokio::sync::broadcast::Receiver<fred::types::client::Invalidation>,
    /// A connection was re-made (tracking is off on it).
    pub(super) reconnects: tokio::sync::broadcast::Receiver<Server>,
    pub(super) cluster_changes: tokio::sync::broadcast::Receiver<Vec<ClusterStateChange>>,
    /// A connection failed or closed (with its server when fred knows it).
    pub(super) errors: tokio::sync::broadcast::Receiver<(fred::error::Error, Option<Server>)>,
}

pub(super) async fn apply(
    applier: InvalidationApplier,
    events: DriverEvents,
    mut beats: mpsc::Receiver<HeartbeatReport>,
) {
    let DriverEvents {
        mut invalidations,
        mut reconnects,
        mut cluster_changes,
        mut errors,
    } = events;
    loop {
        tokio::select! {
            biased;
            message = invalidations.recv() => match message {
                Ok(invalidation) => applier.invalidate(&invalidation),
                // Some invalidations were dropped: nothing cached can be trusted.
                Err(RecvError::Lagged(_)) => applier.entries.flush(),
                Err(RecvError::Closed) => {
                    applier.entries.unfresh_all();
                    applier.entries.flush();
                    return;
                }
            },
            // A connection was re-made (tracking is off on it): that master's
            // invalidations may have been lost. Missed announcements, or a changed
            // cluster: anyone's may have been.
            // (A closed channel matches neither pattern: the branch sleeps.)
            reconnect @ (Ok(_) | Err(RecvError::Lagged(_))) = reconnects.recv() => {
                match reconnect {
                    Ok(server) => applier.connection_lost(&server),
                    Err(_) => applier.lost(),
                }
            }
            change @ (Ok(_) | Err(RecvError::Lagged(_))) = cluster_changes.recv() => {
                match change {
                    Ok(changes) => applier.cluster_changed(&changes),
                    Err(_) => applier.lost(),
                }
            }
            // A connection failed or closed: invalidations stop until fred re-makes it,
            // so its master's entries stop at once (not at the reconnection, which may
            // take a while, nor at the next check).
            error @ (Ok(_) | Err(RecvError::Lagged(_))) = errors.recv() => {
                match error {
                    Ok((e, Some(server))) => {
                        tracing::debug!(error = %e, %server, "the tracking connection failed");
                        applier.connection_lost(&server);
                    }
                    Ok((e, None)) => {
                        tracing::debug!(error = %e, "the tracking client failed");
                        applier.lost();
                    }
                    Err(_) => applier.lost(),
                }
            }
            beat = beats.recv() => {
                let Some(beat) = beat else { return };
                // Invariant (freshness): each answer came after every invalidation its
                // master sent before it, on the same connection, and fred queued those
                // before it completed the answer: apply them all before serving again.
                loop {
                    match invalidations.try_recv() {
                        Ok(invalidation) => applier.invalidate(&invalidation),
                        Err(TryRecvError::Lagged(_)) => applier.entries.flush(),
                        Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                    }
                }
                match beat {
                    HeartbeatReport::MasterReply(node) => applier.confirmed(&node),
                    HeartbeatReport::Late(parts) => applier.entries.unfresh(&parts),
                    HeartbeatReport::Unknown => applier.lost(),
                }
            }
        }
    }
}
