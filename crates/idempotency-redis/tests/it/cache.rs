//! The local cache (`CachedStore`, feature `local-cache`) against real servers,
//! standalone and cluster: hits without a round trip, invalidation by another store and
//! by the Python library, a flush when the tracking connection is lost, the coordinator's
//! fingerprint check on cached records, the bounds, pending records and expiry.
//!
//! No test waits on a tight window: conditions are polled with generous deadlines (the
//! invalidation delay itself is measured by the benchmark, not here).

#![cfg(feature = "local-cache")]

use std::future::Future;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{Env, svc, unique};
use idempotency_coordinator::Coordinator;
use idempotency_core::{
    BulkRepository, Claim, Clock, IdempotencyError, IdempotencyRecord, IdempotencyRepository,
    Lease, RawValue, RecordId, ReservationStore, SaveManyOptions,
};
use idempotency_redis::cache::{CacheConfig, CachedStore};
use idempotency_redis::{ConnectOptions, RedisStore};
use idempotency_testkit::resp::Reply;

const OP: &str = "cache.op";
pub(crate) const DEADLINE: Duration = Duration::from_secs(20);

pub(crate) fn id(key: &str) -> RecordId {
    RecordId::new(OP, key).expect("valid identifiers")
}

pub(crate) fn record(key: &str, result: &str) -> IdempotencyRecord {
    svc()
        .create_record_raw(
            OP,
            key,
            RawValue::from_string(result.to_owned()).expect("json"),
            None,
            None,
        )
        .expect("record")
}

// The caching store keeps the store contract every store keeps (the same body as the
// memory, Redis and sentinel stores run).
on_both!(the_cached_store_keeps_the_store_contract, |env| {
    let (cached, _writer, _prefix) = pair(&env, CacheConfig::default()).await;
    idempotency_contract::repository::all(&cached).await;
    idempotency_contract::bulk::all(&cached).await;
    idempotency_contract::reservation::all(&cached).await;
});

/// A store on its own connection under `prefix`.
pub(crate) async fn store_at(url: &str, prefix: &str) -> RedisStore {
    let connection = idempotency_redis::connect_client(url, &ConnectOptions::default())
        .await
        .expect("connect");
    RedisStore::builder(connection)
        .key_prefix(prefix)
        .build()
        .expect("store")
}

/// A caching store and a plain writer on another connection, both under a fresh prefix.
async fn pair(env: &Env, config: CacheConfig) -> (CachedStore, RedisStore, String) {
    let prefix = format!("{}:", unique("cache"));
    let (cached, writer) = pair_at(&env.url, &prefix, config).await;
    (cached, writer, prefix)
}

/// A caching store and a plain writer on another connection, both on `url` under
/// `prefix`.
pub(crate) async fn pair_at(
    url: &str,
    prefix: &str,
    config: CacheConfig,
) -> (CachedStore, RedisStore) {
    let cached = CachedStore::new(store_at(url, prefix).await, config)
        .await
        .expect("cached store");
    (cached, store_at(url, prefix).await)
}

/// Polls `check` until it holds, or panics after [`DEADLINE`] saying `what`.
pub(crate) async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "not within {DEADLINE:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) async fn result_of(store: &CachedStore, key: &str) -> Option<String> {
    store
        .get(&id(key))
        .await
        .expect("get")
        .map(|r| r.result().get().to_owned())
}

/// Reads `key` through `store` until the read is a local hit.
pub(crate) async fn warm(store: &CachedStore, key: &str) {
    eventually("the record is cached", || async {
        let before = store.stats().local_hits;
        result_of(store, key).await.is_some() && store.stats().local_hits > before
    })
    .await;
}

