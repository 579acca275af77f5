//! Attacks on the local cache (`CachedStore`): topology changes the tracking
//! client does not see, a slow master delaying another master's flush detection, a
//! `SWAPDB` undone, and reads in flight across a node loss or a flush. Every test runs on
//! servers of its own (they kill connections, flush, swap or move slots).

#![cfg(feature = "local-cache")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::cache::{
    DEADLINE, eventually, id, pair_at, record, result_of, store_at, tracking_clients, warm,
};
use crate::common::unique;
use idempotency_core::IdempotencyRepository;
use idempotency_redis::cache::{CacheConfig, CachedStore};
use idempotency_testkit::resp::{self, Reply};
use idempotency_testkit::{RedisCluster, RedisServer, ServerOptions};

pub(crate) fn cmd(port: u16, args: &[&str]) -> Reply {
    resp::command(port, args).unwrap_or_else(|e| panic!("{args:?} on {port}: {e}"))
}

pub(crate) fn ok(port: u16, args: &[&str]) {
    let reply = cmd(port, args);
    assert_eq!(reply, Reply::Status("OK".into()), "{args:?} on {port}");
}

fn keyslot(port: u16, key: &str) -> i64 {
    cmd(port, &["CLUSTER", "KEYSLOT", key])
        .as_int()
        .expect("a slot")
}

pub(crate) fn node_id(port: u16) -> String {
    let reply = cmd(port, &["CLUSTER", "MYID"]);
    String::from_utf8(reply.as_bytes().expect("an id").to_vec()).expect("utf-8")
}

/// The flush markers' keys on a node.
pub(crate) fn markers(port: u16) -> Vec<String> {
    match cmd(port, &["KEYS", "__idempotency_cache_marker:*"]) {
        Reply::Array(items) => items
            .iter()
            .filter_map(|i| {
                i.as_bytes()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
            })
            .collect(),
        other => panic!("KEYS: {other:?}"),
    }
}

fn kill_tracking(port: u16) {
    let ids = tracking_clients(port);
    assert!(!ids.is_empty(), "no tracking connection on port {port}");
    for client in ids {
        let _ = resp::command(port, &["CLIENT", "KILL", "ID", &client]);
    }
}

/// A slot moves (`CLUSTER SETSLOT … MIGRATING/IMPORTING`, `MIGRATE`, `SETSLOT … NODE`)
/// to a master that joined the cluster after the cache started. The tracking client's own
/// commands never hit a `MOVED` for it, so unless its cluster state is refreshed on every
/// check it never tracks on the new master, and a record read from the new master and
/// then rewritten there by another client is served old forever (found by review; the
/// check now refreshes the routing, and the new master is re-tracked before its slots
/// are served).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_to_a_new_master_is_still_invalidated() {
    let cluster = RedisCluster::start_with(3, 0);
    let extra = RedisServer::start_with(&ServerOptions {
        cluster: true,
        ..ServerOptions::default()
    });
    let first = cluster.master_ports()[0];
    ok(
        first,
        &["CLUSTER", "MEET", "127.0.0.1", &extra.port().to_string()],
    );
    let extra_id = node_id(extra.port());
    // Every node knows the new one, and the new one knows the slots.
    let all: Vec<u16> = cluster
        .master_ports()
        .into_iter()
        .chain([extra.port()])
        .collect();
    eventually("the new node joined", || async {
        all.iter()
            .all(|&p| match resp::command(p, &["CLUSTER", "INFO"]) {
                Ok(Reply::Bulk(Some(info))) => {
                    let info = String::from_utf8_lossy(&info);
                    info.contains("cluster_known_nodes:4") && info.contains("cluster_state:ok")
                }
                _ => false,
            })
    })
    .await;

    let prefix = format!("{}:", unique("moved"));
    let (cached, writer) = pair_at(&cluster.url(), &prefix, CacheConfig::default()).await;
    // A key whose slot is not the slot of its owner's flush marker (moving that one would
    // make the tracking client meet a MOVED and refresh its state).
    let (key, owner, slot) = (0..1000)
        .find_map(|i| {
            let key = format!("{}-{i}", unique("moved"));
            let redis_key = writer.redis_key(&id(&key));
            let owner = cluster.owner_port(&redis_key);
            let slot = keyslot(owner, &redis_key);
            let marker_slots: Vec<i64> = markers(owner).iter().map(|m| keyslot(owner, m)).collect();
            (!marker_slots.contains(&slot)).then_some((key, owner, slot))
        })
        .expect("a key");
    let redis_key = writer.redis_key(&id(&key));
    let slot_text = slot.to_string();
    writer
        .save(&record(&key, "\"before\""))
        .await
        .expect("save");
    warm(&cached, &key).await;

    // Move the key's slot to the new master.
    let owner_id = node_id(owner);
    ok(
        extra.port(),
        &["CLUSTER", "SETSLOT", &slot_text, "IMPORTING", &owner_id],
    );
    ok(
        owner,
        &["CLUSTER", "SETSLOT", &slot_text, "MIGRATING", &extra_id],
    );
    let reply = cmd(
        owner,
        &[
            "MIGRATE",
            "127.0.0.1",
            &extra.port().to_string(),
            "",
            "0",
            "5000",
            "KEYS",
            &redis_key,
        ],
    );
    assert_eq!(reply, Reply::Status("OK".into()), "MIGRATE");
    for &port in &all {
        ok(port, &["CLUSTER", "SETSLOT", &slot_text, "NODE", &extra_id]);
    }
    assert_eq!(cluster.owner_port(&redis_key), extra.port());

    // The store follows the MOVED and caches what the new master holds.
    warm(&cached, &key).await;
    assert_eq!(
        result_of(&cached, &key).await.as_deref(),
        Some("\"before\"")
    );
    writer
        .replace(&record(&key, "\"after\""))
        .await
        .expect("replace on the new master");
    // Far past the delivery delay and max_staleness (1 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = result_of(&cached, &key).await;
    assert_eq!(
        seen.as_deref(),
        Some("\"after\""),
        "3 s after another client's write the cache still serves the old record; stats {:?}; \
         tracking clients on the new master: {:?}",
        cached.stats(),
        tracking_clients(extra.port())
    );
}

