//! Hostile input: validation, decoding and result round trips never panic and keep
//! what they are given.

use idempotency_core::{
    IdempotencyDomainService, IdempotencyError, IdempotencyRecord, validate_identifiers,
};
use proptest::prelude::*;
use serde_json::Value;

/// Arbitrary JSON values, floats and integers of every width included.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".*".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((".*", inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn validation_decides_and_never_panics(operation in ".*", key in ".*") {
        match validate_identifiers(&operation, &key) {
            Ok((op, k)) => {
                prop_assert!(!op.is_empty() && op.chars().count() <= 100 && !op.contains(':'));
                prop_assert!(!k.is_empty() && k.chars().count() <= 255 && !k.contains(':'));
                prop_assert_eq!(op, operation.trim());
                prop_assert_eq!(k, key.trim());
            }
            Err(e) => prop_assert!(e.is_validation() && !e.problems().is_empty(), "{:?}", e),
        }
    }

    #[test]
    fn any_bytes_decode_to_a_record_or_a_typed_error(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        match IdempotencyRecord::from_json(&bytes, "op", "k") {
            Ok(record) => prop_assert!(!record.operation().is_empty()),
            Err(e) => prop_assert!(
                matches!(e, IdempotencyError::CorruptedRecord { .. } | IdempotencyError::InvalidRecord { .. }),
                "{:?}",
                e
            ),
        }
    }

    #[test]
    fn any_record_shaped_json_decodes_or_fails_typed(
        operation in prop_oneof![".*".prop_map(Value::String), json_value()],
        result in json_value(),
        created in prop_oneof![Just(Value::from("2025-06-01T12:00:00Z")), json_value()],
        status in prop_oneof![Just(Value::from("completed")), Just(Value::from("pending")), json_value()],
    ) {
        let text = serde_json::json!({
            "operation": operation, "idempotency_key": "k", "result": result,
            "created_at": created, "expires_at": "2099-01-01T00:00:00Z", "status": status, "fingerprint": null,
        }).to_string();
        match IdempotencyRecord::from_json(text.as_bytes(), "op", "k") {
            Ok(record) => prop_assert_eq!(IdempotencyRecord::from_json(record.to_json().as_bytes(), "op", "k").ok(), Some(record)),
            Err(e) => prop_assert!(
                matches!(e, IdempotencyError::InvalidRecord { .. } | IdempotencyError::CorruptedRecord { .. }),
                "{:?}",
                e
            ),
        }
    }

    #[test]
    fn any_json_result_round_trips_exactly(value in json_value()) {
        let svc = IdempotencyDomainService::default();
        let record = svc.create_record("op", "k", &value).expect("any JSON value is storable");
        let back = IdempotencyRecord::from_json(record.to_json().as_bytes(), "op", "k").expect("decodes");
        prop_assert_eq!(back.result().get(), record.result().get());
        prop_assert_eq!(back.result_value().expect("value"), value);
    }
}