on_both!(a_second_read_is_a_local_hit, |env| {
    let (cached, writer, _) = pair(&env, CacheConfig::default()).await;
    let key = unique("hit");
    writer.save(&record(&key, "1")).await.expect("save");
    assert_eq!(result_of(&cached, &key).await.as_deref(), Some("1"));
    // The first read fills the cache, unless the writer's own invalidation arrived while
    // it was in flight (the fill fence then refuses it, rightly): read until cached.
    warm(&cached, &key).await;
    let before = cached.stats();
    assert!(before.fills >= 1, "{before:?}");
    assert_eq!(result_of(&cached, &key).await.as_deref(), Some("1"));
    let lease = Lease::new(id(&key), None, Clock::system());
    let claim = cached
        .claim(&lease, Duration::from_secs(5))
        .await
        .expect("claim");
    assert!(matches!(claim, Claim::Found(r) if r.result().get() == "1"));
    let after = cached.stats();
    assert_eq!(after.local_hits, before.local_hits + 2, "{after:?}");
    assert_eq!(after.local_misses, before.local_misses, "{after:?}");
    // The bulk read serves what is cached and asks Redis for the rest.
    let other = unique("hit-other");
    writer.save(&record(&other, "2")).await.expect("save");
    let many = cached
        .get_many(OP, &[key.as_str(), other.as_str()])
        .await
        .expect("get_many");
    assert_eq!(many.len(), 2);
    assert_eq!(cached.stats().local_hits, after.local_hits + 1);
});

// The cache's counters reach Prometheus as series of their own, read at scrape time;
// the Python library's series are untouched by them.
on_both!(local_hits_are_exported_as_a_series_of_their_own, |env| {
    let (cached, writer, _) = pair(&env, CacheConfig::default()).await;
    let registry = prometheus::Registry::new();
    let source = cached.clone();
    let collector = idempotency_metrics::LocalCacheCollector::new(None, move || source.stats())
        .expect("collector");
    registry.register(Box::new(collector)).expect("register");
    let key = unique("exported");
    writer.save(&record(&key, "1")).await.expect("save");
    warm(&cached, &key).await;
    let stats = cached.stats();
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("encode");
    for line in [
        format!("idempotency_local_cache_hits_total {}", stats.local_hits),
        format!("idempotency_local_cache_fills_total {}", stats.fills),
        format!("idempotency_local_cache_entries {}", stats.entries),
        "idempotency_local_cache_served 1".to_owned(),
    ] {
        assert!(text.contains(&line), "{line} missing from:\n{text}");
    }
    assert!(stats.local_hits >= 1, "{stats:?}");
    assert!(!text.contains("idempotency_operations_total"), "{text}");
});

/// The counting proxy in front of a standalone server: a cached hit sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_hit_sends_no_command() {
    let server = idempotency_testkit::shared_server();
    let proxy = idempotency_testkit::proxy::Proxy::start(server.addr());
    let prefix = format!("{}:", unique("proxy"));
    // A long staleness bound: the liveness check (a command a quarter of it) stays out
    // of the count.
    let config = CacheConfig {
        max_staleness: Duration::from_secs(120),
        ..CacheConfig::default()
    };
    let cached = CachedStore::new(store_at(&proxy.url(), &prefix).await, config)
        .await
        .expect("cached");
    let key = unique("proxy");
    let lease = Lease::new(id(&key), None, Clock::system());
    assert_eq!(
        cached
            .claim(&lease, Duration::from_secs(5))
            .await
            .expect("claim"),
        Claim::Acquired
    );
    cached
        .complete(
            &lease,
            &RawValue::from_string("7".into()).expect("json"),
            Duration::from_secs(600),
        )
        .await
        .expect("complete");
    let first = Lease::new(id(&key), None, Clock::system());
    assert!(matches!(
        cached
            .claim(&first, Duration::from_secs(5))
            .await
            .expect("claim"),
        Claim::Found(_)
    ));
    let sent = proxy.commands_sent();
    for _ in 0..1000 {
        let lease = Lease::new(id(&key), None, Clock::system());
        let claim = cached
            .claim(&lease, Duration::from_secs(5))
            .await
            .expect("claim");
        assert!(matches!(claim, Claim::Found(r) if r.result().get() == "7"));
    }
    let during = proxy.commands_sent() - sent;
    assert!(during <= 2, "1000 cached claims sent {during} commands");
    assert!(cached.stats().local_hits >= 1000);
}

