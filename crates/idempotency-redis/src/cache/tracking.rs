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
//! key prefix so that no cache is told of it) and reads its previous value in the same
//! command: a marker found missing means the server lost keys since the last check (a
//! flush, or the marker expired while this process stalled), and the cache is flushed
//! before it is served again.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use fred::interfaces::{
    ClientInterface, ClusterInterface, EventInterface, KeysInterface, TrackingInterface,
};
use fred::prelude::{Builder, Client, ClientLike, ReconnectPolicy, Value};
use fred::types::ClusterStateChange;
use fred::types::RespVersion;
use fred::types::cluster::ClusterRouting;
use fred::types::config::{Options, Server};
use fred::types::{Expiration, SetOptions};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::mpsc;

use super::CacheConfig;
use super::entries::Entries;

/// How many invalidation messages fred buffers for the task before it lags (a lag
/// flushes the whole cache).
const INVALIDATION_BUFFER: usize = 8192;

/// The start of every flush marker's key: outside the store's default prefix
/// (`idempotency:`), so the marker's writes are not broadcast to the caches.
const MARKER_NAMESPACE: &str = "__idempotency_cache_marker:";

/// The shortest lifetime of a flush marker: long enough that only a stalled process sees
/// its own marker expire (and then flushes, needlessly but safely).
const MARKER_TTL_FLOOR: Duration = Duration::from_secs(60);

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

/// One liveness check's outcome, sent by the heartbeat task to the invalidation task.
struct Beat {
    /// When the check was sent (after tracking was switched on, where it was).
    sent: Instant,
    /// Per master; `None` when the masters are not known (a cluster without state).
    nodes: Option<Vec<NodeBeat>>,
    /// The losses seen when the check began ([`RetrackFlags::generation`]).
    generation: u64,
}

impl Beat {
    /// Every master answered that its connection tracks in broadcast mode.
    fn ok(&self) -> bool {
        self.nodes
            .as_ref()
            .is_some_and(|nodes| nodes.iter().all(|n| n.ok))
    }
}

/// One master's part of a [`Beat`].
struct NodeBeat {
    /// The master (`None`: the one server of a standalone or sentinel set-up).
    server: Option<Server>,
    /// The partitions of the entries it holds when the check was sent.
    parts: Vec<usize>,
    /// It answered that this connection tracks in broadcast mode.
    ok: bool,
    /// Tracking was switched on again on it before the check.
    retracked: bool,
    /// It had lost this process's flush marker: it dropped keys without telling (a
    /// `FLUSHALL`, `FLUSHDB` or `SWAPDB`), or this process stalled past the marker's
    /// lifetime.
    flushed: bool,
}

/// Which masters must have tracking switched on again before they are trusted.
#[derive(Debug, Default)]
struct Retrack {
    /// Every master (at the start, and after a loss that cannot be pinned on one).
    all: bool,
    /// These masters (their connection was re-made or their check failed).
    servers: HashSet<Server>,
    /// Bumped by every loss: a check begun before a loss confirms nothing.
    generation: u64,
}

/// Shared by the check and the invalidation task.
#[derive(Debug, Clone, Default)]
struct RetrackFlags(Arc<Mutex<Retrack>>);

