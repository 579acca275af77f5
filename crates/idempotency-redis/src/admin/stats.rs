//! Counting records: by operation and status, by remaining TTL, and their memory.

use std::collections::BTreeMap;
use std::time::Duration;

use fred::interfaces::ServerInterface;
use fred::prelude::{Client, ClientLike};
use fred::types::InfoKind;
use idempotency_core::Result;

use super::{Admin, Inspection, ListFilter};

/// The TTL histogram's buckets: a label and the exclusive upper bound of the TTL Redis
/// holds (`None`: unbounded). Keys without an expiry have their own bucket, `no expiry`.
pub const TTL_BUCKETS: [(&str, Option<Duration>); 5] = [
    ("<1m", Some(Duration::from_secs(60))),
    ("1m-10m", Some(Duration::from_secs(600))),
    ("10m-1h", Some(Duration::from_secs(3600))),
    ("1h-1d", Some(Duration::from_secs(86_400))),
    (">=1d", None),
];

/// The label of the bucket without expiry.
const NO_EXPIRY: &str = "no expiry";

/// How [`Admin::stats`] samples.
///
/// # Examples
/// ```
/// use idempotency_redis::admin::StatsOptions;
/// let options = StatsOptions::new().operation("order.create").max_keys(1000);
/// assert_eq!(options.max_keys_value(), 1000);
/// ```
#[derive(Debug, Clone)]
pub struct StatsOptions {
    /// The records to count: the scan [`Admin::list`] runs (its limit is set from
    /// `max_keys`).
    scan: ListFilter,
    max_keys: usize,
}

impl Default for StatsOptions {
    fn default() -> Self {
        Self {
            scan: ListFilter::new(),
            max_keys: 10_000,
        }
    }
}

impl StatsOptions {
    /// Every operation, at most 10 000 keys examined.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only this operation's records.
    #[must_use]
    pub fn operation(mut self, operation: impl Into<String>) -> Self {
        self.scan = self.scan.operation(operation);
        self
    }

    /// Examines at most this many keys; past it, the result is a sample and says so.
    #[must_use]
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys.max(1);
        self
    }

    /// The most keys examined.
    pub fn max_keys_value(&self) -> usize {
        self.max_keys
    }
}

/// What [`Admin::stats`] counted.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Records by operation, then by status label (`pending`, `completed`,
    /// `stored_error`, `unreadable`, `wrong-type`).
    pub counts: BTreeMap<String, BTreeMap<String, u64>>,
    /// Keys by the TTL Redis holds, in [`TTL_BUCKETS`] order, then `no expiry`.
    pub ttl_histogram: Vec<(String, u64)>,
    /// Keys examined.
    pub examined: u64,
    /// Whether the scan stopped at the key limit before the end of the keyspace: the
    /// counts are then those of a sample of the first keys `SCAN` returned.
    pub sampled: bool,
    /// The sum of `MEMORY USAGE` over the keys examined.
    pub memory_bytes: u64,
    /// The sum of `used_memory` (`INFO memory`) over the masters: the whole servers'
    /// memory, not only these records'.
    pub server_used_memory: Option<u64>,
    /// The sum of `DBSIZE` over the masters: every key of the database, records or not.
    pub db_keys: Option<u64>,
}

impl Stats {
    fn add(&mut self, found: &Inspection) {
        *self
            .counts
            .entry(found.id.operation().to_owned())
            .or_default()
            .entry(found.status_label().to_owned())
            .or_default() += 1;
        let label = match found.pttl {
            None => NO_EXPIRY,
            Some(ttl) => TTL_BUCKETS
                .iter()
                .find(|(_, bound)| bound.is_none_or(|b| ttl < b))
                .map_or(NO_EXPIRY, |(label, _)| *label),
        };
        if let Some(bucket) = self.ttl_histogram.iter_mut().find(|(l, _)| l == label) {
            bucket.1 += 1;
        }
        self.memory_bytes += found.memory_bytes.unwrap_or(0);
        self.examined += 1;
    }