on_both!(
    another_store_replacing_or_deleting_invalidates_every_cache,
    |env| {
        let (cached, writer, prefix) = pair(&env, CacheConfig::default()).await;
        let second = CachedStore::new(store_at(&env.url, &prefix).await, CacheConfig::default())
            .await
            .expect("second cached store");
        let key = unique("inval");
        writer.save(&record(&key, "\"old\"")).await.expect("save");
        warm(&cached, &key).await;
        warm(&second, &key).await;
        writer
            .replace(&record(&key, "\"new\""))
            .await
            .expect("replace");
        for store in [&cached, &second] {
            eventually("the replaced record is read", || async {
                result_of(store, &key).await.as_deref() == Some("\"new\"")
            })
            .await;
        }
        assert!(cached.stats().invalidations >= 1);
        warm(&cached, &key).await;
        warm(&second, &key).await;
        assert!(writer.delete(&id(&key)).await.expect("delete"));
        for store in [&cached, &second] {
            eventually("the deleted record is gone", || async {
                result_of(store, &key).await.is_none()
            })
            .await;
        }
    }
);

on_both!(writes_through_the_cache_replace_its_entry_at_once, |env| {
    let (cached, _, _) = pair(&env, CacheConfig::default()).await;
    let key = unique("own");
    cached.save(&record(&key, "1")).await.expect("save");
    warm(&cached, &key).await;
    cached.replace(&record(&key, "2")).await.expect("replace");
    // No waiting: the wrapper drops its own entry when it writes.
    assert_eq!(result_of(&cached, &key).await.as_deref(), Some("2"));
    warm(&cached, &key).await;
    assert!(cached.delete(&id(&key)).await.expect("delete"));
    assert_eq!(result_of(&cached, &key).await, None);
    cached
        .save_many(&[record(&key, "3")], SaveManyOptions::default())
        .await
        .expect("save_many");
    warm(&cached, &key).await;
    assert_eq!(
        cached
            .delete_many(OP, &[key.as_str()])
            .await
            .expect("delete_many"),
        1
    );
    assert_eq!(result_of(&cached, &key).await, None);
});

/// idempotency-kit 0.5.0 (Python) replaces, then deletes, a record a cache holds.
fn python_write(env: &Env, prefix: &str, key: &str, action: &str) {
    const SCRIPT: &str = r#"
import asyncio, sys
from redis.asyncio import Redis, RedisCluster
from idempotency_kit.core.services.domain import IdempotencyDomainService
from idempotency_kit.infra.storage.redis.aio import RedisAsyncIdempotencyRepository

async def main():
    url, cluster, prefix, op, key, action = sys.argv[1:7]
    redis = RedisCluster.from_url(url) if cluster == "1" else Redis.from_url(url)
    repo = RedisAsyncIdempotencyRepository(redis, key_prefix=prefix)
    if action == "replace":
        await repo.replace(IdempotencyDomainService().create_record(op, key, {"by": "python"}))
    else:
        assert await repo.delete(op, key)
    await redis.aclose()

asyncio.run(main())
"#;
    let url = match &env.cluster {
        Some(c) => format!("redis://127.0.0.1:{}", c.master_ports()[0]),
        None => env.url.clone(),
    };
    let out = Command::new(idempotency_testkit::python::python_with_kit())
        .args(["-c", SCRIPT, &url])
        .arg(if env.cluster.is_some() { "1" } else { "0" })
        .args([prefix, OP, key, action])
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

on_both!(a_python_writer_invalidates_the_cache, |env| {
    let (cached, writer, prefix) = pair(&env, CacheConfig::default()).await;
    let key = unique("py");
    writer.save(&record(&key, "\"rust\"")).await.expect("save");
    warm(&cached, &key).await;
    python_write(&env, &prefix, &key, "replace");
    eventually("Python's record is read", || async {
        result_of(&cached, &key).await.as_deref() == Some("{\"by\":\"python\"}")
    })
    .await;
    warm(&cached, &key).await;
    python_write(&env, &prefix, &key, "delete");
    eventually("Python's delete is seen", || async {
        result_of(&cached, &key).await.is_none()
    })
    .await;
});

/// Ids of the connections with tracking on (`flags` holding `t`) on a node.
pub(crate) fn tracking_clients(port: u16) -> Vec<String> {
    let Ok(Reply::Bulk(Some(list))) = idempotency_testkit::resp::command(port, &["CLIENT", "LIST"])
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&list)
        .lines()
        .filter(|line| {
            line.split(' ')
                .any(|f| f.strip_prefix("flags=").is_some_and(|f| f.contains('t')))
        })
        .filter_map(|line| {
            line.split(' ')
                .find_map(|f| f.strip_prefix("id="))
                .map(str::to_owned)
        })
        .collect()
}

