//! Listing records: `SCAN … MATCH` page by page, over every master of a cluster.

use std::pin::Pin;

use fred::prelude::ClientLike;
use fred::types::scan::{ScanResult, Scanner};
use futures::{Stream, StreamExt};
use idempotency_core::constants::KEY_SEPARATOR;
use idempotency_core::{RecordId, RecordStatus, Result};

use super::{Admin, Inspection, glob_escape};
use crate::errors::storage;

/// Which records [`Admin::list`] yields.
///
/// # Examples
/// ```
/// use idempotency_core::RecordStatus;
/// use idempotency_redis::admin::ListFilter;
/// let filter = ListFilter::new().operation("order.create").status(RecordStatus::Pending).limit(10);
/// assert_eq!(filter.limit_value(), Some(10));
/// ```
#[derive(Debug, Clone)]
pub struct ListFilter {
    operation: Option<String>,
    status: Option<RecordStatus>,
    limit: Option<usize>,
    page_size: u32,
}

impl Default for ListFilter {
    fn default() -> Self {
        Self {
            operation: None,
            status: None,
            limit: None,
            page_size: 100,
        }
    }
}

impl ListFilter {
    /// Every record, no limit, `SCAN … COUNT 100`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only records of this operation (the `MATCH` pattern names it, so other operations'
    /// keys are skipped by the server).
    #[must_use]
    pub fn operation(mut self, operation: impl Into<String>) -> Self {
        self.operation = Some(operation.into());
        self
    }

    /// Only records of this status (unreadable values are left out then).
    #[must_use]
    pub fn status(mut self, status: RecordStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// At most this many records.
    #[must_use]
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// The `COUNT` hint of each `SCAN` (default 100).
    #[must_use]
    pub fn page_size(mut self, count: u32) -> Self {
        self.page_size = count.max(1);
        self
    }

    /// The limit.
    pub fn limit_value(&self) -> Option<usize> {
        self.limit
    }

    fn keeps(&self, found: &Inspection) -> bool {
        match self.status {
            None => true,
            Some(status) => found.record().is_some_and(|r| r.status() == status),
        }
    }
}

type Pages = Pin<Box<dyn Stream<Item = fred::prelude::FredResult<ScanResult>> + Send>>;

/// The pages of a listing, from [`Admin::list`]. Each page is read from Redis when asked
/// for, so a listing of a large keyspace streams and can be stopped at any point.
pub struct Lister {
    admin: Admin,
    filter: ListFilter,
    pages: Option<Pages>,
    yielded: usize,
    scanned: u64,
}

impl std::fmt::Debug for Lister {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lister")
            .field("filter", &self.filter)
            .field("yielded", &self.yielded)
            .field("scanned", &self.scanned)
            .finish_non_exhaustive()
    }
}

impl Lister {
    /// The next page of records (possibly empty when the filter kept none of a scanned
    /// page); `None` when the scan is over or the limit was reached.
    ///
    /// # Errors
    /// [`IdempotencyError::Storage`](idempotency_core::IdempotencyError::Storage) when a
    /// `SCAN` or a read fails.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Inspection>>> {
        if self.filter.limit.is_some_and(|l| self.yielded >= l) {
            self.stop();
            return Ok(None);
        }
        let Some(pages) = self.pages.as_mut() else {
            return Ok(None);
        };
        let Some(page) = pages.next().await else {
            self.pages = None;
            return Ok(None);
        };
        let operation = self.filter.operation.as_deref().unwrap_or("list");
        let mut page = page.map_err(|e| storage(operation, e))?;
        let keys = page.take_results().unwrap_or_default();
        // Asks for the next page now, so it is read while this one is inspected.
        page.next();
        self.scanned += keys.len() as u64;
        let prefix = self.admin.store.key_prefix().to_owned();
        let reads = keys.iter().filter_map(|k| {
            let redis_key = k.as_str()?.to_owned();
            let id = identity(&prefix, &redis_key)?;
            Some(self.admin.inspect_key(id, redis_key))
        });
        let mut out = Vec::new();
        for found in futures::future::join_all(reads).await {
            // A key gone between SCAN and the read is simply not listed.
            let Some(found) = found? else { continue };
            if !self.filter.keeps(&found) {
                continue;
            }
            if self.filter.limit.is_some_and(|l| self.yielded >= l) {
                break;
            }
            self.yielded += 1;
            out.push(found);
        }
        Ok(Some(out))
    }

    /// How many keys the scan returned so far (before the status filter).
    pub fn scanned(&self) -> u64 {
        self.scanned
    }

    /// Whether the scan went through the whole keyspace (no limit stopped it).
    pub fn finished(&self) -> bool {
        self.pages.is_none() && self.filter.limit.is_none_or(|l| self.yielded < l)
    }

    fn stop(&mut self) {
        self.pages = None;
    }
}

/// The identity of a Redis key under `prefix`: `operation:key` split at the first
/// separator; `None` for a key that is not one of a record.
pub(super) fn identity(prefix: &str, redis_key: &str) -> Option<RecordId> {
    let rest = redis_key.strip_prefix(prefix)?;
    let (operation, key) = rest.split_once(KEY_SEPARATOR)?;
    RecordId::new(operation, key).ok()
}

impl Admin {
    /// The `SCAN … MATCH` pattern of the records of `operation` (all records when `None`).
    pub fn match_pattern(&self, operation: Option<&str>) -> String {
        let mut pattern = glob_escape(self.store.key_prefix());
        if let Some(op) = operation {
            pattern.push_str(&glob_escape(op));
            pattern.push(KEY_SEPARATOR);
        }
        pattern.push('*');
        pattern
    }

    /// Lists records page by page with `SCAN … MATCH` (never `KEYS`): on a cluster, on
    /// every master. Keys under the prefix that are not `operation:key` are skipped;
    /// values that are not records are listed as such (unless a status filter is set).
    ///
    /// As with any `SCAN`, a key present for the whole scan is listed; one written or
    /// removed during it may or may not be, and a cluster resharding during the scan may
    /// list a key twice.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn run(admin: idempotency_redis::admin::Admin) -> Result<(), idempotency_core::IdempotencyError> {
    /// use idempotency_redis::admin::ListFilter;
    /// let mut pages = admin.list(ListFilter::new().operation("order.create").limit(50));
    /// while let Some(page) = pages.next_page().await? {
    ///     for found in page {
    ///         println!("{} {}", found.redis_key, found.status_label());
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn list(&self, filter: ListFilter) -> Lister {
        let pattern = self.match_pattern(filter.operation.as_deref());
        let client = self.store.connection().client();
        let count = Some(filter.page_size);
        let pages: Pages = if client.is_clustered() {
            Box::pin(client.scan_cluster(pattern, count, None))
        } else {
            Box::pin(client.scan(pattern, count, None))
        };
        Lister {
            admin: self.clone(),
            filter,
            pages: Some(pages),
            yielded: 0,
            scanned: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::identity;

    #[test]
    fn a_redis_key_splits_at_the_first_separator_after_the_prefix() {
        let id = identity("idempotency:", "idempotency:order.create:k1").expect("a record key");
        assert_eq!((id.operation(), id.key()), ("order.create", "k1"));
        assert!(identity("idempotency:", "other:order.create:k").is_none());
        assert!(identity("idempotency:", "idempotency:no-separator").is_none());
    }
}
