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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
use fred::types::{Expiration, InfoKind, SetOptions};
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

/// What the heartbeat task tells the invalidation task.
enum Beat {
    /// One master's answer to a liveness check, sent as soon as it arrives (a slow
    /// master delays no other's).
    Answer(NodeBeat),
    /// A master's check has been outstanding for a quarter of an interval: its
    /// partitions stop being served until it answers (a flush it would report is not
    /// served for longer than that).
    Late(Vec<usize>),
    /// The masters are not known (a cluster without state).
    Unknown,
}

/// One master's answer to a liveness check.
struct NodeBeat {
    /// When the check was sent to it (after tracking was switched on, if it was).
    sent: Instant,
    /// The losses that concerned it when the check began.
    stamp: Stamp,
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

/// Which masters must have tracking switched on again before they are trusted, and
/// the losses seen so far (a check begun before a loss of its master confirms nothing).
#[derive(Debug, Default)]
struct Retrack {
    /// Every master (at the start, and after a loss that cannot be pinned on one).
    all: bool,
    /// These masters (their connection was re-made or their check failed).
    servers: HashSet<Server>,
    /// Bumped by every loss of everything.
    all_losses: u64,
    /// Bumped by every loss of one master.
    losses: HashMap<Server, u64>,
}

impl Retrack {
    fn stamp(&self, server: Option<&Server>) -> Stamp {
        Stamp {
            all: self.all_losses,
            server: server
                .and_then(|s| self.losses.get(s))
                .copied()
                .unwrap_or(0),
        }
    }
}

/// The losses that concern one master, as seen at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    all: u64,
    server: u64,
}

/// Shared by the check and the invalidation task.
#[derive(Debug, Clone, Default)]
struct RetrackFlags(Arc<Mutex<Retrack>>);

impl RetrackFlags {
    fn lock(&self) -> std::sync::MutexGuard<'_, Retrack> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes every master due at the next check and counts a loss of everything.
    fn all(&self) {
        let mut retrack = self.lock();
        retrack.all = true;
        retrack.all_losses = retrack.all_losses.wrapping_add(1);
    }

    /// Makes `server` due at the next check and counts a loss of it.
    fn server(&self, server: Option<&Server>) {
        let Some(server) = server else {
            self.all();
            return;
        };
        let mut retrack = self.lock();
        retrack.servers.insert(server.clone());
        let losses = retrack.losses.entry(server.clone()).or_default();
        *losses = losses.wrapping_add(1);
    }

    /// Makes `server` due at the next check without counting a loss (the check that
    /// found it failing reports that in its own beat).
    fn mark(&self, server: Option<&Server>) {
        let mut retrack = self.lock();
        match server {
            Some(server) => {
                retrack.servers.insert(server.clone());
            }
            None => retrack.all = true,
        }
    }

    /// The losses that concern `server` now.
    fn stamp(&self, server: Option<&Server>) -> Stamp {
        self.lock().stamp(server)
    }