/// Kills the tracking connection(s) on `port`, then writes `value` under `redis_key`
/// right away (the write's invalidation has no connection to travel on).
fn kill_tracking_then_write(port: u16, redis_key: &str, value: &str) {
    let ids = tracking_clients(port);
    assert!(!ids.is_empty(), "no tracking connection on port {port}");
    for client in ids {
        idempotency_testkit::resp::command(port, &["CLIENT", "KILL", "ID", &client])
            .expect("client kill");
    }
    let reply = idempotency_testkit::resp::command(port, &["SET", redis_key, value, "EX", "600"])
        .expect("set");
    assert_eq!(reply, Reply::Status("OK".into()));
}

async fn a_lost_connection_flushes(url: &str, owner_port: impl Fn(&str) -> u16) {
    let prefix = format!("{}:", unique("loss"));
    let (cached, writer) = pair_at(url, &prefix, CacheConfig::default()).await;
    let key = unique("loss");
    writer
        .save(&record(&key, "\"before\""))
        .await
        .expect("save");
    warm(&cached, &key).await;
    let retracks = cached.stats().retracks;
    let redis_key = writer.redis_key(&id(&key));
    let after = record(&key, "\"after\"").to_json();
    kill_tracking_then_write(owner_port(&redis_key), &redis_key, &after);
    // Tracking is switched on again on the new connection; from then on the old entry
    // must never be served (it was flushed).
    eventually("tracking is back", || async {
        cached.stats().retracks > retracks
    })
    .await;
    assert_eq!(result_of(&cached, &key).await.as_deref(), Some("\"after\""));
    // And invalidation works again on the new connection.
    warm(&cached, &key).await;
    writer
        .replace(&record(&key, "\"again\""))
        .await
        .expect("replace");
    eventually("invalidated on the new connection", || async {
        result_of(&cached, &key).await.as_deref() == Some("\"again\"")
    })
    .await;
}

/// Own servers: killing connections must not disturb the tests sharing the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_tracking_connection_flushes_standalone() {
    let server = idempotency_testkit::RedisServer::start();
    let port = server.port();
    a_lost_connection_flushes(&server.url(), |_| port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_tracking_connection_flushes_cluster() {
    let cluster = idempotency_testkit::RedisCluster::start_with(3, 0);
    a_lost_connection_flushes(&cluster.url(), |key| cluster.owner_port(key)).await;
}

/// On a cluster, one master's lost tracking connection flushes that master's entries
/// only: an entry another master holds is still served from memory, while the lost
/// master's key, rewritten while its invalidation had no connection, is never served old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_node_connection_flushes_only_that_nodes_entries() {
    let cluster = idempotency_testkit::RedisCluster::start_with(3, 0);
    let prefix = format!("{}:", unique("node-loss"));
    let (cached, writer) = pair_at(&cluster.url(), &prefix, CacheConfig::default()).await;
    let owner = |key: &str| cluster.owner_port(&writer.redis_key(&id(key)));
    let lost = unique("lost");
    let kept = (0..1000)
        .map(|i| format!("{}-{i}", unique("kept")))
        .find(|k| owner(k) != owner(&lost))
        .expect("a key on another master");
    for key in [&lost, &kept] {
        writer.save(&record(key, "\"before\"")).await.expect("save");
        warm(&cached, key).await;
    }
    let before = cached.stats();
    let redis_key = writer.redis_key(&id(&lost));
    kill_tracking_then_write(
        owner(&lost),
        &redis_key,
        &record(&lost, "\"after\"").to_json(),
    );
    eventually("tracking is back on the lost master", || async {
        cached.stats().retracks > before.retracks
    })
    .await;
    assert_eq!(
        result_of(&cached, &lost).await.as_deref(),
        Some("\"after\"")
    );
    let after = cached.stats();
    assert!(after.node_flushes > before.node_flushes, "{after:?}");
    assert_eq!(after.flushes, before.flushes, "no whole flush: {after:?}");
    // The other master's entry stayed: served from memory, without a round trip.
    assert_eq!(
        result_of(&cached, &kept).await.as_deref(),
        Some("\"before\"")
    );
    let finally = cached.stats();
    assert_eq!(finally.local_hits, after.local_hits + 1, "{finally:?}");
    assert_eq!(finally.local_misses, after.local_misses, "{finally:?}");
}

