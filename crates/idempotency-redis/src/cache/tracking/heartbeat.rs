//! The heartbeat task: every master checked on a timer, each answer passed on as it
//! arrives, and the routing kept current.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use fred::interfaces::ClusterInterface;
use fred::prelude::{Client, ClientLike, Value};
use fred::types::cluster::ClusterRouting;
use fred::types::config::{Options, Server};
use tokio::sync::mpsc;

use super::check::{LivenessCheck, parts_of};
use super::report::HeartbeatReport;

/// Re-reads the cluster's routing when `node`'s view of the slots (`CLUSTER SLOTS` on
/// that node's connection: a slow node delays only this) differs from the client's.
/// fred's own refresh (`sync_cluster`) is sent only then: it holds every command of the
/// client until the node it asks answers.
pub(super) async fn refresh_routing(client: Client, node: Server, timeout: Duration) {
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
pub(super) async fn heartbeat(
    check: LivenessCheck,
    every: Duration,
    beats: mpsc::Sender<HeartbeatReport>,
) {
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
                        if beats.send(HeartbeatReport::Unknown).await.is_err() {
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
                        if beats.send(HeartbeatReport::Late(parts)).await.is_err() {
                            return;
                        }
                    }
                }
            }
            Some(beat) = futures::StreamExt::next(&mut in_flight), if !in_flight.is_empty() => {
                busy.remove(&beat.server);
                began.remove(&beat.server);
                if beats.send(HeartbeatReport::MasterReply(beat)).await.is_err() {
                    return;
                }
            }
        }
    }
}
