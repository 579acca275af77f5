//! The store: the pool, its settings, and the repository operations.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use idempotency_core::{
    Batch, BulkRepository, IdempotencyError, IdempotencyRecord, IdempotencyRepository, RecordId,
    Result, SaveManyOptions, bulk_outcome,
};
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{PgExecutor, PgPool, Postgres, Row};

use crate::config::StoreConfig;
use crate::constants::NOTIFY_CHANNEL;
use crate::errors::{row_error, storage_error};
use crate::statements;
use crate::wake::Wakeups;

/// Idempotency records in Postgres: the repository, bulk operations and fenced
/// reservations of idempotency-core, plus calls whose record is written in the
/// business transaction ([`PostgresStore::run_in_transaction`]).
///
/// Every time is the server's: a row is alive while its `expires_at` (set from the
/// server's `statement_timestamp()`) is ahead of the server's clock, and the timestamps
/// inside the record JSON are the server's too. Expired rows count as absent to every
/// statement; [`PostgresStore::sweep_expired`] deletes them in bounded batches.
///
/// Cheap to clone; clones share the pool and the wake-up listener.
///
/// # Examples
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use idempotency_core::{Claim, Clock, Lease, RecordId, ReservationStore};
/// use idempotency_postgres::{PostgresStore, migrate};
///
/// let pool = sqlx::PgPool::connect("postgres://app@127.0.0.1/app").await?;
/// migrate(&pool).await?;
/// let store = PostgresStore::new(pool);
/// let lease = Lease::new(RecordId::new("order.create", "k-1")?, None, Clock::system());
/// if store.claim(&lease, Duration::from_secs(30)).await? == Claim::Acquired {
///     let result = idempotency_core::RawValue::from_string("42".to_owned())?;
///     store.complete(&lease, &result, Duration::from_secs(3600)).await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) pool: PgPool,
    pub(crate) config: StoreConfig,
    pub(crate) wakeups: Wakeups,
}

impl PostgresStore {
    /// A store on `pool` with the default [`StoreConfig`]. Run [`migrate`](crate::migrate)
    /// once before using it.
    pub fn new(pool: PgPool) -> Self {
        Self::with_config(pool, StoreConfig::default())
    }

    /// A store on `pool` with these settings.
    pub fn with_config(pool: PgPool, config: StoreConfig) -> Self {
        let wakeups = Wakeups::new(pool.clone(), config.listener().clone());
        Self {
            inner: Arc::new(Inner {
                pool,
                config,
                wakeups,
            }),
        }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The settings.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// A query of `sql` sent as the settings say (cached or unnamed).
    pub(crate) fn query<'q>(&self, sql: &'static str) -> Query<'q, Postgres, PgArguments> {
        sqlx::query(sql).persistent(self.inner.config.statements().persistent())
    }

    /// The key prefix.
    pub(crate) fn prefix(&self) -> &str {
        self.inner.config.key_prefix()
    }

    /// The record's storage key: the `NOTIFY` payload and the advisory lock's name.
    pub(crate) fn storage_key(&self, id: &RecordId) -> String {
        let mut key = String::with_capacity(self.prefix().len() + id.as_str().len());
        key.push_str(self.prefix());
        key.push_str(id.as_str());
        key
    }
}

/// A duration in whole microseconds, as statements take it (saturating).
pub(crate) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Decodes the record text of a row read under `operation`/`key`.
pub(crate) fn decode(text: &str, operation: &str, key: &str) -> Result<IdempotencyRecord> {
    IdempotencyRecord::from_json(text.as_bytes(), operation, key)
}

/// The TTL of a record written through the repository API: its remaining lifetime
/// rounded up to whole seconds (as the other stores set it), counted from the server's
/// time of the write.
fn write_ttl(record: &IdempotencyRecord) -> Result<Duration> {
    match record.remaining_ttl_secs_ceil() {
        0 => Err(IdempotencyError::invalid_field(
            "expires_at",
            "expired",
            "cannot save an already expired record",
        )),
        secs => Ok(Duration::from_secs(secs)),
    }
}

/// The columns of a record written through the repository API, as arrays of one
/// statement.
#[derive(Default)]
struct Columns {
    operations: Vec<String>,
    keys: Vec<String>,
    statuses: Vec<String>,
    fingerprints: Vec<Option<String>>,
    owners: Vec<Option<String>>,
    records: Vec<String>,
    ttls: Vec<i64>,
}

impl Columns {
    fn push(&mut self, record: &IdempotencyRecord, ttl: Duration) {
        self.operations.push(record.operation().to_owned());
        self.keys.push(record.idempotency_key().to_owned());
        self.statuses.push(record.status().as_str().to_owned());
        self.fingerprints
            .push(record.fingerprint().map(str::to_owned));
        self.owners.push(record.owner().map(str::to_owned));
        self.records.push(record.to_json());
        self.ttls.push(micros(ttl));
    }
}

