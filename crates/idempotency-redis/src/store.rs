//! The Redis repository: the storage trait on fred.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use fred::prelude::{Client, ClientLike, Expiration, KeysInterface, Pool, SetOptions, Value};
use idempotency_core::constants::DEFAULT_KEY_PREFIX;
use idempotency_core::{
    Batch, BulkRepository, ErrorType, IdempotencyError, IdempotencyMetrics, IdempotencyRecord,
    IdempotencyRepository, LatencyMethod, NoopMetrics, RecordId, Result, SaveManyOptions,
    bulk_outcome, is_abandoned,
};

use crate::breaker::{Breaker, FailFast};
use crate::errors::{classify, label, storage};
use crate::keys::{group_by_slot, record_key};
use crate::scripts::Scripts;
use crate::server_clock::ServerClock;
use crate::wake::Wakeups;

/// The fred client the store sends commands through: one multiplexed client or a pool.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Connection {
    /// One client (one multiplexed connection per node).
    Client(Client),
    /// A round-robin pool of clients.
    Pool(Pool),
}

impl From<Client> for Connection {
    fn from(c: Client) -> Self {
        Self::Client(c)
    }
}

impl From<Pool> for Connection {
    fn from(p: Pool) -> Self {
        Self::Pool(p)
    }
}

impl Connection {
    /// The client for the next command.
    pub fn client(&self) -> &Client {
        match self {
            Self::Client(c) => c,
            Self::Pool(p) => p.next(),
        }
    }

    /// The client every command on `key` goes through: always the same one of a pool, so
    /// the commands of one reservation (claim, renew, complete, release) travel on one
    /// connection and reach the server in the order they were sent. (A release sent on
    /// another connection could overtake the claim it undoes.)
    pub fn client_for(&self, key: &str) -> &Client {
        match self {
            Self::Client(c) => c,
            Self::Pool(p) => {
                let clients = p.clients();
                let slot = usize::from(fred::util::redis_keyslot(key.as_bytes()));
                clients
                    .get(slot % clients.len().max(1))
                    .unwrap_or_else(|| p.next())
            }
        }
    }

    /// Closes the connections.
    pub async fn quit(&self) {
        let _ = match self {
            Self::Client(c) => c.quit().await,
            Self::Pool(p) => p.quit().await,
        };
    }
}

/// Builds a [`RedisStore`].
#[derive(Debug)]
pub struct RedisStoreBuilder {
    connection: Connection,
    prefix: String,
    metrics: Arc<dyn IdempotencyMetrics>,
    fail_fast: FailFast,
}

impl RedisStoreBuilder {
    /// Sets the key prefix (default `idempotency:`): keys are `{prefix}{operation}:{key}`.
    #[must_use]
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// When claims and reads fail at once instead of waiting out a command timeout each
    /// (default: after 3 consecutive unanswered commands, probing every second; see
    /// [`FailFast`]).
    #[must_use]
    pub fn fail_fast(mut self, fail_fast: FailFast) -> Self {
        self.fail_fast = fail_fast;
        self
    }

