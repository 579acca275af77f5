//! Chaos with a history checker, on memory, standalone Redis and a Redis cluster: three
//! coordinators whose clocks disagree by ±10 minutes share one store; callers race on a
//! few keys and a third of them are cancelled at random points (detached calls, whose
//! started actions finish, or attached ones, whose actions are dropped mid-way); claims
//! and completions lose their replies after being applied, claim replies stall; on
//! Redis, keys start out holding unreadable bytes or a value of another type, and some
//! runs corrupt live reservations, plant values of another type mid-run, cut the network,
//! restart Redis or fail a cluster master over.
//!
//! Every call logs its caller, key, start, end, outcome and how it was made; every action
//! logs its start and its side effect. Each key has an operation label of its own, so the
//! metrics' `lease_lost` counts are per key, and the checker asserts per key: at most one
//! execution beyond the lease losses counted on that key and the re-runs the cancellation
//! rule allows, every success the same value when the key lost no lease, no value before
//! its execution produced it. Afterwards every key answers (nothing stuck).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::common::{Faulty, unique};
use idempotency_coordinator::{Coordinator, ErrorClass, InFlight, OnStorageError, Outcome};
use idempotency_core::{Clock, IdempotencyError, ReservationStore};
use idempotency_testkit::RedisCluster;
use idempotency_testkit::error_type;
use idempotency_testkit::history::{Attachment, Call, History, Report};
use idempotency_testkit::proxy::{Mode, Proxy};

