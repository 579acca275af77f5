//! Identifier validation edges, TTL bounds and service configuration.

use std::time::Duration;

use idempotency_core::constants::{MAX_KEY_LENGTH, MAX_OPERATION_LENGTH};
use idempotency_core::{
    ErrorClass, IdempotencyDomainService, IdempotencyError, Identifiers, RecordOptions,
    validate_identifiers,
};

fn kinds(err: &IdempotencyError) -> Vec<(String, &'static str)> {
    err.problems()
        .iter()
        .map(|p| (p.field.clone(), p.kind))
        .collect()
}

#[test]
fn empty_and_whitespace_only_identifiers_are_refused() {
    for blank in ["", " ", "\t\n "] {
        let err = validate_identifiers(blank, "k").expect_err("blank operation");
        assert_eq!(
            kinds(&err),
            vec![("operation".to_owned(), "string_too_short")]
        );
        let err = validate_identifiers("op", blank).expect_err("blank key");
        assert_eq!(
            kinds(&err),
            vec![("idempotency_key".to_owned(), "string_too_short")]
        );
    }
}

#[test]
fn operation_of_exactly_100_characters_passes_and_101_fails() {
    let ok = "o".repeat(MAX_OPERATION_LENGTH);
    assert!(validate_identifiers(&ok, "k").is_ok());
    let err = validate_identifiers(&format!("{ok}o"), "k").expect_err("too long");
    assert_eq!(
        kinds(&err),
        vec![("operation".to_owned(), "string_too_long")]
    );
}

#[test]
fn key_of_exactly_255_characters_passes_and_256_fails() {
    let ok = "k".repeat(MAX_KEY_LENGTH);
    assert!(validate_identifiers("op", &ok).is_ok());
    let err = validate_identifiers("op", &format!("{ok}k")).expect_err("too long");
    assert_eq!(
        kinds(&err),
        vec![("idempotency_key".to_owned(), "string_too_long")]
    );
}

#[test]
fn lengths_count_characters_not_bytes() {
    // 255 four-byte characters: 1020 bytes, still within the limit.
    let key = "🚀".repeat(MAX_KEY_LENGTH);
    assert!(validate_identifiers("op", &key).is_ok());
    let err = validate_identifiers("op", &format!("{key}é")).expect_err("256 characters");
    assert_eq!(
        kinds(&err),
        vec![("idempotency_key".to_owned(), "string_too_long")]
    );
    let op = "é".repeat(MAX_OPERATION_LENGTH);
    assert!(validate_identifiers(&op, "k").is_ok());
}

#[test]
fn a_colon_anywhere_is_refused() {
    for bad in [":key", "ke:y", "key:"] {
        let err = validate_identifiers("op", bad).expect_err(bad);
        assert_eq!(
            kinds(&err),
            vec![("idempotency_key".to_owned(), "value_error")],
            "{bad}"
        );
        let err = validate_identifiers(bad, "k").expect_err(bad);
        assert_eq!(
            kinds(&err),
            vec![("operation".to_owned(), "value_error")],
            "{bad}"
        );
    }
}

#[test]
fn surrounding_whitespace_is_trimmed_and_the_trimmed_value_kept() {
    let ids = Identifiers::new("  user.create\t", "\n k1  ").expect("valid");
    assert_eq!((ids.operation(), ids.key()), ("user.create", "k1"));
    // Length is counted after trimming.
    let padded = format!("  {}  ", "k".repeat(MAX_KEY_LENGTH));
    assert!(validate_identifiers("op", &padded).is_ok());
}

#[test]
fn every_problem_of_both_fields_is_reported_at_once() {
    let err = validate_identifiers(&format!("{}:", "o".repeat(MAX_OPERATION_LENGTH + 1)), "")
        .expect_err("bad");
    assert_eq!(
        kinds(&err),
        vec![
            ("operation".to_owned(), "string_too_long"),
            ("operation".to_owned(), "value_error"),
            ("idempotency_key".to_owned(), "string_too_short"),
        ]
    );
    assert_eq!(err.class(), ErrorClass::InvalidInput);
    assert_eq!(err.http_status(), 400);
}

#[test]
fn the_default_policy_is_the_user_guides() {
    let svc = IdempotencyDomainService::default();
    assert_eq!(svc.default_ttl(), Duration::from_secs(30 * 60));
    assert_eq!(svc.min_ttl(), Duration::from_secs(60));
    assert_eq!(svc.max_ttl(), Duration::from_secs(86_400));
}

