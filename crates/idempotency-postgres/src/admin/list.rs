//! Listing rows: keyset pages in primary-key order.

use idempotency_core::{RecordStatus, Result};

use super::{Admin, Inspection};
use crate::errors::storage_error;
use crate::statements;

/// Which rows [`Admin::list`] yields.
///
/// # Examples
/// ```
/// use idempotency_core::RecordStatus;
/// use idempotency_postgres::admin::ListFilter;
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
    /// Every row, no limit, pages of 100.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only rows of this operation (an index range: other operations are not read).
    #[must_use]
    pub fn operation(mut self, operation: impl Into<String>) -> Self {
        self.operation = Some(operation.into());
        self
    }

    /// Only rows of this status (by the `status` column).
    #[must_use]
    pub fn status(mut self, status: RecordStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// At most this many rows.
    #[must_use]
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Rows per page (default 100).
    #[must_use]
    pub fn page_size(mut self, rows: u32) -> Self {
        self.page_size = rows.max(1);
        self
    }

    /// The limit.
    pub fn limit_value(&self) -> Option<usize> {
        self.limit
    }
}

/// The pages of a listing, from [`Admin::list`]. Each page is one statement, run when
/// asked for, so a listing of a large table streams and can be stopped at any point.
#[derive(Debug)]
pub struct Lister {
    admin: Admin,
    filter: ListFilter,
    /// The last (operation, key) read; `None` once the table is exhausted.
    after: Option<(String, String)>,
    yielded: usize,
    scanned: u64,
}

impl Lister {
    /// The next page of rows; `None` when the table is exhausted or the limit reached.
    /// Expired rows not yet swept are included (flagged [`Inspection::expired`]).
    ///
    /// # Errors
    /// [`IdempotencyError::Storage`](idempotency_core::IdempotencyError::Storage) when a
    /// statement fails.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Inspection>>> {
        let left = self
            .filter
            .limit
            .map_or(usize::MAX, |l| l.saturating_sub(self.yielded));
        if left == 0 {
            self.after = None;
        }
        let Some((after_operation, after_key)) = self.after.take() else {
            return Ok(None);
        };
        let size = left.min(self.filter.page_size as usize);
        let store = &self.admin.store;
        let rows = store
            .query(statements::ADMIN_LIST)
            .bind(store.prefix())
            .bind(self.filter.operation.as_deref())
            .bind(self.filter.status.map(RecordStatus::as_str))
            .bind(&after_operation)
            .bind(&after_key)
            .bind(i64::try_from(size).unwrap_or(i64::MAX))
            .fetch_all(store.pool())
            .await
            .map_err(|e| storage_error(self.filter.operation.as_deref(), e))?;
        self.scanned += rows.len() as u64;
        let mut page = Vec::with_capacity(rows.len());
        let mut last = None;
        for row in &rows {
            let operation: String = sqlx::Row::try_get(row, "operation")
                .map_err(|e| crate::errors::row_error(None, e))?;
            let key: String = sqlx::Row::try_get(row, "idempotency_key")
                .map_err(|e| crate::errors::row_error(None, e))?;
            last = Some((operation, key));
            if let Some(found) = Inspection::from_row(store.prefix(), row)? {
                page.push(found);
            }
        }
        self.yielded += page.len();
        // A short page is the last one.
        if rows.len() == size {
            self.after = last;
        }
        Ok(Some(page))
    }

    /// Rows read so far (including rows whose identity the kit refuses, left out).
    pub fn scanned(&self) -> u64 {
        self.scanned
    }
}

impl Admin {
    /// The rows under the store's prefix that `filter` keeps, page by page in
    /// `(operation, key)` order (keyset pagination: each page an index range, a row
    /// written meanwhile never shifts one).
    ///
    /// # Examples
    /// ```no_run
    /// # async fn run(admin: idempotency_postgres::admin::Admin) -> Result<(), idempotency_core::IdempotencyError> {
    /// use idempotency_core::RecordStatus;
    /// use idempotency_postgres::admin::ListFilter;
    /// let mut pages = admin.list(ListFilter::new().status(RecordStatus::Pending).limit(50));
    /// while let Some(page) = pages.next_page().await? {
    ///     for found in page {
    ///         println!("{} {}", found.storage_key, found.owner_label());
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn list(&self, filter: ListFilter) -> Lister {
        Lister {
            admin: self.clone(),
            filter,
            after: Some((String::new(), String::new())),
            yielded: 0,
            scanned: 0,
        }
    }
}