const TASKS: u64 = 16;
const CALLS_PER_TASK: u64 = 12;
/// Keys per run; attached cancellations get more, so that more first executions (the
/// ones a cancellation can interrupt) happen.
const KEYS: u64 = 10;
const KEYS_ATTACHED: u64 = 40;
/// The key planted with a hash before the run (Redis only).
const HASH_KEY: u64 = 3;
/// The keys a value of another type is planted under mid-run (when the run does):
/// over a live reservation, and over a completed record.
const WRONG_TYPE_MID_RUN: [(u64, &str); 2] = [(4, "pending"), (5, "completed")];

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
    /// How the calls that get cancelled are made.
    cancelled: Attachment,
    /// How many keys the calls spread over.
    keys: u64,
    on_storage_error: OnStorageError,
    /// Calls that ran their action unprotected (`Outcome::Unprotected`), per key: the
    /// extra runs fail-open mode may make, counted from the calls themselves (a storage
    /// error counted on the key is no measure: waiters that fail closed count one too).
    unprotected: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl<S: ReservationStore + Clone> Chaos<S> {
    fn new(
        env: &crate::common::Env<S>,
        cancelled: Attachment,
        on_storage_error: OnStorageError,
    ) -> Self {
        let coordinators = [-600, 0, 600]
            .into_iter()
            .map(|offset| {
                env.coordinator(|b| {
                    b.lease(Duration::from_secs(1))
                        .in_flight(InFlight::Wait)
                        .on_storage_error(on_storage_error)
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
            cancelled,
            keys: match cancelled {
                Attachment::Attached => KEYS_ATTACHED,
                Attachment::Detached => KEYS,
            },
            on_storage_error,
            unprotected: Arc::default(),
        }
    }

    /// Key `n`'s operation: one label per key, so `lease_lost` is counted per key. It is
    /// also the key's name in the history.
    fn op(n: u64) -> String {
        format!("chaos.k{n}")
    }

    /// Key `n` as Redis stores it.
    fn redis_key(&self, n: u64) -> String {
        format!("idempotency:{}:{}", Self::op(n), self.run)
    }

    /// One call on key `n` by `caller` (unique per call): cancelled after `cancel_after`
    /// (made as `self.cancelled` says), or attached to the end. The action logs its start,
    /// takes half of `work`, has its side effect, and takes the other half.
    async fn call(
        &self,
        caller: u64,
        n: u64,
        cancel_after: Option<Duration>,
        work: Duration,
        max_wait: Option<Duration>,
    ) -> Option<Result<u64, IdempotencyError>> {
        let op = Self::op(n);
        let coordinator = self.coordinators[(caller % 3) as usize].clone();
        let history = Arc::clone(&self.history);
        let action = {
            let history = Arc::clone(&history);
            let values = Arc::clone(&self.values);
            let op = op.clone();
            move || async move {
                history.started(caller, &op);
                tokio::time::sleep(work / 2).await;
                let value = values.fetch_add(1, Ordering::SeqCst);
                history.effect(caller, &op, value);
                tokio::time::sleep(work.saturating_sub(work / 2)).await;
                Ok::<u64, IdempotencyError>(value)
            }
        };
        let start = history.now();
        let mut call = coordinator.call(&op, Some(&self.run));
        if let Some(max_wait) = max_wait {
            call = call.max_wait(max_wait);
        }
        let (outcome, end, attachment) = match (cancel_after, self.cancelled) {
            (None, _) => (
                Some(call.run_with_outcome(action).await),
                history.now(),
                Attachment::Attached,
            ),
            (Some(after), Attachment::Attached) => {
                let (outcome, end) = abandon(&history, call.run_with_outcome(action), after).await;
                (outcome, end, Attachment::Attached)
            }
            (Some(after), Attachment::Detached) => {
                let (outcome, end) =
                    abandon(&history, call.run_detached_with_outcome(action), after).await;
                (outcome, end, Attachment::Detached)
            }
        };
        if let Some(Ok((_, Outcome::Unprotected))) = &outcome {
            *self
                .unprotected
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(op.clone())
                .or_default() += 1;
        }
        let outcome = outcome.map(|o| o.map(|(value, _)| value));
        history.call(Call {
            caller,
            key: op,
            start,
            end,
            outcome: outcome.as_ref().map(|o| {
                o.as_ref()
                    .copied()
                    .map_err(|e| format!("{:?}: {e}", e.class()))
            }),
            attachment,
        });
        outcome
    }
}

/// Runs `call` until it returns or `after` has passed; then the time is taken and only
/// then the call's future dropped, so a release its drop sends comes after the logged end.
async fn abandon<T>(
    history: &History,
    call: impl Future<Output = T>,
    after: Duration,
) -> (Option<T>, Duration) {
    let mut call = Box::pin(call);
    let outcome = tokio::select! {
        outcome = &mut call => Some(outcome),
        () = tokio::time::sleep(after) => None,
    };
    let end = history.now();
    drop(call);
    (outcome, end)
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

/// Rewrites the value under a Redis key if it holds a record of the given status;
/// `true` when it did (see [`corrupter`] and [`wrong_typer`]).
type Rewrite = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// Disturbances beyond the injected faults.
#[derive(Default)]
struct Extra {
    /// The proxy between the stores and Redis: its modes cycle during the run.
    network: Option<Arc<Proxy>>,
    /// Replaces a key's pending record (whoever's it is) with bytes no client can read,
    /// now and then during the run.
    corrupt: Option<Rewrite>,
    /// Replaces, once each, the record of [`WRONG_TYPE_MID_RUN`]'s keys with a hash
    /// when it has the status named there.
    wrong_type: Option<Rewrite>,
    /// Fail open (`OnStorageError::Run`) instead of closed: a storage error before the
    /// action runs it unprotected (counted per key as `storage_reserve_error`, and
    /// allowed for by the checker on that key only).
    fail_open: Option<OnStorageError>,
    /// An AOF-persisted server that is killed and restarted in the middle of the run.
    restart: Option<Arc<Mutex<idempotency_testkit::RedisServer>>>,
    /// A cluster (the store's own) whose master of key 0 is failed over mid-run.
    failover: Option<Arc<RedisCluster>>,
    /// A server (its port) that flaps through write-refusing states during the run:
    /// `NOREPLICAS` (`min-replicas-to-write 1`), writable, `OOM` (`maxmemory 1` under
    /// `noeviction`), writable, … while it serves reads throughout.
    refuse_writes: Option<u16>,
}

/// What the disturbances did, for the run's assertions and its report line.
#[derive(Default)]
struct Disturbed {
    /// Live reservations corrupted, per key (operation).
    corrupted: Mutex<BTreeMap<String, usize>>,
    /// The keys a hash was planted under mid-run, and when (on the history's clock).
    wrong_typed: Mutex<BTreeMap<u64, Duration>>,
    /// When the failover was asked for and when it was done, on the history's clock.
    failed_over: Mutex<Option<(Duration, Duration)>>,
}

/// Every few ms until `stop`: `sweep()`, off the runtime's threads (blocking I/O).
fn every_few_ms(
    stop: &tokio::sync::watch::Receiver<bool>,
    sweep: impl Fn() -> bool + Send + Sync + 'static,
) -> tokio::task::JoinHandle<()> {
    let mut stop = stop.clone();
    let sweep = Arc::new(sweep);
    tokio::spawn(async move {
        // Every 3 ms: a reservation is pending only while its first execution runs, so
        // the sweep has to be frequent to meet one.
        loop {
            let sweep = Arc::clone(&sweep);
            let done = tokio::task::spawn_blocking(move || sweep())
                .await
                .expect("sweep");
            if done {
                return;
            }
            tokio::select! {
                _ = stop.changed() => return,
                () = tokio::time::sleep(Duration::from_millis(3)) => {}
            }
        }
    })
}

/// Starts the extra disturbances; each ends at `stop` (or after its one action).
fn disturb<S: ReservationStore + Clone>(
    extra: Extra,
    chaos: &Chaos<S>,
    disturbed: &Arc<Disturbed>,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    if let Some(proxy) = extra.network {
        tasks.push(disturb_network(proxy, stop.clone()));
    }
    if let Some(corrupt) = extra.corrupt {
        let keys: Vec<(String, String)> = (0..chaos.keys)
            .map(|n| (Chaos::<S>::op(n), chaos.redis_key(n)))
            .collect();
        let disturbed = Arc::clone(disturbed);
        tasks.push(every_few_ms(stop, move || {
            for (op, key) in &keys {
                if corrupt(key, "pending") {
                    *disturbed
                        .corrupted
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .entry(op.clone())
                        .or_default() += 1;
                }
            }
            false
        }));
    }
    if let Some(plant) = extra.wrong_type {
        let targets: Vec<(u64, String, &str)> = WRONG_TYPE_MID_RUN
            .iter()
            .map(|&(n, status)| (n, chaos.redis_key(n), status))
            .collect();
        let disturbed = Arc::clone(disturbed);
        let history = Arc::clone(&chaos.history);
        tasks.push(every_few_ms(stop, move || {
            let mut done = disturbed
                .wrong_typed
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for (n, key, status) in &targets {
                if !done.contains_key(n) && plant(key, status) {
                    done.insert(*n, history.now());
                }
            }
            done.len() == targets.len()
        }));
    }
    if let Some(server) = extra.restart {
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            tokio::task::spawn_blocking(move || {
                server
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .restart();
            })
            .await
            .expect("restart");
        }));
    }
    if let Some(port) = extra.refuse_writes {
        tasks.push(flap_writes(port, stop));
    }
    if let Some(cluster) = extra.failover {
        let key = chaos.redis_key(0);
        let disturbed = Arc::clone(disturbed);
        let history = Arc::clone(&chaos.history);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            tokio::task::spawn_blocking(move || {
                let asked = history.now();
                let master = cluster.owner_port(&key);
                cluster.fail_over(master, Duration::from_secs(30));
                *disturbed
                    .failed_over
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some((asked, history.now()));
            })
            .await
            .expect("failover");
        }));
    }
    tasks
}

