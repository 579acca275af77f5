//! Shared set-up: the same behaviour tests on the in-memory store, a standalone Redis
//! and a Redis Cluster, with a switchable fault injector around the store.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use idempotency_coordinator::{Coordinator, CoordinatorBuilder};
use idempotency_core::{
    Claim, Fence, Finished, IdempotencyError, IdempotencyRecord, IdempotencyRepository, Lease,
    MemoryStore, RecordId, ReservationStore, Result,
};
use idempotency_redis::{ConnectOptions, RedisStore};
use idempotency_testkit::RecordingMetrics;
use idempotency_testkit::{RedisCluster, RedisServer, shared_cluster, shared_server};

pub use idempotency_testkit::unique_key as unique;

/// Which steps of the store fail (with a storage error) right now.
#[derive(Debug, Default)]
pub struct Faults {
    pub claim: AtomicBool,
    pub get: AtomicBool,
    pub save: AtomicBool,
    pub complete: AtomicBool,
    pub renew: AtomicBool,
    pub release: AtomicBool,
    /// The claim is applied, then its reply is lost (a storage error), once.
    pub claim_reply_lost: AtomicBool,
    /// The completion is applied, then its reply is lost, once.
    pub complete_reply_lost: AtomicBool,
    /// The claim is applied, then its reply takes 10 s (the caller is cancelled first).
    pub claim_stall: AtomicBool,
    /// How long a stalled claim reply takes, in ms (0: the 10 s default).
    pub claim_stall_ms: std::sync::atomic::AtomicU64,
    /// How long every release takes before it is sent, in ms (0: no delay).
    pub release_delay_ms: std::sync::atomic::AtomicU64,
}

fn lost_reply(flag: &AtomicBool, operation: &str) -> Result<()> {
    if flag.swap(false, Ordering::SeqCst) {
        return Err(IdempotencyError::storage(
            Some(operation),
            std::io::Error::other("injected: reply lost after the command was applied"),
        ));
    }
    Ok(())
}

fn injected(flag: &AtomicBool, operation: &str) -> Result<()> {
    if flag.load(Ordering::SeqCst) {
        return Err(IdempotencyError::storage(
            Some(operation),
            std::io::Error::other("injected fault"),
        ));
    }
    Ok(())
}

/// A store whose steps can be made to fail.
#[derive(Debug, Clone)]
pub struct Faulty<S> {
    pub inner: S,
    pub faults: Arc<Faults>,
}

// The coordinator needs the single-key repository and reservations only: no bulk
// forwarding here.
impl<S: IdempotencyRepository> IdempotencyRepository for Faulty<S> {
    async fn get(&self, id: &RecordId) -> Result<Option<IdempotencyRecord>> {
        injected(&self.faults.get, id.operation())?;
        self.inner.get(id).await
    }
    async fn save(&self, record: &IdempotencyRecord) -> Result<()> {
        injected(&self.faults.save, record.operation())?;
        self.inner.save(record).await
    }
    async fn replace(&self, record: &IdempotencyRecord) -> Result<()> {
        injected(&self.faults.save, record.operation())?;
        self.inner.replace(record).await
    }
    async fn delete(&self, id: &RecordId) -> Result<bool> {
        self.inner.delete(id).await
    }
}

impl<S: ReservationStore> ReservationStore for Faulty<S> {
    type Watch = S::Watch;

    async fn claim(&self, lease: &Lease, duration: Duration) -> Result<Claim> {
        injected(&self.faults.claim, lease.operation())?;
        let claimed = self.inner.claim(lease, duration).await?;
        if self.faults.claim_stall.swap(false, Ordering::SeqCst) {
            let ms = match self.faults.claim_stall_ms.load(Ordering::SeqCst) {
                0 => 10_000,
                ms => ms,
            };
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        lost_reply(&self.faults.claim_reply_lost, lease.operation())?;
        Ok(claimed)
    }
    async fn finish(&self, lease: &Lease, finished: Finished<'_>, ttl: Duration) -> Result<Fence> {
        injected(&self.faults.complete, lease.operation())?;
        let fence = self.inner.finish(lease, finished, ttl).await?;
        // The lost reply is a result's completion only.
        if let Finished::Value(_) = finished {
            lost_reply(&self.faults.complete_reply_lost, lease.operation())?;
        }
        Ok(fence)
    }
    async fn renew(&self, lease: &Lease, duration: Duration) -> Result<Fence> {
        injected(&self.faults.renew, lease.operation())?;
        self.inner.renew(lease, duration).await
    }
    async fn release(&self, lease: &Lease) -> Result<Fence> {
        injected(&self.faults.release, lease.operation())?;
        match self.faults.release_delay_ms.load(Ordering::SeqCst) {
            0 => {}
            ms => tokio::time::sleep(Duration::from_millis(ms)).await,
        }
        self.inner.release(lease).await
    }
    async fn watch(&self, id: &RecordId) -> Result<S::Watch> {
        self.inner.watch(id).await
    }
}

/// What a test holds.
pub struct Env<S> {
    pub store: Faulty<S>,
    pub metrics: Arc<RecordingMetrics>,
    pub server: Option<Arc<RedisServer>>,
    pub cluster: Option<Arc<RedisCluster>>,
}

impl<S: ReservationStore + Clone> Env<S> {
    /// A coordinator on this env's store, configured by `configure`.
    pub fn coordinator(
        &self,
        configure: impl FnOnce(CoordinatorBuilder<Faulty<S>>) -> CoordinatorBuilder<Faulty<S>>,
    ) -> Coordinator<Faulty<S>> {
        configure(Coordinator::builder(self.store.clone()).metrics(self.metrics.clone()))
            .build()
            .expect("valid settings")
    }

