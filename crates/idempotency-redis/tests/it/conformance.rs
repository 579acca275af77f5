//! Python and Rust share one Redis: the conformance vectors through a real server.

use crate::common::unique;
use idempotency_core::BulkRepository;
use idempotency_core::{IdempotencyError, IdempotencyRecord, IdempotencyRepository, RecordParts};
use idempotency_redis::RedisStore;
use idempotency_testkit::conformance::{self, Case, Kind};
use idempotency_testkit::{base64_decode, json_eq};
use serde_json::Value;

/// Every case of a kind from the testkit's loader, as a `Value` (numbers that matter are
/// read exactly through [`Case::raw_at`]).
fn load(kind: Kind) -> Vec<(Case, Value)> {
    conformance::cases(kind)
        .cases
        .into_iter()
        .map(|c| {
            let v = c.as_value();
            (c, v)
        })
        .collect()
}

/// Python writes a naive `created_at` without an offset; we hold it as UTC and write
/// `Z` (docs/redis.md, "Deliberate differences"). Everything else is compared exactly.
fn same_field(field: &str, ours: &Value, python: &Value) -> bool {
    ours == python
        || (field == "created_at"
            && ours.as_str().and_then(|o| o.strip_suffix('Z')) == python.as_str())
}

/// The vector's Redis key, moved to a key of this test run (same operation, same prefix).
fn placed(store_prefix: &str, case: &Value) -> (String, String, String) {
    let op = case["operation"]
        .as_str()
        .or_else(|| case["args"]["operation"].as_str())
        .expect("op")
        .trim()
        .to_owned();
    let key = unique(case["name"].as_str().expect("name"));
    let redis_key = format!("{store_prefix}{op}:{key}");
    (op, key, redis_key)
}

on_both!(
    records_written_by_python_read_back_as_python_reads_them,
    |env| {
        for (_, case) in load(Kind::Records) {
            let Some(raw) = case["raw"].as_str() else {
                continue;
            };
            let prefix = case["key_prefix"].as_str().expect("prefix");
            let store = RedisStore::builder(env.store.connection().clone())
                .key_prefix(prefix)
                .build()
                .expect("store");
            let (op, key, redis_key) = placed(prefix, &case);
            // The stored identifiers are the vector's; the key it sits under is ours.
            env.raw(
                &redis_key,
                &[b"SET", redis_key.as_bytes(), raw.as_bytes(), b"EX", b"600"],
            );
            let found = store
                .get(&idempotency_testkit::record_id(&op, &key))
                .await
                .expect("get");
            let expired = IdempotencyRecord::from_json(raw.as_bytes(), &op, &key)
                .expect("decodes")
                .is_expired();
            if expired {
                assert_eq!(found, None, "{}", case["name"]);
            } else {
                let record = found.unwrap_or_else(|| panic!("{}: not found", case["name"]));
                assert_eq!(record.to_json(), raw, "{}", case["name"]);
            }
        }
    }
);

on_both!(records_written_here_are_the_python_bytes, |env| {
    for (_, case) in load(Kind::Records) {
        let Some(raw) = case["raw"].as_str() else {
            continue;
        };
        let prefix = case["key_prefix"].as_str().expect("prefix");
        let store = RedisStore::builder(env.store.connection().clone())
            .key_prefix(prefix)
            .build()
            .expect("store");
        let python = IdempotencyRecord::from_json(raw.as_bytes(), "op", "k").expect("decodes");
        let (op, key, redis_key) = placed(prefix, &case);
        // Same fields, our key, a lifetime from now on (the vectors' times are past).
        let now = time::OffsetDateTime::now_utc();
        let shift = now - python.created_at();
        let record = IdempotencyRecord::from_parts(RecordParts {
            operation: op.clone(),
            idempotency_key: key.clone(),
            result: python.result().to_owned(),
            created_at: python.created_at() + shift,
            expires_at: python.expires_at() + shift,
            status: python.status(),
            fingerprint: python.fingerprint().map(str::to_owned),
            owner: None,
        })
        .expect("record");
        let want_ttl = i64::try_from(record.remaining_ttl_secs_ceil()).expect("ttl");
        store.save(&record).await.expect("save");
        let stored = env.raw(&redis_key, &[b"GET", redis_key.as_bytes()]);
        let expected = raw.replace(python.operation(), &op).replace(
            &format!("\"idempotency_key\":\"{}\"", python.idempotency_key()),
            &format!("\"idempotency_key\":\"{key}\""),
        );
        let stored = String::from_utf8(stored.as_bytes().expect("bytes").to_vec()).expect("utf8");
        // Timestamps moved with the record; everything else is byte for byte.
        let strip = |s: &str| {
            let v: Value = serde_json::from_str(s).expect("json");
            let mut v = v.as_object().expect("object").clone();
            v.remove("created_at");
            v.remove("expires_at");
            serde_json::to_string(&v).expect("json")
        };
        assert_eq!(strip(&stored), strip(&expected), "{}", case["name"]);
        let ttl = env
            .raw(&redis_key, &[b"TTL", redis_key.as_bytes()])
            .as_int()
            .expect("ttl");
        assert!(
            ttl == want_ttl || ttl + 1 == want_ttl,
            "{}: TTL {ttl}, lifetime {want_ttl}",
            case["name"]
        );
        if case["constructor"]
            .as_str()
            .is_some_and(|c| c.starts_with("IdempotencyDomainService"))
        {
            // Records made by the service live their whole TTL: the Python EX value.
            assert_eq!(
                want_ttl,
                case["ttl"].as_i64().expect("ttl"),
                "{}",
                case["name"]
            );
        }
    }
});

