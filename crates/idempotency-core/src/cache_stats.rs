//! What a local cache in front of a store reports (the cache itself lives with its store:
//! `idempotency-redis`'s `cache` module).

/// A snapshot of a local cache's counters (`idempotency_redis::cache::CachedStore::stats`,
/// there named `CacheStats`), which `idempotency-metrics` exports as Prometheus series
/// beside the Python library's, left unchanged.
///
/// A local hit is a read (`get`, `claim`, `get_many`) answered from memory without a
/// round trip; the coordinator still counts it as a hit in its own series, so
/// `local_hits` is the share of those hits that cost no round trip.
///
/// # Examples
/// ```
/// use idempotency_core::LocalCacheStats;
/// let mut stats = LocalCacheStats::default();
/// stats.local_hits = 3;
/// assert_eq!(stats.local_misses, 0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LocalCacheStats {
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