/// One slow master (here `CLIENT PAUSE`, as a busy or unreachable node would) must not
/// hold back the answer that reports another master's `FLUSHALL`: the flushed record is
/// served for at most one check interval (250 ms) after the flush, not until the slow
/// master's check times out (found by review when the masters' answers were joined; each
/// answer is now applied as it arrives).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_master_does_not_delay_another_masters_flush() {
    let cluster = RedisCluster::start_with(3, 0);
    let prefix = format!("{}:", unique("slow"));
    let (cached, writer) = pair_at(&cluster.url(), &prefix, CacheConfig::default()).await;
    let key = unique("slow");
    let owner = cluster.owner_port(&writer.redis_key(&id(&key)));
    let slow = cluster
        .master_ports()
        .into_iter()
        .find(|p| *p != owner)
        .expect("another master");
    writer
        .save(&record(&key, "\"before\""))
        .await
        .expect("save");
    warm(&cached, &key).await;
    ok(slow, &["CLIENT", "PAUSE", "900", "ALL"]);
    ok(owner, &["FLUSHALL"]);
    let flushed = Instant::now();
    // One check interval and a generous round trip later, then until the pause ends.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut served = Vec::new();
    while flushed.elapsed() < Duration::from_millis(850) {
        if let Some(r) = result_of(&cached, &key).await {
            served.push((flushed.elapsed(), r));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        served.is_empty(),
        "the flushed record was served {} times, the last {:?} after FLUSHALL (first: {:?}); \
         stats {:?}",
        served.len(),
        served.last().map(|s| s.0),
        served.first(),
        cached.stats()
    );
}

