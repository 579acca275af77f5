//! Micro-benchmarks of the core: record encode and decode, fingerprints, validation.
//!
//! Run with `cargo bench -p idempotency-core --bench core`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use idempotency_core::{
    IdempotencyDomainService, IdempotencyRecord, fingerprint_of, validate_identifiers,
};
use serde_json::json;

fn benches(c: &mut Criterion) {
    let svc = IdempotencyDomainService::default();
    let value =
        json!({"order_id": 12345, "status": "created", "amount": 99.95, "items": ["a", "b", "c"]});
    let record = svc
        .create_record(
            "order.create",
            "2f1c6f3e-1b7e-4b8a-9d1e-0c2b3a4d5e6f",
            &value,
        )
        .expect("record");
    let bytes = record.to_json();

    c.bench_function("record_encode", |b| b.iter(|| black_box(&record).to_json()));
    c.bench_function("record_decode", |b| {
        b.iter(|| {
            IdempotencyRecord::from_json(black_box(bytes.as_bytes()), "order.create", "k")
                .expect("decode")
        });
    });
    c.bench_function("create_record", |b| {
        b.iter(|| {
            svc.create_record("order.create", "key-1", black_box(&value))
                .expect("record")
        });
    });
    c.bench_function("fingerprint_of", |b| {
        b.iter(|| fingerprint_of(black_box(&value)).expect("fingerprint"));
    });
    c.bench_function("validate_identifiers", |b| {
        b.iter(|| {
            validate_identifiers(
                black_box("order.create"),
                black_box("2f1c6f3e-1b7e-4b8a-9d1e"),
            )
            .expect("valid")
        });
    });
}

criterion_group!(core, benches);
criterion_main!(core);