    /// Takes the flags for the servers of a check: per target, whether it is due and
    /// the losses that concern it now. The `busy` masters (not in this check) keep
    /// theirs, an "every master" flag included.
    fn take(
        &self,
        targets: &[Option<Server>],
        busy: &HashSet<Option<Server>>,
    ) -> Vec<(bool, Stamp)> {
        let mut retrack = self.lock();
        let taken = targets
            .iter()
            .map(|t| {
                let due = retrack.all || t.as_ref().is_some_and(|s| retrack.servers.contains(s));
                (due, retrack.stamp(t.as_ref()))
            })
            .collect();
        if retrack.all {
            if busy.contains(&None) {
                return taken;
            }
            retrack.all = false;
            retrack.servers.extend(busy.iter().flatten().cloned());
        }
        for server in targets.iter().flatten() {
            retrack.servers.remove(server);
        }
        taken
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
    let mut events = Events {
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
    let check = Check {
        client: client.clone(),
        prefix: prefix.to_owned(),
        timeout: config.max_staleness.max(Duration::from_millis(100)),
        retrack: RetrackFlags::default(),
        marker: idempotency_core::new_owner_token(),
        marker_ttl: (config.heartbeat() * 8).max(MARKER_TTL_FLOOR),
        markers: Arc::default(),
        sequence: Arc::default(),
        flush_calls: Arc::default(),
    };
    // The first check switches tracking on; the cache is served only after it.
    check.retrack.all();
    let first: Vec<NodeBeat> = match check.plan(&HashSet::new()) {
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
        Applier {
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
    /// The value each marker key was last set to by this process (a key whose last
    /// `SET` failed is absent: its value is unknown).
    markers: Arc<Mutex<HashMap<String, u64>>>,
    /// The sequence number of the next check.
    sequence: Arc<AtomicU64>,
    /// Per master, the calls of `FLUSHALL`, `FLUSHDB` and `SWAPDB` it counted at its
    /// last answer (`INFO commandstats`).
    flush_calls: Arc<Mutex<HashMap<Option<Server>, FlushCalls>>>,
}

/// The calls of the commands that drop keys without naming them, as a master counts
/// them (`cmdstat_flushall`, `cmdstat_flushdb`, `cmdstat_swapdb`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct FlushCalls([u64; 3]);

impl FlushCalls {
    /// Reads them from an `INFO commandstats` reply (a command never called is absent:
    /// 0).
    fn parse(info: &str) -> Self {
        let mut calls = [0; 3];
        for line in info.lines() {
            let Some((name, stats)) = line.trim().split_once(':') else {
                continue;
            };
            let slot = match name {
                "cmdstat_flushall" => 0,
                "cmdstat_flushdb" => 1,
                "cmdstat_swapdb" => 2,
                _ => continue,
            };
            calls[slot] = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(u64::MAX);
        }
        Self(calls)
    }
}

/// One master's answer to a check.
struct Answer {
    /// The connection tracks in broadcast mode.
    tracking: bool,
    /// The marker set by the previous check was still there, as it was left, and the
    /// master counted no call of a command that drops keys since its last answer.
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

    /// Asks `server` whether this connection tracks, and sets the flush marker there to
    /// `value`, reading what the previous check left.
    async fn ask(&self, server: Option<&Server>, value: u64) -> Option<Answer> {
        let key = self.marker_key(server)?;
        let node = self.on(server);
        let ttl = i64::try_from(self.marker_ttl.as_millis()).unwrap_or(i64::MAX);
        let expected = self
            .markers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
        let (info, previous, stats) = tokio::join!(
            node.client_trackinginfo::<Value>(),
            node.set::<Option<String>, _, _>(
                key.as_str(),
                value.to_string(),
                Some(Expiration::PX(ttl)),
                None::<SetOptions>,
                true,
            ),
            node.info::<String>(Some(InfoKind::CommandStats)),
        );
        // Counted calls catch what the marker cannot: a flush or `SWAPDB` undone between
        // two checks (the marker comes back as it was; the count does not). A reset of
        // the counters (`CONFIG RESETSTAT`) reads as a change too: a needless flush.
        let calls_changed = {
            let mut known = self
                .flush_calls
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match &stats {
                Ok(text) => {
                    let now = FlushCalls::parse(text);
                    known
                        .insert(server.cloned(), now)
                        .is_some_and(|before| before != now)
                }
                Err(_) => {
                    known.remove(&server.cloned());
                    true
                }
            }
        };
        if previous.is_ok() {
            self.markers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(key, value);
        }
        match (info, previous, stats) {
            (Ok(info), Ok(previous), Ok(_)) => Some(Answer {
                tracking: broadcasting(&info),
                marker_kept: !calls_changed
                    && expected.is_some()
                    && previous.and_then(|p| p.parse::<u64>().ok()) == expected,
            }),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
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

    /// Plans one check of every master not `busy` with an earlier one (each master's
    /// checks run one at a time, so that no re-tracking of a master overlaps another
    /// check of it), or `None` when the masters are not known (a cluster without state).
    fn plan(&self, busy: &HashSet<Option<Server>>) -> Option<Vec<Job>> {
        let Some(servers) = self.servers() else {
            self.retrack.all();
            return None;
        };
        let targets: Vec<Option<Server>> = if servers.is_empty() {
            vec![None]
        } else {
            servers.into_iter().map(Some).collect()
        };
        let targets: Vec<Option<Server>> =
            targets.into_iter().filter(|t| !busy.contains(t)).collect();
        // The partitions each master holds, as the client routes now (taken before the
        // check is sent, like `sent`).
        let state = self.client.cached_cluster_state();
        let taken = self.retrack.take(&targets, busy);
        let value = self.sequence.fetch_add(1, Ordering::Relaxed);
        Some(
            targets
                .into_iter()
                .zip(taken)
                .map(|(server, (due, stamp))| Job {
                    parts: parts_of(state.as_ref(), server.as_ref()),
                    server,
                    due,
                    stamp,
                    value,
                })
                .collect(),
        )
    }

    /// One master's part of a check: tracking switched on first when due.
    async fn ask_one(&self, job: Job) -> NodeBeat {
        let Job {
            server,
            parts,
            due,
            stamp,
            value,
        } = job;
        let switched = !due || self.track(server.as_ref()).await;
        let sent = Instant::now();
        let answer = self.ask(server.as_ref(), value).await;
        let ok = switched && answer.as_ref().is_some_and(|a| a.tracking);
        if !ok {
            // Due at the next check, without counting a loss against the stamp: the
            // applier records the loss (`node_lost`) when it applies this very beat.
            self.retrack.mark(server.as_ref());
        }
        NodeBeat {
            sent,
            stamp,
            ok,
            retracked: due,
            flushed: answer.as_ref().is_some_and(|a| !a.marker_kept),
            server,
            parts,
        }
    }
}

/// One master's part of a planned check.
struct Job {
    server: Option<Server>,
    /// The partitions it holds.
    parts: Vec<usize>,
    /// Tracking must be switched on again first.
    due: bool,
    /// The losses that concerned it when the check was planned.
    stamp: Stamp,
    /// The marker's value for this check.
    value: u64,
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

/// Re-reads the cluster's routing when `node`'s view of the slots (`CLUSTER SLOTS` on
/// that node's connection: a slow node delays only this) differs from the client's.
/// fred's own refresh (`sync_cluster`) is sent only then: it holds every command of the
/// client until the node it asks answers.
async fn refresh_routing(client: Client, node: Server, timeout: Duration) {
    let asked = client
        .with_options(&Options {
            cluster_node: Some(node.clone()),
            timeout: Some(timeout),
            max_attempts: Some(1),
            ..Options::default()
        })
        .cluster_slots::<Value>()
        .await;
    let Ok(seen) = asked.and_then(|v| ClusterRouting::from_cluster_slots(v, node.host.clone()))
    else {
        return;
    };
    let ranges = |routing: &ClusterRouting| {
        let mut ranges: Vec<(u16, u16, Server)> = routing
            .slots()
            .iter()
            .map(|r| (r.start, r.end, r.primary.clone()))
            .collect();
        ranges.sort_by_key(|r| r.0);
        ranges
    };
    let known = client.cached_cluster_state();
    if known.as_ref().map(ranges) != Some(ranges(&seen))
        && let Err(e) = client.sync_cluster().await
    {
        tracing::debug!(error = %e, "refreshing the cluster state failed");
    }
}

/// Checks every master every `every`, each answer sent to `beats` as it arrives. A
/// master still answering an earlier check is skipped (its slow answer delays no other
/// master's freshness; its own lapses, as it should).
async fn heartbeat(check: Check, every: Duration, beats: mpsc::Sender<Beat>) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    let mut busy: HashSet<Option<Server>> = HashSet::new();
    // Per busy master: when its check began, and whether it was reported late.
    let mut began: HashMap<Option<Server>, (Instant, bool)> = HashMap::new();
    let late_after = (every / 4).max(Duration::from_millis(1));
    let mut lateness = tokio::time::interval(late_after);
    lateness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let mut syncing: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>> = None;
    let mut ticks: usize = 0;
    loop {
        tokio::select! {
            _ = interval.tick() => {
                if syncing.is_none()
                    && let Some(node) = check.servers().and_then(|nodes| {
                        let n = nodes.len().max(1);
                        nodes.into_iter().nth(ticks % n)
                    })
                {
                    // The routing is checked on every tick, beside the checks, against
                    // one master's view in turn: this client's own commands never touch
                    // most slots, so without it a master that took slots over (or
                    // joined) would stay untracked, its writes unannounced, with no time
                    // limit. A new master comes back as fred's `Add` event (that
                    // master's loss: re-tracked and confirmed before its slots are
                    // served); slots moved between tracked masters need nothing (each
                    // master announces writes to whatever it holds).
                    syncing = Some(Box::pin(refresh_routing(
                        check.client.clone(),
                        node,
                        check.timeout,
                    )));
                }
                ticks = ticks.wrapping_add(1);
                match check.plan(&busy) {
                    Some(jobs) => {
                        for job in jobs {
                            busy.insert(job.server.clone());
                            began.insert(job.server.clone(), (Instant::now(), false));
                            in_flight.push(check.ask_one(job));
                        }
                    }
                    None => {
                        if beats.send(Beat::Unknown).await.is_err() {
                            return;
                        }
                    }
                }
            }
            Some(()) = futures::future::OptionFuture::from(syncing.as_mut()), if syncing.is_some() => {
                syncing = None;
            }
            _ = lateness.tick(), if !began.is_empty() => {
                let state = check.client.cached_cluster_state();
                for (server, (since, reported)) in &mut began {
                    if !*reported && since.elapsed() >= late_after {
                        *reported = true;
                        let parts = parts_of(state.as_ref(), server.as_ref());
                        if beats.send(Beat::Late(parts)).await.is_err() {
                            return;
                        }
                    }
                }
            }
            Some(beat) = futures::StreamExt::next(&mut in_flight), if !in_flight.is_empty() => {
                busy.remove(&beat.server);
                began.remove(&beat.server);
                if beats.send(Beat::Answer(beat)).await.is_err() {
                    return;
                }
            }
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

    /// `server`'s connection failed, closed or was re-made (fred announces each).
    fn connection_lost(&self, server: &Server) {
        if !self.client.is_clustered() {
            self.lost();
            return;
        }
        let state = self.client.cached_cluster_state();
        let parts = parts_of(state.as_ref(), Some(server));
        self.node_lost(Some(server), &parts);
    }

    /// fred's cluster state changed (it reports every refresh, see `Check::run`).
    /// `Rebalance` (the same masters, slots maybe moved among them) needs nothing: every
    /// master announces writes to whatever keys it holds, and its connection is
    /// untouched. A master added (fred also reports a re-made connection as one) loses
    /// only its own slots; a master removed stops and flushes everything.
    fn cluster_changed(&self, changes: &[ClusterStateChange]) {
        if changes
            .iter()
            .any(|change| matches!(change, ClusterStateChange::Remove(_)))
        {
            self.lost();
            return;
        }
        for change in changes {
            if let ClusterStateChange::Add(server) = change {
                self.connection_lost(server);
            }
        }
    }

    /// A check's answer from one master (every invalidation received before it applied).
    fn confirmed(&self, node: &NodeBeat) {
        // Invariant (freshness): a check begun before a loss of its master (or of
        // everything) freshens nothing; losses this very answer reports are recorded
        // below (`node_lost`), after this reading, and concern only its own master.
        let current = self.retrack.stamp(node.server.as_ref()) == node.stamp;
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
        self.entries
            .fresh_until(&node.parts, node.sent, self.staleness);
    }

    fn flush_node(&self, node: &NodeBeat) {
        if node.server.is_none() || self.entries.partitions() == 1 {
            self.entries.flush();
        } else {
            self.entries.flush_parts(&node.parts);
        }
    }
}

/// What fred tells the invalidation task.
struct Events {
    invalidations: tokio::sync::broadcast::Receiver<fred::types::client::Invalidation>,
    /// A connection was re-made (tracking is off on it).
    reconnects: tokio::sync::broadcast::Receiver<Server>,
    cluster_changes: tokio::sync::broadcast::Receiver<Vec<ClusterStateChange>>,
    /// A connection failed or closed (with its server when fred knows it).
    errors: tokio::sync::broadcast::Receiver<(fred::error::Error, Option<Server>)>,
}

async fn apply(applier: Applier, events: Events, mut beats: mpsc::Receiver<Beat>) {
    let Events {
        mut invalidations,
        mut reconnects,
        mut cluster_changes,
        mut errors,
    } = events;
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
                    Ok(server) => applier.connection_lost(&server),
                    Err(_) => applier.lost(),
                }
            }
            change @ (Ok(_) | Err(RecvError::Lagged(_))) = cluster_changes.recv() => {
                match change {
                    Ok(changes) => applier.cluster_changed(&changes),
                    Err(_) => applier.lost(),
                }
            }
            // A connection failed or closed: invalidations stop until fred re-makes it,
            // so its master's entries stop at once (not at the reconnection, which may
            // take a while, nor at the next check).
            error @ (Ok(_) | Err(RecvError::Lagged(_))) = errors.recv() => {
                match error {
                    Ok((e, Some(server))) => {
                        tracing::debug!(error = %e, %server, "the tracking connection failed");
                        applier.connection_lost(&server);
                    }
                    Ok((e, None)) => {
                        tracing::debug!(error = %e, "the tracking client failed");
                        applier.lost();
                    }
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
                match beat {
                    Beat::Answer(node) => applier.confirmed(&node),
                    Beat::Late(parts) => applier.entries.unfresh(&parts),
                    Beat::Unknown => applier.lost(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use fred::types::config::Server;

    use std::collections::HashSet;

    use super::RetrackFlags;

    #[test]
    fn a_loss_concerns_the_checks_of_its_own_master_only() {
        let flags = RetrackFlags::default();
        let idle = HashSet::new();
        flags.all();
        let a = Some(Server::new("127.0.0.1", 7000));
        let b = Some(Server::new("127.0.0.1", 7001));
        let due = |taken: Vec<(bool, super::Stamp)>| taken.iter().map(|t| t.0).collect::<Vec<_>>();
        // The check takes what is due: everything, once.
        let taken = flags.take(&[a.clone(), b.clone()], &idle);
        let (stamp_a, stamp_b) = (taken[0].1, taken[1].1);
        assert_eq!(due(taken), [true, true]);
        assert_eq!(
            due(flags.take(&[a.clone(), b.clone()], &idle)),
            [false, false]
        );
        // A loss of master a after the check began: a's answer to that check is stale,
        // b's is not; a is due at the next check.
        flags.server(a.as_ref());
        assert_ne!(flags.stamp(a.as_ref()), stamp_a);
        assert_eq!(flags.stamp(b.as_ref()), stamp_b);
        assert_eq!(
            due(flags.take(&[a.clone(), b.clone()], &idle)),
            [true, false]
        );
        // A failing check marks its master due without staling anything.
        flags.mark(b.as_ref());
        assert_eq!(flags.stamp(b.as_ref()), stamp_b);
        assert_eq!(
            due(flags.take(&[a.clone(), b.clone()], &idle)),
            [false, true]
        );
        // A loss of everything stales every master's answers.
        flags.all();
        assert_ne!(flags.stamp(b.as_ref()), stamp_b);
        assert_eq!(
            due(flags.take(&[a.clone(), b.clone()], &idle)),
            [true, true]
        );
        // A master busy with an earlier check keeps its flag for the next check.
        flags.all();
        let busy = HashSet::from([b.clone()]);
        assert_eq!(due(flags.take(std::slice::from_ref(&a), &busy)), [true]);
        assert_eq!(due(flags.take(&[a, b], &idle)), [false, true]);
    }
}
