//! Shared set-up of the Redis tests: a store on a standalone server or on a cluster.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use idempotency_core::IdempotencyDomainService;
use idempotency_redis::{ConnectOptions, RedisStore};
use idempotency_testkit::{RedisCluster, RedisServer, shared_cluster, shared_server};

/// Which deployment a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Standalone,
    Cluster,
}

/// What a test holds: the server (kept alive), a store, and a raw way in.
pub struct Env {
    pub target: Target,
    pub server: Option<Arc<RedisServer>>,
    pub cluster: Option<Arc<RedisCluster>>,
    pub store: RedisStore,
    pub metrics: Arc<Recorded>,
    pub url: String,
}

impl Env {
    pub async fn new(target: Target) -> Self {
        let (server, cluster, url) = match target {
            Target::Standalone => {
                let s = shared_server();
                let url = s.url();
                (Some(s), None, url)
            }
            Target::Cluster => {
                let c = shared_cluster();
                let url = c.url();
                (None, Some(c), url)
            }
        };
        let metrics = Arc::new(Recorded::default());
        let connection = idempotency_redis::connect_client(
            &url,
            &ConnectOptions::default().with_command_timeout(Duration::from_secs(2)),
        )
        .await
        .expect("connect");
        let store = RedisStore::builder(connection)
            .metrics(metrics.clone())
            .build()
            .expect("store");
        Self {
            target,
            server,
            cluster,
            store,
            metrics,
            url,
        }
    }

    /// Sends a raw command to the node that owns `key`.
    pub fn raw(&self, key: &str, args: &[&[u8]]) -> idempotency_testkit::resp::Reply {
        let port = self.port_for(key);
        idempotency_testkit::resp::command_bytes(port, args).expect("raw command")
    }

    fn port_for(&self, key: &str) -> u16 {
        match (&self.server, &self.cluster) {
            (Some(s), _) => s.port(),
            (_, Some(c)) => c.owner_port(key),
            _ => unreachable!("an env has a server or a cluster"),
        }
    }
}

pub use idempotency_testkit::unique_key as unique;

pub fn svc() -> IdempotencyDomainService {
    IdempotencyDomainService::new(
        Duration::from_secs(600),
        Duration::from_secs(1),
        Duration::from_secs(86_400),
    )
    .expect("policy")
}

/// The recording metrics of the core, under the name these tests use.
pub type Recorded = idempotency_testkit::RecordingMetrics;

/// Defines one test per target: `mod name { standalone, cluster }`.
#[macro_export]
macro_rules! on_both {
    ($name:ident, |$env:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body($env: $crate::common::Env) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn standalone() {
                body($crate::common::Env::new($crate::common::Target::Standalone).await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster() {
                body($crate::common::Env::new($crate::common::Target::Cluster).await).await;
            }
        }
    };
}