/// `SWAPDB 0 1`, then `SWAPDB 0 1` again (a swap rolled back, within the markers' 60 s
/// lifetime). The first swap carries the process's marker into db 1; the second brings
/// that old marker back. A check that only asked whether a marker is there would flush
/// nothing while the cache holds what it read from the swapped-in database; the marker
/// holds the check's sequence number, so the old one is told apart (found by review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapdb_rolled_back_flushes_the_cache() {
    let server = RedisServer::start();
    let prefix = format!("{}:", unique("swap"));
    let (cached, writer) = pair_at(&server.url(), &prefix, CacheConfig::default()).await;
    let key = unique("swap");
    let redis_key = writer.redis_key(&id(&key));
    writer.save(&record(&key, "\"old\"")).await.expect("save");
    let before = cached.stats();
    ok(server.port(), &["SWAPDB", "0", "1"]);
    eventually("the first swap is noticed", || async {
        cached.stats().server_flushes > before.server_flushes
    })
    .await;
    // db 0 is the (empty) former db 1; write and cache a record there.
    writer.save(&record(&key, "\"new\"")).await.expect("save");
    warm(&cached, &key).await;
    let swapped = cached.stats();
    ok(server.port(), &["SWAPDB", "0", "1"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // What Redis holds now, on db 0.
    let truth = match cmd(server.port(), &["GET", &redis_key]) {
        Reply::Bulk(Some(json)) => String::from_utf8(json).expect("utf-8"),
        other => panic!("GET: {other:?}"),
    };
    assert!(truth.contains("old"), "{truth}");
    assert_eq!(
        result_of(&cached, &key).await.as_deref(),
        Some("\"old\""),
        "2 s after the swap back the cache serves the swapped-out record; stats before the \
         second swap {swapped:?}, now {:?}",
        cached.stats()
    );
}

/// Four tasks reading one key through a cache in a loop, until stopped.
struct Readers {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Readers {
    fn start(cached: &CachedStore, key: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..4)
            .map(|_| {
                let (cached, key, stop) = (cached.clone(), key.to_owned(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let _ = result_of(&cached, &key).await;
                    }
                })
            })
            .collect();
        Self { stop, tasks }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("reader");
        }
    }
}