impl RetrackFlags {
    fn lock(&self) -> std::sync::MutexGuard<'_, Retrack> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn all(&self) {
        let mut retrack = self.lock();
        retrack.all = true;
        retrack.generation = retrack.generation.wrapping_add(1);
    }

    fn server(&self, server: Option<&Server>) {
        let mut retrack = self.lock();
        match server {
            Some(server) => {
                retrack.servers.insert(server.clone());
            }
            None => retrack.all = true,
        }
        retrack.generation = retrack.generation.wrapping_add(1);
    }

    /// The losses seen so far.
    fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Takes the flags for the servers of a check: which of `targets` are due, and the
    /// losses seen so far.
    fn take(&self, targets: &[Option<Server>]) -> (Vec<bool>, u64) {
        let mut retrack = self.lock();
        let due = targets
            .iter()
            .map(|t| retrack.all || t.as_ref().is_some_and(|s| retrack.servers.contains(s)))
            .collect();
        retrack.all = false;
        retrack.servers.clear();
        (due, retrack.generation)
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
    let invalidations = client.invalidation_rx();
    let mut reconnects = client.reconnect_rx();
    let mut cluster_changes = client.cluster_change_rx();
    client.init().await?;
    let check = Check {
        client: client.clone(),
        prefix: prefix.to_owned(),
        timeout: config.max_staleness.max(Duration::from_millis(100)),
        retrack: RetrackFlags::default(),
        marker: idempotency_core::new_owner_token(),
        marker_ttl: (config.heartbeat() * 8).max(MARKER_TTL_FLOOR),
    };
    // The first check switches tracking on; the cache is served only after it.
    check.retrack.all();
    let first = check.run().await;
    if !first.ok() {
        let _ = client.quit().await;
        return Err(fred::error::Error::new(
            fred::error::ErrorKind::Unknown,
            "the local cache's liveness check failed: it needs CLIENT TRACKING, CLIENT \
             TRACKINGINFO and SET on keys starting with `__idempotency_cache_marker:` \
             (Redis 6.2 or later)",
        ));
    }
    // The connections made while starting announced themselves; the check above ran on
    // them (and verified tracking on each), so those events are no loss.
    while reconnects.try_recv().is_ok() {}
    while cluster_changes.try_recv().is_ok() {}
    entries.flush();
    for node in first.nodes.iter().flatten() {
        entries.fresh_until(&node.parts, first.sent, config.max_staleness);
    }
    let (beats_tx, beats) = mpsc::channel(4);
    let heartbeat = tokio::spawn(heartbeat(check.clone(), config.heartbeat(), beats_tx));
    let apply = tokio::spawn(apply(
        Applier {
            entries,
            prefix: prefix.as_bytes().to_vec(),
            staleness: config.max_staleness,
            retrack: check.retrack.clone(),
            client: client.clone(),
        },
        invalidations,
        reconnects,
        cluster_changes,
        beats,
    ));
    Ok(Tracker {
        client,
        tasks: vec![heartbeat, apply],
    })
}

/// The liveness check: per master, `CLIENT TRACKINGINFO` must show broadcast mode on
/// this connection (a connection fred re-made after a drop shows it off), and this
/// process's flush marker must still be there (see the module's documentation).
#[derive(Clone)]
struct Check {
    client: Client,
    prefix: String,
    timeout: Duration,
    /// Which masters need tracking switched on again at the next check.
    retrack: RetrackFlags,
    /// This process's part of its flush markers' keys (unique per tracker).
    marker: String,
    /// How long a marker lives unless the next check sets it again.
    marker_ttl: Duration,
}

/// One master's answer to a check.
struct Answer {
    /// The connection tracks in broadcast mode.
    tracking: bool,
    /// The marker set by the previous check was still there.
    marker_kept: bool,
}

impl Check {
    /// The servers to track on: every master of a cluster, or the one server.
    fn servers(&self) -> Option<Vec<Server>> {
        if self.client.is_clustered() {
            self.client
                .cached_cluster_state()
                .as_ref()
                .map(ClusterRouting::unique_primary_nodes)
                .filter(|nodes| !nodes.is_empty())
        } else {
            Some(Vec::new())
        }
    }

    /// The flush marker's key on `server` (`None`: the one server): on a cluster, with a
    /// hash tag of a slot that `server` serves, so that it lives on that master.
    fn marker_key(&self, server: Option<&Server>) -> Option<String> {
        let Some(server) = server else {
            return Some(format!("{MARKER_NAMESPACE}{}", self.marker));
        };
        let state = self.client.cached_cluster_state()?;
        let owns = |slot: u16| {
            state
                .slots()
                .iter()
                .any(|range| &range.primary == server && (range.start..=range.end).contains(&slot))
        };
        // A key's slot is its hash tag's; a master serving a single slot is found within
        // a few tens of thousands of tags (the slot function spreads them evenly).
        (0u32..1_000_000)
            .find(|tag| owns(fred::util::redis_keyslot(tag.to_string().as_bytes())))
            .map(|tag| format!("{MARKER_NAMESPACE}{{{tag}}}:{}", self.marker))
    }

