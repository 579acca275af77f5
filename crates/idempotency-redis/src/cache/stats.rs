//! Counters of the local cache, separate from the store's metrics (whose series match
//! the Python library's and are left unchanged).

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a [`CachedStore`](super::CachedStore)'s counters.
///
/// A local hit is a read (`get`, `claim`, `get_many`) answered from memory without a
/// round trip; the coordinator still counts it as a hit in its own series, so
/// `local_hits` is the share of those hits that cost no round trip.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Reads answered from the local cache.
    pub local_hits: u64,
    /// Reads that went to Redis.
    pub local_misses: u64,
    /// Finished records put into the cache.
    pub fills: u64,
    /// Fills dropped because an invalidation or flush came after their read was sent.
    pub fenced_fills: u64,
    /// Keys invalidated by the server.
    pub invalidations: u64,
    /// Whole-cache flushes (a standalone or sentinel connection lost, a cluster's topology
    /// changed, lagging invalidations, re-tracking every master).
    pub flushes: u64,
    /// Flushes of one cluster master's entries (its connection was lost or re-made, or
    /// it dropped keys without naming them); the other masters' entries stayed.
    pub node_flushes: u64,
    /// Flushes because a master had dropped keys without naming them (`FLUSHALL`,
    /// `FLUSHDB`, `SWAPDB`: the liveness check found this process's marker gone).
    pub server_flushes: u64,
    /// Times tracking was switched on again on the servers (after a reconnect or a
    /// failed liveness check).
    pub retracks: u64,
    /// Entries held now.
    pub entries: u64,
    /// Weight held now: the estimated bytes of the entries, each counted at least
    /// `max_bytes / max_entries`.
    pub weight: u64,
    /// Whether the cache is being served now.
    pub fresh: bool,
}

/// A counter bumped on every read: one cache line per stripe, threads spread over the
/// stripes, so concurrent hits on several cores do not fight over one line.
#[derive(Debug, Default)]
pub(crate) struct Striped([Padded; 16]);

#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

impl Striped {
    pub(crate) fn add(&self) {
        use std::cell::Cell;
        thread_local! {
            static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
        }
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let stripe = STRIPE.with(|s| {
            if s.get() == usize::MAX {
                s.set(NEXT.fetch_add(1, Ordering::Relaxed) as usize % 16);
            }
            s.get()
        });
        self.0[stripe].0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn sum(&self) -> u64 {
        self.0.iter().map(|p| p.0.load(Ordering::Relaxed)).sum()
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: Striped,
    pub(crate) misses: Striped,
    pub(crate) fills: AtomicU64,
    pub(crate) fenced: AtomicU64,
    pub(crate) invalidations: AtomicU64,
    pub(crate) flushes: AtomicU64,
    pub(crate) retracks: AtomicU64,
    pub(crate) server_flushes: AtomicU64,
    pub(crate) node_flushes: AtomicU64,
}

impl Counters {
    pub(crate) fn load(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}
