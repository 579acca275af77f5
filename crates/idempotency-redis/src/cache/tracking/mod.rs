//! The invalidation connection: a RESP3 client with `CLIENT TRACKING ON BCAST PREFIX
//! <key prefix>` on every master, a task that applies the server's invalidations to the
//! local entries, and a liveness check that keeps the cache served only while tracking
//! demonstrably works.
//!
//! Why broadcast mode: in the default mode Redis remembers only keys this very connection
//! read with read-only commands; the store's claim is `SET … NX GET` (a write, on another
//! connection) and its reads go through the command connection too, so nothing would be
//! tracked without a second read per fill. Broadcast by prefix needs no read on the
//! tracking connection and no tracking table on the server, and covers every writer
//! (another process, the Python library, an operator's `DEL`).
//!
//! Why a marker key: `FLUSHALL`, `FLUSHDB` (and the like) make Redis send an invalidation
//! without keys, which fred 10.1 drops before it reaches us. So every liveness check also
//! sets a key of this process's own on each master (`SET … PX … GET`, outside the store's
//! key prefix so that no cache is told of it) to the check's sequence number, and reads
//! its previous value in the same command: anything but the number this process last
//! set there means the master's keys changed under it without invalidations (a flush; a
//! `SWAPDB`, which brings back another database's older marker or none; a restore; or
//! the marker expired while this process stalled), and that master's entries are
//! flushed before they are served again.
//!
//! The parts: [`check`] (one master's check), [`retrack`] (which masters to re-track,
//! and the losses that stale an answer), [`heartbeat`] (the timer task), [`apply`] (the
//! task that applies invalidations, events and answers to the entries).

mod apply;
mod check;
mod heartbeat;
mod report;
mod retrack;

use std::collections::HashSet;
use std::sync::Arc;

use fred::interfaces::{EventInterface, TrackingInterface};
use fred::prelude::{Builder, Client, ClientLike, ReconnectPolicy};
use fred::types::RespVersion;
use tokio::sync::mpsc;

use super::CacheConfig;
use super::entries::Entries;
use apply::{DriverEvents, InvalidationApplier, apply};
use check::LivenessCheck;
use heartbeat::heartbeat;
use report::MasterLiveness;

/// How many invalidation messages fred buffers for the task before it lags (a lag
/// flushes the whole cache).
const INVALIDATION_BUFFER: usize = 8192;

/// The running tracker; stops its tasks and closes its connection when dropped.
#[derive(Debug)]
pub(crate) struct Tracker {
    client: Client,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Tracker {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            handle.spawn(async move {
                let _ = client.quit().await;
            });
        }
    }
}

/// Builds the tracking client from the store's client configuration (same servers,
/// credentials, TLS, sentinel), switches tracking on and waits for the first successful
/// check, then leaves the tasks running.
pub(crate) async fn start(
    source: &Client,
    prefix: &str,
    entries: Arc<Entries>,
    config: &CacheConfig,
) -> fred::prelude::FredResult<Tracker> {
    let mut client_config = source.client_config();
    client_config.version = RespVersion::RESP3;
    let mut perf = source.perf_config();
    perf.broadcast_channel_capacity = INVALIDATION_BUFFER;
    let mut builder = Builder::from_config(client_config);
    builder
        .set_connection_config(source.connection_config().clone())
        .set_performance_config(perf)
        .set_policy(
            source
                .client_reconnect_policy()
                .unwrap_or_else(|| ReconnectPolicy::new_exponential(0, 50, 2000, 2)),
        );
    let client = builder.build()?;
    // Subscribed before tracking is switched on: no invalidation can be missed.
    let mut events = DriverEvents {
        invalidations: client.invalidation_rx(),
        reconnects: client.reconnect_rx(),
        cluster_changes: client.cluster_change_rx(),
        errors: client.error_rx(),
    };
    client.init().await?;
    // The connections made while starting announced themselves; the first check runs on
    // them (and verifies tracking on each), so those events are no loss. Anything after
    // this is (at worst, an announcement that came late: a needless flush).
    while events.reconnects.try_recv().is_ok() {}
    while events.cluster_changes.try_recv().is_ok() {}
    while events.errors.try_recv().is_ok() {}
    let check = LivenessCheck::new(client.clone(), prefix, config);
    // The first check switches tracking on; the cache is served only after it.
    check.retrack.all();
    let first: Vec<MasterLiveness> = match check.plan(&HashSet::new()) {
        Some(jobs) => {
            futures::future::join_all(jobs.into_iter().map(|job| check.ask_one(job))).await
        }
        None => Vec::new(),
    };
    let all_ok = !first.is_empty() && first.iter().all(|n| n.ok);
    if !all_ok {
        let _ = client.quit().await;
        return Err(fred::error::Error::new(
            fred::error::ErrorKind::Unknown,
            "the local cache's liveness check failed: it needs CLIENT TRACKING, CLIENT \
             TRACKINGINFO, INFO and SET on keys starting with \
             `__idempotency_cache_marker:` (Redis 6.2 or later)",
        ));
    }
    entries.flush();
    for node in &first {
        entries.fresh_until(&node.parts, node.sent, config.max_staleness);
    }
    let (beats_tx, beats) = mpsc::channel(4);
    let heartbeat = tokio::spawn(heartbeat(check.clone(), config.heartbeat(), beats_tx));
    let apply = tokio::spawn(apply(
        InvalidationApplier {
            entries,
            prefix: prefix.as_bytes().to_vec(),
            staleness: config.max_staleness,
            retrack: check.retrack.clone(),
            client: client.clone(),
        },
        events,
        beats,
    ));
    Ok(Tracker {
        client,
        tasks: vec![heartbeat, apply],
    })
}
