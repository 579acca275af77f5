//! Chaos with a history checker, on memory, standalone Redis and a Redis cluster: three
//! coordinators whose clocks disagree by ±10 minutes share one store; callers race on a
//! few keys, are cancelled at random points (detached calls, so a started action
//! finishes), claims and completions lose their replies after being applied, claim
//! replies stall; on Redis, keys start out holding unreadable bytes or a value of another
//! type. Every call and every side effect is logged, and the checker asserts per key: at
//! most one execution (beyond counted lease losses), every value returned is that
//! execution's, none before it existed; afterwards no key is stuck.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::common::{Faulty, unique};
use idempotency_coordinator::{Coordinator, InFlight, OnStorageError};
use idempotency_core::{Clock, IdempotencyError, ReservationStore, error_type};
use idempotency_testkit::history::{Call, History};
use idempotency_testkit::proxy::{Mode, Proxy};

const TASKS: u64 = 16;
const CALLS_PER_TASK: u64 = 12;
const KEYS: u64 = 10;

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

struct Chaos<S> {
    coordinators: Vec<Coordinator<Faulty<S>>>,
    history: Arc<History>,
    run: String,
    values: Arc<AtomicU64>,
}

impl<S: ReservationStore + Clone> Chaos<S> {
    fn new(env: &crate::common::Env<S>) -> Self {
        let coordinators = [-600, 0, 600]
            .into_iter()
            .map(|offset| {
                env.coordinator(|b| {
                    b.lease(Duration::from_secs(1))
                        .in_flight(InFlight::Wait)
                        .on_storage_error(OnStorageError::Raise)
                        .wait_safety_poll(Duration::from_millis(50))
                        .clock(Clock::with_offset(time::Duration::seconds(offset)))
                })
            })
            .collect();
        Self {
            coordinators,
            history: Arc::new(History::new()),
            run: unique("chaos"),
            values: Arc::new(AtomicU64::new(1)),
        }
    }

    fn key(&self, n: u64) -> String {
        format!("{}-{n}", self.run)
    }

    /// One call on `key` by `caller`: detached and cancelled after `cancel_after`, or
    /// attached to the end.
    async fn call(&self, caller: u64, key: String, cancel_after: Option<Duration>, work: Duration) {
        let coordinator = self.coordinators[(caller % 3) as usize].clone();
        let history = Arc::clone(&self.history);
        let values = Arc::clone(&self.values);
        let start = history.now();
        let action = {
            let history = Arc::clone(&history);
            let key = key.clone();
            move || async move {
                tokio::time::sleep(work).await;
                let value = values.fetch_add(1, Ordering::SeqCst);
                history.effect(&key, value);
                Ok::<u64, IdempotencyError>(value)
            }
        };
        let outcome = match cancel_after {
            Some(after) => {
                let call = coordinator
                    .call("chaos.op", Some(&key))
                    .run_detached(action);
                tokio::time::timeout(after, call).await.ok()
            }
            None => Some(coordinator.call("chaos.op", Some(&key)).run(action).await),
        };
        history.call(Call {
            caller,
            key,
            start,
            end: history.now(),
            outcome: outcome.map(|o| o.map_err(|e| format!("{:?}: {e}", e.class()))),
        });
    }
}

/// The fault injector: every few ms, one reply is lost or stalled, until `stop`.
fn inject_faults(
    faults: Arc<crate::common::Faults>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut rng = Rng(0x5EED);
        loop {
            match rng.next() % 3 {
                0 => faults.claim_reply_lost.store(true, Ordering::SeqCst),
                1 => faults.complete_reply_lost.store(true, Ordering::SeqCst),
                _ => faults.claim_stall.store(true, Ordering::SeqCst),
            }
            tokio::select! {
                _ = stop.changed() => return,
                () = tokio::time::sleep(Duration::from_millis(15 + rng.next() % 30)) => {}
            }
        }
    })
}

/// Real network faults between the stores and Redis: mostly passing, with bursts of
/// delay, replies cut after the command was applied (fred reconnects and re-sends), and
/// dropped connections; back to passing at `stop`.
fn disturb_network(
    proxy: Arc<Proxy>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut rng = Rng(0xBAD_CAFE);
        loop {
            let mode = match rng.next() % 6 {
                0 => Mode::Delay(Duration::from_millis(30)),
                1 => Mode::CutReplies,
                2 => Mode::Drop,
                _ => Mode::Pass,
            };
            proxy.set_mode(mode);
            let burst = Duration::from_millis(if mode == Mode::Pass { 60 } else { 15 });
            tokio::select! {
                _ = stop.changed() => {
                    proxy.set_mode(Mode::Pass);
                    return;
                }
                () = tokio::time::sleep(burst) => {}
            }
        }
    })
}

/// Corrupts the record under a key (see [`corrupter`]).
type Corrupt = Arc<dyn Fn(&str) + Send + Sync>;

