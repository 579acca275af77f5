//! The wire contract with the Python idempotency-kit 0.5.0: every vector of every file
//! the testkit's loader finds (`idempotency_testkit::conformance`: the held-out set named
//! by `IDEMPOTENCY_CONFORMANCE_DIR`, else the shared set, else the testkit's copy).

use idempotency_core::{
    IdempotencyDomainService, IdempotencyError, IdempotencyRecord, RecordOptions, RecordParts,
    RecordStatus, canonical_json, fingerprint_of, to_result_json,
};
use idempotency_testkit::conformance::{self, Case, Kind};
use idempotency_testkit::{base64_decode, json_eq};
use serde_json::Value;
use serde_json::value::RawValue;

fn load(kind: Kind) -> Vec<Case> {
    conformance::cases(kind).cases
}

/// Prints how many cases a test checked (the held-out run below reads it).
fn report(test: &str, checked: usize) {
    println!("conformance checked {test}: {checked}");
}

fn ts(text: &str) -> time::OffsetDateTime {
    let bytes = format!(
        r#"{{"operation":"o","idempotency_key":"k","result":null,"created_at":"{text}","expires_at":"{text}"}}"#
    );
    IdempotencyRecord::from_json(bytes.as_bytes(), "o", "k")
        .expect("timestamp")
        .created_at()
}

/// A record case's field under `args`, as a string.
fn arg(case: &Case, field: &str) -> String {
    case.value("args")[field]
        .as_str()
        .unwrap_or_else(|| panic!("{}: args.{field}", case.name))
        .to_owned()
}

fn is_pending(case: &Case) -> bool {
    case.str("constructor")
        .is_some_and(|c| c.contains("pending"))
}

#[test]
fn stored_python_records_decode_and_encode_to_the_same_bytes() {
    let cases = load(Kind::Records);
    let stored = cases.iter().filter(|c| c.str("raw").is_some()).count();
    let mut checked = 0;
    for case in &cases {
        let Some(raw) = case.str("raw") else {
            continue;
        };
        let (op, key) = (arg(case, "operation"), arg(case, "idempotency_key"));
        let record = IdempotencyRecord::from_json(raw.as_bytes(), &op, &key)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(record.to_json(), raw, "{}", case.name);
        assert_eq!(record.operation(), op.trim());
        assert_eq!(record.idempotency_key(), key.trim());
        checked += 1;
    }
    assert!(checked > 0 && checked == stored);
    report("records_decode", checked);
}

#[test]
fn records_built_from_the_python_arguments_encode_to_the_python_bytes() {
    let mut checked = 0;
    for case in load(Kind::Records) {
        let Some(raw) = case.str("raw") else {
            continue;
        };
        let args = case.value("args");
        let status = if is_pending(&case) {
            RecordStatus::Pending
        } else {
            RecordStatus::Completed
        };
        let result = if status == RecordStatus::Pending {
            RawValue::NULL.to_owned()
        } else {
            to_result_json(&args["result"]).expect("result encodes")
        };
        let times = case.value("datetime_fields");
        let record = IdempotencyRecord::from_parts(RecordParts {
            operation: arg(&case, "operation"),
            idempotency_key: arg(&case, "idempotency_key"),
            result,
            created_at: ts(times["created_at"].as_str().expect("created")),
            expires_at: ts(times["expires_at"].as_str().expect("expires")),
            status,
            fingerprint: args["fingerprint"].as_str().map(str::to_owned),
            owner: None,
        })
        .expect("valid record");
        assert_eq!(record.to_json(), raw, "{}", case.name);
        let raw_len = case.raw("raw_len").expect("raw_len").get();
        assert_eq!(raw_len.parse::<usize>().expect("len"), raw.len());
        checked += 1;
    }
    assert!(checked > 0);
    report("records_encode", checked);
}

