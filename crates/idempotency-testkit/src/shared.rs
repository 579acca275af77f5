//! Servers shared by the tests of one test binary that run at the same time.
//!
//! The first test to ask starts the server; it stops when the last test holding it
//! drops its handle (a later test starts a fresh one). Nothing outlives the process.

use std::sync::{Arc, Mutex, PoisonError, Weak};

use crate::{RedisCluster, RedisServer};

/// A standalone server shared by concurrently running tests. Tests sharing it must use
/// keys of their own.
pub fn shared_server() -> Arc<RedisServer> {
    static SLOT: Mutex<Weak<RedisServer>> = Mutex::new(Weak::new());
    let mut slot = SLOT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(server) = slot.upgrade() {
        return server;
    }
    let server = Arc::new(RedisServer::start());
    *slot = Arc::downgrade(&server);
    server
}

/// A 3-master, 3-replica cluster shared by concurrently running tests. Tests sharing it
/// must use keys of their own and must not stop its nodes.
pub fn shared_cluster() -> Arc<RedisCluster> {
    static SLOT: Mutex<Weak<RedisCluster>> = Mutex::new(Weak::new());
    let mut slot = SLOT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(cluster) = slot.upgrade() {
        return cluster;
    }
    let cluster = Arc::new(RedisCluster::start());
    *slot = Arc::downgrade(&cluster);
    cluster
}