    /// Sets the metrics collector (default: none).
    #[must_use]
    pub fn metrics(mut self, metrics: Arc<dyn IdempotencyMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The store.
    ///
    /// # Errors
    /// [`IdempotencyError::Configuration`] for a key prefix that is not empty and does
    /// not end with `:` ([`idempotency_core::validate_key_prefix`]).
    pub fn build(self) -> Result<RedisStore> {
        idempotency_core::validate_key_prefix(&self.prefix)?;
        let clustered = self.connection.client().is_clustered();
        let server_clock = ServerClock::default();
        // The first sample is asked for now, so the first call finds one (no call waits
        // for it: without one, records are stamped with the local clock).
        server_clock.refresh_in_background(self.connection.client());
        // The breaker applies to a store on one server, one connection.
        let one_server = !clustered && matches!(self.connection, Connection::Client(_));
        let clients: Vec<Client> = match &self.connection {
            Connection::Client(c) => vec![c.clone()],
            Connection::Pool(p) => p.clients().to_vec(),
        };
        let store = RedisStore {
            inner: Arc::new(Inner {
                wake: Wakeups::new(self.connection.client().clone()),
                connection: self.connection,
                prefix: self.prefix,
                metrics: self.metrics,
                scripts: Scripts::new(),
                clustered,
                native_claim: AtomicBool::new(true),
                server_clock,
                breaker: Arc::new(Breaker::new(self.fail_fast, one_server)),
                slot_tags: std::sync::OnceLock::new(),
            }),
        };
        let sources = store.inner.scripts.sources();
        let weak = Arc::downgrade(&store.inner);
        crate::scripts::preload(&clients, sources, move || {
            weak.upgrade()
                .map(|inner| inner.connection.client().clone())
        });
        Ok(store)
    }
}

/// Idempotency records in Redis, readable and writable by the Python idempotency-kit
/// 0.5.0 sharing the same server.
///
/// Standalone, Redis Cluster and sentinel, through whatever fred client the application
/// has. Cheap to clone; clones share the connection.
///
/// Round trips: `get`, `save`, `replace`, `delete` one each; `claim` one (`SET … NX GET`),
/// `complete`/`renew`/`release` one script call each; `get_many` and `delete_many` one
/// per hash slot on a cluster (sent concurrently), one on a standalone server;
/// `save_many` one pipeline.
///
/// # Examples
/// ```no_run
/// # async fn run() -> Result<(), idempotency_core::IdempotencyError> {
/// use idempotency_core::{IdempotencyRepository, RecordId};
/// use idempotency_redis::{ConnectOptions, RedisStore, connect_client};
///
/// let client = connect_client("redis://127.0.0.1:6379", &ConnectOptions::default()).await?;
/// let store = RedisStore::builder(client).key_prefix("svc:idem:").build()?;
/// let cached = store.get(&RecordId::new("order.create", "key-1")?).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RedisStore {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) connection: Connection,
    pub(crate) prefix: String,
    pub(crate) metrics: Arc<dyn IdempotencyMetrics>,
    pub(crate) scripts: Scripts,
    pub(crate) clustered: bool,
    pub(crate) wake: Wakeups,
    /// Whether these servers take `SET … NX GET` (Redis 7.0+); cleared on the first
    /// syntax error, after which this store claims through the Lua script.
    pub(crate) native_claim: AtomicBool,
    pub(crate) server_clock: ServerClock,
    /// Fails claims and reads fast while Redis cannot be reached.
    pub(crate) breaker: Arc<Breaker>,
    /// The slot tags of the fence counters' keys, made on the first fencing token.
    pub(crate) slot_tags: std::sync::OnceLock<crate::keys::SlotTags>,
}