/// `FLUSHALL` (or `FLUSHDB`) makes Redis send an invalidation without keys, which fred
/// drops; the liveness check's marker must still catch it. Nothing is written after the
/// flush, so no per-key invalidation can mask a missed one.
async fn a_server_flush_flushes(url: &str, master_ports: &[u16], command: &str) {
    let prefix = format!("{}:", unique("flush"));
    let (cached, writer) = pair_at(url, &prefix, CacheConfig::default()).await;
    let key = unique("flush");
    writer
        .save(&record(&key, "\"before\""))
        .await
        .expect("save");
    warm(&cached, &key).await;
    let before = cached.stats();
    for &port in master_ports {
        let reply = idempotency_testkit::resp::command(port, &[command]).expect("flush");
        assert_eq!(reply, Reply::Status("OK".into()), "{command} on {port}");
    }
    eventually("the flushed record is no longer served", || async {
        result_of(&cached, &key).await.is_none()
    })
    .await;
    let after = cached.stats();
    assert!(after.server_flushes > before.server_flushes, "{after:?}");
    assert_eq!(
        after.retracks, before.retracks,
        "no reconnection: {after:?}"
    );
    // The cache works on afterwards.
    writer.save(&record(&key, "\"again\"")).await.expect("save");
    warm(&cached, &key).await;
    assert_eq!(result_of(&cached, &key).await.as_deref(), Some("\"again\""));
}

/// Own servers: a flush must not wipe the data of the tests sharing the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushall_flushes_the_cache_standalone() {
    let server = idempotency_testkit::RedisServer::start();
    a_server_flush_flushes(&server.url(), &[server.port()], "FLUSHALL").await;
    a_server_flush_flushes(&server.url(), &[server.port()], "FLUSHDB").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushall_flushes_the_cache_cluster() {
    let cluster = idempotency_testkit::RedisCluster::start_with(3, 0);
    a_server_flush_flushes(&cluster.url(), &cluster.master_ports(), "FLUSHALL").await;
}

on_both!(
    a_cached_record_is_still_checked_against_the_fingerprint,
    |env| {
        // The Powertools bug: a cached entry replayed to a request with another payload.
        let (cached, _, _) = pair(&env, CacheConfig::default()).await;
        let coordinator = Coordinator::builder(cached.clone())
            .build()
            .expect("coordinator");
        let key = unique("fp");
        let first: u32 = coordinator
            .call(OP, Some(&key))
            .fingerprint("A")
            .run(|| async { Ok::<_, IdempotencyError>(1) })
            .await
            .expect("first");
        assert_eq!(first, 1);
        // Cached by a replay through the store first.
        eventually("the record is cached", || {
            let coordinator = &coordinator;
            let key = &key;
            let cached = &cached;
            async move {
                let before = cached.stats().local_hits;
                let again: u32 = coordinator
                    .call(OP, Some(key))
                    .fingerprint("A")
                    .run(|| async { Ok::<_, IdempotencyError>(2) })
                    .await
                    .expect("replay");
                assert_eq!(again, 1);
                cached.stats().local_hits > before
            }
        })
        .await;
        let hits = cached.stats().local_hits;
        let err = coordinator
            .call(OP, Some(&key))
            .fingerprint("B")
            .run(|| async { Ok::<_, IdempotencyError>(3u32) })
            .await
            .expect_err("another payload under a cached key");
        assert!(
            matches!(err, IdempotencyError::KeyReuse { ref stored, ref given, .. } if stored == "A" && given == "B"),
            "{err:?}"
        );
        assert_eq!(err.http_status(), 422);
        // It was the cached record that was refused, not one read from Redis.
        assert_eq!(cached.stats().local_hits, hits + 1);
    }
);