/// Disturbances beyond the injected faults.
#[derive(Default)]
struct Extra {
    /// The proxy between the stores and Redis: its modes cycle during the run.
    network: Option<Arc<Proxy>>,
    /// Replaces a key's pending record (whoever's it is) with bytes no client can read,
    /// now and then during the run.
    corrupt: Option<Corrupt>,
    /// An AOF-persisted server that is killed and restarted in the middle of the run.
    restart: Option<Arc<std::sync::Mutex<idempotency_testkit::RedisServer>>>,
}

/// Starts the extra disturbances; each ends at `stop` (or after its one action).
fn disturb<S: ReservationStore + Clone>(
    extra: Extra,
    chaos: &Chaos<S>,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let network = extra
        .network
        .map(|proxy| disturb_network(proxy, stop.clone()));
    let corrupter = extra.corrupt.map(|corrupt| {
        let mut stop = stop.clone();
        let keys: Vec<String> = (0..KEYS).map(|n| chaos.key(n)).collect();
        tokio::spawn(async move {
            // Every few ms, every key: a reservation is pending only while its first
            // execution runs, so the sweep has to be frequent to meet one.
            loop {
                let keys = keys.clone();
                let corrupt = Arc::clone(&corrupt);
                tokio::task::spawn_blocking(move || {
                    for key in &keys {
                        corrupt(key);
                    }
                })
                .await
                .expect("corrupt");
                tokio::select! {
                    _ = stop.changed() => return,
                    () = tokio::time::sleep(Duration::from_millis(3)) => {}
                }
            }
        })
    });
    let restarter = extra.restart.map(|server| {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            tokio::task::spawn_blocking(move || {
                server
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .restart();
            })
            .await
            .expect("restart");
        })
    });
    [network, corrupter, restarter]
        .into_iter()
        .flatten()
        .collect()
}