/// Readers in a loop while the owner's tracking connection is killed and the key
/// rewritten: once tracking is back (a re-tracking counted), no read returns the old
/// record, even one sent before the loss and filled after (the partition's fill fence).
async fn reads_in_flight_across(url: &str, owner: impl Fn(&str) -> u16, rounds: usize) {
    let prefix = format!("{}:", unique("inflight"));
    let (cached, writer) = pair_at(url, &prefix, CacheConfig::default()).await;
    let key = unique("inflight");
    let redis_key = writer.redis_key(&id(&key));
    let port = owner(&redis_key);
    writer.save(&record(&key, "0")).await.expect("save");
    for round in 1..=rounds {
        warm(&cached, &key).await;
        let readers = Readers::start(&cached, &key);
        let retracks = cached.stats().retracks;
        let value = record(&key, &round.to_string()).to_json();
        kill_tracking(port);
        ok(port, &["SET", &redis_key, &value, "EX", "600"]);
        eventually("tracking is back", || async {
            cached.stats().retracks > retracks
        })
        .await;
        // From now on only the new record: read for a while with the readers still going.
        let until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < until {
            let seen = result_of(&cached, &key).await;
            assert_eq!(
                seen.as_deref(),
                Some(round.to_string().as_str()),
                "round {round}: an old record after tracking was back; {:?}",
                cached.stats()
            );
        }
        readers.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_in_flight_across_repeated_losses_standalone() {
    let server = RedisServer::start();
    let port = server.port();
    reads_in_flight_across(&server.url(), |_| port, 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_in_flight_across_repeated_losses_cluster() {
    let cluster = RedisCluster::start_with(3, 0);
    reads_in_flight_across(&cluster.url(), |k| cluster.owner_port(k), 8).await;
}

/// Readers in a loop while the owner master is flushed: once the flush is noticed, no
/// read returns the flushed record (a read sent before the flush must not refill it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_in_flight_across_a_flush_of_one_master() {
    let cluster = RedisCluster::start_with(3, 0);
    let prefix = format!("{}:", unique("flushrace"));
    let (cached, writer) = pair_at(&cluster.url(), &prefix, CacheConfig::default()).await;
    for round in 0..5 {
        let key = unique("flushrace");
        let owner = cluster.owner_port(&writer.redis_key(&id(&key)));
        writer.save(&record(&key, "1")).await.expect("save");
        warm(&cached, &key).await;
        let readers = Readers::start(&cached, &key);
        let before = cached.stats().server_flushes;
        ok(owner, &["FLUSHALL"]);
        eventually("the flush is noticed", || async {
            cached.stats().server_flushes > before
        })
        .await;
        let until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < until {
            assert_eq!(
                result_of(&cached, &key).await,
                None,
                "round {round}: the flushed record after the flush was noticed; {:?}",
                cached.stats()
            );
        }
        readers.stop().await;
    }
}

/// Prefixes that cover the marker namespace (`""`, `"__"`): the markers' own writes are
/// broadcast to the cache as invalidations. Nothing breaks: hits still happen and another
/// writer's replace still reaches the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_covering_the_markers_still_caches_and_invalidates() {
    let server = RedisServer::start();
    // Prefixes end with `:`; this one covers the marker namespace itself.
    for prefix in ["", "__idempotency_cache_marker:"] {
        let (cached, writer) = pair_at(&server.url(), prefix, CacheConfig::default()).await;
        let key = unique("prefix");
        writer.save(&record(&key, "1")).await.expect("save");
        warm(&cached, &key).await;
        // Several checks (and their marker writes) later, still a hit.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let hits = cached.stats().local_hits;
        assert_eq!(result_of(&cached, &key).await.as_deref(), Some("1"));
        assert_eq!(cached.stats().local_hits, hits + 1, "prefix {prefix:?}");
        writer.replace(&record(&key, "2")).await.expect("replace");
        eventually("the replace is seen", || async {
            result_of(&cached, &key).await.as_deref() == Some("2")
        })
        .await;
        // The marker writes arrived as invalidations of non-record keys.
        assert!(cached.stats().invalidations >= 1, "{:?}", cached.stats());
    }
}

/// A manual failover (`CLUSTER FAILOVER` on the replica) while an entry is cached, then a
/// rewrite on the promoted master: the new record must be served within a short time
/// (the old master, now a replica, is where the tracking connection still is).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_failover_then_a_rewrite_is_seen() {
    let cluster = RedisCluster::start_with(3, 1);
    cluster.wait_replicas_linked(Duration::from_secs(30));
    let prefix = format!("{}:", unique("failover"));
    let (cached, writer) = pair_at(&cluster.url(), &prefix, CacheConfig::default()).await;
    let key = unique("failover");
    let redis_key = writer.redis_key(&id(&key));
    let owner = cluster.owner_port(&redis_key);
    writer
        .save(&record(&key, "\"before\""))
        .await
        .expect("save");
    warm(&cached, &key).await;
    let promoted = cluster.fail_over(owner, Duration::from_secs(30));
    let value = record(&key, "\"after\"").to_json();
    ok(promoted, &["SET", &redis_key, &value, "EX", "600"]);
    let written = Instant::now();
    loop {
        // A read that goes to Redis may fail while the client follows the failover
        // ("Too many failed write attempts"): not the cache's doing, read again.
        let seen = match cached.get(&id(&key)).await {
            Ok(found) => found.map(|r| r.result().get().to_owned()),
            Err(e) => Some(format!("error: {e}")),
        };
        if seen.as_deref() == Some("\"after\"") {
            break;
        }
        assert!(
            written.elapsed() < Duration::from_millis(1500),
            "still {seen:?} {:?} after the write on the promoted master; {:?}",
            written.elapsed(),
            cached.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "failover: the rewrite was seen after {:?}",
        written.elapsed()
    );
}

/// A cluster master's process restarted empty on the same port (its cluster config kept,
/// its keys gone), and the key rewritten there at once: once tracking is back on it, the
/// old record is never served; another master's entry stays served from memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_restarted_empty_flushes_only_its_entries() {
    let mut cluster = RedisCluster::start_with(3, 0);
    let prefix = format!("{}:", unique("restart"));
    let (cached, writer) = pair_at(&cluster.url(), &prefix, CacheConfig::default()).await;
    let owner = |key: &str| cluster.owner_port(&writer.redis_key(&id(key)));
    let lost = unique("restarted");
    let kept = (0..1000)
        .map(|i| format!("{}-{i}", unique("kept")))
        .find(|k| owner(k) != owner(&lost))
        .expect("a key on another master");
    let port = owner(&lost);
    for key in [&lost, &kept] {
        writer.save(&record(key, "\"before\"")).await.expect("save");
        warm(&cached, key).await;
    }
    let before = cached.stats();
    let redis_key = writer.redis_key(&id(&lost));
    let value = record(&lost, "\"after\"").to_json();
    let node = cluster
        .nodes_mut()
        .iter_mut()
        .find(|n| n.port() == port)
        .expect("the owner");
    node.restart();
    // The restarted node takes writes once it has rejoined (CLUSTERDOWN until then).
    let deadline = Instant::now() + DEADLINE;
    while cmd(port, &["SET", &redis_key, &value, "EX", "600"]) != Reply::Status("OK".into()) {
        assert!(
            Instant::now() < deadline,
            "the restarted node took no write"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // From the write on: the old record may be served only until tracking is back.
    let written = Instant::now();
    let mut old_after_back = None;
    let mut back_at = None;
    while written.elapsed() < Duration::from_secs(5) {
        let back = cached.stats().retracks > before.retracks;
        let seen = result_of(&cached, &lost).await;
        if back {
            back_at.get_or_insert(written.elapsed());
            if seen.as_deref() == Some("\"before\"") {
                old_after_back = Some(written.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        back_at.is_some(),
        "tracking never came back: {:?}",
        cached.stats()
    );
    assert_eq!(
        old_after_back, None,
        "old record after tracking was back ({back_at:?})"
    );
    assert_eq!(
        result_of(&cached, &lost).await.as_deref(),
        Some("\"after\"")
    );
    // The other master's record is served again from memory (whether its entry was kept
    // through the restart is what `review_a_failing_master_does_not_stop_the_others_entries`
    // looks at).
    warm(&cached, &kept).await;
    assert_eq!(
        result_of(&cached, &kept).await.as_deref(),
        Some("\"before\"")
    );
}

/// "The other masters' entries stay served": one master whose check keeps failing (its
/// marker `SET` held past the check's timeout by `CLIENT PAUSE … WRITE`) while another
/// master answers every check. The healthy master's entries must stay served: a loss
/// concerns the checks of its own master only, and a slow master's check delays no other
/// master's (found by review, when one loss staled every master's answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_master_does_not_stop_the_others_entries() {
    let cluster = RedisCluster::start_with(3, 0);
    let prefix = format!("{}:", unique("failing"));
    let (cached, writer) = pair_at(&cluster.url(), &prefix, CacheConfig::default()).await;
    let key = unique("healthy");
    let healthy = cluster.owner_port(&writer.redis_key(&id(&key)));
    let failing = cluster
        .master_ports()
        .into_iter()
        .find(|p| *p != healthy)
        .expect("another master");
    writer.save(&record(&key, "1")).await.expect("save");
    warm(&cached, &key).await;
    ok(failing, &["CLIENT", "PAUSE", "4000", "WRITE"]);
    let paused = Instant::now();
    // Two checks' timeouts (1 s each) into the pause, read for a second.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let before = cached.stats();
    let mut reads = 0;
    while paused.elapsed() < Duration::from_millis(3200) {
        assert_eq!(result_of(&cached, &key).await.as_deref(), Some("1"));
        reads += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = cached.stats();
    assert_eq!(
        after.local_hits - before.local_hits,
        reads,
        "the healthy master's entry was not served while another master's check failed: \
         {} misses of {reads}; before {before:?}, after {after:?}",
        after.local_misses - before.local_misses
    );
}

/// A black hole (the proxy forwards nothing, connections stay open) longer than
/// `max_staleness`, the key rewritten meanwhile by a client that bypasses the proxy: the
/// cache stops serving within `max_staleness`, and after the heal never serves the old
/// record again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_then_heal_never_serves_the_old_record() {
    use idempotency_testkit::proxy::{Mode, Proxy};
    let server = RedisServer::start();
    let proxy = Proxy::start(server.addr());
    let prefix = format!("{}:", unique("hole"));
    let cached = CachedStore::new(
        store_at(&proxy.url(), &prefix).await,
        CacheConfig::default(),
    )
    .await
    .expect("cached");
    let writer = store_at(&server.url(), &prefix).await;
    let key = unique("hole");
    writer
        .save(&record(&key, "\"before\""))
        .await
        .expect("save");
    warm(&cached, &key).await;
    proxy.set_mode(Mode::Freeze);
    let frozen = Instant::now();
    writer
        .replace(&record(&key, "\"after\""))
        .await
        .expect("replace");
    // Local reads only (a miss would hang on the black hole): from the stats.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let stats = cached.stats();
    assert!(
        !stats.fresh,
        "still served {:?} into the black hole: {stats:?}",
        frozen.elapsed()
    );
    let hits = stats.local_hits;
    let seen = tokio::time::timeout(Duration::from_millis(200), result_of(&cached, &key)).await;
    assert!(
        seen.is_err() || cached.stats().local_hits == hits,
        "served from memory in the black hole: {seen:?}"
    );
    proxy.set_mode(Mode::Pass);
    eventually("served again after the heal", || async {
        cached.stats().fresh
    })
    .await;
    for _ in 0..50 {
        assert_eq!(result_of(&cached, &key).await.as_deref(), Some("\"after\""));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
