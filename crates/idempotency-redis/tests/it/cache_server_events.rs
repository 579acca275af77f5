//! More attacks on the local cache (`CachedStore`), from a second adversarial review,
//! each on servers of its own: a `SWAPDB` undone between two checks, a flushed master
//! that is slow to answer, a standalone server restarted empty, a slot moved and its new
//! master's tracking lost at once.

#![cfg(feature = "local-cache")]

use std::time::{Duration, Instant};

use crate::cache::{DEADLINE, id, pair_at, record, result_of, warm};
use crate::cache_attacks::{cmd, markers, node_id, ok};
use crate::common::unique;
use idempotency_core::IdempotencyRepository;
use idempotency_redis::cache::CacheConfig;
use idempotency_testkit::resp::{self, Reply};
use idempotency_testkit::{RedisCluster, RedisServer};

fn get(port: u16, key: &str) -> Option<String> {
    match cmd(port, &["GET", key]) {
        Reply::Bulk(b) => b.map(|b| String::from_utf8_lossy(&b).into_owned()),
        other => panic!("GET {key}: {other:?}"),
    }
}

/// Waits until the marker's value changes (a check just set it): the next check is about
/// one interval (250 ms) away.
async fn just_after_a_check(port: u16, marker: &str) -> Option<String> {
    let start = get(port, marker);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let now = get(port, marker);
        if now != start && now.is_some() {
            return now;
        }
        assert!(Instant::now() < deadline, "the marker never changed");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// `SWAPDB 0 1`, a write and a read through the cache on the swapped-in database, then
/// `SWAPDB 0 1` again, all between two checks (well within 250 ms). The marker travels to
/// db 1 and back untouched, so it reads back exactly the number this process set last;
/// the check must still see the swaps (the master's count of `SWAPDB` calls), or the
/// record read from the swapped-in database is served although Redis no longer holds it
/// (found by review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapdb_rolled_back_within_one_check_interval_is_seen() {
    let server = RedisServer::start();
    let port = server.port();
    let prefix = format!("{}:", unique("swap2"));
    let (cached, writer) = pair_at(&server.url(), &prefix, CacheConfig::default()).await;
    let marker = markers(port).pop().expect("a marker");
    let mut attempts = 0;
    let (key, redis_key) = loop {
        attempts += 1;
        assert!(attempts < 20, "never fitted between two checks");
        let key = unique("swap2");
        let redis_key = writer.redis_key(&id(&key));
        writer.save(&record(&key, "\"db0\"")).await.expect("save");
        warm(&cached, &key).await;
        let seen = just_after_a_check(port, &marker).await;
        let t0 = Instant::now();
        ok(port, &["SWAPDB", "0", "1"]);
        // db 0 is the former db 1 (empty): write and cache another record there.
        writer.save(&record(&key, "\"db1\"")).await.expect("save");
        let mut cached_db1 = false;
        while t0.elapsed() < Duration::from_millis(120) {
            let hits = cached.stats().local_hits;
            if result_of(&cached, &key).await.as_deref() == Some("\"db1\"")
                && cached.stats().local_hits > hits
            {
                cached_db1 = true;
                break;
            }
        }
        ok(port, &["SWAPDB", "0", "1"]);
        let elapsed = t0.elapsed();
        // No check ran between the swaps (the marker in db 0 is the one seen before).
        let after = get(port, &marker);
        eprintln!(
            "attempt {attempts}: cached {cached_db1}, {elapsed:?}, marker {seen:?} -> {after:?}"
        );
        if cached_db1 && after == seen {
            break (key, redis_key);
        }
        ok(port, &["FLUSHALL"]);
        tokio::time::sleep(Duration::from_millis(600)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let truth = get(port, &redis_key).expect("the db0 record is back");
    assert!(truth.contains("db0"), "{truth}");
    assert_eq!(
        result_of(&cached, &key).await.as_deref(),
        Some("\"db0\""),
        "2 s after the swap back the cache serves a record Redis does not hold; stats {:?}",
        cached.stats()
    );
}

/// A standalone server killed and restarted empty on the same port, the key rewritten at
/// once: once tracking is back, the old record is never served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_server_restarted_empty_never_serves_the_old_record() {
    let mut server = RedisServer::start();
    let port = server.port();
    let prefix = format!("{}:", unique("restart"));
    let (cached, writer) = pair_at(&server.url(), &prefix, CacheConfig::default()).await;
    for round in 0..3 {
        let key = unique("restart");
        let redis_key = writer.redis_key(&id(&key));
        writer
            .save(&record(&key, "\"before\""))
            .await
            .expect("save");
        warm(&cached, &key).await;
        let before = cached.stats();
        server.restart();
        let value = record(&key, "\"after\"").to_json();
        ok(port, &["SET", &redis_key, &value, "EX", "600"]);
        let written = Instant::now();
        let mut back_at = None;
        while written.elapsed() < Duration::from_secs(4) {
            let back = cached.stats().retracks > before.retracks;
            let seen = cached
                .get(&id(&key))
                .await
                .ok()
                .flatten()
                .map(|r| r.result().get().to_owned());
            if back {
                back_at.get_or_insert(written.elapsed());
            }
            assert!(
                seen.as_deref() != Some("\"before\"") || !back,
                "round {round}: old record {:?} after the write, tracking back at {back_at:?}; {:?}",
                written.elapsed(),
                cached.stats()
            );
            assert!(
                seen.as_deref() != Some("\"before\""),
                "round {round}: old record {:?} after the restart+write; {:?}",
                written.elapsed(),
                cached.stats()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            back_at.is_some(),
            "tracking never came back: {:?}",
            cached.stats()
        );
    }
}

/// `FLUSHALL` on a master, then that same master slowed (`CLIENT PAUSE … WRITE`: its
/// marker `SET` waits): the flushed record must not be served past one check interval
/// and a quarter (a check outstanding for a quarter interval stops its master's entries
/// until it answers), not until the slow answer (found by review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_master_that_is_slow_serves_its_flushed_entries_no_longer_than_an_interval() {
    let cluster = RedisCluster::start_with(3, 0);
    let prefix = format!("{}:", unique("slowflush"));
    let (cached, writer) = pair_at(&cluster.url(), &prefix, CacheConfig::default()).await;
    let key = unique("slowflush");
    let owner = cluster.owner_port(&writer.redis_key(&id(&key)));
    writer
        .save(&record(&key, "\"before\""))
        .await
        .expect("save");
    warm(&cached, &key).await;
    ok(owner, &["FLUSHALL"]);
    let flushed = Instant::now();
    ok(owner, &["CLIENT", "PAUSE", "950", "WRITE"]);
    let mut last = None;
    // Reads of a flushed key go to Redis only on a miss (reads are not paused).
    while flushed.elapsed() < Duration::from_millis(1500) {
        if result_of(&cached, &key).await.is_some() {
            last = Some(flushed.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        last.is_none_or(|l| l < Duration::from_millis(400)),
        "the flushed record was served until {last:?} after FLUSHALL; {:?}",
        cached.stats()
    );
}

fn kill_tracking(port: u16) {
    for client in crate::cache::tracking_clients(port) {
        let _ = resp::command(port, &["CLIENT", "KILL", "ID", &client]);
    }
}

/// An empty slot moved between two tracked masters (B → A, fred reports `Rebalance`),
/// then at once (before the tracking client's routing caught up) A's tracking connection
/// killed and the key, cached from A, rewritten on A while A tracks nothing. A's loss is
/// computed with the routing of the moment (without the moved slot): once A is tracked
/// again, the old record must not be served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_to_a_master_then_its_tracking_lost_is_flushed() {
    let cluster = RedisCluster::start_with(3, 0);
    let prefix = format!("{}:", unique("rebal"));
    let (cached, writer) = pair_at(&cluster.url(), &prefix, CacheConfig::default()).await;
    let masters = cluster.master_ports();
    for round in 0..4 {
        let key = (0..1000)
            .map(|i| format!("{}-{i}", unique("rebal")))
            .find(|k| {
                let rk = writer.redis_key(&id(k));
                let owner = cluster.owner_port(&rk);
                let slot = cmd(owner, &["CLUSTER", "KEYSLOT", &rk])
                    .as_int()
                    .expect("slot");
                cmd(owner, &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]).as_int() == Some(0)
            })
            .expect("a key in an empty slot");
        let redis_key = writer.redis_key(&id(&key));
        let b = cluster.owner_port(&redis_key);
        let a = *masters.iter().find(|p| **p != b).expect("another master");
        let slot = cmd(b, &["CLUSTER", "KEYSLOT", &redis_key])
            .as_int()
            .expect("slot")
            .to_string();
        let a_id = node_id(a);
        for &p in &masters {
            ok(p, &["CLUSTER", "SETSLOT", &slot, "NODE", &a_id]);
        }
        writer
            .save(&record(&key, "\"v1\""))
            .await
            .expect("save on A");
        // Cached from A in the moved slot's partition.
        let t0 = Instant::now();
        let mut filled = false;
        while t0.elapsed() < Duration::from_millis(100) {
            let hits = cached.stats().local_hits;
            if result_of(&cached, &key).await.as_deref() == Some("\"v1\"")
                && cached.stats().local_hits > hits
            {
                filled = true;
                break;
            }
        }
        let before = cached.stats();
        kill_tracking(a);
        let value = record(&key, "\"v2\"").to_json();
        ok(a, &["SET", &redis_key, &value, "EX", "600"]);
        eprintln!("round {round}: filled {filled} in {:?}", t0.elapsed());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            cached.stats().retracks > before.retracks,
            "{:?}",
            cached.stats()
        );
        assert_eq!(
            result_of(&cached, &key).await.as_deref(),
            Some("\"v2\""),
            "round {round}: 2 s after the rewrite on A; before {before:?}, now {:?}",
            cached.stats()
        );
    }
}