#[test]
fn the_domain_service_gives_the_python_lifetimes() {
    let svc = IdempotencyDomainService::new(
        std::time::Duration::from_secs(3600),
        std::time::Duration::from_secs(60),
        std::time::Duration::from_secs(86_400),
    )
    .expect("valid policy");
    for case in load(Kind::Records) {
        let Some(raw) = case.str("raw") else {
            continue;
        };
        if !case
            .str("constructor")
            .is_some_and(|c| c.starts_with("IdempotencyDomainService"))
        {
            continue;
        }
        let args = case.value("args");
        let (op, key) = (arg(&case, "operation"), arg(&case, "idempotency_key"));
        let record = if is_pending(&case) {
            let lease =
                std::time::Duration::from_secs(args["lease_seconds"].as_u64().expect("lease"));
            svc.create_pending_record(&op, &key, lease, None)
                .expect("pending")
        } else {
            let mut opts = RecordOptions::new();
            if let Some(m) = args["ttl_minutes"].as_u64() {
                opts = opts.ttl_minutes(m);
            }
            svc.create_record_with(&op, &key, &args["result"], &opts)
                .expect("record")
        };
        assert_eq!(
            record.remaining_ttl_secs_ceil(),
            case.value("ttl").as_u64().expect("ttl"),
            "{}",
            case.name
        );
        assert_eq!(
            case.str("redis_key"),
            Some(format!(
                "{}{}:{}",
                case.str("key_prefix").expect("prefix"),
                record.operation(),
                record.idempotency_key()
            ))
        );
        let written: Value = serde_json::from_str(&record.to_json()).expect("json");
        let python: Value = serde_json::from_str(&raw).expect("json");
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
            case.name
        );
        assert_eq!(written["result"], python["result"], "{}", case.name);
    }
}

/// The integers in raw JSON text, as written (found by parsing, not by searching text).
fn integers(raw: &RawValue, out: &mut Vec<String>) {
    let text = raw.get().trim();
    if let Ok(items) = serde_json::from_str::<Vec<Box<RawValue>>>(text) {
        for item in &items {
            integers(item, out);
        }
    } else if let Ok(members) =
        serde_json::from_str::<std::collections::BTreeMap<String, Box<RawValue>>>(text)
    {
        for value in members.values() {
            integers(value, out);
        }
    } else if text.starts_with(['-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9'])
        && !text.contains(['.', 'e', 'E'])
    {
        out.push(text.to_owned());
    }
}

#[test]
fn a_result_with_an_integer_beyond_64_bits_cannot_be_stored() {
    let mut checked = 0;
    for case in load(Kind::Records) {
        if case.raw("save_error").is_none() {
            continue;
        }
        let name = &case.name;
        assert_eq!(
            case.value("save_error")["message"],
            "Serialization failed",
            "{name}"
        );
        // Python refuses integers beyond i64/u64; the case must hold one.
        let mut found = Vec::new();
        integers(
            &case.raw_at(&["args", "result"]).expect("args.result"),
            &mut found,
        );
        let beyond: Vec<i128> = found
            .iter()
            .filter(|t| t.parse::<i64>().is_err() && t.parse::<u64>().is_err())
            .map(|t| t.parse::<i128>().expect("within i128"))
            .collect();
        assert!(!beyond.is_empty(), "{name}: no integer beyond 64 bits");
        for n in beyond {
            let mut map = std::collections::BTreeMap::new();
            map.insert("n", n);
            let err = to_result_json(&map).expect_err("refused");
            assert!(
                matches!(err, IdempotencyError::Serialization { .. }),
                "{name}"
            );
            let svc = IdempotencyDomainService::default();
            assert!(
                svc.create_record("user.create", "rec-bigint", &map)
                    .is_err()
            );
        }
        checked += 1;
    }
    assert!(checked > 0, "no save_error case");
    report("records_save_error", checked);
}

/// Python writes a naive `created_at` without an offset; we hold it as UTC and write
/// `Z` (docs/redis.md, "Deliberate differences"). Everything else is compared exactly.
fn same_time(field: &str, ours: &Value, python: &Value) -> bool {
    ours == python
        || (field == "created_at"
            && ours.as_str().and_then(|o| o.strip_suffix('Z')) == python.as_str())
}

