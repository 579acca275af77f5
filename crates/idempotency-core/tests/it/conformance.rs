//! The wire contract with the Python idempotency-kit 0.5.0: every vector of
//! the testkit's conformance set (`idempotency_testkit::conformance`).

use idempotency_core::{
    IdempotencyDomainService, IdempotencyError, IdempotencyRecord, RecordOptions, RecordParts,
    RecordStatus, canonical_json, fingerprint_of, to_result_json,
};
use idempotency_testkit::{base64_decode, json_eq};
use serde_json::Value;
use serde_json::value::RawValue;

fn load(name: &str) -> Vec<Value> {
    serde_json::from_str(&idempotency_testkit::conformance::text(name)).expect("vector JSON")
}

fn raw_cases(name: &str) -> Vec<std::collections::HashMap<String, Box<RawValue>>> {
    serde_json::from_str(&idempotency_testkit::conformance::text(name)).expect("vector JSON")
}

fn ts(text: &str) -> time::OffsetDateTime {
    let bytes = format!(
        r#"{{"operation":"o","idempotency_key":"k","result":null,"created_at":"{text}","expires_at":"{text}"}}"#
    );
    IdempotencyRecord::from_json(bytes.as_bytes(), "o", "k")
        .expect("timestamp")
        .created_at()
}

#[test]
fn stored_python_records_decode_and_encode_to_the_same_bytes() {
    let mut checked = 0;
    for case in load("records.json") {
        let Some(raw) = case["raw"].as_str() else {
            continue;
        };
        let op = case["args"]["operation"].as_str().expect("operation");
        let key = case["args"]["idempotency_key"].as_str().expect("key");
        let record = IdempotencyRecord::from_json(raw.as_bytes(), op, key)
            .unwrap_or_else(|e| panic!("{}: {e}", case["name"]));
        assert_eq!(record.to_json(), raw, "{}", case["name"]);
        assert_eq!(record.operation(), op.trim());
        assert_eq!(record.idempotency_key(), key.trim());
        checked += 1;
    }
    assert_eq!(checked, 13);
}

#[test]
fn records_built_from_the_python_arguments_encode_to_the_python_bytes() {
    let raws = raw_cases("records.json");
    let mut checked = 0;
    for (case, raw_case) in load("records.json").into_iter().zip(raws) {
        let Some(raw) = case["raw"].as_str() else {
            continue;
        };
        let args = &case["args"];
        let status = if case["constructor"]
            .as_str()
            .is_some_and(|c| c.contains("pending"))
        {
            RecordStatus::Pending
        } else {
            RecordStatus::Completed
        };
        let result = if status == RecordStatus::Pending {
            RawValue::NULL.to_owned()
        } else {
            to_result_json(&args["result"]).expect("result encodes")
        };
        let record = IdempotencyRecord::from_parts(RecordParts {
            operation: args["operation"].as_str().expect("op").to_owned(),
            idempotency_key: args["idempotency_key"].as_str().expect("key").to_owned(),
            result,
            created_at: ts(case["datetime_fields"]["created_at"]
                .as_str()
                .expect("created")),
            expires_at: ts(case["datetime_fields"]["expires_at"]
                .as_str()
                .expect("expires")),
            status,
            fingerprint: args["fingerprint"].as_str().map(str::to_owned),
            owner: None,
        })
        .expect("valid record");
        assert_eq!(record.to_json(), raw, "{}", case["name"]);
        assert_eq!(
            raw_case["raw_len"].get().parse::<usize>().expect("len"),
            raw.len()
        );
        checked += 1;
    }
    assert_eq!(checked, 13);
}

#[test]
fn the_domain_service_gives_the_python_lifetimes() {
    let svc = IdempotencyDomainService::new(
        std::time::Duration::from_secs(3600),
        std::time::Duration::from_secs(60),
        std::time::Duration::from_secs(86_400),
    )
    .expect("valid policy");
    for case in load("records.json") {
        let args = &case["args"];
        if case["raw"].is_null()
            || !case["constructor"]
                .as_str()
                .is_some_and(|c| c.starts_with("IdempotencyDomainService"))
        {
            continue;
        }
        let (op, key) = (
            args["operation"].as_str().expect("op"),
            args["idempotency_key"].as_str().expect("key"),
        );
        let record = if case["constructor"]
            .as_str()
            .is_some_and(|c| c.contains("pending"))
        {
            let lease =
                std::time::Duration::from_secs(args["lease_seconds"].as_u64().expect("lease"));
            svc.create_pending_record(op, key, lease, None)
                .expect("pending")
        } else {
            let mut opts = RecordOptions::new();
            if let Some(m) = args["ttl_minutes"].as_u64() {
                opts = opts.ttl_minutes(m);
            }
            svc.create_record_with(op, key, &args["result"], &opts)
                .expect("record")
        };
        assert_eq!(
            record.remaining_ttl_secs_ceil(),
            case["ttl"].as_u64().expect("ttl"),
            "{}",
            case["name"]
        );
        assert_eq!(
            case["redis_key"].as_str(),
            Some(
                format!(
                    "{}{}:{}",
                    case["key_prefix"].as_str().expect("prefix"),
                    record.operation(),
                    record.idempotency_key()
                )
                .as_str()
            )
        );
        let written: Value = serde_json::from_str(&record.to_json()).expect("json");
        let python: Value = serde_json::from_str(case["raw"].as_str().expect("raw")).expect("json");
        let fields = |v: &Value| {
            v.as_object()
                .expect("object")
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            fields(&written),
            fields(&python),
            "field order of {}",
            case["name"]
        );
        assert_eq!(written["result"], python["result"], "{}", case["name"]);
    }
}