/// Flaps the server on `port` through write-refusing states until `stop` (see
/// [`Extra::refuse_writes`]), then leaves it writable.
fn flap_writes(
    port: u16,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let states: [&[&str]; 4] = [
        &["CONFIG", "SET", "min-replicas-to-write", "1"],
        &["CONFIG", "SET", "min-replicas-to-write", "0"],
        &["CONFIG", "SET", "maxmemory", "1"],
        &["CONFIG", "SET", "maxmemory", "0"],
    ];
    let sweeps = std::sync::atomic::AtomicUsize::new(0);
    let _ = idempotency_testkit::resp::command(
        port,
        &["CONFIG", "SET", "maxmemory-policy", "noeviction"],
    );
    let mut stopped = stop.clone();
    let flapping = every_few_ms(stop, move || {
        let n = sweeps.fetch_add(1, Ordering::SeqCst);
        // Each state holds for about 8 sweeps (24 ms).
        if n.is_multiple_of(8) {
            let _ = idempotency_testkit::resp::command(port, states[(n / 8) % 4]);
        }
        false
    });
    tokio::spawn(async move {
        let _ = flapping.await;
        let _ = stopped.changed().await;
        // Writable again for the final pass.
        for args in [&states[1], &states[3]] {
            let _ = idempotency_testkit::resp::command(port, args);
        }
    })
}