/// A decode error compared with Python's: the class, then the message (corrupted) or
/// every problem's type and field (invalid).
fn check_error(name: &str, err: &IdempotencyError, expected: &Value) {
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
            let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
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

#[test]
fn odd_stored_data_decodes_as_the_python_library_decodes_it() {
    let cases = load(Kind::DecodeCases);
    for case in &cases {
        let name = case.name.as_str();
        let bytes = base64_decode(&case.str("raw_base64").expect("base64"));
        let (op, key) = (
            case.str("operation").expect("op"),
            case.str("idempotency_key").expect("key"),
        );
        let decoded = IdempotencyRecord::from_json(&bytes, &op, &key);
        let expected = case.value("get");
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
                    assert!(
                        same_time(field, &written[field], &want[field]),
                        "{name}: {field}: ours {} python {}",
                        written[field],
                        want[field]
                    );
                }
                // The result is compared by value with integers kept exact.
                let want_result = case
                    .raw_at(&["get", "record", "result"])
                    .expect("get.record.result");
                assert!(
                    json_eq::same_value(record.result().get(), want_result.get()),
                    "{name}: {} vs {}",
                    record.result().get(),
                    want_result.get()
                );
            }
            "none" if bytes.is_empty() => {
                // The empty value: "no record" is the store's answer (its `get` checks
                // for it first); the decoder itself refuses it, as `get_many` does.
                assert!(
                    matches!(decoded, Err(IdempotencyError::CorruptedRecord { .. })),
                    "{name}: {decoded:?}"
                );
                assert_eq!(case.value("get_many")["outcome"], "error", "{name}");
            }
            "none" => {
                // The store treats an expired record as absent; the decoder still reads it.
                let record = decoded.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(record.is_expired(), "{name}");
            }
            "error" => check_error(name, &decoded.expect_err(name), &expected),
            other => panic!("{name}: unknown outcome {other}"),
        }
    }
    report("decode_cases", cases.len());
}

#[test]
fn fingerprints_match_the_python_library() {
    let cases = load(Kind::Fingerprints);
    for case in &cases {
        let name = &case.name;
        // The values as exact JSON text: `2**64` stays an integer, `1.0` a float.
        let values = case.raw("values").expect("values");
        assert_eq!(
            canonical_json(values).expect("canonical"),
            case.str("canonical").expect("text"),
            "{name}"
        );
        assert_eq!(
            fingerprint_of(values).expect("fingerprint"),
            case.str("fingerprint").expect("hex"),
            "{name}"
        );
    }
    report("fingerprints", cases.len());
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

/// The held-out cases of this crate's own (`crates/idempotency-testkit/heldout/`, made
/// by `generate.py` there with Python 0.5.0): copied beside the vectors in use into a
/// temporary directory, which `IDEMPOTENCY_CONFORMANCE_DIR` names for a second run of
/// this module's tests (this test binary, run again). The run must pass and check every
/// case of both sets: new files of every kind are consumed without a code change.
#[test]
fn held_out_cases_in_new_files_are_consumed() {
    if std::env::var_os(conformance::DIR_VAR).is_some() {
        return; // This is the second run.
    }
    let heldout =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../idempotency-testkit/heldout");
    let dir = std::env::temp_dir().join(format!("conformance-heldout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for source in [conformance::dir(), heldout.as_path()] {
        for entry in std::fs::read_dir(source).expect("list") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "json" || e == "txt") {
                std::fs::copy(&path, dir.join(path.file_name().expect("name"))).expect("copy");
            }
        }
    }
    let count = |kind, d: &std::path::Path| conformance::cases_in(d, kind).cases.len();
    let mut want = Vec::new();
    for (test, kind) in [
        ("fingerprints", Kind::Fingerprints),
        ("decode_cases", Kind::DecodeCases),
    ] {
        let (base, added) = (count(kind, conformance::dir()), count(kind, &heldout));
        assert!(added > 0, "no held-out {kind:?} cases");
        want.push(format!("conformance checked {test}: {}", base + added));
    }
    let records = conformance::cases_in(&dir, Kind::Records).cases;
    let stored = records.iter().filter(|c| c.str("raw").is_some()).count();
    assert!(
        count(Kind::Records, &heldout) > 0,
        "no held-out record cases"
    );
    want.push(format!("conformance checked records_decode: {stored}"));
    want.push(format!("conformance checked records_encode: {stored}"));

    let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["conformance::", "--nocapture", "--test-threads=1"])
        .env(conformance::DIR_VAR, &dir)
        .output()
        .expect("run the tests again");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the run over the held-out set failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("conformance vectors: {}", dir.display())),
        "the run did not read {}:\n{stderr}",
        dir.display()
    );
    for line in want {
        assert!(stdout.contains(&line), "missing `{line}` in:\n{stdout}");
    }
}