    pub fn faults(&self) -> &Faults {
        &self.store.faults
    }
}

pub fn wrap<S>(inner: S) -> Faulty<S> {
    Faulty {
        inner,
        faults: Arc::new(Faults::default()),
    }
}

pub fn memory() -> Env<MemoryStore> {
    Env {
        store: wrap(MemoryStore::new()),
        metrics: Arc::new(RecordingMetrics::default()),
        server: None,
        cluster: None,
    }
}

async fn redis_store(url: &str) -> RedisStore {
    let connection = idempotency_redis::connect_client(url, &ConnectOptions::default())
        .await
        .expect("connect");
    RedisStore::builder(connection).build().expect("store")
}

pub async fn standalone() -> Env<RedisStore> {
    let server = shared_server();
    let store = redis_store(&server.url()).await;
    Env {
        store: wrap(store),
        metrics: Arc::new(RecordingMetrics::default()),
        server: Some(server),
        cluster: None,
    }
}

pub async fn cluster() -> Env<RedisStore> {
    let cluster = shared_cluster();
    let store = redis_store(&cluster.url()).await;
    Env {
        store: wrap(store),
        metrics: Arc::new(RecordingMetrics::default()),
        server: None,
        cluster: Some(cluster),
    }
}

/// Counts how often an action ran.
#[derive(Debug, Default, Clone)]
pub struct Runs(pub Arc<AtomicUsize>);

impl Runs {
    pub fn tick(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// The port of the Redis node that owns `redis_key` (a Redis env only).
pub fn port_of<S>(env: &Env<S>, redis_key: &str) -> u16 {
    match (&env.server, &env.cluster) {
        (Some(server), _) => server.port(),
        (_, Some(cluster)) => cluster.owner_port(redis_key),
        _ => panic!("not a Redis env"),
    }
}

/// The boxed future of a [`counted`] action.
pub type Counted = std::pin::Pin<Box<dyn Future<Output = Result<u32>> + Send>>;

/// An action that counts its runs, takes `hold`, and returns `value`.
pub fn counted(
    runs: &Runs,
    hold: Duration,
    value: u32,
) -> impl FnOnce() -> Counted + Send + 'static {
    let runs = runs.clone();
    move || {
        Box::pin(async move {
            runs.tick();
            tokio::time::sleep(hold).await;
            Ok(value)
        })
    }
}

/// Calls `attempt` until it succeeds (a spawned release may still be on its way), at
/// most 50 times 20 ms apart; the last outcome.
pub async fn eventually<T, F, Fut>(mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut outcome = attempt().await;
    for _ in 0..50 {
        if outcome.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        outcome = attempt().await;
    }
    outcome
}

/// Defines one test per backend: `mod name { memory, standalone, cluster }`.
#[macro_export]
macro_rules! on_all {
    ($name:ident, |$env:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body<S>($env: $crate::common::Env<S>)
            where
                S: idempotency_core::ReservationStore + Clone,
            $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                body($crate::common::memory()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn standalone() {
                body($crate::common::standalone().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster() {
                body($crate::common::cluster().await).await;
            }
        }
    };
}

/// Starts a call on `key` whose action holds the key for `hold` and then returns
/// `outcome`; returns once the action is running (the key is reserved).
pub async fn start_holder<S: ReservationStore + Clone>(
    coordinator: &Coordinator<Faulty<S>>,
    key: &str,
    fingerprint: Option<&str>,
    hold: Duration,
    outcome: std::result::Result<u32, IdempotencyError>,
) -> tokio::task::JoinHandle<std::result::Result<u32, IdempotencyError>> {
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let coordinator = coordinator.clone();
    let key = key.to_owned();
    let fingerprint = fingerprint.map(str::to_owned);
    let owner = tokio::spawn(async move {
        coordinator
            .call("op", Some(&key))
            .maybe_fingerprint(fingerprint)
            .run(|| async move {
                let _ = started_tx.send(());
                tokio::time::sleep(hold).await;
                outcome
            })
            .await
    });
    started_rx.await.expect("owner started");
    owner
}
