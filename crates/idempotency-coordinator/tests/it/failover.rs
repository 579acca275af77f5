//! A master of a real cluster dies while 32 tasks keep calling: calls fail only in the
//! failover window, and succeed again once a replica has taken over.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use idempotency_coordinator::{Coordinator, IdempotencyError, OnStorageError};
use idempotency_redis::{ConnectOptions, RedisStore};
use idempotency_testkit::RedisCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_recover_after_a_master_fails_over() {
    let mut cluster = RedisCluster::start();
    let options = ConnectOptions::default().with_command_timeout(Duration::from_millis(800));
    let store = RedisStore::connect(&cluster.url(), &options)
        .await
        .expect("connect");
    // Fail closed so a call in the window is a counted failure, not a silent unprotected run.
    let coordinator = Coordinator::builder(store)
        .on_storage_error(OnStorageError::Raise)
        .build()
        .expect("c");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let (coordinator, stop, ok, failed) = (
                coordinator.clone(),
                stop.clone(),
                ok.clone(),
                failed.clone(),
            );
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let key = format!("fo-{t}-{n}");
                    match coordinator
                        .call("op", Some(&key))
                        .run(|| async { Ok::<_, IdempotencyError>(n) })
                        .await
                    {
                        Ok(_) => ok.fetch_add(1, Ordering::SeqCst),
                        Err(_) => failed.fetch_add(1, Ordering::SeqCst),
                    };
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before_ok = ok.load(Ordering::SeqCst);
    assert!(before_ok > 0, "calls succeed before the fault");
    let master = cluster.master_ports()[0];
    let killed_at = Instant::now();
    cluster
        .nodes_mut()
        .iter_mut()
        .find(|n| n.port() == master)
        .expect("master")
        .kill();
    // The cluster settles once a replica is promoted (node timeout 2 s).
    tokio::task::block_in_place(|| cluster.wait_failover(master, 3, Duration::from_secs(30)));
    let settled_after = killed_at.elapsed();
    // Give the client a moment to learn the new topology, then measure a clean window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let failed_in_window = failed.load(Ordering::SeqCst);
    let ok_mark = ok.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.expect("task");
    }
    let failed_after = failed.load(Ordering::SeqCst) - failed_in_window;
    let ok_after = ok.load(Ordering::SeqCst) - ok_mark;
    eprintln!(
        "failover: settled after {settled_after:?}; {} calls ok, {failed_in_window} failed in the window, {ok_after} ok and {failed_after} failed after settling",
        ok.load(Ordering::SeqCst)
    );
    assert!(ok_after > 0, "calls succeed after the failover");
    assert_eq!(
        failed_after, 0,
        "no call fails once the cluster has settled"
    );
}