impl RedisStore {
    /// A builder for a store on an initialized client or pool.
    pub fn builder(connection: impl Into<Connection>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            connection: connection.into(),
            prefix: DEFAULT_KEY_PREFIX.to_owned(),
            metrics: Arc::new(NoopMetrics),
            fail_fast: FailFast::default(),
        }
    }

    /// The key prefix.
    pub fn key_prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The Redis key of a record: `{prefix}{operation}:{key}`.
    pub fn redis_key(&self, id: &RecordId) -> String {
        record_key(&self.inner.prefix, id)
    }

    /// The connection.
    pub fn connection(&self) -> &Connection {
        &self.inner.connection
    }

    pub(crate) fn client(&self) -> &Client {
        self.inner.connection.client()
    }

    pub(crate) fn client_for(&self, redis_key: &str) -> &Client {
        self.inner.connection.client_for(redis_key)
    }

    pub(crate) fn fail(&self, operation: &str, e: fred::error::Error) -> IdempotencyError {
        self.note_unanswered(&e);
        self.inner.metrics.record_error(operation, label(&e));
        storage(operation, e)
    }

    /// Counts a command that got no answer towards the fail-fast breaker.
    pub(crate) fn note_unanswered(&self, e: &fred::error::Error) {
        if crate::errors::unanswered(e) {
            self.inner.breaker.unanswered(e, self.client());
        }
    }

    /// Refuses a claim or read at once while the breaker is open.
    pub(crate) fn fail_fast(&self, operation: &str) -> Result<()> {
        self.inner
            .breaker
            .check()
            .map_err(|open| IdempotencyError::storage(Some(operation), open))
    }

    /// A failed command on one key: counted, and a data error when the key holds a value
    /// of another type (see [`classify`]).
    pub(crate) fn fail_on(&self, id: &RecordId, e: fred::error::Error) -> IdempotencyError {
        self.note_unanswered(&e);
        self.inner.metrics.record_error(id.operation(), label(&e));
        classify(id, e)
    }

    /// Decodes bytes found under `id`, counting a validation error when they are not a
    /// record.
    pub(crate) fn decode(&self, id: &RecordId, bytes: &[u8]) -> Result<IdempotencyRecord> {
        IdempotencyRecord::from_json(bytes, id.operation(), id.key()).inspect_err(|e| {
            // The Python library's label: a naive expiry is a deserialization error,
            // anything else a validation error.
            let label = e.record_error_type().unwrap_or(ErrorType::Validation);
            self.inner.metrics.record_error(id.operation(), label);
        })
    }

    fn latency(&self, operation: &str, method: LatencyMethod, start: Instant) {
        self.inner
            .metrics
            .record_latency(operation, method, start.elapsed().as_secs_f64());
    }

    /// The time to stamp a record of `lease` with: the server's (see [`ServerClock`]),
    /// or the lease's own clock when the server refuses `TIME`.
    pub(crate) async fn stamp(&self, lease: &idempotency_core::Lease) -> time::OffsetDateTime {
        match self.inner.server_clock.now(self.client()).await {
            Some(now) => now,
            None => lease.clock().now(),
        }
    }

    /// What a repository read (`get`, `get_many`) makes of a found value, as the Python
    /// library's repository does: a record whose `expires_at` has passed is a miss, judged
    /// on the **server's** clock. A completed one is then deleted if the key still holds
    /// exactly those bytes; a pending one only when abandoned (past its `expires_at` by
    /// more than [`ABANDONED_AFTER`](idempotency_core::constants::ABANDONED_AFTER)) and
    /// held with no expiry, since only its owner or Redis may remove a live reservation.
    /// Without the server's time
    /// (`TIME` refused) the record is shown as Redis holds it and nothing is deleted: no
    /// reader's clock judges it. The claim path never comes here.
    pub(crate) async fn decode_found(
        &self,
        id: &RecordId,
        redis_key: &str,
        value: Value,
    ) -> Result<Option<IdempotencyRecord>> {
        let Some(bytes) = value.as_bytes() else {
            return match value {
                Value::Null => Ok(None),
                // MGET/GET only answer bulk strings or nil; anything else is a broken reply.
                _ => Err(self.fail(
                    id.operation(),
                    fred::error::Error::new(
                        fred::error::ErrorKind::Protocol,
                        "unexpected reply type",
                    ),
                )),
            };
        };
        let record = self.decode(id, bytes)?;
        let server_now = self.inner.server_clock.now(self.client()).await;
        self.judge_found(id, redis_key, bytes, record, server_now)
            .await
    }

    /// The found record, or `None` when it has expired by `server_now`, the server's
    /// clock. Without a sample of it the record is shown: Redis still holds the key, and
    /// no reader's clock judges it. An expired completed record is deleted (if unchanged),
    /// as the Python library does; a pending one is hidden, and deleted only when
    /// abandoned (an hour past) and held by Redis with no expiry: one Redis still expires
    /// may be the live reservation of a writer whose clock runs behind (liveness is
    /// Redis's), so Redis's TTL removes it.
    pub(crate) async fn judge_found(
        &self,
        id: &RecordId,
        redis_key: &str,
        bytes: &[u8],
        record: IdempotencyRecord,
        server_now: Option<time::OffsetDateTime>,
    ) -> Result<Option<IdempotencyRecord>> {
        let Some(now) = server_now else {
            return Ok(Some(record));
        };
        if !record.is_expired_at(now) {
            return Ok(Some(record));
        }
        if !record.is_pending() {
            self.delete_if_equal(id.operation(), redis_key, bytes, Deleting::Expired)
                .await;
        } else if is_abandoned(&record, now) {
            self.delete_if_equal(id.operation(), redis_key, bytes, Deleting::Abandoned)
                .await;
        }
        Ok(None)
    }

    /// Deletes `redis_key` if it still holds `bytes`; failures are logged, not raised
    /// (Redis expires the key within a second anyway).
    pub(crate) async fn delete_if_equal(
        &self,
        operation: &str,
        redis_key: &str,
        bytes: &[u8],
        deleting: Deleting,
    ) {
        let args = vec![
            Value::Bytes(bytes.to_vec().into()),
            Value::from(match deleting {
                Deleting::Expired => "0",
                Deleting::Abandoned => "1",
            }),
        ];
        if let Err(e) = self
            .inner
            .scripts
            .delete_if_equal
            .run(self.client(), redis_key, args)
            .await
        {
            self.inner.metrics.record_error(operation, label(&e));
            tracing::debug!(operation, error = %e, "could not delete an expired record");
        }
    }

    /// The seconds a record is to live in Redis: its remaining lifetime rounded up. An
    /// already expired record is a validation error, counted.
    pub(crate) fn write_ttl(&self, record: &IdempotencyRecord) -> Result<i64> {
        match record.remaining_ttl_secs_ceil() {
            0 => {
                self.inner
                    .metrics
                    .record_error(record.operation(), ErrorType::Validation);
                Err(IdempotencyError::invalid_field(
                    "expires_at",
                    "expired",
                    "cannot save an already expired record",
                ))
            }
            secs => Ok(i64::try_from(secs).unwrap_or(i64::MAX)),
        }
    }

    /// Runs one command per hash-slot group concurrently (one command in all on a
    /// standalone server) and returns each group's indexes with its reply.
    async fn per_slot<F, Fut>(
        &self,
        redis_keys: &[String],
        command: F,
    ) -> Vec<(Vec<usize>, fred::prelude::FredResult<Value>)>
    where
        F: Fn(Vec<String>) -> Fut,
        Fut: std::future::Future<Output = fred::prelude::FredResult<Value>>,
    {
        if !self.inner.clustered {
            let all: Vec<usize> = (0..redis_keys.len()).collect();
            return vec![(all, command(redis_keys.to_vec()).await)];
        }
        let groups = group_by_slot(redis_keys);
        let calls = groups.into_values().map(|idx| {
            let keys = idx.iter().map(|&i| redis_keys[i].clone()).collect();
            let fut = command(keys);
            async move { (idx, fut.await) }
        });
        futures::future::join_all(calls).await
    }
}

