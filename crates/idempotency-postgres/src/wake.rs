//! Wake-ups for waiters: `LISTEN` on one connection per store, routed to the watches of
//! each key.
//!
//! The statements that complete, release or delete a record send
//! `pg_notify('idempotency_records', <storage key>)`; Postgres delivers it when their
//! transaction commits (never for one that rolls back). One listener connection per
//! store, started by the first watch, routes each payload to the local watches of that
//! key. A notification can still be missed (the listener reconnecting; a `LISTEN` through
//! a transaction-pooling `PgBouncer`, which cannot hold a session): the listener wakes
//! every watch after a reconnect, and waiters keep the coordinator's safety poll, so a
//! lost notification costs a bounded delay, never a hang.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use idempotency_core::{KeyWatch, Result};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::futures::OwnedNotified;
use tokio::sync::{Notify, OnceCell};

use crate::config::ListenerSource;
use crate::constants::{LISTENER_CHECK_EVERY, NOTIFY_CHANNEL};
use crate::errors::storage_error;

/// The lazily started listener of one store.
#[derive(Debug)]
pub(crate) struct Wakeups {
    pool: PgPool,
    source: ListenerSource,
    dispatcher: OnceCell<Arc<Dispatcher>>,
}

/// Invariant: a key is in the map while a watch holds its `Notify` (the watch removes
/// it on drop when it was the last one); the listener task holds the dispatcher weakly
/// and ends once the store and every watch are gone.
#[derive(Debug, Default)]
struct Dispatcher {
    keys: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Dispatcher {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        // Every update is one map operation: a panic elsewhere leaves nothing half-done.
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wake(&self, key: &str) {
        if let Some(notify) = self.lock().get(key) {
            notify.notify_waiters();
        }
    }

    fn wake_all(&self) {
        for notify in self.lock().values() {
            notify.notify_waiters();
        }
    }
}

impl Wakeups {
    pub(crate) fn new(pool: PgPool, source: ListenerSource) -> Self {
        Self {
            pool,
            source,
            dispatcher: OnceCell::new(),
        }
    }

    /// A watch on the storage key `key`. Returns once the listener's `LISTEN` is in
    /// place, so a notification committed after this returns is not missed.
    pub(crate) async fn watch(&self, key: String) -> Result<PostgresWatch> {
        let dispatcher = Arc::clone(self.dispatcher.get_or_try_init(|| self.start()).await?);
        let notify = Arc::clone(dispatcher.lock().entry(key.clone()).or_default());
        // Armed before returning, so a wake-up after this point is never missed.
        let notified = Some(Box::pin(Arc::clone(&notify).notified_owned()));
        Ok(PostgresWatch {
            dispatcher,
            key,
            notify,
            notified,
        })
    }

    async fn start(&self) -> Result<Arc<Dispatcher>> {
        let fail = |e| storage_error(None, e);
        let mut listener = match &self.source {
            ListenerSource::Pool => PgListener::connect_with(&self.pool).await,
            ListenerSource::Url(url) => PgListener::connect(url).await,
        }
        .map_err(fail)?;
        listener.listen(NOTIFY_CHANNEL).await.map_err(fail)?;
        let dispatcher = Arc::new(Dispatcher::default());
        tokio::spawn(listen(listener, Arc::downgrade(&dispatcher)));
        Ok(dispatcher)
    }
}

/// Routes notifications to watches until the dispatcher is gone.
async fn listen(mut listener: PgListener, dispatcher: Weak<Dispatcher>) {
    loop {
        let received = tokio::time::timeout(LISTENER_CHECK_EVERY, listener.try_recv()).await;
        let Some(dispatcher) = dispatcher.upgrade() else {
            return;
        };
        match received {
            Err(_) => {}
            Ok(Ok(Some(notification))) => dispatcher.wake(notification.payload()),
            // The connection was lost; the next call reconnects and listens again.
            // Whatever was sent meanwhile is gone: every watch re-reads its key.
            Ok(Ok(None)) => dispatcher.wake_all(),
            // The application closed the pool: no connection will come back. Waiters
            // keep their safety poll (which then fails as every call on the pool does).
            Ok(Err(sqlx::Error::PoolClosed)) => {
                dispatcher.wake_all();
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the LISTEN connection failed; retrying in 1 s");
                dispatcher.wake_all();
                drop(dispatcher);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// A watch on one key of a [`PostgresStore`](crate::PostgresStore), woken by the
/// `NOTIFY` of a completion, release or delete of the key.
#[derive(Debug)]
pub struct PostgresWatch {
    dispatcher: Arc<Dispatcher>,
    key: String,
    notify: Arc<Notify>,
    notified: Option<Pin<Box<OwnedNotified>>>,
}

impl KeyWatch for PostgresWatch {
    async fn changed(&mut self, timeout: Duration) -> bool {
        let notified = self
            .notified
            .get_or_insert_with(|| Box::pin(Arc::clone(&self.notify).notified_owned()));
        let woken = tokio::time::timeout(timeout, notified.as_mut())
            .await
            .is_ok();
        if woken {
            // Re-armed at once, so a change between this wake-up and the next call is
            // not missed.
            self.notified = Some(Box::pin(Arc::clone(&self.notify).notified_owned()));
        }
        woken
    }
}

impl Drop for PostgresWatch {
    fn drop(&mut self) {
        self.notified = None;
        let mut keys = self.dispatcher.lock();
        // Only the map and this watch hold the Notify: nobody else waits on the key.
        if keys
            .get(&self.key)
            .is_some_and(|n| Arc::ptr_eq(n, &self.notify) && Arc::strong_count(n) == 2)
        {
            keys.remove(&self.key);
        }
    }
}