on_both!(the_cache_is_bounded_by_entries_and_by_bytes, |env| {
    let by_entries = CacheConfig {
        max_entries: 20,
        ..CacheConfig::default()
    };
    let (cached, writer, _) = pair(&env, by_entries).await;
    let keys: Vec<String> = (0..300)
        .map(|i| format!("{}-{i}", unique("bound")))
        .collect();
    let records: Vec<IdempotencyRecord> = keys.iter().map(|k| record(k, "1")).collect();
    writer
        .save_many(&records, SaveManyOptions::default())
        .await
        .expect("save_many");
    for key in &keys {
        assert!(result_of(&cached, key).await.is_some());
    }
    let stats = cached.stats();
    // More went in than the bound holds (a read whose fill met the writer's late
    // invalidation is fenced, rightly, so not every one of the 300 need be a fill).
    assert!(stats.fills > 20, "{stats:?}");
    assert!(stats.entries <= 20, "{stats:?}");

    let by_bytes = CacheConfig {
        max_bytes: 64 * 1024,
        ..CacheConfig::default()
    };
    let (cached, writer, _) = pair(&env, by_bytes).await;
    let big = format!("\"{}\"", "x".repeat(4096));
    let records: Vec<IdempotencyRecord> = (0..100)
        .map(|i| record(&format!("{}-{i}", unique("big")), &big))
        .collect();
    writer
        .save_many(&records, SaveManyOptions::default())
        .await
        .expect("save_many");
    for r in &records {
        assert!(cached.get(r.id()).await.expect("get").is_some());
    }
    let stats = cached.stats();
    assert!(stats.weight <= 64 * 1024, "{stats:?}");
    assert!(stats.entries <= 16, "{stats:?}");
});

on_both!(pending_records_are_never_cached, |env| {
    let (cached, writer, _) = pair(&env, CacheConfig::default()).await;
    let key = unique("pending");
    let owner = Lease::new(id(&key), None, Clock::system());
    assert_eq!(
        writer
            .claim(&owner, Duration::from_secs(30))
            .await
            .expect("claim"),
        Claim::Acquired
    );
    for _ in 0..3 {
        let other = Lease::new(id(&key), None, Clock::system());
        let claim = cached
            .claim(&other, Duration::from_secs(30))
            .await
            .expect("claim");
        assert!(matches!(claim, Claim::Found(r) if r.is_pending()));
        let got = cached.get(&id(&key)).await.expect("get");
        assert!(got.is_some_and(|r| r.is_pending()));
    }
    let stats = cached.stats();
    assert_eq!(
        (stats.fills, stats.local_hits, stats.entries),
        (0, 0, 0),
        "{stats:?}"
    );
    writer
        .complete(
            &owner,
            &RawValue::from_string("5".into()).expect("json"),
            Duration::from_secs(600),
        )
        .await
        .expect("complete");
    eventually("the completed record is served", || async {
        let lease = Lease::new(id(&key), None, Clock::system());
        matches!(
            cached.claim(&lease, Duration::from_secs(30)).await.expect("claim"),
            Claim::Found(r) if !r.is_pending()
        )
    })
    .await;
    warm(&cached, &key).await;
});

on_both!(an_entry_never_outlives_its_record_nor_max_ttl, |env| {
    let (cached, writer, _) = pair(&env, CacheConfig::default()).await;
    // A record whose `expires_at` comes in 2 s while Redis keeps the key for 10 minutes
    // (as a writer with a slow clock, or Python's whole-second TTL, can leave it).
    let key = unique("expiry");
    let lease = Lease::new(id(&key), None, Clock::system());
    let short = lease
        .completed_record(
            &RawValue::from_string("1".into()).expect("json"),
            Duration::from_secs(2),
        )
        .expect("record");
    let redis_key = writer.redis_key(&id(&key));
    env.raw(
        &redis_key,
        &[
            b"SET",
            redis_key.as_bytes(),
            short.to_json().as_bytes(),
            b"EX",
            b"600",
        ],
    );
    warm(&cached, &key).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        result_of(&cached, &key).await,
        None,
        "served past expires_at"
    );

    let capped = CacheConfig {
        max_ttl: Some(Duration::from_millis(500)),
        ..CacheConfig::default()
    };
    let (cached, writer, _) = pair(&env, capped).await;
    let key = unique("max-ttl");
    writer.save(&record(&key, "1")).await.expect("save");
    warm(&cached, &key).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let misses = cached.stats().local_misses;
    assert!(result_of(&cached, &key).await.is_some());
    assert_eq!(
        cached.stats().local_misses,
        misses + 1,
        "served past max_ttl"
    );
});
