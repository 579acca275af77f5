//! The liveness check of one master: is this connection tracking, did the master drop
//! keys without naming them (marker key and flush-call counts), and which partitions it
//! holds.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use fred::interfaces::{ClientInterface, ClusterInterface, KeysInterface};
use fred::prelude::{Client, ClientLike, Value};
use fred::types::cluster::ClusterRouting;
use fred::types::config::{Options, Server};
use fred::types::{Expiration, InfoKind, SetOptions};

use super::report::MasterLiveness;
use super::retrack::{LossSnapshot, RetrackFlags};
use crate::cache::CacheConfig;

/// The start of every flush marker's key: outside the store's default prefix
/// (`idempotency:`), so the marker's writes are not broadcast to the caches.
const MARKER_NAMESPACE: &str = "__idempotency_cache_marker:";

/// The shortest lifetime of a flush marker: long enough that only a stalled process sees
/// its own marker expire (and then flushes, needlessly but safely).
const MARKER_TTL_FLOOR: Duration = Duration::from_secs(60);

/// The liveness check: per master, `CLIENT TRACKINGINFO` must show broadcast mode on
/// this connection (a connection fred re-made after a drop shows it off), and this
/// process's flush marker must still be there (see the module's documentation).
#[derive(Clone)]
pub(super) struct LivenessCheck {
    pub(super) client: Client,
    prefix: String,
    pub(super) timeout: Duration,
    /// Which masters need tracking switched on again at the next check.
    pub(super) retrack: RetrackFlags,
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
    flush_calls: Arc<Mutex<HashMap<Option<Server>, FlushCommandCalls>>>,
}

/// The calls of the commands that drop keys without naming them, as a master counts
/// them (`cmdstat_flushall`, `cmdstat_flushdb`, `cmdstat_swapdb`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct FlushCommandCalls([u64; 3]);

impl FlushCommandCalls {
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
struct MasterReply {
    /// The connection tracks in broadcast mode.
    tracking: bool,
    /// The marker set by the previous check was still there, as it was left, and the
    /// master counted no call of a command that drops keys since its last answer.
    marker_kept: bool,
}

impl LivenessCheck {
    /// The check of the tracking `client` for keys under `prefix`, with `config`'s
    /// timings; every master is due for tracking at the first check.
    pub(super) fn new(client: Client, prefix: &str, config: &CacheConfig) -> Self {
        Self {
            client,
            prefix: prefix.to_owned(),
            timeout: config.max_staleness.max(Duration::from_millis(100)),
            retrack: RetrackFlags::default(),
            marker: idempotency_core::new_owner_token(),
            marker_ttl: (config.heartbeat() * 8).max(MARKER_TTL_FLOOR),
            markers: Arc::default(),
            sequence: Arc::default(),
            flush_calls: Arc::default(),
        }
    }

    /// The servers to track on: every master of a cluster, or the one server.
    pub(super) fn servers(&self) -> Option<Vec<Server>> {
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
    async fn ask(&self, server: Option<&Server>, value: u64) -> Option<MasterReply> {
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
                    let now = FlushCommandCalls::parse(text);
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
            (Ok(info), Ok(previous), Ok(_)) => Some(MasterReply {
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
    pub(super) fn plan(&self, busy: &HashSet<Option<Server>>) -> Option<Vec<MasterCheck>> {
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
                .map(|(server, (due, stamp))| MasterCheck {
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
    pub(super) async fn ask_one(&self, job: MasterCheck) -> MasterLiveness {
        let MasterCheck {
            server,
            parts,
            due,
            stamp,
            value,
        } = job;
        let switched = !due || self.track(server.as_ref()).await;
        let sent = Instant::now();
        // Boxed: three commands joined make a large future (once per check, off the hit path).
        let answer = Box::pin(self.ask(server.as_ref(), value)).await;
        let ok = switched && answer.as_ref().is_some_and(|a| a.tracking);
        if !ok {
            // Due at the next check, without counting a loss against the stamp: the
            // applier records the loss (`node_lost`) when it applies this very beat.
            self.retrack.mark(server.as_ref());
        }
        MasterLiveness {
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
pub(super) struct MasterCheck {
    pub(super) server: Option<Server>,
    /// The partitions it holds.
    pub(super) parts: Vec<usize>,
    /// Tracking must be switched on again first.
    pub(super) due: bool,
    /// The losses that concerned it when the check was planned.
    pub(super) stamp: LossSnapshot,
    /// The marker's value for this check.
    pub(super) value: u64,
}

/// The partitions of the entries `server` holds (`None`: the one server, partition 0):
/// the hash slots the cluster state gives it.
pub(super) fn parts_of(state: Option<&ClusterRouting>, server: Option<&Server>) -> Vec<usize> {
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