    /// Asks `server` whether this connection tracks, and sets the flush marker there,
    /// reading what the previous check left.
    async fn ask(&self, server: Option<&Server>) -> Option<Answer> {
        let key = self.marker_key(server)?;
        let node = self.on(server);
        let ttl = i64::try_from(self.marker_ttl.as_millis()).unwrap_or(i64::MAX);
        let (info, previous) = tokio::join!(
            node.client_trackinginfo::<Value>(),
            node.set::<Option<String>, _, _>(
                key.as_str(),
                "1",
                Some(Expiration::PX(ttl)),
                None::<SetOptions>,
                true,
            ),
        );
        match (info, previous) {
            (Ok(info), Ok(previous)) => Some(Answer {
                tracking: broadcasting(&info),
                marker_kept: previous.is_some(),
            }),
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(error = %e, "the local cache's liveness check failed");
                None
            }
        }
    }

    fn on(&self, server: Option<&Server>) -> fred::clients::WithOptions<Client> {
        self.client.with_options(&Options {
            cluster_node: server.cloned(),
            timeout: Some(self.timeout),
            max_attempts: Some(1),
            ..Options::default()
        })
    }

    /// Switches tracking on (`OFF` first: switching broadcast on over an earlier
    /// broadcast registration is refused by some servers; a fresh connection answers OK
    /// either way).
    async fn track(&self, server: Option<&Server>) -> bool {
        let node = self.on(server);
        let _ = node
            .client_tracking::<Value, _, _>(
                "OFF",
                None,
                Vec::<String>::new(),
                false,
                false,
                false,
                false,
            )
            .await;
        let on = node
            .client_tracking::<Value, _, _>(
                "ON",
                None,
                self.prefix.as_str(),
                true,
                false,
                false,
                false,
            )
            .await;
        if let Err(e) = &on {
            tracing::debug!(error = %e, "switching CLIENT TRACKING on failed; the master's entries are not served");
        }
        on.is_ok()
    }

    async fn run(&self) -> Beat {
        let Some(servers) = self.servers() else {
            self.retrack.all();
            return Beat {
                sent: Instant::now(),
                nodes: None,
                generation: self.retrack.generation(),
            };
        };
        let targets: Vec<Option<Server>> = if servers.is_empty() {
            vec![None]
        } else {
            servers.into_iter().map(Some).collect()
        };
        // The partitions each master holds, as the client routes now (taken before the
        // check is sent, like `sent`).
        let state = self.client.cached_cluster_state();
        let parts: Vec<Vec<usize>> = targets
            .iter()
            .map(|t| parts_of(state.as_ref(), t.as_ref()))
            .collect();
        let (due, generation) = self.retrack.take(&targets);
        let switched = futures::future::join_all(
            targets
                .iter()
                .zip(&due)
                .map(|(server, &due)| async move { !due || self.track(server.as_ref()).await }),
        )
        .await;
        let sent = Instant::now();
        let answers =
            futures::future::join_all(targets.iter().map(|server| self.ask(server.as_ref()))).await;
        let nodes = targets
            .into_iter()
            .zip(parts)
            .zip(due.into_iter().zip(switched))
            .zip(answers)
            .map(|(((server, parts), (retracked, switched)), answer)| {
                let ok = switched && answer.as_ref().is_some_and(|a| a.tracking);
                if !ok {
                    self.retrack.server(server.as_ref());
                }
                NodeBeat {
                    ok,
                    retracked,
                    flushed: answer.as_ref().is_some_and(|a| !a.marker_kept),
                    server,
                    parts,
                }
            })
            .collect();
        Beat {
            sent,
            nodes: Some(nodes),
            generation,
        }
    }
}