#[test]
fn ttl_bounds_are_inclusive_and_enforced() {
    let svc = IdempotencyDomainService::default();
    assert!(
        svc.create_record_with(
            "op",
            "k",
            &1,
            &RecordOptions::new().ttl(Duration::from_secs(60))
        )
        .is_ok()
    );
    assert!(
        svc.create_record_with("op", "k", &1, &RecordOptions::new().ttl_minutes(1440))
            .is_ok()
    );
    let err = svc
        .create_record_with(
            "op",
            "k",
            &1,
            &RecordOptions::new().ttl(Duration::from_secs(59)),
        )
        .expect_err("short");
    assert!(
        matches!(err, IdempotencyError::InvalidTtl { given, .. } if given == Duration::from_secs(59))
    );
    let err = svc
        .create_record_with("op", "k", &1, &RecordOptions::new().ttl_minutes(1441))
        .expect_err("long");
    assert!(
        matches!(err, IdempotencyError::InvalidTtl { min, max, .. } if min == Duration::from_secs(60) && max == Duration::from_secs(86_400))
    );
}

#[test]
fn bad_service_configuration_lists_every_problem() {
    let err = IdempotencyDomainService::new(
        Duration::from_secs(10),
        Duration::ZERO,
        Duration::from_secs(5),
    )
    .expect_err("bad config");
    let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, vec!["min_ttl", "default_ttl"]);
    let err = IdempotencyDomainService::new(
        Duration::from_secs(60),
        Duration::from_secs(120),
        Duration::from_secs(100),
    )
    .expect_err("max below min");
    let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, vec!["max_ttl", "default_ttl"]);
    assert!(
        IdempotencyDomainService::new(
            Duration::from_secs(1),
            Duration::from_secs(1),
            Duration::from_secs(1)
        )
        .is_ok()
    );
}

#[test]
fn pending_records_take_any_lease_of_a_second_or_more() {
    let svc = IdempotencyDomainService::default();
    let rec = svc
        .create_pending_record("op", "k", Duration::from_secs(1), Some("fp"))
        .expect("1 s lease");
    assert!(rec.is_pending());
    assert_eq!(rec.result().get(), "null");
    assert_eq!(rec.fingerprint(), Some("fp"));
    assert_eq!(rec.remaining_ttl_secs_ceil(), 1);
    let err = svc
        .create_pending_record("", "k", Duration::from_millis(999), None)
        .expect_err("bad");
    let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, vec!["operation", "lease"]);
    // Not held to the TTL bounds.
    assert!(
        svc.create_pending_record("op", "k", Duration::from_secs(200_000), None)
            .is_ok()
    );
}

#[test]
fn validate_record_reports_expiry() {
    let svc = IdempotencyDomainService::new(
        Duration::from_secs(1),
        Duration::from_secs(1),
        Duration::from_secs(10),
    )
    .expect("policy");
    let record = svc.create_record("op", "k", &1).expect("record");
    assert!(svc.validate_record(&record).is_ok());
    assert!(!record.is_expired());
    let later = record.expires_at() + time::Duration::milliseconds(1);
    assert!(record.is_expired_at(later));
    let expired = record
        .clone()
        .with_expires_at(time::OffsetDateTime::now_utc() - time::Duration::seconds(1));
    assert!(matches!(
        svc.validate_record(&expired),
        Err(IdempotencyError::RecordExpired { .. })
    ));
    assert_eq!(expired.remaining_ttl(), Duration::ZERO);
    assert_eq!(expired.remaining_ttl_secs_ceil(), 0);
}

#[test]
fn records_round_trip_through_json() {
    let svc = IdempotencyDomainService::default();
    let value =
        serde_json::json!({"z": [1, 2.5, "ü\n\u{1}"], "a": null, "big": u64::MAX, "neg": i64::MIN});
    let record = svc
        .create_record_with("op", "k", &value, &RecordOptions::new().fingerprint("f"))
        .expect("record");
    let back =
        idempotency_core::IdempotencyRecord::from_json(record.to_json().as_bytes(), "op", "k")
            .expect("decode");
    assert_eq!(back, record);
    assert_eq!(back.result_value().expect("value"), value);
    let owned = record.with_owner("tok");
    let back =
        idempotency_core::IdempotencyRecord::from_json(owned.to_json().as_bytes(), "op", "k")
            .expect("decode");
    assert_eq!(back.owner(), Some("tok"));
}

#[test]
fn errors_classify_for_callers() {
    assert_eq!(
        IdempotencyError::storage(Some("op"), std::io::Error::other("down")).http_status(),
        503
    );
    assert!(IdempotencyError::storage(None, std::io::Error::other("down")).is_storage());
    assert_eq!(IdempotencyError::collision("op", "k").http_status(), 409);
    let reuse = IdempotencyError::KeyReuse {
        operation: "op".into(),
        key: "k".into(),
        stored: "a".into(),
        given: "b".into(),
    };
    assert_eq!(reuse.http_status(), 422);
    assert!(reuse.is_client_error());
    let storage = IdempotencyError::storage(Some("op"), std::io::Error::other("down"));
    assert!(std::error::Error::source(&storage).is_some());
}