impl PostgresStore {
    /// Inserts the records whose keys are free (or expired), on `executor` (the pool,
    /// or a transaction); returns the keys written.
    async fn insert<'e>(
        &self,
        executor: impl PgExecutor<'e>,
        columns: Columns,
        operation: &str,
    ) -> Result<Vec<String>> {
        let rows = self
            .query(statements::SAVE)
            .bind(self.prefix())
            .bind(columns.operations)
            .bind(columns.keys)
            .bind(columns.statuses)
            .bind(columns.fingerprints)
            .bind(columns.owners)
            .bind(columns.records)
            .bind(columns.ttls)
            .fetch_all(executor)
            .await
            .map_err(|e| storage_error(Some(operation), e))?;
        rows.iter()
            .map(|row| row.try_get::<String, _>(0))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| row_error(Some(operation), e))
    }

    async fn delete_ids(&self, ids: &[RecordId]) -> Result<u64> {
        let Some(first) = ids.first() else {
            return Ok(0);
        };
        let operation = first.operation();
        let (operations, keys): (Vec<&str>, Vec<&str>) =
            ids.iter().map(|id| (id.operation(), id.key())).unzip();
        let row = self
            .query(statements::DELETE)
            .bind(self.prefix())
            .bind(operations)
            .bind(keys)
            .bind(NOTIFY_CHANNEL)
            .fetch_one(self.pool())
            .await
            .map_err(|e| storage_error(Some(operation), e))?;
        let live: i64 = row.try_get(0).map_err(|e| row_error(Some(operation), e))?;
        Ok(u64::try_from(live).unwrap_or(0))
    }
}

impl IdempotencyRepository for PostgresStore {
    async fn get(&self, id: &RecordId) -> Result<Option<IdempotencyRecord>> {
        let operation = id.operation();
        let row = self
            .query(statements::GET)
            .bind(self.prefix())
            .bind(operation)
            .bind(id.key())
            .fetch_optional(self.pool())
            .await
            .map_err(|e| storage_error(Some(operation), e))?;
        let Some(row) = row else { return Ok(None) };
        let text: String = row.try_get(0).map_err(|e| row_error(Some(operation), e))?;
        decode(&text, operation, id.key()).map(Some)
    }

    async fn save(&self, record: &IdempotencyRecord) -> Result<()> {
        let mut columns = Columns::default();
        columns.push(record, write_ttl(record)?);
        let written = self
            .insert(self.pool(), columns, record.operation())
            .await?;
        if written.is_empty() {
            return Err(IdempotencyError::collision(
                record.operation(),
                record.idempotency_key(),
            ));
        }
        Ok(())
    }

    async fn replace(&self, record: &IdempotencyRecord) -> Result<()> {
        let ttl = write_ttl(record)?;
        let operation = record.operation();
        // The one call of `IdempotencyRecord::id` in this crate.
        let payload = self.storage_key(record.id());
        self.query(statements::REPLACE)
            .bind(self.prefix())
            .bind(operation)
            .bind(record.idempotency_key())
            .bind(record.status().as_str())
            .bind(record.fingerprint())
            .bind(record.owner())
            .bind(record.to_json())
            .bind(micros(ttl))
            .bind(NOTIFY_CHANNEL)
            .bind(payload)
            .execute(self.pool())
            .await
            .map_err(|e| storage_error(Some(operation), e))?;
        Ok(())
    }

    async fn delete(&self, id: &RecordId) -> Result<bool> {
        Ok(self.delete_ids(std::slice::from_ref(id)).await? > 0)
    }
}

impl BulkRepository for PostgresStore {
    async fn get_by_ids(&self, ids: &[RecordId]) -> Result<HashMap<String, IdempotencyRecord>> {
        let Some(first) = ids.first() else {
            return Ok(HashMap::new());
        };
        let operation = first.operation();
        let (operations, keys): (Vec<&str>, Vec<&str>) =
            ids.iter().map(|id| (id.operation(), id.key())).unzip();
        let rows = self
            .query(statements::GET_MANY)
            .bind(self.prefix())
            .bind(operations)
            .bind(keys)
            .fetch_all(self.pool())
            .await
            .map_err(|e| storage_error(Some(operation), e))?;
        let mut found = HashMap::with_capacity(rows.len());
        for row in rows {
            let key: String = row.try_get(0).map_err(|e| row_error(Some(operation), e))?;
            let text: String = row.try_get(1).map_err(|e| row_error(Some(operation), e))?;
            let record = decode(&text, operation, &key)?;
            found.insert(key, record);
        }
        Ok(found)
    }

    async fn save_batch(&self, batch: Batch<'_>, options: SaveManyOptions) -> Result<()> {
        let mut invalid = Vec::new();
        let mut collisions = Vec::new();
        let mut columns = Columns::default();
        let mut seen = HashSet::new();
        for record in batch.records() {
            match write_ttl(record) {
                Err(e) => invalid.push((record.idempotency_key().to_owned(), e)),
                // A key twice in one batch: the second finds the first (as in memory).
                Ok(_) if !seen.insert((record.operation(), record.idempotency_key())) => {
                    collisions.push(record.idempotency_key().to_owned());
                }
                Ok(ttl) => columns.push(record, ttl),
            }
        }
        let wanted = columns.keys.clone();
        let operation = batch.operation();
        let saved = if wanted.is_empty() {
            Vec::new()
        } else if options.rollback_on_error {
            // One transaction: on any trouble nothing this call wrote stays, and nothing
            // else was touched (the insert wrote only free or expired keys).
            let fail = |e| storage_error(Some(operation), e);
            let mut tx = self.pool().begin().await.map_err(fail)?;
            let saved = self.insert(&mut *tx, columns, operation).await?;
            let trouble =
                !invalid.is_empty() || !collisions.is_empty() || saved.len() < wanted.len();
            if trouble {
                tx.rollback().await.map_err(fail)?;
            } else {
                tx.commit().await.map_err(fail)?;
            }
            saved
        } else {
            self.insert(self.pool(), columns, operation).await?
        };
        let written: HashSet<&str> = saved.iter().map(String::as_str).collect();
        collisions.extend(
            wanted
                .iter()
                .filter(|k| !written.contains(k.as_str()))
                .cloned(),
        );
        bulk_outcome(operation, collisions, invalid, saved, options)
    }

    async fn delete_by_ids(&self, ids: &[RecordId]) -> Result<u64> {
        self.delete_ids(ids).await
    }
}
