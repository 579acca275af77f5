//! Counting rows: by operation and status, by lifetime left, and their size.

use std::collections::BTreeMap;
use std::time::Duration;

use idempotency_core::Result;
use sqlx::Row;

use super::Admin;
use crate::constants::TABLE;
use crate::errors::{row_error, storage_error};
use crate::statements;

/// The lifetime histogram's buckets: a label and the exclusive upper bound of the
/// lifetime left (`None`: unbounded), as `idempotency_redis::admin::TTL_BUCKETS`. Rows
/// past their `expires_at` have their own bucket, `expired` (what the sweep removes).
pub const TTL_BUCKETS: [(&str, Option<Duration>); 5] = [
    ("<1m", Some(Duration::from_secs(60))),
    ("1m-10m", Some(Duration::from_secs(600))),
    ("10m-1h", Some(Duration::from_secs(3600))),
    ("1h-1d", Some(Duration::from_secs(86_400))),
    (">=1d", None),
];

/// The label of the rows past their expiry.
const EXPIRED: &str = "expired";

/// Which rows [`Admin::stats`] counts.
///
/// # Examples
/// ```
/// use idempotency_postgres::admin::StatsOptions;
/// let options = StatsOptions::new().operation("order.create");
/// assert_eq!(options.operation_value(), Some("order.create"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct StatsOptions {
    operation: Option<String>,
}

impl StatsOptions {
    /// Every operation.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only this operation's rows.
    #[must_use]
    pub fn operation(mut self, operation: impl Into<String>) -> Self {
        self.operation = Some(operation.into());
        self
    }

    /// The operation counted, if only one.
    pub fn operation_value(&self) -> Option<&str> {
        self.operation.as_deref()
    }
}

/// What [`Admin::stats`] counted: exact, from one grouped statement (no sampling).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Rows that have not expired, by operation, then by status (`pending`,
    /// `completed`, `stored_error`).
    pub counts: BTreeMap<String, BTreeMap<String, u64>>,
    /// Rows by lifetime left, in [`TTL_BUCKETS`] order, then `expired`.
    pub ttl_histogram: Vec<(String, u64)>,
    /// Rows counted, expired ones included.
    pub rows: u64,
    /// Rows past their expiry, not swept yet: every statement treats them as absent.
    pub expired_rows: u64,
    /// The sum of the counted rows' sizes (`pg_column_size`), without index entries.
    pub row_bytes: u64,
    /// `pg_total_relation_size` of the table: heap, TOAST and indexes, every prefix's
    /// rows and the dead space `VACUUM` has not reclaimed.
    pub table_bytes: Option<u64>,
}

impl Stats {
    /// The rows (not expired) counted with `status` over every operation.
    pub fn total_with_status(&self, status: &str) -> u64 {
        self.counts
            .values()
            .filter_map(|by_status| by_status.get(status))
            .sum()
    }

    /// As JSON (what `stats --json` prints for Postgres): `rows`, `expired_rows`,
    /// `counts` (`{operation: {status: n}}`), `ttl_histogram` (`[{bucket, rows}]`),
    /// `row_bytes`, `table_bytes`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "rows": self.rows,
            "expired_rows": self.expired_rows,
            "counts": self.counts,
            "ttl_histogram": self
                .ttl_histogram
                .iter()
                .map(|(bucket, rows)| serde_json::json!({"bucket": bucket, "rows": rows}))
                .collect::<Vec<_>>(),
            "row_bytes": self.row_bytes,
            "table_bytes": self.table_bytes,
        })
    }
}

impl Admin {
    /// Counts the rows under the store's prefix (of one operation, or all) by operation
    /// and status and by lifetime left, with their size, and reads the table's size.
    ///
    /// # Errors
    /// [`IdempotencyError::Storage`](idempotency_core::IdempotencyError::Storage) when a
    /// statement fails or the server cannot be reached.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn run(admin: idempotency_postgres::admin::Admin) -> Result<(), idempotency_core::IdempotencyError> {
    /// use idempotency_postgres::admin::StatsOptions;
    /// let stats = admin.stats(&StatsOptions::new()).await?;
    /// println!("{} pending, {} expired awaiting the sweep", stats.total_with_status("pending"), stats.expired_rows);
    /// # Ok(()) }
    /// ```
    pub async fn stats(&self, options: &StatsOptions) -> Result<Stats> {
        let operation = options.operation.as_deref();
        let fail = |e| storage_error(operation, e);
        let rows = self
            .store
            .query(statements::ADMIN_STATS)
            .bind(self.store.prefix())
            .bind(operation)
            .fetch_all(self.store.pool())
            .await
            .map_err(fail)?;
        let mut stats = Stats {
            ttl_histogram: TTL_BUCKETS
                .iter()
                .map(|(l, _)| (*l).to_owned())
                .chain([EXPIRED.to_owned()])
                .map(|l| (l, 0))
                .collect(),
            ..Stats::default()
        };
        for row in &rows {
            let get_text = |name: &str| -> Result<String> {
                row.try_get(name).map_err(|e| row_error(operation, e))
            };
            let get_count = |name: &str| -> Result<u64> {
                row.try_get::<Option<i64>, _>(name)
                    .map(|n| u64::try_from(n.unwrap_or(0)).unwrap_or(0))
                    .map_err(|e| row_error(operation, e))
            };
            let bucket = get_text("bucket")?;
            let n = get_count("rows")?;
            stats.rows += n;
            stats.row_bytes += get_count("bytes")?;
            if let Some(slot) = stats.ttl_histogram.iter_mut().find(|(l, _)| *l == bucket) {
                slot.1 += n;
            }
            if bucket == EXPIRED {
                stats.expired_rows += n;
            } else {
                *stats
                    .counts
                    .entry(get_text("operation")?)
                    .or_default()
                    .entry(get_text("status")?)
                    .or_default() += n;
            }
        }
        let table_bytes: Option<i64> = self
            .store
            .query("SELECT pg_total_relation_size(to_regclass($1)) AS bytes")
            .bind(TABLE)
            .fetch_one(self.store.pool())
            .await
            .map_err(fail)?
            .try_get("bytes")
            .map_err(|e| row_error(operation, e))?;
        stats.table_bytes = table_bytes.and_then(|b| u64::try_from(b).ok());
        Ok(stats)
    }
}