/// The partitions of the entries `server` holds (`None`: the one server, partition 0):
/// the hash slots the cluster state gives it.
fn parts_of(state: Option<&ClusterRouting>, server: Option<&Server>) -> Vec<usize> {
    let Some(server) = server else {
        return vec![0];
    };
    state.map_or_else(Vec::new, |state| {
        state
            .slots()
            .iter()
            .filter(|range| &range.primary == server)
            .flat_map(|range| usize::from(range.start)..=usize::from(range.end))
            .collect()
    })
}

/// Whether a `CLIENT TRACKINGINFO` reply lists the `bcast` flag.
fn broadcasting(info: &Value) -> bool {
    let flags = match info {
        Value::Map(map) => map
            .iter()
            .find(|(k, _)| k.as_str().is_some_and(|k| k == "flags"))
            .map(|(_, v)| v.clone()),
        Value::Array(items) => items
            .chunks(2)
            .find(|kv| {
                kv.first()
                    .and_then(Value::as_str)
                    .is_some_and(|k| k == "flags")
            })
            .and_then(|kv| kv.get(1).cloned()),
        _ => None,
    };
    match flags {
        Some(Value::Array(flags)) => flags
            .iter()
            .any(|f| f.as_str().is_some_and(|f| f == "bcast")),
        _ => false,
    }
}

async fn heartbeat(check: Check, every: Duration, beats: mpsc::Sender<Beat>) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        interval.tick().await;
        if beats.send(check.run().await).await.is_err() {
            return;
        }
    }
}

struct Applier {
    entries: Arc<Entries>,
    prefix: Vec<u8>,
    staleness: Duration,
    retrack: RetrackFlags,
    client: Client,
}

