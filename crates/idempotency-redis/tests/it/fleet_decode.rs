//! Mixed-fleet agreement through real Redis, standalone and cluster: odd stored values of
//! every category the Python library 0.5.0 can meet are planted twice; Python's repository
//! (`get`, `get_many`, run in the testkit's venv against the same server) reads one copy,
//! ours the other, and the outcomes must agree: a record with the same status, fingerprint
//! and result, no record, or the same error class; and the key kept or deleted alike.
//!
//! Where we deliberately differ it is asserted as such, with the reason (see the
//! conformance section of `docs/redis.md`).

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};

use idempotency_core::BulkRepository;
use idempotency_core::{IdempotencyError, IdempotencyRepository, RecordId};
use idempotency_redis::RedisStore;
use idempotency_testkit::json_eq;
use serde_json::{Value, json};

const CREATED: &str = "2026-01-01T00:00:00Z";
const EXPIRES: &str = "2099-01-01T00:00:00Z";

fn record(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut parts: Vec<(String, String)> = vec![
        ("operation".into(), "\"fleet.op\"".into()),
        ("idempotency_key".into(), "\"k\"".into()),
        ("result".into(), r#"{"a":1}"#.into()),
        ("created_at".into(), format!("\"{CREATED}\"")),
        ("expires_at".into(), format!("\"{EXPIRES}\"")),
        ("status".into(), "\"completed\"".into()),
        ("fingerprint".into(), "null".into()),
    ];
    for (name, value) in fields {
        match parts.iter_mut().find(|(n, _)| n == name) {
            Some(p) => (*value).clone_into(&mut p.1),
            None => parts.push(((*name).to_owned(), (*value).to_owned())),
        }
    }
    let body: Vec<String> = parts
        .into_iter()
        .filter(|(_, v)| v != "<absent>")
        .map(|(n, v)| format!("\"{n}\":{v}"))
        .collect();
    format!("{{{}}}", body.join(",")).into_bytes()
}

/// Every case: a name and the stored bytes.
fn cases() -> Vec<(&'static str, Vec<u8>)> {
    let mut all = basic_cases();
    all.extend(pydantic_parsing_cases());
    all
}

/// Values whose reading turns on how pydantic parses JSON and timestamps, and our own
/// `stored_error` status.
fn pydantic_parsing_cases() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "unknown_field_lone_surrogate",
            record(&[("zz", r#"{"a":["\ud800"]}"#)]),
        ),
        (
            "unknown_field_4301_digits",
            record(&[("zz", &"9".repeat(4301))]),
        ),
        (
            "unknown_field_5000_digits_point_5",
            record(&[("zz", &format!("{}.5", "1".repeat(5000)))]),
        ),
        (
            "result_4301_digit_mantissa_negative_exponent",
            record(&[("result", &format!("{}e-5000", "1".repeat(4301)))]),
        ),
        (
            "expires_at_milliseconds_with_fraction",
            record(&[("expires_at", "126715061817167.81")]),
        ),
        (
            "expires_at_year_zero_string",
            record(&[("expires_at", "\"-62135596800001\"")]),
        ),
        (
            "status_stored_error",
            record(&[("status", "\"stored_error\"")]),
        ),
    ]
}

/// The categories of the issue: shapes, encodings, nesting, timestamps, expiry.
fn basic_cases() -> Vec<(&'static str, Vec<u8>)> {
    let base = record(&[]);
    let mut with_bom = b"\xEF\xBB\xBF".to_vec();
    with_bom.extend_from_slice(&base);
    let mut spaced = b" \n\t".to_vec();
    spaced.extend_from_slice(&base);
    spaced.extend_from_slice(b"\r\n ");
    let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    let ten_minutes_ago = (time::OffsetDateTime::now_utc() - time::Duration::minutes(10))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    vec![
        ("baseline", base.clone()),
        (
            "owner_field",
            record(&[
                ("status", "\"pending\""),
                ("result", "null"),
                ("owner", "\"abc\""),
            ]),
        ),
        ("empty", Vec::new()),
        ("whitespace_around", spaced),
        ("bom", with_bom),
        ("root_array", b"[1,2]".to_vec()),
        ("root_number", b"42".to_vec()),
        ("root_null", b"null".to_vec()),
        (
            "naive_expires_at",
            record(&[("expires_at", "\"2099-01-01T00:00:00\"")]),
        ),
        (
            "date_only_expires_at",
            record(&[("expires_at", "\"2099-01-01\"")]),
        ),
        (
            "naive_created_at",
            record(&[("created_at", "\"2026-01-01T00:00:00\"")]),
        ),
        ("duplicate_status", {
            let mut b = record(&[]);
            b.truncate(b.len() - 1);
            b.extend_from_slice(br#","status":"pending"}"#);
            b
        }),
        (
            "nan_in_result",
            record(&[("result", r#"{"x":NaN,"y":[Infinity,-Infinity]}"#)]),
        ),
        ("float_overflow_in_result", record(&[("result", "1e400")])),
        (
            "big_int_in_result",
            record(&[("result", "123456789012345678901234567890")]),
        ),
        ("unknown_fields", record(&[("extra", r#"{"z":1}"#)])),
        ("status_unknown", record(&[("status", "\"done\"")])),
        ("status_null", record(&[("status", "null")])),
        ("status_missing", record(&[("status", "<absent>")])),
        ("fingerprint_number", record(&[("fingerprint", "5")])),
        ("fingerprint_string", record(&[("fingerprint", "\"fp\"")])),
        ("nested_150", record(&[("result", &deep(150))])),
        ("nested_250", record(&[("result", &deep(250))])),
        ("not_utf8", {
            let mut b = record(&[("result", "\"x\"")]);
            let at = b.iter().position(|&c| c == b'x').expect("x");
            b[at] = 0xFF;
            b
        }),
        (
            "unix_timestamps",
            record(&[("created_at", "1767225600"), ("expires_at", "4070908800")]),
        ),
        (
            "expired_completed",
            record(&[("expires_at", "\"2020-01-01T00:00:00Z\"")]),
        ),
        (
            "expired_pending_long_ago",
            record(&[
                ("status", "\"pending\""),
                ("result", "null"),
                ("expires_at", "\"2020-01-01T00:00:00Z\""),
            ]),
        ),
        (
            "expired_pending_recently",
            record(&[
                ("status", "\"pending\""),
                ("result", "null"),
                ("expires_at", &format!("\"{ten_minutes_ago}\"")),
            ]),
        ),
        ("trailing_garbage", {
            let mut b = record(&[]);
            b.extend_from_slice(b"x");
            b
        }),
    ]
}

/// Cases where we deliberately differ, and how.
fn deliberate(name: &str, method: &str) -> Option<&'static str> {
    match (name, method) {
        // A pending record past its expires_at (by any amount) that Redis still expires
        // may be a live reservation of an owner whose clock runs behind: only its owner or
        // Redis's TTL removes it (issue 10: liveness is Redis's). Both sides answer "no
        // record"; Python also deletes it.
        ("expired_pending_recently" | "expired_pending_long_ago", _) => Some("kept"),
        // Written only by this kit (a stored error of the action, replayed as that
        // error): Python refuses it as invalid (`literal_error`), so neither side runs
        // the action over it as a success; we read it.
        ("status_stored_error", _) => Some("stored_error"),
        _ => None,
    }
}

fn outcome_of(
    result: Result<Option<idempotency_core::IdempotencyRecord>, IdempotencyError>,
) -> Value {
    match result {
        Ok(None) => json!({"outcome": "none"}),
        Ok(Some(r)) => json!({
            "outcome": "record",
            "status": r.status().as_str(),
            "fingerprint": r.fingerprint(),
            "result": r.result().get(),
        }),
        Err(IdempotencyError::InvalidRecord { .. }) => json!({"outcome": "invalid"}),
        Err(IdempotencyError::CorruptedRecord { .. }) => json!({"outcome": "corrupted"}),
        Err(e) => json!({"outcome": format!("other: {e}")}),
    }
}

fn python(url: &str, cluster: bool, prefix: &str, queries: &[(String, String)]) -> Vec<Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fleet/decode.py");
    let python = idempotency_testkit::python::python_with_kit();
    let mut child = Command::new(&python)
        .args([script, url, if cluster { "1" } else { "0" }, prefix])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let mut input = String::new();
    for (method, key) in queries {
        let _ = writeln!(input, "{method}\t{key}");
    }
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("python");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

on_both!(
    every_odd_stored_value_reads_the_same_for_python_and_rust,
    |env| {
        let prefix = format!("{}:", crate::common::unique("fleet"));
        let store = RedisStore::builder(env.store.connection().clone())
            .key_prefix(prefix.clone())
            .build()
            .expect("store");
        let cluster = env.cluster.is_some();
        let cases = cases();
        let mut queries = Vec::new();
        for (name, bytes) in &cases {
            for method in ["get", "get_many"] {
                for side in ["py", "rs"] {
                    let key = format!("{name}-{method}-{side}");
                    let redis_key = store.redis_key(&RecordId::new("fleet.op", &key).expect("key"));
                    env.raw(
                        &redis_key,
                        &[b"SET", redis_key.as_bytes(), bytes, b"EX", b"600"],
                    );
                    if side == "py" {
                        queries.push((method.to_owned(), key));
                    }
                }
            }
        }
        // redis-py takes one seed node for a cluster.
        let url = match &env.cluster {
            Some(c) => format!("redis://127.0.0.1:{}", c.nodes()[0].port()),
            None => env.url.clone(),
        };
        let answers = python(&url, cluster, &prefix, &queries);
        assert_eq!(answers.len(), queries.len());
        let mut failures = Vec::new();
        for ((method, py_key), py) in queries.iter().zip(&answers) {
            let name = py_key.rsplit_once(&format!("-{method}-")).expect("name").0;
            let key = format!("{name}-{method}-rs");
            let ours = if method == "get" {
                store
                    .get(&idempotency_testkit::record_id("fleet.op", &key))
                    .await
            } else {
                store
                    .get_many("fleet.op", &[&key])
                    .await
                    .map(|mut m| m.remove(&key))
            };
            let ours = outcome_of(ours);
            let redis_key = store.redis_key(&RecordId::new("fleet.op", &key).expect("key"));
            let exists = env
                .raw(&redis_key, &[b"EXISTS", redis_key.as_bytes()])
                .as_int()
                == Some(1);
            let same_outcome = if deliberate(name, method) == Some("stored_error") {
                ours["outcome"] == "record"
                    && ours["status"] == "stored_error"
                    && py["outcome"] == "invalid"
            } else {
                ours["outcome"] == py["outcome"]
                    && (ours["outcome"] != "record"
                        || (ours["status"] == py["status"]
                            && ours["fingerprint"] == py["fingerprint"]
                            && json_eq::same_value(
                                ours["result"].as_str().expect("result"),
                                py["result"].as_str().expect("result"),
                            )))
            };
            let want_exists = match deliberate(name, method) {
                Some("kept") => true,
                _ => py["exists"].as_bool().expect("exists"),
            };
            if !same_outcome || exists != want_exists {
                failures.push(format!(
                    "{name}/{method}: ours {ours} (exists {exists}), python {py}"
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
);