#[test]
fn a_result_with_an_integer_beyond_64_bits_cannot_be_stored() {
    let case = load("records.json")
        .into_iter()
        .find(|c| c.get("save_error").is_some())
        .expect("save_error case");
    assert_eq!(case["save_error"]["message"], "Serialization failed");
    // The vector's integer, read exactly from the file's text.
    let text = idempotency_testkit::conformance::text("records.json");
    let start = text.find("\"n\": ").expect("big int") + 5;
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let n: u128 = digits.parse().expect("u128");
    assert!(n > u128::from(u64::MAX));
    let mut map = std::collections::BTreeMap::new();
    map.insert("n", n);
    let err = to_result_json(&map).expect_err("refused");
    assert!(matches!(err, IdempotencyError::Serialization { .. }));
    let svc = IdempotencyDomainService::default();
    assert!(
        svc.create_record("user.create", "rec-bigint", &map)
            .is_err()
    );
}

#[test]
fn odd_stored_data_decodes_as_the_python_library_decodes_it() {
    let raws = raw_cases("decode_cases.json");
    for (case, raw_case) in load("decode_cases.json").into_iter().zip(raws) {
        let name = case["name"].as_str().expect("name");
        let bytes = base64_decode(case["raw_base64"].as_str().expect("base64"));
        let (op, key) = (
            case["operation"].as_str().expect("op"),
            case["idempotency_key"].as_str().expect("key"),
        );
        let decoded = IdempotencyRecord::from_json(&bytes, op, key);
        let expected = &case["get"];
        match expected["outcome"].as_str().expect("outcome") {
            "record" => {
                let record = decoded.unwrap_or_else(|e| panic!("{name}: {e}"));
                let want = &expected["record"];
                assert_eq!(
                    record.operation(),
                    want["operation"].as_str().expect("op"),
                    "{name}"
                );
                assert_eq!(
                    record.idempotency_key(),
                    want["idempotency_key"].as_str().expect("key"),
                    "{name}"
                );
                let written: Value = serde_json::from_str(&record.to_json()).expect("json");
                for field in ["created_at", "expires_at", "status", "fingerprint"] {
                    assert_eq!(written[field], want[field], "{name}: {field}");
                }
                // The result is compared by value with integers kept exact.
                let want_result = raw_case["get"].get();
                let want_result: std::collections::HashMap<String, Box<RawValue>> =
                    serde_json::from_str(want_result).expect("get");
                let want_record: std::collections::HashMap<String, Box<RawValue>> =
                    serde_json::from_str(want_result["record"].get()).expect("record");
                assert!(
                    json_eq::same_value(record.result().get(), want_record["result"].get()),
                    "{name}: {} vs {}",
                    record.result().get(),
                    want_record["result"].get()
                );
            }
            "none" => {
                // The store treats an expired record as absent; the decoder still reads it.
                let record = decoded.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(record.is_expired(), "{name}");
            }
            "error" => {
                let err = decoded.expect_err(name);
                match expected["exception"].as_str().expect("exception") {
                    "IdempotencyError" => {
                        assert!(
                            matches!(err, IdempotencyError::CorruptedRecord { .. }),
                            "{name}: {err:?}"
                        );
                        assert_eq!(
                            err.to_string(),
                            expected["message"].as_str().expect("msg").to_lowercase(),
                            "{name}"
                        );
                    }
                    "IdempotencyValidationError" => {
                        assert!(
                            matches!(err, IdempotencyError::InvalidRecord { .. }),
                            "{name}: {err:?}"
                        );
                        let kinds: Vec<&str> = err.problems().iter().map(|p| p.kind).collect();
                        let want: Vec<&str> = expected["validation_errors"]
                            .as_array()
                            .expect("errors")
                            .iter()
                            .map(|e| e["type"].as_str().expect("type"))
                            .collect();
                        assert_eq!(kinds, want, "{name}");
                        let fields: Vec<&str> =
                            err.problems().iter().map(|p| p.field.as_str()).collect();
                        let want_fields: Vec<&str> = expected["validation_errors"]
                            .as_array()
                            .expect("errors")
                            .iter()
                            .map(|e| {
                                e["loc"]
                                    .as_array()
                                    .and_then(|l| l.first())
                                    .and_then(Value::as_str)
                                    .unwrap_or("")
                            })
                            .collect();
                        assert_eq!(fields, want_fields, "{name}");
                    }
                    other => panic!("{name}: unexpected exception {other}"),
                }
            }
            other => panic!("{name}: unknown outcome {other}"),
        }
    }
}

#[test]
fn fingerprints_match_the_python_library() {
    let cases = load("fingerprints.json");
    assert_eq!(cases.len(), 21);
    for case in cases {
        let name = case["name"].as_str().expect("name");
        assert_eq!(
            canonical_json(&case["values"]).expect("canonical"),
            case["canonical"].as_str().expect("text"),
            "{name}"
        );
        assert_eq!(
            fingerprint_of(&case["values"]).expect("fingerprint"),
            case["fingerprint"].as_str().expect("hex"),
            "{name}"
        );
    }
}

#[test]
fn a_struct_fingerprints_like_the_map_of_its_fields() {
    #[derive(serde::Serialize)]
    struct Payment<'a> {
        currency: &'a str,
        amount: u64,
    }
    let from_struct = fingerprint_of(&Payment {
        currency: "EUR",
        amount: 100,
    })
    .expect("fp");
    let from_map =
        fingerprint_of(&serde_json::json!({"amount": 100, "currency": "EUR"})).expect("fp");
    assert_eq!(from_struct, from_map);
}
