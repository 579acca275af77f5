//! The in-memory store as it ships (`idempotency-core/src/memory.rs`, not a restatement)
//! under shuttle's scheduler: built with `RUSTFLAGS="--cfg shuttle"`, the store's `Mutex`
//! and `Notify` are shuttle's (`idempotency-core/src/sync.rs`), so shuttle explores the
//! interleavings of the real claim, completion, release and watch. Checked: exactly one
//! claimer acquires a key, and a waiter that follows the coordinator's order (watch, then
//! re-read, then wait) is never left asleep after the completion or the release: a lost
//! wake-up is a deadlock here, which shuttle reports (no timer rescues the waiter).
//!
//! Compiled only in that build (CI: `.ci/run`, "shuttle over shipped modules"); the
//! restated models in `in_process.rs` keep their broken variants, each shown to fail.
#![cfg(shuttle)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idempotency_core::{
    Claim, Clock, IdempotencyRepository, KeyWatch, Lease, MemoryStore, RawValue, RecordId,
    ReservationStore,
};

const LEASE: Duration = Duration::from_secs(30);

/// One caller as the coordinator's waiting mode runs it: claim; on a pending record,
/// watch, re-read, and wait until the key is finished or free; on acquiring, complete
/// (or release, when `release` says so).
async fn caller(store: MemoryStore, id: RecordId, acquired: Arc<AtomicUsize>, release: bool) {
    loop {
        let lease = Lease::new(id.clone(), None, Clock::system());
        match store.claim(&lease, LEASE).await.expect("claim") {
            Claim::Acquired => {
                acquired.fetch_add(1, Ordering::SeqCst);
                if release {
                    store.release(&lease).await.expect("release");
                } else {
                    let result = RawValue::from_string("1".to_owned()).expect("JSON");
                    store
                        .complete(&lease, &result, LEASE)
                        .await
                        .expect("complete");
                }
                return;
            }
            Claim::Found(record) if !record.is_pending() => return,
            Claim::Found(_) => {
                let mut watch = store.watch(&id).await.expect("watch");
                // Re-read after subscribing: a change before the watch is seen here.
                match store.get(&id).await.expect("get") {
                    Some(record) if !record.is_pending() => return,
                    None => continue,
                    Some(_) => {
                        assert!(watch.changed(LEASE).await, "woken");
                    }
                }
            }
        }
    }
}

fn scenario(release_first: bool) {
    shuttle::future::block_on(async move {
        let store = MemoryStore::new();
        let id = RecordId::new("model.shipped", "k").expect("id");
        let acquired = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..3)
            .map(|i| {
                shuttle::future::spawn(caller(
                    store.clone(),
                    id.clone(),
                    Arc::clone(&acquired),
                    release_first && i == 0,
                ))
            })
            .collect();
        for task in tasks {
            task.await.expect("caller");
        }
        let record = store.get(&id).await.expect("get");
        let runs = acquired.load(Ordering::SeqCst);
        if release_first {
            // A release frees the key: another caller acquires after it, once.
            assert!(runs >= 1 && runs <= 2, "{runs} acquisitions");
        } else {
            assert_eq!(runs, 1, "exactly one claimer acquires");
        }
        assert!(
            record.is_some_and(|r| !r.is_pending()),
            "the key ends completed"
        );
    });
}

#[test]
fn the_shipped_memory_store_has_one_owner_and_loses_no_wake_up() {
    shuttle::check_random_with_seed(|| scenario(false), crate::SHUTTLE_SEED, 2000);
}

#[test]
fn the_shipped_memory_store_wakes_waiters_on_release() {
    shuttle::check_random_with_seed(|| scenario(true), crate::SHUTTLE_SEED, 2000);
}
