//! In-process coalescing as it ships: `idempotency-coordinator/src/coalesce.rs` itself,
//! compiled here against shuttle's `Mutex` and a `watch` on shuttle's primitives
//! (`shuttle_sync.rs`, standing in for the coordinator's `sync.rs`), so shuttle explores
//! the real `Coalescer::join`, `Ticket::held`, `Ticket::finish` and `Ticket`'s drop.
//! The follower's loop is `Coordinator::follow`'s, restated (it reaches the store and
//! the call's options). Checked: at most one leader per key at a time, followers woken
//! by every outcome (a lost wake-up is a deadlock shuttle reports), every caller ends
//! with the stored value, and the map is empty after. The restated model in
//! `coalesce.rs` keeps the broken variants, each shown to fail.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use idempotency_core::{IdempotencyDomainService, IdempotencyRecord, RecordId};

use crate::shipped_coalesce::{Coalescer, Joined, Phase};

/// The store behind the flights: the first leader to finish stores its value; a later
/// leader's claim finds it (as a claim finds the completed record).
#[derive(Default)]
struct Store {
    value: shuttle::sync::Mutex<Option<Arc<IdempotencyRecord>>>,
}

fn record(me: usize) -> Arc<IdempotencyRecord> {
    let record = IdempotencyDomainService::default()
        .create_record("model.coalesce", "k", &me)
        .expect("a record");
    Arc::new(record)
}

/// One call; `fails`: its first flight as a leader ends without an outcome (its action
/// failed and released the key, or its future was dropped). Counts leaders at once.
async fn call(
    coalescer: Arc<Coalescer>,
    store: Arc<Store>,
    leaders: Arc<(AtomicUsize, AtomicUsize)>,
    me: usize,
    fails: bool,
) -> String {
    let id = RecordId::new("model.coalesce", "k").expect("id");
    let mut failed_once = false;
    loop {
        match coalescer.join(&id, Some("fp")) {
            Joined::Leader(mut ticket) => {
                let now = leaders.0.fetch_add(1, Ordering::SeqCst) + 1;
                leaders.1.fetch_max(now, Ordering::SeqCst);
                let found = store.value.lock().expect("not poisoned").clone();
                if let Some(found) = found {
                    leaders.0.fetch_sub(1, Ordering::SeqCst);
                    let text = found.result().get().to_owned();
                    ticket.finish(|| Phase::Found {
                        record: found,
                        waited: false,
                    });
                    return text;
                }
                ticket.held();
                shuttle::future::yield_now().await; // the action runs
                if fails && !failed_once {
                    failed_once = true;
                    leaders.0.fetch_sub(1, Ordering::SeqCst);
                    drop(ticket);
                    continue;
                }
                let mine = record(me);
                *store.value.lock().expect("not poisoned") = Some(Arc::clone(&mine));
                leaders.0.fetch_sub(1, Ordering::SeqCst);
                let text = mine.result().get().to_owned();
                ticket.finish(|| Phase::Found {
                    record: mine,
                    waited: true,
                });
                return text;
            }
            Joined::Follower(mut rx) => loop {
                match rx.borrow_and_update() {
                    Phase::Found { record, .. } => return record.result().get().to_owned(),
                    Phase::Vacated | Phase::Alone | Phase::StoreDown { .. } => break,
                    Phase::Claiming | Phase::Held => {}
                }
                if rx.changed().await.is_err()
                    && !matches!(rx.borrow_and_update(), Phase::Found { .. })
                {
                    // Closed with no terminal phase read: claim to be sure (`follow`).
                    break;
                }
            },
            Joined::Alone => panic!("every caller has the leader's fingerprint"),
        }
    }
}

fn scenario() {
    shuttle::future::block_on(async {
        let coalescer = Arc::new(Coalescer::new());
        let store = Arc::new(Store::default());
        let leaders = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
        let tasks: Vec<_> = (0..3)
            .map(|me| {
                shuttle::future::spawn(call(
                    Arc::clone(&coalescer),
                    Arc::clone(&store),
                    Arc::clone(&leaders),
                    me,
                    me == 0,
                ))
            })
            .collect();
        let mut values = Vec::new();
        for task in tasks {
            values.push(task.await.expect("no panic"));
        }
        assert_eq!(leaders.1.load(Ordering::SeqCst), 1, "leaders at once");
        let stored = store
            .value
            .lock()
            .expect("not poisoned")
            .clone()
            .expect("a value");
        assert!(
            values.iter().all(|v| v == stored.result().get()),
            "{values:?}"
        );
        // The map is empty: a new caller leads.
        let id = RecordId::new("model.coalesce", "k").expect("id");
        assert!(matches!(coalescer.join(&id, Some("fp")), Joined::Leader(_)));
    });
}

#[test]
fn the_shipped_coalescer_wakes_followers_on_every_outcome_with_one_leader_at_a_time() {
    shuttle::check_random_with_seed(scenario, crate::SHUTTLE_SEED, 2000);
}
