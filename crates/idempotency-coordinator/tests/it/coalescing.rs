//! In-process coalescing: concurrent calls for one key in one process share one store
//! claim, on every store. Store traffic is counted by a wrapper around the store (every
//! trait call is one command on Redis, one step on memory) and, on standalone Redis, by
//! the command-counting proxy on the wire.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idempotency_coordinator::{Coordinator, InFlight, JsonAdapter, OnStorageError, Outcome};
use idempotency_core::{
    Claim, Fence, Finished, IdempotencyError, IdempotencyRecord, IdempotencyRepository, Lease,
    RecordId, ReservationStore, Result,
};

use crate::common::{Env, Faulty, Runs, counted, unique};

/// Counts every store step a coordinator takes.
#[derive(Debug, Clone)]
struct Counting<S> {
    inner: S,
    claims: Arc<AtomicUsize>,
    steps: Arc<AtomicUsize>,
}

impl<S> Counting<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            claims: Arc::default(),
            steps: Arc::default(),
        }
    }
    fn tick(&self) {
        self.steps.fetch_add(1, Ordering::SeqCst);
    }
    /// Store steps of every kind so far.
    fn steps(&self) -> usize {
        self.steps.load(Ordering::SeqCst)
    }
    fn claims(&self) -> usize {
        self.claims.load(Ordering::SeqCst)
    }
}

impl<S: IdempotencyRepository> IdempotencyRepository for Counting<S> {
    async fn get(&self, id: &RecordId) -> Result<Option<IdempotencyRecord>> {
        self.tick();
        self.inner.get(id).await
    }
    async fn save(&self, record: &IdempotencyRecord) -> Result<()> {
        self.tick();
        self.inner.save(record).await
    }
    async fn replace(&self, record: &IdempotencyRecord) -> Result<()> {
        self.tick();
        self.inner.replace(record).await
    }
    async fn delete(&self, id: &RecordId) -> Result<bool> {
        self.tick();
        self.inner.delete(id).await
    }
}

impl<S: ReservationStore> ReservationStore for Counting<S> {
    type Watch = S::Watch;

    async fn claim(&self, lease: &Lease, duration: Duration) -> Result<Claim> {
        self.tick();
        self.claims.fetch_add(1, Ordering::SeqCst);
        self.inner.claim(lease, duration).await
    }
    async fn finish(&self, lease: &Lease, finished: Finished<'_>, ttl: Duration) -> Result<Fence> {
        self.tick();
        self.inner.finish(lease, finished, ttl).await
    }
    async fn renew(&self, lease: &Lease, duration: Duration) -> Result<Fence> {
        self.tick();
        self.inner.renew(lease, duration).await
    }
    async fn release(&self, lease: &Lease) -> Result<Fence> {
        self.tick();
        self.inner.release(lease).await
    }
    async fn watch(&self, id: &RecordId) -> Result<S::Watch> {
        self.tick();
        self.inner.watch(id).await
    }
}

type Counted<S> = Coordinator<Counting<Faulty<S>>>;

/// A coordinator over a counting wrapper of the env's store, sharing its metrics.
fn counting<S: ReservationStore + Clone>(
    env: &Env<S>,
    coalesce: bool,
) -> (Counted<S>, Counting<Faulty<S>>) {
    let store = Counting::new(env.store.clone());
    let coordinator = Coordinator::builder(store.clone())
        .metrics(env.metrics.clone())
        .coalesce(coalesce)
        .build()
        .expect("valid settings");
    (coordinator, store)
}

/// Spawns `n` calls of `key` (each with a counted action holding `hold`, returning
/// `value`) and returns their outcomes in spawn order.
async fn storm<S: ReservationStore + Clone + 'static>(
    coordinator: &Counted<S>,
    key: &str,
    n: usize,
    runs: &Runs,
    hold: Duration,
) -> Vec<Outcome> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let coordinator = coordinator.clone();
            let key = key.to_owned();
            let action = counted(runs, hold, 7);
            tokio::spawn(async move {
                coordinator
                    .call("op", Some(&key))
                    .run_with_outcome(action)
                    .await
            })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(n);
    for t in tasks {
        let (value, outcome) = t.await.expect("task").expect("call");
        assert_eq!(value, 7);
        outcomes.push(outcome);
    }
    outcomes
}