/// Calls every key once more, waiting up to 5 s: each must answer with its one value, or
/// with a data error where a hash is. The keys that do neither (stuck), and the longest
/// final call.
async fn final_pass<S: ReservationStore + Clone>(
    chaos: &Chaos<S>,
    hashed: &BTreeSet<u64>,
) -> (Vec<String>, Duration) {
    let mut stuck = Vec::new();
    let mut longest_final = Duration::ZERO;
    for n in 0..chaos.keys {
        let started = std::time::Instant::now();
        let outcome = chaos
            .call(
                1_000_000 + n,
                n,
                None,
                Duration::ZERO,
                Some(Duration::from_secs(5)),
            )
            .await;
        longest_final = longest_final.max(started.elapsed());
        match outcome {
            Some(Ok(_)) if !hashed.contains(&n) => {}
            Some(Err(e)) if hashed.contains(&n) && e.class() == ErrorClass::Data => {}
            other => stuck.push(format!("{}: {other:?}", Chaos::<S>::op(n))),
        }
    }
    (stuck, longest_final)
}

/// The callers: `TASKS` tasks of `CALLS_PER_TASK` calls each, on random keys at random
/// times, a third of them cancelled at a random point.
async fn run_callers<S: ReservationStore + Clone>(chaos: &Arc<Chaos<S>>) {
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let chaos = Arc::clone(chaos);
            tokio::spawn(async move {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (t + 1));
                for n in 0..CALLS_PER_TASK {
                    tokio::time::sleep(Duration::from_millis(rng.next() % 20)).await;
                    let key = rng.next() % chaos.keys;
                    let work = Duration::from_millis(rng.next() % 40);
                    let cancel = rng
                        .next()
                        .is_multiple_of(3)
                        .then(|| Duration::from_millis(rng.next() % 60));
                    chaos.call(t * 1000 + n, key, cancel, work, None).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
}

/// Checks the run's history. The extra runs allowed on a key are its own: see below.
fn check<S>(
    chaos: &Chaos<S>,
    metrics: &idempotency_testkit::RecordingMetrics,
    disturbed: &Disturbed,
) -> Report {
    // Lease losses per key: those the library counted on the key's operation, and the
    // live reservations the run itself destroyed there. The owner of a corrupted
    // reservation may never learn of its loss (its completion's reply can be lost after
    // the store refused it), so the library's count alone is not the truth; a loss on
    // another key is never counted here.
    let lease_lost = metrics.calls();
    let corrupted = disturbed
        .corrupted
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let counted = |op: &str, what: &str| {
        lease_lost
            .iter()
            .filter(|(kind, o, detail)| kind == "error" && o == op && detail == what)
            .count()
    };
    let calls = chaos.history.calls();
    chaos.history.check(|op| {
        // Fail-open calls that ran unprotected on this key, by their own outcome; and, in
        // fail-open mode, cancelled calls whose action ran (a detached call's action
        // finishes after its caller is gone, and whether it ran unprotected died with the
        // caller): a bound, tight where the outcome is known.
        let mut unprotected = chaos
            .unprotected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(op)
            .copied()
            .unwrap_or(0);
        if chaos.on_storage_error == OnStorageError::Run {
            let ran: BTreeSet<u64> = chaos.history.runs_of(op).iter().map(|r| r.caller).collect();
            unprotected += calls
                .iter()
                .filter(|c| c.key == op && c.outcome.is_none() && ran.contains(&c.caller))
                .count();
        }
        counted(op, error_type::LEASE_LOST) + corrupted.get(op).copied().unwrap_or(0) + unprotected
    })
}

/// Keys 0-2 start out holding unreadable bytes, key 3 a hash (Redis only: `plant` is a
/// no-op on memory).
fn plant_before<S: ReservationStore + Clone>(chaos: &Chaos<S>, plant: &impl Fn(&str, &[u8], bool)) {
    plant(&chaos.redis_key(0), b"{garbage", false);
    plant(&chaos.redis_key(1), b"", false);
    plant(
        &chaos.redis_key(2),
        br#"{"status":"pending","owner":"nobody"}"#,
        false,
    );
    plant(&chaos.redis_key(HASH_KEY), b"v", true);
}

/// What one chaos run measured.
struct Measured {
    report: Report,
    disturbed: Arc<Disturbed>,
    history: Arc<History>,
}

/// Runs the chaos on `env`, cancelling calls made as `cancelled`; `plant(redis_key,
/// bytes, as_hash)` puts foreign data under a key before the run (a no-op on memory).
async fn chaos<S: ReservationStore + Clone>(
    env: crate::common::Env<S>,
    cancelled: Attachment,
    plant: impl Fn(&str, &[u8], bool),
    extra: Extra,
) -> Measured {
    let redis = env.server.is_some() || env.cluster.is_some() || extra.restart.is_some();
    let chaos = Arc::new(Chaos::new(
        &env,
        cancelled,
        extra.fail_open.unwrap_or(OnStorageError::Raise),
    ));
    plant_before(&chaos, &plant);
    let faults = Arc::clone(&env.store.faults);
    faults.claim_stall_ms.store(150, Ordering::SeqCst);
    // A watch, not a Notify: a task busy elsewhere when the run ends still sees the stop
    // (a `notify_waiters` would pass it by and leave it looping forever).
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let injector = inject_faults(Arc::clone(&faults), stop.clone());
    let disturbed = Arc::new(Disturbed::default());
    // The proxy and the restarted server must outlive their disturbing tasks: dropping
    // the last handle stops them, and the final pass would talk to nothing.
    let _alive = (extra.network.clone(), extra.restart.clone());
    let disturbances = disturb(extra, &chaos, &disturbed, &stop);
    run_callers(&chaos).await;
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
    // Detached calls cancelled by their callers finish on their own (the checker holds
    // any that never does against the run).
    for _ in 0..500 {
        if chaos.history.unfinished_runs() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A client that lost its connection (proxy, restart) takes a moment to reconnect.
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Then every key must answer: its one value, or a data error where a hash is. A key
    // that answers neither within a few leases is stuck.
    let mut hashed: BTreeSet<u64> = disturbed
        .wrong_typed
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .keys()
        .copied()
        .collect();
    if redis {
        hashed.insert(HASH_KEY);
    }
    let (stuck, longest_final) = final_pass(&chaos, &hashed).await;
    let report = check(&chaos, &env.metrics, &disturbed);
    eprintln!(
        "chaos ({cancelled:?} cancellations, {:?}): {} calls ({} ok, {} errors, {} cancelled, {} of them after their side effect, {} ran their action) on {} keys, {} executions, {} double runs ({} after an attached call's cancellation), {} extra runs allowed ({} lease losses counted by the library; the rest reservations the run corrupted, or fail-open runs), {} stuck keys, longest call {:?}, longest final call {longest_final:?}; {} reservations corrupted, wrong type planted on {:?}, failover (asked, done) {:?}",
        chaos.on_storage_error,
        report.calls,
        report.successes,
        report.errors,
        report.cancelled,
        report.cancelled_after_effect,
        report.ran,
        report.keys,
        report.executions,
        report.double_runs,
        report.after_cancellation,
        report.lease_losses,
        env.metrics.count("error", error_type::LEASE_LOST),
        stuck.len(),
        report.longest_call,
        disturbed
            .corrupted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .sum::<usize>(),
        disturbed
            .wrong_typed
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
        disturbed
            .failed_over
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    assert!(stuck.is_empty(), "keys stuck after the run: {stuck:#?}");
    if redis {
        assert!(
            chaos.history.runs_of(&Chaos::<S>::op(HASH_KEY)).is_empty(),
            "never run over a value of another type"
        );
    }
    assert!(
        report.successes > report.calls / 3,
        "most calls got a value"
    );
    Measured {
        report,
        disturbed,
        history: Arc::clone(&chaos.history),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_memory() {
    let env = crate::common::memory();
    chaos(env, Attachment::Detached, |_, _, _| {}, Extra::default()).await;
}

/// Plants bytes (or a hash) under a Redis key, on the node `port_for` names.
fn planter(port_for: impl Fn(&str) -> u16) -> impl Fn(&str, &[u8], bool) {
    move |redis_key, value, hash| {
        let port = port_for(redis_key);
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
    chaos(
        env,
        Attachment::Detached,
        planter(move |_| port),
        Extra::default(),
    )
    .await;
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
        metrics: Arc::new(idempotency_testkit::RecordingMetrics::default()),
        server: Some(Arc::new(server)),
        cluster: None,
    };
    chaos(
        env,
        Attachment::Detached,
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
        Attachment::Detached,
        planter(move |redis_key| cluster.owner_port(redis_key)),
        Extra::default(),
    )
    .await;
}

/// Runs `script` on the key (on the node `port_for` names) with `args`; `true` when it
/// answered 1.
fn rewrite_by_script(
    script: &'static str,
    port_for: impl Fn(&str) -> u16 + Send + Sync + 'static,
) -> Rewrite {
    Arc::new(move |redis_key: &str, status: &str| {
        let port = port_for(redis_key);
        let marker = format!("\"status\":\"{status}\"");
        let args: [&[u8]; 5] = [
            b"EVAL",
            script.as_bytes(),
            b"1",
            redis_key.as_bytes(),
            marker.as_bytes(),
        ];
        idempotency_testkit::resp::command_bytes(port, &args).is_ok_and(|r| r.as_int() == Some(1))
    })
}

/// Replaces the record under a key, if it has the given status, with bytes no client can
/// read, keeping its TTL: data corruption of a live reservation.
fn corrupter(port_for: impl Fn(&str) -> u16 + Send + Sync + 'static) -> Rewrite {
    const SCRIPT: &str = "if redis.call('TYPE', KEYS[1]).ok ~= 'string' then return 0 end \
        local v = redis.call('GET', KEYS[1]) \
        if v and string.find(v, ARGV[1], 1, true) then \
        redis.call('SET', KEYS[1], '{garbage', 'KEEPTTL') return 1 end return 0";
    rewrite_by_script(SCRIPT, port_for)
}

/// Replaces the record under a key, if it has the given status, with a hash that never
/// expires: a value of another type planted mid-run (no client may ever run over it).
fn wrong_typer(port_for: impl Fn(&str) -> u16 + Send + Sync + 'static) -> Rewrite {
    const SCRIPT: &str = "if redis.call('TYPE', KEYS[1]).ok ~= 'string' then return 0 end \
        local v = redis.call('GET', KEYS[1]) \
        if v and string.find(v, ARGV[1], 1, true) then \
        redis.call('DEL', KEYS[1]) redis.call('HSET', KEYS[1], 'planted', 'mid-run') \
        return 1 end return 0";
    rewrite_by_script(SCRIPT, port_for)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_with_live_reservations_corrupted_mid_run() {
    let env = crate::common::standalone().await;
    let port = env.server.as_ref().expect("server").port();
    let measured = chaos(
        env,
        Attachment::Detached,
        planter(move |_| port),
        Extra {
            corrupt: Some(corrupter(move |_| port)),
            ..Extra::default()
        },
    )
    .await;
    assert_corrupted(&measured);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_cluster_with_live_reservations_corrupted_mid_run() {
    let env = crate::common::cluster().await;
    let cluster = Arc::clone(env.cluster.as_ref().expect("cluster"));
    let owner = Arc::clone(&cluster);
    let measured = chaos(
        env,
        Attachment::Detached,
        planter(move |redis_key| cluster.owner_port(redis_key)),
        Extra {
            corrupt: Some(corrupter(move |redis_key| owner.owner_port(redis_key))),
            ..Extra::default()
        },
    )
    .await;
    assert_corrupted(&measured);
}

/// The run corrupted at least one live reservation (otherwise it proved nothing).
fn assert_corrupted(measured: &Measured) {
    assert!(
        !measured
            .disturbed
            .corrupted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty(),
        "the run corrupted no live reservation: vacuous"
    );
}

/// Both keys of [`WRONG_TYPE_MID_RUN`] got their hash mid-run, and no action started on
/// them after that (a value of another type is a data error, never a reason to run, not
/// even fail-open).
fn assert_wrong_typed(measured: &Measured) {
    let planted = measured
        .disturbed
        .wrong_typed
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let wanted: BTreeSet<u64> = WRONG_TYPE_MID_RUN.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        planted.keys().copied().collect::<BTreeSet<u64>>(),
        wanted,
        "a value of another type planted over a live reservation and a completed record"
    );
    // A call that started after the plant found the hash: it must not have run. (One
    // that claimed before may run after it: its claim held the key then.)
    let calls = measured.history.calls();
    for (n, at) in planted {
        let op = format!("chaos.k{n}");
        let late: Vec<_> = measured
            .history
            .runs_of(&op)
            .into_iter()
            .filter(|r| calls.iter().any(|c| c.caller == r.caller && c.start > at))
            .collect();
        assert!(
            late.is_empty(),
            "{op}: calls that started after the hash was planted at {at:?} ran: {late:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_with_values_of_another_type_planted_mid_run() {
    let env = crate::common::standalone().await;
    let port = env.server.as_ref().expect("server").port();
    let measured = chaos(
        env,
        Attachment::Detached,
        planter(move |_| port),
        Extra {
            wrong_type: Some(wrong_typer(move |_| port)),
            fail_open: Some(OnStorageError::Run),
            ..Extra::default()
        },
    )
    .await;
    assert_wrong_typed(&measured);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_cluster_with_values_of_another_type_planted_mid_run() {
    let env = crate::common::cluster().await;
    let cluster = Arc::clone(env.cluster.as_ref().expect("cluster"));
    let owner = Arc::clone(&cluster);
    let measured = chaos(
        env,
        Attachment::Detached,
        planter(move |redis_key| cluster.owner_port(redis_key)),
        Extra {
            wrong_type: Some(wrong_typer(move |redis_key| owner.owner_port(redis_key))),
            fail_open: Some(OnStorageError::Run),
            ..Extra::default()
        },
    )
    .await;
    assert_wrong_typed(&measured);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_across_a_cluster_master_failover() {
    // A cluster of its own: the failover changes which node masters a third of the slots.
    let cluster = Arc::new(tokio::task::block_in_place(RedisCluster::start));
    // Linked replicas: the failover 300 ms into the run then happens while calls go on.
    tokio::task::block_in_place(|| cluster.wait_replicas_linked(Duration::from_secs(30)));
    let store = idempotency_redis::RedisStore::connect(
        &cluster.url(),
        &idempotency_redis::ConnectOptions::default()
            .with_command_timeout(Duration::from_millis(500))
            .with_reconnect_max_delay(Duration::from_millis(50)),
    )
    .await
    .expect("connect");
    let env = crate::common::Env {
        store: crate::common::wrap(store),
        metrics: Arc::new(idempotency_testkit::RecordingMetrics::default()),
        server: None,
        cluster: Some(Arc::clone(&cluster)),
    };
    let owner = Arc::clone(&cluster);
    let measured = chaos(
        env,
        Attachment::Detached,
        planter(move |redis_key| owner.owner_port(redis_key)),
        Extra {
            failover: Some(cluster),
            ..Extra::default()
        },
    )
    .await;
    let failed_over = *measured
        .disturbed
        .failed_over
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    assert!(failed_over.is_some(), "the master failed over");
}

// Attached calls cancelled at random points (in the claim, mid-action, in the completion):
// `docs/coordinator.md` promises nothing ran when the drop came before the action, and
// allows one more run after a drop that came after the action's side effect (the key is
// released). The checker holds every re-run to a distinct such drop that came before it.
/// Some attached call was dropped after its action's side effect: the rule was exercised.
fn assert_cancelled_after_effect(measured: &Measured) {
    assert!(
        measured.report.cancelled_after_effect > 0,
        "no attached call was cancelled after its side effect: vacuous"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_memory_with_attached_calls_cancelled() {
    let env = crate::common::memory();
    let measured = chaos(env, Attachment::Attached, |_, _, _| {}, Extra::default()).await;
    assert_cancelled_after_effect(&measured);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_standalone_with_attached_calls_cancelled() {
    let env = crate::common::standalone().await;
    let port = env.server.as_ref().expect("server").port();
    let measured = chaos(
        env,
        Attachment::Attached,
        planter(move |_| port),
        Extra::default(),
    )
    .await;
    assert_cancelled_after_effect(&measured);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_cluster_with_attached_calls_cancelled() {
    let env = crate::common::cluster().await;
    let cluster = Arc::clone(env.cluster.as_ref().expect("cluster"));
    let measured = chaos(
        env,
        Attachment::Attached,
        planter(move |redis_key| cluster.owner_port(redis_key)),
        Extra::default(),
    )
    .await;
    assert_cancelled_after_effect(&measured);
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
    let env = env_of_its_own(&server.url(), None).await;
    chaos(
        env,
        Attachment::Detached,
        planter(move |_| port),
        Extra {
            restart: Some(Arc::new(Mutex::new(server))),
            ..Extra::default()
        },
    )
    .await;
}

/// Writes refused mid-run, over and over (`NOREPLICAS`, then `OOM`, each for about 24 ms,
/// the server writable between them), while it serves reads: a refused claim reads the
/// key, so completed keys replay and held keys wait; no double run, no stuck key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_with_writes_refused_mid_run() {
    let server = idempotency_testkit::RedisServer::start();
    let port = server.port();
    let env = env_of_its_own(&server.url(), Some(Arc::new(server))).await;
    chaos(
        env,
        Attachment::Detached,
        planter(move |_| port),
        Extra {
            refuse_writes: Some(port),
            ..Extra::default()
        },
    )
    .await;
}

/// An env on a server the test owns: a store with a 500 ms command timeout that
/// reconnects within 50 ms; `server` kept alive with it when given.
async fn env_of_its_own(
    url: &str,
    server: Option<Arc<idempotency_testkit::RedisServer>>,
) -> crate::common::Env<idempotency_redis::RedisStore> {
    let store = idempotency_redis::RedisStore::connect(
        url,
        &idempotency_redis::ConnectOptions::default()
            .with_command_timeout(Duration::from_millis(500))
            .with_reconnect_max_delay(Duration::from_millis(50)),
    )
    .await
    .expect("connect");
    crate::common::Env {
        store: crate::common::wrap(store),
        metrics: Arc::new(idempotency_testkit::RecordingMetrics::default()),
        server,
        cluster: None,
    }
}