impl IdempotencyRepository for RedisStore {
    async fn get(&self, id: &RecordId) -> Result<Option<IdempotencyRecord>> {
        self.fail_fast(id.operation())?;
        let redis_key = self.redis_key(id);
        let value: Value = self
            .client()
            .get(redis_key.as_str())
            .await
            .map_err(|e| self.fail_on(id, e))?;
        self.inner.breaker.answered();
        // An empty value is no record for `get` (the Python library's `if not data`);
        // `get_many` calls it corrupted, as Python's does.
        if value.as_bytes().is_some_and(<[u8]>::is_empty) {
            return Ok(None);
        }
        self.decode_found(id, &redis_key, value).await
    }

    async fn save(&self, record: &IdempotencyRecord) -> Result<()> {
        let operation = record.operation();
        let ttl = self.write_ttl(record)?;
        let id = record.id();
        let redis_key = self.redis_key(id);
        let reply: Value = self
            .client()
            .set(
                redis_key,
                record.to_json(),
                Some(Expiration::EX(ttl)),
                Some(SetOptions::NX),
                false,
            )
            .await
            .map_err(|e| self.fail_on(id, e))?;
        if reply.is_null() {
            return Err(IdempotencyError::collision(
                operation,
                record.idempotency_key(),
            ));
        }
        Ok(())
    }

