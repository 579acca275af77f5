//! Cost of recording on the hot path. Run with `cargo bench -p idempotency-metrics`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use idempotency_core::IdempotencyMetrics;
use idempotency_metrics::PrometheusMetrics;

fn benches(c: &mut Criterion) {
    let registry = prometheus::Registry::new();
    let metrics = PrometheusMetrics::register(&registry, None).expect("register");
    c.bench_function("record_hit", |b| {
        b.iter(|| metrics.record_hit(black_box("order.create")))
    });
    c.bench_function("record_error_known_type", |b| {
        b.iter(|| {
            metrics.record_error(
                black_box("order.create"),
                black_box(idempotency_core::ErrorType::StorageGet),
            )
        });
    });
    c.bench_function("record_latency", |b| {
        b.iter(|| {
            metrics.record_latency(
                black_box("order.create"),
                idempotency_core::LatencyMethod::Get,
                0.0007,
            )
        })
    });
}

criterion_group!(metrics, benches);
criterion_main!(metrics);