fn count(outcomes: &[Outcome], which: Outcome) -> usize {
    outcomes.iter().filter(|o| **o == which).count()
}

/// A leader's task, and the signal that its action runs.
type Leader = (
    tokio::task::JoinHandle<std::result::Result<(u32, Outcome), IdempotencyError>>,
    tokio::sync::oneshot::Receiver<()>,
);

/// Starts a call whose action signals once running, then holds the key for `hold`.
fn start_leader<S: ReservationStore + Clone + 'static>(
    coordinator: &Counted<S>,
    key: &str,
    fingerprint: Option<&str>,
    hold: Duration,
    runs: &Runs,
) -> Leader {
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let coordinator = coordinator.clone();
    let key = key.to_owned();
    let fingerprint = fingerprint.map(str::to_owned);
    let runs = runs.clone();
    let task = tokio::spawn(async move {
        coordinator
            .call("op", Some(&key))
            .maybe_fingerprint(fingerprint)
            .run_with_outcome(|| async move {
                runs.tick();
                let _ = started_tx.send(());
                tokio::time::sleep(hold).await;
                Ok(1)
            })
            .await
    });
    (task, started_rx)
}

on_all!(a_thousand_callers_on_one_key_cost_one_claim, |env| {
    let (coordinator, store) = counting(&env, true);
    let runs = Runs::default();
    let key = unique("storm");
    // The action takes long enough (300 ms) that every caller arrives while it runs.
    let outcomes = storm(&coordinator, &key, 1000, &runs, Duration::from_millis(300)).await;
    assert_eq!(runs.get(), 1, "the action ran once");
    assert_eq!(count(&outcomes, Outcome::Executed), 1);
    assert_eq!(count(&outcomes, Outcome::WaitedThenReplayed), 999);
    // The leader's claim and completion; no caller waited on the store.
    assert_eq!(store.claims(), 1, "one claim for the process");
    let per_caller = store.steps() as f64 / 1000.0;
    assert!(
        per_caller < 0.05,
        "{} store steps for 1000 callers",
        store.steps()
    );
    // Metrics stay per caller: one miss, 999 hits, 999 collisions (each follower found
    // the key held).
    assert_eq!(env.metrics.count("miss", ""), 1);
    assert_eq!(env.metrics.count("hit", ""), 999);
    assert_eq!(env.metrics.count("collision", ""), 999);
});

on_all!(
    waiting_on_another_process_costs_one_subscription_and_one_reread,
    |env| {
        // The holder is another coordinator on the same store (another process, as far as
        // this one can tell); 500 callers here wait on it through one leader.
        let elsewhere = Coordinator::builder(env.store.clone())
            .build()
            .expect("valid settings");
        let (coordinator, store) = counting(&env, true);
        let runs = Runs::default();
        let key = unique("remote");
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let holder = {
            let key = key.clone();
            let runs = runs.clone();
            tokio::spawn(async move {
                elsewhere
                    .call("op", Some(&key))
                    .run(|| async move {
                        runs.tick();
                        let _ = started_tx.send(());
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        Ok::<_, IdempotencyError>(7u32)
                    })
                    .await
            })
        };
        started_rx.await.expect("holder started");
        let outcomes = storm(&coordinator, &key, 500, &runs, Duration::ZERO).await;
        assert_eq!(holder.await.expect("task").expect("holder"), 7);
        assert_eq!(runs.get(), 1);
        assert_eq!(count(&outcomes, Outcome::WaitedThenReplayed), 500);
        // The leader's claim, its subscription, its re-check after subscribing and its
        // re-read after the wake-up (a safety poll or two on a loaded machine at most).
        assert_eq!(store.steps() - store.claims(), 1, "one subscription");
        assert!(
            store.claims() <= 5,
            "{} claims for 500 callers",
            store.claims()
        );
    }
);

