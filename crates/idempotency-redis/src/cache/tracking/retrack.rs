//! Which masters must have tracking switched on again, and the losses that stale a
//! check's answers.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use fred::types::config::Server;

/// Which masters must have tracking switched on again before they are trusted, and
/// the losses seen so far (a check begun before a loss of its master confirms nothing).
#[derive(Debug, Default)]
struct RetrackState {
    /// Every master (at the start, and after a loss that cannot be pinned on one).
    all: bool,
    /// These masters (their connection was re-made or their check failed).
    servers: HashSet<Server>,
    /// Bumped by every loss of everything.
    all_losses: u64,
    /// Bumped by every loss of one master.
    losses: HashMap<Server, u64>,
}

impl RetrackState {
    fn stamp(&self, server: Option<&Server>) -> LossSnapshot {
        LossSnapshot {
            all: self.all_losses,
            server: server
                .and_then(|s| self.losses.get(s))
                .copied()
                .unwrap_or(0),
        }
    }
}

/// The losses that concern one master, as seen at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LossSnapshot {
    all: u64,
    server: u64,
}

/// Shared by the check and the invalidation task.
#[derive(Debug, Clone, Default)]
pub(super) struct RetrackFlags(Arc<Mutex<RetrackState>>);

impl RetrackFlags {
    fn lock(&self) -> std::sync::MutexGuard<'_, RetrackState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes every master due at the next check and counts a loss of everything.
    pub(super) fn all(&self) {
        let mut retrack = self.lock();
        retrack.all = true;
        retrack.all_losses = retrack.all_losses.wrapping_add(1);
    }

    /// Makes `server` due at the next check and counts a loss of it.
    pub(super) fn server(&self, server: Option<&Server>) {
        let Some(server) = server else {
            self.all();
            return;
        };
        let mut retrack = self.lock();
        retrack.servers.insert(server.clone());
        let losses = retrack.losses.entry(server.clone()).or_default();
        *losses = losses.wrapping_add(1);
    }

    /// Makes `server` due at the next check without counting a loss (the check that
    /// found it failing reports that in its own beat).
    pub(super) fn mark(&self, server: Option<&Server>) {
        let mut retrack = self.lock();
        match server {
            Some(server) => {
                retrack.servers.insert(server.clone());
            }
            None => retrack.all = true,
        }
    }

    /// The losses that concern `server` now.
    pub(super) fn stamp(&self, server: Option<&Server>) -> LossSnapshot {
        self.lock().stamp(server)
    }

    /// Takes the flags for the servers of a check: per target, whether it is due and
    /// the losses that concern it now. The `busy` masters (not in this check) keep
    /// theirs, an "every master" flag included.
    pub(super) fn take(
        &self,
        targets: &[Option<Server>],
        busy: &HashSet<Option<Server>>,
    ) -> Vec<(bool, LossSnapshot)> {
        let mut retrack = self.lock();
        let taken = targets
            .iter()
            .map(|t| {
                let due = retrack.all || t.as_ref().is_some_and(|s| retrack.servers.contains(s));
                (due, retrack.stamp(t.as_ref()))
            })
            .collect();
        if retrack.all {
            if busy.contains(&None) {
                return taken;
            }
            retrack.all = false;
            retrack.servers.extend(busy.iter().flatten().cloned());
        }
        for server in targets.iter().flatten() {
            retrack.servers.remove(server);
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use fred::types::config::Server;

    use std::collections::HashSet;

    use super::RetrackFlags;

    #[test]
    fn a_loss_concerns_the_checks_of_its_own_master_only() {
        let flags = RetrackFlags::default();
        let idle = HashSet::new();
        flags.all();
        let a = Some(Server::new("127.0.0.1", 7000));
        let b = Some(Server::new("127.0.0.1", 7001));
        let due =
            |taken: Vec<(bool, super::LossSnapshot)>| taken.iter().map(|t| t.0).collect::<Vec<_>>();
        // The check takes what is due: everything, once.
        let taken = flags.take(&[a.clone(), b.clone()], &idle);
        let (stamp_a, stamp_b) = (taken[0].1, taken[1].1);
        assert_eq!(due(taken), [true, true]);
        assert_eq!(
            due(flags.take(&[a.clone(), b.clone()], &idle)),
            [false, false]
        );
        // A loss of master a after the check began: a's answer to that check is stale,
        // b's is not; a is due at the next check.
        flags.server(a.as_ref());
        assert_ne!(flags.stamp(a.as_ref()), stamp_a);
        assert_eq!(flags.stamp(b.as_ref()), stamp_b);
        assert_eq!(
            due(flags.take(&[a.clone(), b.clone()], &idle)),
            [true, false]
        );
        // A failing check marks its master due without staling anything.
        flags.mark(b.as_ref());
        assert_eq!(flags.stamp(b.as_ref()), stamp_b);
        assert_eq!(
            due(flags.take(&[a.clone(), b.clone()], &idle)),
            [false, true]
        );
        // A loss of everything stales every master's answers.
        flags.all();
        assert_ne!(flags.stamp(b.as_ref()), stamp_b);
        assert_eq!(
            due(flags.take(&[a.clone(), b.clone()], &idle)),
            [true, true]
        );
        // A master busy with an earlier check keeps its flag for the next check.
        flags.all();
        let busy = HashSet::from([b.clone()]);
        assert_eq!(due(flags.take(std::slice::from_ref(&a), &busy)), [true]);
        assert_eq!(due(flags.take(&[a, b], &idle)), [false, true]);
    }
}
