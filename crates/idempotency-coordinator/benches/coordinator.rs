//! The coordinator's own CPU cost per call, on the in-memory store.
//! Run with `cargo bench -p idempotency-coordinator --bench coordinator`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use idempotency_coordinator::{Coordinator, IdempotencyError};

#[derive(serde::Serialize, serde::Deserialize)]
struct Order {
    id: u64,
    status: String,
}

fn benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let coordinator = Coordinator::in_memory();
    runtime
        .block_on(coordinator.call("order.create", Some("hit")).run(|| async {
            Ok::<_, IdempotencyError>(Order {
                id: 1,
                status: "created".into(),
            })
        }))
        .expect("seed");
    c.bench_function("coordinator_hit_memory", |b| {
        b.to_async(&runtime).iter(|| async {
            let order: Order = coordinator
                .call("order.create", Some(black_box("hit")))
                .run(|| async {
                    Ok::<_, IdempotencyError>(Order {
                        id: 2,
                        status: "never".into(),
                    })
                })
                .await
                .expect("hit");
            black_box(order.id)
        });
    });
    // A fresh store per sample, so the cost measured is the call's, not a map that has
    // grown over millions of earlier iterations.
    c.bench_function("coordinator_miss_memory", |b| {
        b.to_async(&runtime).iter_custom(|iters| async move {
            let coordinator = Coordinator::in_memory();
            let keys: Vec<String> = (0..iters).map(|i| format!("miss-{i}")).collect();
            let started = std::time::Instant::now();
            for key in &keys {
                let order: Order = coordinator
                    .call("order.create", Some(key))
                    .run(|| async {
                        Ok::<_, IdempotencyError>(Order {
                            id: 3,
                            status: "created".into(),
                        })
                    })
                    .await
                    .expect("miss");
                black_box(order.id);
            }
            started.elapsed()
        });
    });
}

criterion_group!(coordinator, benches);
criterion_main!(coordinator);