/// Runs the chaos on `env`; `plant(key, bytes, as_hash)` puts foreign data under a key
/// before the run (a no-op on memory).
async fn chaos<S: ReservationStore + Clone>(
    env: crate::common::Env<S>,
    plant: impl Fn(&str, &[u8], bool),
    extra: Extra,
) {
    let redis = env.server.is_some() || env.cluster.is_some() || extra.restart.is_some();
    let chaos = Arc::new(Chaos::new(&env));
    // Keys 0-2 start out holding unreadable bytes, key 3 a hash (Redis only: `plant` is a
    // no-op on memory).
    plant(&chaos.key(0), b"{garbage", false);
    plant(&chaos.key(1), b"", false);
    plant(
        &chaos.key(2),
        br#"{"status":"pending","owner":"nobody"}"#,
        false,
    );
    plant(&chaos.key(3), b"v", true);
    let faults = Arc::clone(&env.store.faults);
    faults.claim_stall_ms.store(150, Ordering::SeqCst);
    // A watch, not a Notify: a task busy elsewhere when the run ends still sees the stop
    // (a `notify_waiters` would pass it by and leave it looping forever).
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let injector = inject_faults(Arc::clone(&faults), stop.clone());
    let disturbances = disturb(extra, &chaos, &stop);
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let chaos = Arc::clone(&chaos);
            tokio::spawn(async move {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (t + 1));
                for n in 0..CALLS_PER_TASK {
                    tokio::time::sleep(Duration::from_millis(rng.next() % 20)).await;
                    let key = chaos.key(rng.next() % KEYS);
                    let work = Duration::from_millis(rng.next() % 40);
                    let cancel = rng
                        .next()
                        .is_multiple_of(3)
                        .then(|| Duration::from_millis(rng.next() % 60));
                    chaos.call(t * 1000 + n, key, cancel, work).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let _ = stop_tx.send(true);
    injector.await.expect("injector");
    for task in disturbances {
        task.await.expect("disturbance");
    }
    for flag in [
        &faults.claim_reply_lost,
        &faults.complete_reply_lost,
        &faults.claim_stall,
    ] {
        flag.store(false, Ordering::SeqCst);
    }
    // Detached calls cancelled by their callers finish on their own; then every key must
    // answer at once (nothing stuck) with its one value.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let final_caller = 1_000_000;
    for n in 0..KEYS {
        let key = chaos.key(n);
        let started = std::time::Instant::now();
        chaos
            .call(final_caller + n, key.clone(), None, Duration::ZERO)
            .await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{key}: stuck for {:?}",
            started.elapsed()
        );
    }
    let lease_losses = env.metrics.count("error", error_type::LEASE_LOST);
    let report = chaos.history.check(lease_losses);
    eprintln!(
        "chaos: {} calls ({} ok, {} errors, {} cancelled) on {} keys, {} executions, {} double runs, {lease_losses} lease losses, longest call {:?}",
        report.calls,
        report.successes,
        report.errors,
        report.cancelled,
        report.keys,
        report.executions,
        report.double_runs,
        report.longest_call
    );
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    // The final pass found each readable key completed (or completed it now).
    for n in 0..KEYS {
        let key = chaos.key(n);
        let runs = chaos.history.effects_of(&key).len();
        if n == 3 && redis {
            assert_eq!(runs, 0, "{key}: never run over a value of another type");
        } else {
            assert!(runs >= 1, "{key}: the final call ran or replayed it");
        }
    }
    assert!(
        report.successes > report.calls / 2,
        "most calls got a value"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_memory() {
    chaos(crate::common::memory(), |_, _, _| {}, Extra::default()).await;
}

fn planter(port_for: impl Fn(&str) -> u16) -> impl Fn(&str, &[u8], bool) {
    move |key, value, hash| {
        let redis_key = format!("idempotency:chaos.op:{key}");
        let port = port_for(&redis_key);
        let reply = if hash {
            idempotency_testkit::resp::command_bytes(
                port,
                &[b"HSET", redis_key.as_bytes(), b"f", value],
            )
        } else {
            idempotency_testkit::resp::command_bytes(
                port,
                &[b"SET", redis_key.as_bytes(), value, b"EX", b"600"],
            )
        };
        reply.expect("plant");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_standalone() {
    let env = crate::common::standalone().await;
    let port = env.server.as_ref().expect("server").port();
    chaos(env, planter(move |_| port), Extra::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_through_a_faulty_network() {
    let server = idempotency_testkit::RedisServer::start();
    let proxy = Arc::new(Proxy::start(server.addr()));
    let store = idempotency_redis::RedisStore::connect(
        &proxy.url(),
        &idempotency_redis::ConnectOptions::default()
            .with_command_timeout(Duration::from_millis(500))
            .with_reconnect_max_delay(Duration::from_millis(50)),
    )
    .await
    .expect("connect");
    let port = server.port();
    let env = crate::common::Env {
        store: crate::common::wrap(store),
        metrics: Arc::new(idempotency_core::RecordingMetrics::default()),
        server: Some(Arc::new(server)),
        cluster: None,
    };
    chaos(
        env,
        planter(move |_| port),
        Extra {
            network: Some(proxy),
            ..Extra::default()
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_cluster() {
    let env = crate::common::cluster().await;
    let cluster = Arc::clone(env.cluster.as_ref().expect("cluster"));
    chaos(
        env,
        planter(move |redis_key| cluster.owner_port(redis_key)),
        Extra::default(),
    )
    .await;
}

/// Replaces the pending record under `key` (if that is what it holds) with bytes no client
/// can read, keeping its TTL: data corruption of a live reservation.
fn corrupter(
    port_for: impl Fn(&str) -> u16 + Send + Sync + 'static,
    done: Arc<std::sync::atomic::AtomicUsize>,
) -> Corrupt {
    const SCRIPT: &str = "local v = redis.call('GET', KEYS[1]) \
        if v and string.find(v, '\"status\":\"pending\"', 1, true) then \
        redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL') return 1 end return 0";
    Arc::new(move |key: &str| {
        let redis_key = format!("idempotency:chaos.op:{key}");
        let port = port_for(&redis_key);
        let args: [&[u8]; 5] = [
            b"EVAL",
            SCRIPT.as_bytes(),
            b"1",
            redis_key.as_bytes(),
            b"{garbage",
        ];
        let reply = idempotency_testkit::resp::command_bytes(port, &args);
        if reply.is_ok_and(|r| r.as_int() == Some(1)) {
            done.fetch_add(1, Ordering::SeqCst);
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_with_live_reservations_corrupted_mid_run() {
    let env = crate::common::standalone().await;
    let port = env.server.as_ref().expect("server").port();
    let corrupted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    chaos(
        env,
        planter(move |_| port),
        Extra {
            corrupt: Some(corrupter(move |_| port, Arc::clone(&corrupted))),
            ..Extra::default()
        },
    )
    .await;
    let corrupted = corrupted.load(Ordering::SeqCst);
    eprintln!("corrupted {corrupted} live reservations mid-run");
    assert!(
        corrupted > 0,
        "the run corrupted no live reservation: vacuous"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_across_a_redis_kill_and_restart() {
    // Append-only file, fsync on every write: a kill -9 loses nothing acknowledged.
    let server =
        idempotency_testkit::RedisServer::start_with(&idempotency_testkit::ServerOptions {
            args: ["--appendonly", "yes", "--appendfsync", "always"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            ..idempotency_testkit::ServerOptions::default()
        });
    let port = server.port();
    let store = idempotency_redis::RedisStore::connect(
        &server.url(),
        &idempotency_redis::ConnectOptions::default()
            .with_command_timeout(Duration::from_millis(500))
            .with_reconnect_max_delay(Duration::from_millis(50)),
    )
    .await
    .expect("connect");
    let env = crate::common::Env {
        store: crate::common::wrap(store),
        metrics: Arc::new(idempotency_core::RecordingMetrics::default()),
        server: None,
        cluster: None,
    };
    chaos(
        env,
        planter(move |_| port),
        Extra {
            restart: Some(Arc::new(std::sync::Mutex::new(server))),
            ..Extra::default()
        },
    )
    .await;
}
