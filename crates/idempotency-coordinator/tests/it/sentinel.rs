//! A sentinel-monitored master is killed while eight tasks keep calling, on fresh keys
//! and on a few shared ones; the sentinels promote the replica and the store follows.
//!
//! What the library promises here (`docs/reliability.md`, `docs/redis.md`), asserted
//! exactly:
//! - fail closed (`on_storage_error = raise`): while there is no master, calls fail with a
//!   storage error (or, for a key whose reservation outlived its owner, `InProgress` after
//!   a lease); no action runs in that window;
//! - at most once per key while the store works: on each master, no key runs twice;
//! - across the failover, a key may run again only if its completed record did not reach
//!   the replica: Redis replicates asynchronously, so a write the old master acknowledged
//!   can be lost with it. The test reads what the replica holds after the master died and
//!   before the sentinels may promote it (their `down-after-milliseconds` is raised for
//!   that moment), so every second run is matched to a record the replica never got, and
//!   the acknowledged ones among those are counted, not hidden;
//! - afterwards the store works on the new master: no call fails, a fresh key runs once
//!   and replays.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idempotency_coordinator::{Coordinator, IdempotencyError, OnStorageError};
use idempotency_core::{
    Claim, ErrorClass, Fence, Finished, IdempotencyRecord, IdempotencyRepository, Lease, RecordId,
    ReservationStore, Result,
};
use idempotency_redis::{ConnectOptions, RedisStore};
use idempotency_testkit::RecordingMetrics;
use idempotency_testkit::resp::{self, Reply};
use idempotency_testkit::sentinel::RedisSentinel;

const OP: &str = "sentinel.fo";
const SHARED_KEYS: u64 = 12;
const LEASE: Duration = Duration::from_secs(3);

/// What happened to one key.
#[derive(Debug, Default)]
struct KeyLog {
    /// Each claim Redis granted: when it was sent and when its answer came. A claim sent
    /// before the kill can only have been granted by the old master; one sent after it
    /// only by the new one.
    acquired: Vec<(Instant, Instant)>,
    /// The value each execution of the action produced.
    runs: Vec<u64>,
    /// When each completion Redis acknowledged (`Fence::Held`) was sent.
    acked: Vec<Instant>,
    /// The values calls returned.
    returned: Vec<u64>,
}

type Log = Arc<Mutex<HashMap<String, KeyLog>>>;

fn with_key<R>(log: &Log, key: &str, f: impl FnOnce(&mut KeyLog) -> R) -> R {
    let mut map = log
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(map.entry(key.to_owned()).or_default())
}

/// The Redis store, logging which completions Redis acknowledged.
#[derive(Debug, Clone)]
struct Logged {
    inner: RedisStore,
    log: Log,
}

impl IdempotencyRepository for Logged {
    async fn get(&self, id: &RecordId) -> Result<Option<IdempotencyRecord>> {
        self.inner.get(id).await
    }
    async fn save(&self, record: &IdempotencyRecord) -> Result<()> {
        self.inner.save(record).await
    }
    async fn replace(&self, record: &IdempotencyRecord) -> Result<()> {
        self.inner.replace(record).await
    }
    async fn delete(&self, id: &RecordId) -> Result<bool> {
        self.inner.delete(id).await
    }
}

impl ReservationStore for Logged {
    type Watch = <RedisStore as ReservationStore>::Watch;

    async fn claim(&self, lease: &Lease, duration: Duration) -> Result<Claim> {
        let sent = Instant::now();
        let claim = self.inner.claim(lease, duration).await;
        if matches!(claim, Ok(Claim::Acquired)) {
            let answered = Instant::now();
            with_key(&self.log, lease.key(), |k| {
                k.acquired.push((sent, answered))
            });
        }
        claim
    }
    async fn finish(&self, lease: &Lease, finished: Finished<'_>, ttl: Duration) -> Result<Fence> {
        let sent = Instant::now();
        let fence = self.inner.finish(lease, finished, ttl).await;
        if matches!(fence, Ok(Fence::Held)) {
            with_key(&self.log, lease.key(), |k| k.acked.push(sent));
        }
        fence
    }
    async fn renew(&self, lease: &Lease, duration: Duration) -> Result<Fence> {
        self.inner.renew(lease, duration).await
    }
    async fn release(&self, lease: &Lease) -> Result<Fence> {
        self.inner.release(lease).await
    }
    async fn watch(&self, id: &RecordId) -> Result<Self::Watch> {
        self.inner.watch(id).await
    }
}