    async fn replace(&self, record: &IdempotencyRecord) -> Result<()> {
        let ttl = self.write_ttl(record)?;
        let id = record.id();
        let redis_key = self.redis_key(id);
        self.client()
            .set::<Value, _, _>(
                redis_key,
                record.to_json(),
                Some(Expiration::EX(ttl)),
                None,
                false,
            )
            .await
            .map_err(|e| self.fail_on(id, e))?;
        Ok(())
    }

    async fn delete(&self, id: &RecordId) -> Result<bool> {
        let start = Instant::now();
        let deleted: i64 = self
            .client()
            .del(self.redis_key(id))
            .await
            .map_err(|e| self.fail(id.operation(), e))?;
        self.latency(id.operation(), LatencyMethod::Delete, start);
        Ok(deleted > 0)
    }
}

impl BulkRepository for RedisStore {
    async fn get_by_ids(&self, ids: &[RecordId]) -> Result<HashMap<String, IdempotencyRecord>> {
        self.get_many_ids(ids).await
    }

    async fn save_batch(&self, batch: Batch<'_>, options: SaveManyOptions) -> Result<()> {
        let (batch_op, records) = (batch.operation(), batch.records());
        let start = Instant::now();
        let mut invalid = Vec::new();
        let pipeline = self.client().pipeline();
        let mut queued = Vec::with_capacity(records.len());
        for record in records {
            let ttl = match self.write_ttl(record) {
                Ok(ttl) => ttl,
                Err(e) => {
                    invalid.push((record.idempotency_key().to_owned(), e));
                    continue;
                }
            };
            let redis_key = self.redis_key(record.id());
            let json = record.to_json();
            pipeline
                .set::<(), _, _>(
                    redis_key.as_str(),
                    json.as_str(),
                    Some(Expiration::EX(ttl)),
                    Some(SetOptions::NX),
                    false,
                )
                .await
                .map_err(|e| self.fail(batch_op, e))?;
            queued.push((record, redis_key, json));
        }
        let replies = if queued.is_empty() {
            Vec::new()
        } else {
            pipeline.try_all::<Value>().await
        };
        let mut collisions = Vec::new();
        let mut saved = Vec::new();
        let mut saved_keys = Vec::new();
        let mut failures = 0;
        for ((record, redis_key, json), reply) in queued.into_iter().zip(replies) {
            match reply {
                Ok(v) if v.is_null() => collisions.push(record.idempotency_key().to_owned()),
                Ok(_) => {
                    saved.push((redis_key, json));
                    saved_keys.push(record.idempotency_key().to_owned());
                }
                Err(e) => {
                    failures += 1;
                    invalid.push((
                        record.idempotency_key().to_owned(),
                        self.fail(record.operation(), e),
                    ));
                }
            }
        }
        if options.rollback_on_error
            && !saved.is_empty()
            && (!collisions.is_empty() || !invalid.is_empty())
        {
            // Each key is deleted only if it still holds the bytes this call wrote, so a
            // record written over ours meanwhile (a completion, another writer after our
            // record expired) is never rolled back with it.
            let undo = saved.iter().map(|(redis_key, json)| {
                self.inner.scripts.delete_if_equal.run(
                    self.client(),
                    redis_key,
                    vec![Value::from(json.as_str())],
                )
            });
            for (reply, (redis_key, _)) in futures::future::join_all(undo)
                .await
                .into_iter()
                .zip(&saved)
            {
                if let Err(e) = reply {
                    // Keys we could not roll back stay; the error says which one.
                    invalid.push((redis_key.clone(), self.fail(batch_op, e)));
                }
            }
        }
        self.latency(batch_op, LatencyMethod::SaveMany, start);
        if failures > 0 && failures == records.len() {
            // Nothing reached Redis: an outage, not a bad batch.
            if let Some((_, e)) = invalid.pop() {
                return Err(e);
            }
        }
        bulk_outcome(batch_op, collisions, invalid, saved_keys, options)
    }