on_all!(without_coalescing_every_caller_claims, |env| {
    let (coordinator, store) = counting(&env, false);
    let runs = Runs::default();
    let outcomes = storm(
        &coordinator,
        &unique("storm"),
        50,
        &runs,
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(runs.get(), 1);
    assert_eq!(count(&outcomes, Outcome::WaitedThenReplayed), 49);
    // Each caller claims at least once (and the waiters again after the wake-up).
    assert!(store.claims() >= 50, "{} claims", store.claims());
});

on_all!(followers_of_a_hit_replay_what_the_leader_found, |env| {
    let (coordinator, store) = counting(&env, true);
    let runs = Runs::default();
    let key = unique("hit");
    let seeded = coordinator
        .call("op", Some(&key))
        .run(counted(&runs, Duration::ZERO, 7))
        .await
        .expect("seed");
    assert_eq!(seeded, 7);
    let claims = store.claims();
    env.metrics.clear();
    // The next claim's reply takes 500 ms: every caller arrives while it is on its way.
    env.faults().claim_stall_ms.store(500, Ordering::SeqCst);
    env.faults().claim_stall.store(true, Ordering::SeqCst);
    let outcomes = storm(&coordinator, &key, 100, &runs, Duration::ZERO).await;
    assert_eq!(runs.get(), 1, "nothing ran again");
    assert_eq!(count(&outcomes, Outcome::Replayed), 100, "{outcomes:?}");
    assert_eq!(store.claims() - claims, 1, "one claim for all 100 hits");
    assert_eq!(env.metrics.count("hit", ""), 100);
    assert_eq!(
        env.metrics.count("collision", ""),
        0,
        "a hit is no collision"
    );
});

on_all!(
    each_follower_decodes_the_shared_record_into_its_own_type,
    |env| {
        let (coordinator, _store) = counting(&env, true);
        let runs = Runs::default();
        let key = unique("types");
        let (leader, started) =
            start_leader(&coordinator, &key, None, Duration::from_millis(300), &runs);
        started.await.expect("leader started");
        let as_json = {
            let coordinator = coordinator.clone();
            let key = key.clone();
            tokio::spawn(async move {
                coordinator
                    .call("op", Some(&key))
                    .adapter(JsonAdapter)
                    .run_with_outcome(|| async {
                        Ok::<_, IdempotencyError>(serde_json::json!("never"))
                    })
                    .await
            })
        };
        let as_string = {
            let coordinator = coordinator.clone();
            let key = key.clone();
            tokio::spawn(async move {
                coordinator
                    .call("op", Some(&key))
                    .run(|| async { Ok::<_, IdempotencyError>(String::from("never")) })
                    .await
            })
        };
        assert_eq!(
            leader.await.expect("task").expect("leader"),
            (1, Outcome::Executed)
        );
        assert_eq!(
            as_json.await.expect("task").expect("json follower"),
            (serde_json::json!(1), Outcome::WaitedThenReplayed)
        );
        // A follower whose type cannot hold the result gets its own decode error; nothing
        // runs again.
        let e = as_string
            .await
            .expect("task")
            .expect_err("a number is no string");
        assert!(
            matches!(e.class(), idempotency_core::ErrorClass::Data),
            "{e:?}"
        );
        assert_eq!(runs.get(), 1);
        assert_eq!(env.metrics.count("error", "decode_error"), 1);
    }
);

on_all!(
    callers_keep_their_own_fingerprint_mode_and_patience,
    |env| {
        let (coordinator, store) = counting(&env, true);
        let runs = Runs::default();
        let key = unique("options");
        // The leader holds the key for 5 s; every check below finishes long before.
        let (leader, started) = start_leader(
            &coordinator,
            &key,
            Some("fp-a"),
            Duration::from_secs(5),
            &runs,
        );
        started.await.expect("leader started");
        let claims = store.claims();

        // Another fingerprint: refused at once, as by the store.
        let reuse = coordinator
            .call("op", Some(&key))
            .fingerprint("fp-b")
            .run(counted(&runs, Duration::ZERO, 2))
            .await
            .expect_err("key reuse");
        assert!(
            matches!(reuse, IdempotencyError::KeyReuse { .. }),
            "{reuse:?}"
        );

        // Raise: in progress at once, answered in the process (no claim sent).
        let claims_before_raise = store.claims();
        let raised = coordinator
            .call("op", Some(&key))
            .fingerprint("fp-a")
            .in_flight(InFlight::Raise)
            .run(counted(&runs, Duration::ZERO, 3))
            .await
            .expect_err("in progress");
        assert!(
            matches!(raised, IdempotencyError::InProgress { .. }),
            "{raised:?}"
        );
        assert_eq!(
            store.claims(),
            claims_before_raise,
            "a local follower sends no claim"
        );

        // Its own maximum wait: 200 ms, not the leader's 5 s.
        let patient_for = std::time::Instant::now();
        let gave_up = coordinator
            .call("op", Some(&key))
            .fingerprint("fp-a")
            .max_wait(Duration::from_millis(200))
            .run(counted(&runs, Duration::ZERO, 4))
            .await
            .expect_err("gave up");
        assert!(
            matches!(gave_up, IdempotencyError::InProgress { .. }),
            "{gave_up:?}"
        );
        assert!(patient_for.elapsed() >= Duration::from_millis(200));
        assert!(
            !leader.is_finished(),
            "answered while the leader still runs"
        );
        assert_eq!(runs.get(), 1, "none of them ran");
        // Only the other fingerprint went to the store.
        assert_eq!(store.claims() - claims, 1);
        assert_eq!(env.metrics.count("error", "key_reuse"), 1);
        leader.abort();
    }
);

on_all!(
    a_cancelled_leader_wakes_its_followers_and_one_of_them_runs,
    |env| {
        let (coordinator, _store) = counting(&env, true);
        let runs = Runs::default();
        let key = unique("cancelled");
        // The leader would hold the key for a minute; it is cancelled instead.
        let (leader, started) =
            start_leader(&coordinator, &key, None, Duration::from_secs(60), &runs);
        started.await.expect("leader started");
        let followers = {
            let coordinator = coordinator.clone();
            let key = key.clone();
            let runs = runs.clone();
            tokio::spawn(async move { storm(&coordinator, &key, 20, &runs, Duration::ZERO).await })
        };
        // Let the followers join the leader's flight (they wait a minute if it strands them).
        tokio::time::sleep(Duration::from_millis(200)).await;
        leader.abort();
        let outcomes = tokio::time::timeout(Duration::from_secs(20), followers)
            .await
            .expect("the followers were not stranded")
            .expect("task");
        assert_eq!(count(&outcomes, Outcome::TookOver), 1, "{outcomes:?}");
        assert_eq!(
            count(&outcomes, Outcome::WaitedThenReplayed),
            19,
            "{outcomes:?}"
        );
        assert_eq!(runs.get(), 2, "the cancelled leader and one follower");
    }
);

on_all!(a_failed_leader_lets_one_follower_run, |env| {
    let (coordinator, _store) = counting(&env, true);
    let runs = Runs::default();
    let key = unique("failed");
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let leader = {
        let coordinator = coordinator.clone();
        let key = key.clone();
        tokio::spawn(async move {
            coordinator
                .call("op", Some(&key))
                .run(|| async move {
                    let _ = started_tx.send(());
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    Err::<u32, _>(IdempotencyError::configuration("the leader fails", None))
                })
                .await
        })
    };
    started_rx.await.expect("leader started");
    let outcomes = storm(&coordinator, &key, 20, &runs, Duration::ZERO).await;
    assert!(leader.await.expect("task").is_err());
    assert_eq!(count(&outcomes, Outcome::TookOver), 1, "{outcomes:?}");
    assert_eq!(
        count(&outcomes, Outcome::WaitedThenReplayed),
        19,
        "{outcomes:?}"
    );
    assert_eq!(runs.get(), 1, "one follower ran");
    assert_eq!(
        env.metrics.count("miss", ""),
        2,
        "the leader and the follower that ran"
    );
    assert_eq!(env.metrics.count("hit", ""), 19);
});

on_all!(detached_leader_and_followers_share_one_run, |env| {
    let (coordinator, store) = counting(&env, true);
    let runs = Runs::default();
    let key = unique("detached");
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let leader_runs = runs.clone();
    let leader = {
        let (coordinator, key) = (coordinator.clone(), key.clone());
        tokio::spawn(async move {
            coordinator
                .call("op", Some(&key))
                .run_detached_with_outcome(move || async move {
                    leader_runs.tick();
                    let _ = started_tx.send(());
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    Ok::<_, IdempotencyError>(5u32)
                })
                .await
        })
    };
    // The leader's caller goes away at once; its detached call goes on.
    started_rx.await.expect("leader started");
    leader.abort();
    let followers: Vec<_> = (0..20)
        .map(|_| {
            let (coordinator, key) = (coordinator.clone(), key.clone());
            let action = counted(&runs, Duration::ZERO, 9);
            tokio::spawn(async move {
                coordinator
                    .call("op", Some(&key))
                    .run_detached_with_outcome(action)
                    .await
            })
        })
        .collect();
    for f in followers {
        assert_eq!(
            f.await.expect("task").expect("follower"),
            (5, Outcome::WaitedThenReplayed)
        );
    }
    assert_eq!(runs.get(), 1);
    assert_eq!(store.claims(), 1);
});

on_all!(
    a_storage_failure_is_shared_and_each_caller_applies_its_own_mode,
    |env| {
        let (coordinator, store) = counting(&env, true);
        let runs = Runs::default();
        let key = unique("down");
        // The next claim is applied, its reply takes 500 ms and is then lost.
        env.faults().claim_stall_ms.store(500, Ordering::SeqCst);
        env.faults().claim_stall.store(true, Ordering::SeqCst);
        env.faults().claim_reply_lost.store(true, Ordering::SeqCst);
        let call = |mode| {
            let coordinator = coordinator.clone();
            let key = key.clone();
            let action = counted(&runs, Duration::ZERO, 3);
            tokio::spawn(async move {
                coordinator
                    .call("op", Some(&key))
                    .on_storage_error(mode)
                    .run_with_outcome(action)
                    .await
            })
        };
        let leader = call(OnStorageError::Run);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let closed: Vec<_> = (0..10).map(|_| call(OnStorageError::Raise)).collect();
        let open = call(OnStorageError::Run);
        assert_eq!(
            leader.await.expect("task").expect("leader").1,
            Outcome::Unprotected
        );
        for c in closed {
            let e = c.await.expect("task").expect_err("fails closed");
            assert!(e.is_storage(), "{e:?}");
        }
        // Failing open, a follower claims on its own rather than run unprotected on the
        // leader's word: it finds the leader's reservation and waits for its result.
        assert_eq!(
            open.await.expect("task").expect("fails open").1,
            Outcome::WaitedThenReplayed
        );
        assert_eq!(runs.get(), 1, "only the leader ran (unprotected)");
        // The leader's claim, and the fail-open follower's own (its claim, the re-check
        // after subscribing, the re-read after the wake-up); none of the ten that failed
        // closed sent one.
        assert!(store.claims() <= 4, "{} claims", store.claims());
        assert_eq!(env.metrics.count("error", "storage_reserve_error"), 11);
    }
);

on_all!(
    a_leader_that_cannot_renew_no_longer_holds_local_callers,
    |env| {
        // As `behaviour::a_lost_lease_keeps_the_newer_record_and_is_counted`, with
        // coalescing: a leader whose renewals fail cannot vouch for the key, so a caller in
        // its own process takes the key over once the lease ran out, as one elsewhere would.
        let coordinator = Coordinator::builder(env.store.clone())
            .metrics(env.metrics.clone())
            .coalesce(true)
            .lease(Duration::from_secs(1))
            .in_flight(InFlight::Raise)
            .build()
            .expect("valid settings");
        let key = unique("renew");
        env.faults().renew.store(true, Ordering::SeqCst);
        let stalled = {
            let coordinator = coordinator.clone();
            let key = key.clone();
            tokio::spawn(async move {
                coordinator
                    .call("op", Some(&key))
                    .run(|| async {
                        tokio::time::sleep(Duration::from_millis(2000)).await;
                        Ok::<_, IdempotencyError>("stalled".to_owned())
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let (newer, outcome) = coordinator
            .call("op", Some(&key))
            .run_with_outcome(|| async { Ok::<_, IdempotencyError>("newer".to_owned()) })
            .await
            .expect("took over");
        assert_eq!((newer.as_str(), outcome), ("newer", Outcome::Executed));
        assert_eq!(stalled.await.expect("task").expect("stalled"), "stalled");
        let stored = env
            .store
            .get(&idempotency_testkit::record_id("op", &key))
            .await
            .expect("get")
            .expect("record");
        assert_eq!(stored.result().get(), "\"newer\"");
    }
);

/// On the wire: 1,000 callers on one key send a handful of commands in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_sends_under_five_hundredths_of_a_command_per_caller() {
    let server = idempotency_testkit::shared_server();
    let proxy = idempotency_testkit::proxy::Proxy::start(std::net::SocketAddr::from((
        [127, 0, 0, 1],
        server.port(),
    )));
    let store = idempotency_redis::RedisStore::connect(
        &proxy.url(),
        &idempotency_redis::ConnectOptions::default(),
    )
    .await
    .expect("connect");
    let coordinator = Coordinator::builder(store)
        .coalesce(true)
        .build()
        .expect("coordinator");
    // Connection set-up and script loading are not the storm's.
    let _: u32 = coordinator
        .call("op", Some(&unique("warm")))
        .run(|| async { Ok::<_, IdempotencyError>(1) })
        .await
        .expect("warm-up");
    let before = proxy.commands_sent();
    let runs = Runs::default();
    let key = unique("wire");
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let coordinator = coordinator.clone();
            let key = key.clone();
            let action = counted(&runs, Duration::from_millis(300), 7);
            tokio::spawn(async move { coordinator.call("op", Some(&key)).run(action).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.expect("task").expect("call"), 7);
    }
    let sent = proxy.commands_sent() - before;
    assert_eq!(runs.get(), 1);
    assert!(sent < 50, "{sent} commands for 1000 callers");
}

on_all!(
    a_follower_with_an_unbounded_max_wait_waits_for_its_leader,
    |env| {
        // `max_wait(Duration::MAX)` (as long as it takes) is a wait the clock cannot add: a
        // follower must not read it as "give up now".
        let coordinator = env.coordinator(|b| b.coalesce(true));
        let key = unique("coalesce-max-wait");
        let leader = crate::common::start_holder(
            &coordinator,
            &key,
            None,
            Duration::from_millis(800),
            Ok(7),
        )
        .await;
        let (value, outcome) = coordinator
            .call("op", Some(&key))
            .max_wait(Duration::MAX)
            .run_with_outcome(|| async { Ok::<_, idempotency_core::IdempotencyError>(8u32) })
            .await
            .expect("waited for the leader");
        assert_eq!((value, outcome), (7, Outcome::WaitedThenReplayed));
        assert_eq!(leader.await.expect("task").expect("leader"), 7);
    }
);

// Coalescing is also a setting (`IdempotencySettings::coalesce`, read from a service's
// configuration): the same storm costs one claim with it on and one per caller with it
// off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalescing_is_a_setting() {
    let env = crate::common::memory();
    for (coalesce, expected) in [(true, 1), (false, 20)] {
        let settings: idempotency_coordinator::IdempotencySettings =
            serde_json::from_value(serde_json::json!({ "coalesce": coalesce })).expect("settings");
        let store = Counting::new(env.store.clone());
        let coordinator = Coordinator::builder(store.clone())
            .settings(&settings)
            .build()
            .expect("valid settings");
        let runs = Runs::default();
        let key = unique("setting");
        let outcomes = storm(&coordinator, &key, 20, &runs, Duration::from_millis(300)).await;
        assert_eq!(runs.get(), 1, "the action ran once");
        assert_eq!(count(&outcomes, Outcome::Executed), 1);
        assert!(
            if coalesce {
                store.claims() == expected
            } else {
                store.claims() >= expected
            },
            "coalesce {coalesce}: {} claims for 20 callers",
            store.claims()
        );
    }
}