/// A failed call: when, on which key, and what it was.
#[derive(Debug)]
struct Failure {
    at: Instant,
    key: String,
    class: ErrorClass,
    message: String,
}

/// Polls `done` every 50 ms until it holds or `timeout` passes.
async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `status` and `result` of a stored record's JSON.
fn stored(bytes: &[u8]) -> (String, Option<u64>) {
    let v: serde_json::Value = serde_json::from_slice(bytes).expect("a stored record is JSON");
    (
        v["status"].as_str().unwrap_or_default().to_owned(),
        v["result"].as_u64(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // one scenario, read top to bottom
async fn a_master_failover_mid_load_runs_no_action_twice_unless_its_record_was_lost() {
    let mut deployment = tokio::task::block_in_place(RedisSentinel::start);
    let options = ConnectOptions::default().with_command_timeout(Duration::from_millis(800));
    let redis = RedisStore::connect(&deployment.url(), &options)
        .await
        .expect("connect through the sentinels");
    let log: Log = Arc::default();
    let metrics = Arc::new(RecordingMetrics::default());
    let coordinator = Coordinator::builder(Logged {
        inner: redis.clone(),
        log: log.clone(),
    })
    .on_storage_error(OnStorageError::Raise)
    .lease(LEASE)
    .metrics(metrics.clone())
    .build()
    .expect("coordinator");

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let executions = Arc::new(AtomicU64::new(0));
    let failures: Arc<Mutex<Vec<Failure>>> = Arc::default();
    let tasks: Vec<_> = (0..8u64)
        .map(|t| {
            let (coordinator, stop, ok, executions, failures, log) = (
                coordinator.clone(),
                stop.clone(),
                ok.clone(),
                executions.clone(),
                failures.clone(),
                log.clone(),
            );
            tokio::spawn(async move {
                let mut rng =
                    0x9E37_79B9_7F4A_7C15_u64 ^ (t + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    n += 1;
                    // A quarter of the calls go to a few shared keys, the rest to fresh ones.
                    let key = if rng.is_multiple_of(4) {
                        format!("shared-{}", (rng >> 8) % SHARED_KEYS)
                    } else {
                        format!("fresh-{t}-{n}")
                    };
                    let (log_in, execs) = (log.clone(), executions.clone());
                    let key_in = key.clone();
                    let outcome = coordinator
                        .call(OP, Some(&key))
                        .run(|| async move {
                            let value = execs.fetch_add(1, Ordering::SeqCst) + 1;
                            with_key(&log_in, &key_in, |k| k.runs.push(value));
                            // Long enough that some calls are mid-action when the master dies.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            Ok::<_, IdempotencyError>(value)
                        })
                        .await;
                    match outcome {
                        Ok(value) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                            with_key(&log, &key, |k| k.returned.push(value));
                        }
                        Err(e) => failures
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(Failure {
                                at: Instant::now(),
                                key,
                                class: e.class(),
                                message: e.to_string(),
                            }),
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    let failed = || {
        failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    };

    wait_until(
        "calls succeed before the fault",
        Duration::from_secs(60),
        || ok.load(Ordering::SeqCst) >= 300,
    )
    .await;
    assert_eq!(failed(), 0, "no call fails before the fault");

    // Hold the sentinels back so the replica's data can be read as the failover will find
    // it, then kill the master mid-load.
    let old_master = deployment.master_port();
    let replica = deployment.replica_port();
    deployment.set_down_after(Duration::from_secs(3600));
    let kill_started = Instant::now();
    tokio::task::block_in_place(|| deployment.kill_master());
    // The old master is gone once the kill returns (its process reaped). A claim sent
    // after this can only be granted by the new master; one sent while the kill was under
    // way may still have been granted by the old one (counted with the old master).
    let killed_at = Instant::now();

    // Once the replica has seen its link drop, it holds everything it will ever get from
    // the old master; it accepts no writes, so this is what the new master starts with.
    wait_until(
        "the replica notices the master is gone",
        Duration::from_secs(60),
        || match resp::command(replica, &["INFO", "replication"]) {
            Ok(Reply::Bulk(Some(info))) => {
                String::from_utf8_lossy(&info).contains("master_link_status:down")
            }
            _ => false,
        },
    )
    .await;
    // Every record of this test the replica holds, by Redis key.
    let pattern = format!(
        "{}*",
        redis
            .redis_key(&RecordId::new(OP, "x").expect("id"))
            .trim_end_matches('x')
    );
    let redis_keys: Vec<String> = match resp::command(replica, &["KEYS", &pattern]).expect("KEYS") {
        Reply::Array(keys) => keys
            .iter()
            .filter_map(|k| {
                k.as_bytes()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
            })
            .collect(),
        other => panic!("KEYS: {other:?}"),
    };
    let mut mget: Vec<&str> = vec!["MGET"];
    mget.extend(redis_keys.iter().map(String::as_str));
    let on_replica = match resp::command(replica, &mget).expect("MGET on the replica") {
        Reply::Array(values) => values,
        other => panic!("MGET: {other:?}"),
    };
    let snapshot: HashMap<String, (String, Option<u64>)> = redis_keys
        .iter()
        .zip(on_replica)
        .filter_map(|(key, v)| v.as_bytes().map(|b| (key.clone(), stored(b))))
        .collect();
    assert!(
        !idempotency_testkit::sentinel::is_master(replica),
        "the replica was not promoted while its data was read"
    );
    let released_at = Instant::now();
    deployment.set_down_after(RedisSentinel::default_down_after());
    let new_master = tokio::task::block_in_place(|| {
        deployment.wait_failover(old_master, Duration::from_secs(60))
    });
    assert_eq!(new_master, replica, "the replica was promoted");
    let failover_took = killed_at.elapsed();

    // The client reconnects through the sentinels by itself.
    let ok_at_promotion = ok.load(Ordering::SeqCst);
    wait_until(
        "calls succeed on the new master",
        Duration::from_secs(60),
        || ok.load(Ordering::SeqCst) >= ok_at_promotion + 100,
    )
    .await;
    let recovered_after = killed_at.elapsed();
    // Reservations that outlived their owners on the old master end within a lease.
    tokio::time::sleep(LEASE + Duration::from_secs(2)).await;
    let settled_at = Instant::now();
    let ok_at_settle = ok.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.expect("worker");
    }
    let ok_after_settle = ok.load(Ordering::SeqCst) - ok_at_settle;

    // Calls during the switch failed closed; none failed once it was over.
    let failures = std::mem::take(
        &mut *failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    for f in &failures {
        match f.class {
            ErrorClass::Storage => {}
            ErrorClass::Conflict => assert!(
                f.key.starts_with("shared-") && f.message.contains("progress"),
                "only a shared key can be found in flight: {f:?}"
            ),
            _ => panic!("a call failed otherwise than documented: {f:?}"),
        }
        assert!(
            f.at >= kill_started && f.at < settled_at,
            "a call failed outside the failover window: {f:?}"
        );
    }
    assert!(ok_after_settle > 0, "calls succeed after the failover");
    let storage_errors = failures
        .iter()
        .filter(|f| f.class == ErrorClass::Storage)
        .count();

    // Per key: at most once on each master, and a second run only over a lost record.
    let log = std::mem::take(
        &mut *log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let (mut survived, mut lost_acknowledged, mut never_stored, mut ran_again) = (0, 0, 0, 0);
    for (key, k) in &log {
        // In fail-closed mode every execution follows a claim Redis granted to it.
        assert_eq!(
            k.runs.len(),
            k.acquired.len(),
            "{key}: runs and granted claims: {k:?}"
        );
        let on_old = k
            .acquired
            .iter()
            .filter(|(sent, _)| *sent < killed_at)
            .count();
        let on_new: Vec<&(Instant, Instant)> = k
            .acquired
            .iter()
            .filter(|(sent, _)| *sent >= killed_at)
            .collect();
        for (_, answered) in &on_new {
            assert!(
                *answered >= released_at,
                "{key}: a claim was granted while there was no master"
            );
        }
        assert!(on_old <= 1, "{key} ran twice on the old master: {k:?}");
        assert!(
            on_new.len() <= 1,
            "{key} ran twice on the new master: {k:?}"
        );
        for v in &k.returned {
            assert!(
                k.runs.contains(v),
                "{key} returned {v}, not one of its runs: {k:?}"
            );
        }
        if on_old == 0 {
            continue;
        }
        match snapshot.get(&redis.redis_key(&RecordId::new(OP, key).expect("id"))) {
            Some((status, result)) if status == "completed" => {
                // The record reached the replica: it survives and is final.
                survived += 1;
                assert!(
                    on_new.is_empty(),
                    "{key} ran again although its record survived: {k:?}"
                );
                assert_eq!(
                    *result,
                    k.runs.first().copied(),
                    "{key}: the replica holds its run's value"
                );
                for v in &k.returned {
                    assert_eq!(Some(v), k.runs.first(), "{key} replayed another value");
                }
            }
            _ => {
                // Not on the replica: lost with the old master. Was it acknowledged?
                if k.acked.iter().any(|sent| *sent < killed_at) {
                    lost_acknowledged += 1;
                } else {
                    never_stored += 1;
                }
                if !on_new.is_empty() {
                    ran_again += 1;
                }
            }
        }
    }
    let lease_lost = metrics.count("error", "lease_lost");
    let save_errors = metrics.count("error", "storage_save_error");
    eprintln!(
        "sentinel failover: promoted {failover_took:?} after the kill (held back while the replica was read), calls succeeding again {recovered_after:?} after it; {} calls ok, {storage_errors} storage errors and {} in-progress refusals during the switch, {ok_after_settle} ok and 0 failed after settling; {} keys ran before the kill: {survived} records survived on the replica (none ran again), {lost_acknowledged} acknowledged completions lost with the old master (async replication), {never_stored} results never stored (master died mid-call; {save_errors} storage_save_error); {ran_again} of those lost keys ran again after the failover; lease_lost {lease_lost}",
        ok.load(Ordering::SeqCst),
        failures.len() - storage_errors,
        log.values()
            .filter(|k| k.acquired.iter().any(|(sent, _)| *sent < killed_at))
            .count(),
    );
    assert!(survived > 0, "the replica kept records");

    // The store works on the new master: a fresh key runs once, then replays.
    let runs = Arc::new(AtomicU64::new(0));
    let mut values = Vec::new();
    for _ in 0..2 {
        let runs = runs.clone();
        let value =
            coordinator
                .call(OP, Some("fresh-after-failover"))
                .run(|| async move {
                    Ok::<_, IdempotencyError>(runs.fetch_add(1, Ordering::SeqCst) + 1000)
                })
                .await
                .expect("a call after the failover");
        values.push(value);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the fresh key ran once");
    assert_eq!(values, [1000, 1000], "and replayed its value");
    let redis_key = redis.redis_key(&RecordId::new(OP, "fresh-after-failover").expect("id"));
    assert!(
        matches!(
            resp::command(new_master, &["GET", &redis_key]),
            Ok(Reply::Bulk(Some(_)))
        ),
        "its record is on the new master"
    );
}