    /// The records counted with `status` over every operation.
    pub fn total_with_status(&self, status: &str) -> u64 {
        self.counts
            .values()
            .filter_map(|by_status| by_status.get(status))
            .sum()
    }

    /// As JSON (what `stats --json` prints): `examined`, `sampled`, `counts`
    /// (`{operation: {status: n}}`), `ttl_histogram` (`[{bucket, keys}]`),
    /// `memory_bytes`, `server_used_memory`, `db_keys`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "examined": self.examined,
            "sampled": self.sampled,
            "counts": self.counts,
            "ttl_histogram": self
                .ttl_histogram
                .iter()
                .map(|(bucket, keys)| serde_json::json!({"bucket": bucket, "keys": keys}))
                .collect::<Vec<_>>(),
            "memory_bytes": self.memory_bytes,
            "server_used_memory": self.server_used_memory,
            "db_keys": self.db_keys,
        })
    }
}

/// `used_memory:` of an `INFO memory` answer.
fn used_memory(info: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
}

/// `used_memory` and `DBSIZE` summed over the masters (`None` when one refused).
async fn server_totals(client: &Client) -> (Option<u64>, Option<u64>) {
    let mut memory = Some(0u64);
    let mut keys = Some(0u64);
    if client.is_clustered() {
        for server in client.active_connections() {
            let node = client.with_cluster_node(server);
            let info: Option<String> = node.info(Some(InfoKind::Memory)).await.ok();
            memory = memory
                .zip(info.as_deref().and_then(used_memory))
                .map(|(a, b)| a + b);
            keys = keys
                .zip(node.dbsize::<u64>().await.ok())
                .map(|(a, b)| a + b);
        }
    } else {
        let info: Option<String> = client.info(Some(InfoKind::Memory)).await.ok();
        memory = info.as_deref().and_then(used_memory);
        keys = client.dbsize::<u64>().await.ok();
    }
    (memory, keys)
}

impl Admin {
    /// Counts the records (of one operation, or all) by operation and status, and by the
    /// TTL Redis holds, with their memory; `SCAN`s as [`Admin::list`] does, stopping after
    /// [`StatsOptions::max_keys`] keys (the result then says `sampled`).
    ///
    /// # Errors
    /// [`IdempotencyError::Storage`](idempotency_core::IdempotencyError::Storage) when
    /// Redis fails or cannot be reached.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn run(admin: idempotency_redis::admin::Admin) -> Result<(), idempotency_core::IdempotencyError> {
    /// use idempotency_redis::admin::StatsOptions;
    /// let stats = admin.stats(&StatsOptions::new().operation("order.create")).await?;
    /// println!("{} pending (sampled: {})", stats.total_with_status("pending"), stats.sampled);
    /// # Ok(()) }
    /// ```
    pub async fn stats(&self, options: &StatsOptions) -> Result<Stats> {
        // One key past the limit tells whether the keyspace was larger (a sample).
        let filter = options
            .scan
            .clone()
            .limit(options.max_keys.saturating_add(1));
        let mut stats = Stats {
            ttl_histogram: TTL_BUCKETS
                .iter()
                .map(|(l, _)| (*l).to_owned())
                .chain([NO_EXPIRY.to_owned()])
                .map(|l| (l, 0))
                .collect(),
            ..Stats::default()
        };
        let mut lister = self.list(filter);
        'scan: while let Some(page) = lister.next_page().await? {
            for found in &page {
                if stats.examined >= options.max_keys as u64 {
                    stats.sampled = true;
                    break 'scan;
                }
                stats.add(found);
            }
        }
        let (memory, keys) = server_totals(self.store.connection().client()).await;
        stats.server_used_memory = memory;
        stats.db_keys = keys;
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::used_memory;

    #[test]
    fn used_memory_is_read_from_info() {
        let info = "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\n";
        assert_eq!(used_memory(info), Some(1_048_576));
        assert_eq!(used_memory("# Memory\r\n"), None);
    }
}