on_both!(
    odd_stored_data_is_read_as_the_python_library_reads_it,
    |env| {
        for (vector, case) in load(Kind::DecodeCases) {
            let name = case["name"].as_str().expect("name").to_owned();
            let (op, key, redis_key) = placed("idempotency:", &case);
            let bytes = base64_decode(case["raw_base64"].as_str().expect("base64"));
            for method in ["get", "get_many"] {
                env.raw(
                    &redis_key,
                    &[b"SET", redis_key.as_bytes(), &bytes, b"EX", b"600"],
                );
                env.metrics.clear();
                let outcome = if method == "get" {
                    env.store
                        .get(&idempotency_testkit::record_id(&op, &key))
                        .await
                } else {
                    env.store
                        .get_many(&op, &[&key])
                        .await
                        .map(|mut m| m.remove(&key))
                };
                let expected = &case[method];
                match expected["outcome"].as_str().expect("outcome") {
                    "record" => {
                        let record = outcome
                            .unwrap_or_else(|e| panic!("{name}/{method}: {e}"))
                            .expect("found");
                        let written: Value = serde_json::from_str(&record.to_json()).expect("json");
                        for field in [
                            "operation",
                            "idempotency_key",
                            "created_at",
                            "expires_at",
                            "status",
                            "fingerprint",
                        ] {
                            assert!(
                                same_field(field, &written[field], &expected["record"][field]),
                                "{name}/{method}: {field}: ours {} python {}",
                                written[field],
                                expected["record"][field]
                            );
                        }
                        let want = vector
                            .raw_at(&[method, "record", "result"])
                            .expect("result text");
                        assert!(
                            json_eq::same_value(record.result().get(), want.get()),
                            "{name}/{method}"
                        );
                    }
                    "none" => assert_eq!(outcome.expect("no error"), None, "{name}/{method}"),
                    "error" => {
                        let err = outcome.expect_err(&name);
                        let want = expected["exception"].as_str().expect("exception");
                        let ok = match want {
                            "IdempotencyError" => {
                                matches!(err, IdempotencyError::CorruptedRecord { .. })
                            }
                            "IdempotencyValidationError" => {
                                matches!(err, IdempotencyError::InvalidRecord { .. })
                            }
                            _ => false,
                        };
                        assert!(ok, "{name}/{method}: {err:?} for {want}");
                    }
                    other => panic!("{other}"),
                }
                let exists = env
                    .raw(&redis_key, &[b"EXISTS", redis_key.as_bytes()])
                    .as_int()
                    == Some(1);
                // A deliberate difference (docs/redis.md): a pending record that Redis still
                // expires (planted here with a TTL) is never deleted by a read, however far
                // past its expires_at; Python deletes it. Both answer "no record".
                let kept_pending = expected["outcome"] == "none"
                    && serde_json::from_slice::<Value>(&bytes)
                        .is_ok_and(|v| v["status"] == "pending");
                assert_eq!(
                    exists,
                    kept_pending || expected["key_exists_after"].as_bool().expect("bool"),
                    "{name}/{method}: key after"
                );
                // The repository's metric calls, as the Python library makes them.
                let want_calls: Vec<(String, String, String)> = expected["metrics"]
                    .as_array()
                    .expect("metrics")
                    .iter()
                    .map(|m| {
                        let m = m.as_array().expect("call");
                        let detail = match &m[2] {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        (m[0].as_str().expect("kind").to_owned(), op.clone(), detail)
                    })
                    .collect();
                assert_eq!(env.metrics.calls(), want_calls, "{name}/{method}: metrics");
            }
        }
    }
);
