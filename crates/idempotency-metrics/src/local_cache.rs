//! A local cache's counters as Prometheus series, read when the registry is scraped.

use idempotency_core::LocalCacheStats;
use prometheus::core::{Collector, Desc, Describer};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, IntGauge, Opts};

/// How one series is read from a snapshot.
type Read = fn(&LocalCacheStats) -> u64;

/// The series: name (after `idempotency_local_cache_`), help, whether it is a gauge, and
/// how it is read.
const SERIES: [(&str, &str, bool, Read); 12] = [
    (
        "hits_total",
        "Reads answered from the local cache, without a round trip",
        false,
        |s| s.local_hits,
    ),
    (
        "misses_total",
        "Reads the local cache sent on to the store",
        false,
        |s| s.local_misses,
    ),
    (
        "fills_total",
        "Finished records put into the local cache",
        false,
        |s| s.fills,
    ),
    (
        "fenced_fills_total",
        "Fills dropped because an invalidation or flush came after their read was sent",
        false,
        |s| s.fenced_fills,
    ),
    (
        "invalidations_total",
        "Keys the server invalidated",
        false,
        |s| s.invalidations,
    ),
    ("flushes_total", "Whole-cache flushes", false, |s| s.flushes),
    (
        "node_flushes_total",
        "Flushes of one cluster master's entries",
        false,
        |s| s.node_flushes,
    ),
    (
        "server_flushes_total",
        "Flushes because a master dropped keys without naming them (FLUSHALL, FLUSHDB, SWAPDB)",
        false,
        |s| s.server_flushes,
    ),
    (
        "retracks_total",
        "Times tracking was switched on again on a master",
        false,
        |s| s.retracks,
    ),
    ("entries", "Entries held now", true, |s| s.entries),
    ("weight_bytes", "Estimated bytes held now", true, |s| {
        s.weight
    }),
    (
        "served",
        "1 while the cache is served on every master, else 0",
        true,
        |s| u64::from(s.fresh),
    ),
];

/// Exports a local cache's counters (`idempotency_redis::cache::CachedStore::stats`) as
/// the series `{prefix}_idempotency_local_cache_…`: counters `hits_total`,
/// `misses_total`, `fills_total`, `fenced_fills_total`, `invalidations_total`,
/// `flushes_total`, `node_flushes_total`, `server_flushes_total`, `retracks_total`, and
/// gauges `entries`, `weight_bytes`, `served`. The Python library's series are left
/// unchanged (a local hit is still a `hit` there); these come beside them. Nothing is
/// recorded on the hit path: `read` is called when the registry is gathered.
///
/// # Examples
/// ```
/// # fn main() -> Result<(), prometheus::Error> {
/// use idempotency_core::LocalCacheStats;
/// use idempotency_metrics::LocalCacheCollector;
///
/// let registry = prometheus::Registry::new();
/// // With a cache: `move || cached.stats()`.
/// let collector = LocalCacheCollector::new(None, || {
///     let mut stats = LocalCacheStats::default();
///     stats.local_hits = 7;
///     stats
/// })?;
/// registry.register(Box::new(collector))?;
/// let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather())?;
/// assert!(text.contains("idempotency_local_cache_hits_total 7"));
/// # Ok(()) }
/// ```
pub struct LocalCacheCollector {
    read: Box<dyn Fn() -> LocalCacheStats + Send + Sync>,
    /// The series' options, in [`SERIES`] order.
    opts: Vec<Opts>,
    descs: Vec<Desc>,
}

impl std::fmt::Debug for LocalCacheCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCacheCollector")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl LocalCacheCollector {
    /// The series, named with an optional prefix, reading `read` at every scrape.
    ///
    /// # Errors
    /// The `prometheus` crate's error for a prefix that makes an invalid metric name.
    pub fn new(
        prefix: Option<&str>,
        read: impl Fn() -> LocalCacheStats + Send + Sync + 'static,
    ) -> prometheus::Result<Self> {
        let prefix = prefix.filter(|p| !p.is_empty());
        let mut opts = Vec::with_capacity(SERIES.len());
        let mut descs = Vec::with_capacity(SERIES.len());
        for (name, help, _, _) in SERIES {
            let name = match prefix {
                Some(p) => format!("{p}_idempotency_local_cache_{name}"),
                None => format!("idempotency_local_cache_{name}"),
            };
            let o = Opts::new(name, help);
            descs.push(o.describe()?);
            opts.push(o);
        }
        Ok(Self {
            read: Box::new(read),
            opts,
            descs,
        })
    }
}

impl Collector for LocalCacheCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let stats = (self.read)();
        let mut families = Vec::with_capacity(SERIES.len());
        for ((_, _, gauge, read), opts) in SERIES.iter().zip(&self.opts) {
            let value = read(&stats);
            // The options were checked in `new`; a series that fails anyway is left out.
            if *gauge {
                if let Ok(g) = IntGauge::with_opts(opts.clone()) {
                    g.set(i64::try_from(value).unwrap_or(i64::MAX));
                    families.extend(g.collect());
                }
            } else if let Ok(c) = IntCounter::with_opts(opts.clone()) {
                c.inc_by(value);
                families.extend(c.collect());
            }
        }
        families
    }
}

#[cfg(test)]
mod tests {
    use idempotency_core::LocalCacheStats;
    use prometheus::{Registry, TextEncoder};

    use super::LocalCacheCollector;

    #[test]
    fn every_counter_is_read_at_scrape_time_under_its_prefix() {
        let registry = Registry::new();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1));
        let read = std::sync::Arc::clone(&hits);
        let collector = LocalCacheCollector::new(Some("svc"), move || {
            let mut s = LocalCacheStats::default();
            s.local_hits = read.load(std::sync::atomic::Ordering::Relaxed);
            s.local_misses = 2;
            s.fills = 3;
            s.fenced_fills = 4;
            s.invalidations = 5;
            s.flushes = 6;
            s.node_flushes = 7;
            s.server_flushes = 8;
            s.retracks = 9;
            s.entries = 10;
            s.weight = 11;
            s.fresh = true;
            s
        })
        .expect("collector");
        registry.register(Box::new(collector)).expect("register");
        let scrape = || {
            TextEncoder::new()
                .encode_to_string(&registry.gather())
                .expect("encode")
        };
        let text = scrape();
        for line in [
            "svc_idempotency_local_cache_hits_total 1",
            "svc_idempotency_local_cache_misses_total 2",
            "svc_idempotency_local_cache_fills_total 3",
            "svc_idempotency_local_cache_fenced_fills_total 4",
            "svc_idempotency_local_cache_invalidations_total 5",
            "svc_idempotency_local_cache_flushes_total 6",
            "svc_idempotency_local_cache_node_flushes_total 7",
            "svc_idempotency_local_cache_server_flushes_total 8",
            "svc_idempotency_local_cache_retracks_total 9",
            "svc_idempotency_local_cache_entries 10",
            "svc_idempotency_local_cache_weight_bytes 11",
            "svc_idempotency_local_cache_served 1",
            "# TYPE svc_idempotency_local_cache_hits_total counter",
            "# TYPE svc_idempotency_local_cache_entries gauge",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        hits.store(41, std::sync::atomic::Ordering::Relaxed);
        assert!(scrape().contains("svc_idempotency_local_cache_hits_total 41"));
    }
}