impl Applier {
    fn invalidate(&self, invalidation: &fred::types::client::Invalidation) {
        for key in &invalidation.keys {
            let Some(id) = key
                .as_bytes()
                .strip_prefix(self.prefix.as_slice())
                .and_then(|id| std::str::from_utf8(id).ok())
            else {
                continue;
            };
            self.entries.invalidate(id);
            self.entries
                .counters
                .invalidations
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A loss that cannot be pinned on one master: stop serving, drop everything, and
    /// switch tracking on again everywhere at the next check.
    fn lost(&self) {
        self.entries.unfresh_all();
        self.retrack.all();
        self.entries.flush();
    }

    /// `server`'s connection was re-made or its check failed: stop serving and drop its
    /// partitions, and switch tracking on again there at the next check. Without a
    /// cluster (or a state that names it) this is [`Applier::lost`].
    fn node_lost(&self, server: Option<&Server>, parts: &[usize]) {
        if server.is_none() || parts.is_empty() || self.entries.partitions() == 1 {
            self.lost();
            return;
        }
        self.entries.unfresh(parts);
        self.retrack.server(server);
        self.entries.flush_parts(parts);
    }

    /// `server`'s connection was re-made (fred announces every new connection).
    fn reconnected(&self, server: &Server) {
        if !self.client.is_clustered() {
            self.lost();
            return;
        }
        let state = self.client.cached_cluster_state();
        let parts = parts_of(state.as_ref(), Some(server));
        self.node_lost(Some(server), &parts);
    }

    /// fred's cluster state changed. Only masters it added (it announces a re-made
    /// connection as one, beside the reconnection) lose only their own slots: every
    /// other change (a master removed, slots moved) stops and flushes everything.
    fn cluster_changed(&self, changes: &[ClusterStateChange]) {
        let added: Option<Vec<&Server>> = changes
            .iter()
            .map(|change| match change {
                ClusterStateChange::Add(server) => Some(server),
                _ => None,
            })
            .collect();
        match added {
            Some(added) if !added.is_empty() => {
                for server in added {
                    self.reconnected(server);
                }
            }
            _ => self.lost(),
        }
    }

    /// A check's answer from one master (every invalidation received before it applied);
    /// `current`: whether no loss was seen since the check began.
    fn confirmed(&self, node: &NodeBeat, sent: Instant, current: bool) {
        if !node.ok {
            self.node_lost(node.server.as_ref(), &node.parts);
            return;
        }
        let counters = &self.entries.counters;
        if node.retracked {
            // Tracking was off there for a while: whatever was cached of it may be stale.
            counters.retracks.fetch_add(1, Ordering::Relaxed);
            self.flush_node(node);
        } else if node.flushed {
            // The master dropped keys without naming them (see the module's
            // documentation): the answer came after the drop, so this flush comes before
            // anything read from the emptied master is kept or served on this freshness.
            counters.server_flushes.fetch_add(1, Ordering::Relaxed);
            self.flush_node(node);
        }
        if !current {
            // A loss was seen after this check began (its tracking may be off now):
            // the next check, which re-tracks where needed, confirms again.
            return;
        }
        self.entries.fresh_until(&node.parts, sent, self.staleness);
    }

    fn flush_node(&self, node: &NodeBeat) {
        if node.server.is_none() || self.entries.partitions() == 1 {
            self.entries.flush();
        } else {
            self.entries.flush_parts(&node.parts);
        }
    }
}

async fn apply(
    applier: Applier,
    mut invalidations: tokio::sync::broadcast::Receiver<fred::types::client::Invalidation>,
    mut reconnects: tokio::sync::broadcast::Receiver<Server>,
    mut cluster_changes: tokio::sync::broadcast::Receiver<Vec<ClusterStateChange>>,
    mut beats: mpsc::Receiver<Beat>,
) {
    loop {
        tokio::select! {
            biased;
            message = invalidations.recv() => match message {
                Ok(invalidation) => applier.invalidate(&invalidation),
                // Some invalidations were dropped: nothing cached can be trusted.
                Err(RecvError::Lagged(_)) => applier.entries.flush(),
                Err(RecvError::Closed) => {
                    applier.entries.unfresh_all();
                    applier.entries.flush();
                    return;
                }
            },
            // A connection was re-made (tracking is off on it): that master's
            // invalidations may have been lost. Missed announcements, or a changed
            // cluster: anyone's may have been.
            // (A closed channel matches neither pattern: the branch sleeps.)
            reconnect @ (Ok(_) | Err(RecvError::Lagged(_))) = reconnects.recv() => {
                match reconnect {
                    Ok(server) => applier.reconnected(&server),
                    Err(_) => applier.lost(),
                }
            }
            change @ (Ok(_) | Err(RecvError::Lagged(_))) = cluster_changes.recv() => {
                match change {
                    Ok(changes) => applier.cluster_changed(&changes),
                    Err(_) => applier.lost(),
                }
            }
            beat = beats.recv() => {
                let Some(beat) = beat else { return };
                // Invariant (freshness): each answer came after every invalidation its
                // master sent before it, on the same connection, and fred queued those
                // before it completed the answer: apply them all before serving again.
                loop {
                    match invalidations.try_recv() {
                        Ok(invalidation) => applier.invalidate(&invalidation),
                        Err(TryRecvError::Lagged(_)) => applier.entries.flush(),
                        Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                    }
                }
                let Some(nodes) = &beat.nodes else {
                    applier.lost();
                    continue;
                };
                // Invariant (freshness): a check begun before a loss freshens nothing.
                // Losses this very beat reports come after this reading and stop only
                // their own master (which `confirmed` never freshens).
                let current = applier.retrack.generation() == beat.generation;
                for node in nodes {
                    applier.confirmed(node, beat.sent, current);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use fred::types::config::Server;

    use super::RetrackFlags;

    #[test]
    fn a_loss_after_a_check_began_makes_its_beat_stale() {
        let flags = RetrackFlags::default();
        flags.all();
        let a = Some(Server::new("127.0.0.1", 7000));
        let b = Some(Server::new("127.0.0.1", 7001));
        // The check takes what is due: everything, once.
        let (due, began) = flags.take(&[a.clone(), b.clone()]);
        assert_eq!(due, [true, true]);
        assert_eq!(flags.take(&[a.clone(), b.clone()]).0, [false, false]);
        assert_eq!(flags.generation(), began);
        // A loss of one master after the check began: that master is due at the next
        // check, and the begun check's beat is no longer current.
        flags.server(a.as_ref());
        assert_ne!(flags.generation(), began);
        let (due, _) = flags.take(&[a, b]);
        assert_eq!(due, [true, false]);
    }
}