    async fn delete_by_ids(&self, ids: &[RecordId]) -> Result<u64> {
        self.delete_many_ids(ids).await
    }
}

impl RedisStore {
    /// The body of [`BulkRepository::get_by_ids`].
    async fn get_many_ids(&self, ids: &[RecordId]) -> Result<HashMap<String, IdempotencyRecord>> {
        let Some(operation) = ids.first().map(RecordId::operation) else {
            return Ok(HashMap::new());
        };
        self.fail_fast(operation)?;
        let start = Instant::now();
        let redis_keys: Vec<String> = ids.iter().map(|id| self.redis_key(id)).collect();
        let client = self.client();
        let replies = self
            .per_slot(&redis_keys, |keys| client.mget::<Value, _>(keys))
            .await;
        let mut found = HashMap::with_capacity(ids.len());
        let (mut hits, mut misses) = (0u64, 0u64);
        // One reading of the server's clock for the whole batch.
        let server_now = self.inner.server_clock.now(self.client()).await;
        for (idx, reply) in replies {
            let values = match reply.map_err(|e| self.fail(operation, e))? {
                Value::Array(values) => values,
                single => vec![single],
            };
            for (i, value) in idx.into_iter().zip(values) {
                let id = &ids[i];
                let decoded = match value.as_bytes() {
                    Some(bytes) => {
                        let record = self.decode(id, bytes)?;
                        self.judge_found(id, &redis_keys[i], bytes, record, server_now)
                            .await?
                    }
                    None => self.decode_found(id, &redis_keys[i], value).await?,
                };
                match decoded {
                    Some(record) => {
                        hits += 1;
                        found.insert(id.key().to_owned(), record);
                    }
                    None => misses += 1,
                }
            }
        }
        if hits > 0 {
            self.inner.metrics.record_bulk_hit(operation, hits);
        }
        if misses > 0 {
            self.inner.metrics.record_bulk_miss(operation, misses);
        }
        self.latency(operation, LatencyMethod::GetMany, start);
        Ok(found)
    }

    /// The body of [`BulkRepository::delete_by_ids`].
    async fn delete_many_ids(&self, ids: &[RecordId]) -> Result<u64> {
        let Some(operation) = ids.first().map(RecordId::operation) else {
            return Ok(0);
        };
        let start = Instant::now();
        let redis_keys: Vec<String> = ids.iter().map(|id| self.redis_key(id)).collect();
        let client = self.client();
        let mut deleted = 0u64;
        for (_, reply) in self
            .per_slot(&redis_keys, |keys| client.del::<Value, _>(keys))
            .await
        {
            let n = reply
                .map_err(|e| self.fail(operation, e))?
                .as_u64()
                .unwrap_or(0);
            deleted += n;
        }
        self.latency(operation, LatencyMethod::DeleteMany, start);
        Ok(deleted)
    }
}

/// What a conditional delete of a record a read found expired removes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Deleting {
    /// A completed record past its `expires_at`: deleted if unchanged.
    Expired,
    /// An abandoned reservation: deleted if unchanged and Redis never expires the key.
    Abandoned,
}
