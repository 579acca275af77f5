//! Differential test against the Python idempotency-kit 0.5.0: generated stored values
//! (valid records and mutations of them), each decoded by both libraries, the outcomes
//! compared. Python runs once, in the testkit's venv, for the whole batch.
//!
//! The rule checked: bytes Python reads as a live record we read as an equal record,
//! an expired one we read as expired, and bytes Python refuses we refuse with the same
//! error class (corrupted / invalid with the same fields / deserialization).

use idempotency_core::{IdempotencyError, IdempotencyRecord, RawValue, RecordParts};
use idempotency_testkit::{base64_encode, json_eq};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRng, TestRunner};
use serde_json::Value;

/// Reads base64 lines, answers one JSON outcome per line.
const PYTHON: &str = r#"
import sys, json, base64, math
from pydantic import ValidationError
from idempotency_kit.core.models.entities import IdempotencyRecord

def norm(v):
    if isinstance(v, float) and not math.isfinite(v): return None
    if isinstance(v, dict): return {k: norm(x) for k, x in v.items()}
    if isinstance(v, list): return [norm(x) for x in v]
    return v

def outcome(data):
    try:
        r = IdempotencyRecord.model_validate_json(data)
        expired = r.is_expired
    except ValidationError as e:
        errs = e.errors()
        if any(x.get("type") == "json_invalid" for x in errs):
            return {"outcome": "error", "class": "corrupted"}
        return {"outcome": "error", "class": "invalid",
                "fields": [str(x["loc"][0]) if x["loc"] else "" for x in errs],
                "types": [x["type"] for x in errs]}
    except Exception:
        return {"outcome": "error", "class": "deserialization"}
    d = r.model_dump(mode="json")
    rec = {k: d[k] for k in ("operation", "idempotency_key", "created_at", "expires_at", "status", "fingerprint")}
    rec["result"] = json.dumps(norm(r.result), ensure_ascii=False, allow_nan=False)
    return {"outcome": "none" if expired else "record", "record": rec}

for line in sys.stdin:
    line = line.strip()
    if line:
        data = b"" if line == "-" else base64.b64decode(line)
        print(json.dumps(outcome(data)), flush=True)
"#;

/// Runs the Python decoder on every value; one outcome per value.
fn python_outcomes(values: &[Vec<u8>]) -> Vec<Value> {
    let mut input = String::new();
    for v in values {
        // An empty value is sent as `-` (an empty line would be skipped).
        input.push_str(if v.is_empty() { "-" } else { "" });
        input.push_str(&base64_encode(v));
        input.push('\n');
    }
    let outcomes = idempotency_testkit::python::json_lines(PYTHON, input);
    assert_eq!(outcomes.len(), values.len(), "one outcome per value");
    outcomes
}

fn json_result() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        Just("18446744073709551616".to_owned()),
        Just("-1000000000000000000000000000000".to_owned()),
        Just("1e400".to_owned()),
        Just("-1e400".to_owned()),
        Just("1e-400".to_owned()),
        Just("1.0".to_owned()),
        Just("2.5E-7".to_owned()),
        Just("-0".to_owned()),
        Just("NaN".to_owned()),
        Just("Infinity".to_owned()),
        Just("-Infinity".to_owned()),
        Just(r#""\ud83d\ude00""#.to_owned()),
        Just(r#""\ud800""#.to_owned()),
        Just(r#""tab\tand \u00e9""#.to_owned()),
        any::<f64>()
            .prop_filter("finite", |x| x.is_finite())
            .prop_map(|x| format!("{x:?}")),
        "[a-z\u{e9}\u{4e2d} ]{0,6}".prop_map(|s| format!("\"{s}\"")),
        // An integer part at Python's 4300-digit limit, whatever follows it.
        (4299..4303usize, 0..3usize).prop_map(|(n, tail)| {
            format!("{}{}", "3".repeat(n), [".5e-5000", "e-5000", ""][tail])
        }),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec(("[ab]", inner), 0..4).prop_map(|v| {
                let members: Vec<String> = v.iter().map(|(k, x)| format!("\"{k}\":{x}")).collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    })
}

fn timestamp() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        r#""2025-06-01T12:00:00.123456Z""#,
        r#""2099-01-01T00:00:00Z""#,
        r#""2099-01-01T00:00:00""#,
        r#""2099-01-01""#,
        r#""2020-01-01T00:00:00Z""#,
        r#""2020-01-01T00:00:00""#,
        r#""2099-01-01T00:00:00+05:30""#,
        r#""2099-01-01 00:00:00.1234567z""#,
        r#""2099-01-01T00:00+0100""#,
        r#""2099-01-01T00:00:00−05:00""#,
        r#""2099-01-01T24:00:00Z""#,
        r#""2099-01-01T00:00:00+05""#,
        r#""4070908800""#,
        r#""4070908800.5""#,
        r#""1.5e3""#,
        r#""1e3""#,
        r#"" 2099-01-01T00:00:00Z""#,
        "4070908800",
        "4070908800000",
        "4070908800.25",
        "1e20",
        "NaN",
        "99999999999999999999",
        "true",
        "null",
        r#""0000-01-01T00:00:00Z""#,
        r#""9999-12-31T23:59:59-01:00""#,
    ])
    .prop_map(str::to_owned)
}

fn field_value(valid: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::sample::select(valid).prop_map(str::to_owned)
}

/// A stored value: a record, sometimes of the wrong shape, then perhaps mutated.
fn stored_value() -> impl Strategy<Value = Vec<u8>> {
    let record = (
        field_value(&[r#""user.create""#, r#"" op ""#, r#""a:b""#, r#""""#, "5", "NaN"]),
        field_value(&[r#""k-1""#, r#""k\u0085""#, r#""k é""#, "null"]),
        json_result(),
        timestamp(),
        timestamp(),
        field_value(&[
            "",
            r#","status":"completed""#,
            r#","status":"pending""#,
            r#","status":"done""#,
            r#","status":null"#,
            r#","status":{"pending":null}"#,
        ]),
        field_value(&[
            "",
            r#","fingerprint":null"#,
            r#","fingerprint":"abc""#,
            r#","fingerprint":5"#,
            r#","fingerprint":NaN"#,
        ]),
        prop_oneof![
            field_value(&["", r#","owner":"o-1""#, r#","owner":7"#, r#","zz":[1,{"a":2}]"#]),
            // Unknown fields Python parses (and may refuse) before it reads the record.
            field_value(&[
                r#","zz":"\ud800""#,
                r#","zz":{"\udc00":1}"#,
                r#","zz":[1e400,NaN]"#,
                r#","zz":"\ud83d\ude00 \/""#,
            ]),
            (4299..4303usize, any::<bool>()).prop_map(|(n, float)| {
                format!(r#","zz":{}{}"#, "7".repeat(n), if float { ".5" } else { "" })
            }),
        ],
    )
        .prop_map(|(op, key, result, created, expires, status, fp, extra)| {
            format!(
                r#"{{"operation":{op},"idempotency_key":{key},"result":{result},"created_at":{created},"expires_at":{expires}{status}{fp}{extra}}}"#
            )
        });
    (record, 0..14usize, any::<prop::sample::Index>()).prop_map(|(text, mutation, at)| {
        let mut bytes = text.into_bytes();
        match mutation {
            0..=4 => {}
            5 => bytes.splice(0..0, [0xEF, 0xBB, 0xBF]).for_each(drop),
            6 => {
                bytes.splice(0..0, *b" \r\n\t").for_each(drop);
                bytes.extend_from_slice(b"\n ");
            }
            7 => bytes.extend_from_slice(b" x"),
            8 => {
                // The same field twice: the last one counts.
                let tail = bytes.split_off(bytes.len() - 1);
                bytes.extend_from_slice(br#","result":[1,2],"operation":"later.op"#);
                bytes.extend_from_slice(b"\"");
                bytes.extend(tail);
            }
            9 => {
                bytes.insert(0, b'[');
                bytes.push(b']');
            }
            10 => {
                let at = at.index(bytes.len());
                bytes.truncate(at);
            }
            11 => {
                let at = at.index(bytes.len());
                bytes[at] = 0xFF;
            }
            12 => {
                let depth = 195 + at.index(10);
                let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
                let text = String::from_utf8_lossy(&bytes).replacen(
                    r#""result":"#,
                    &format!(r#""result":{deep},"ignored":"#),
                    1,
                );
                bytes = text.into_bytes();
            }
            _ => bytes.extend_from_slice(b"\x0c"),
        }
        bytes
    })
}

fn class_of(err: &IdempotencyError) -> &'static str {
    match err {
        IdempotencyError::CorruptedRecord { .. }
            if err.record_error_type() == Some(idempotency_core::ErrorType::Deserialization) =>
        {
            "deserialization"
        }
        IdempotencyError::CorruptedRecord { .. } => "corrupted",
        IdempotencyError::InvalidRecord { .. } => "invalid",
        _ => "other",
    }
}

/// Python writes a naive time without an offset; we hold it as UTC.
fn same_time(python: &Value, ours: &Value) -> bool {
    let (Some(p), Some(o)) = (python.as_str(), ours.as_str()) else {
        return false;
    };
    p == o || (o.strip_suffix('Z') == Some(p))
}

fn check(bytes: &[u8], python: &Value) -> Result<(), String> {
    let ours = IdempotencyRecord::from_json(bytes, "user.create", "k-1");
    let want = python["outcome"].as_str().unwrap_or_default();
    match (want, ours) {
        ("record" | "none", Ok(record)) => {
            if record.is_expired() != (want == "none") {
                return Err(format!("expired: ours {}", record.is_expired()));
            }
            let p = &python["record"];
            // The fields as written, the result left out (it may nest beyond serde_json's limit).
            let fields = IdempotencyRecord::from_parts(RecordParts {
                operation: record.operation().to_owned(),
                idempotency_key: record.idempotency_key().to_owned(),
                result: RawValue::NULL.to_owned(),
                created_at: record.created_at(),
                expires_at: record.expires_at(),
                status: record.status(),
                fingerprint: record.fingerprint().map(str::to_owned),
                owner: None,
            })
            .map_err(|e| e.to_string())?;
            let written: Value =
                serde_json::from_str(&fields.to_json()).map_err(|e| e.to_string())?;
            for field in ["operation", "idempotency_key", "status", "fingerprint"] {
                if written[field] != p[field] {
                    return Err(format!(
                        "{field}: ours {} python {}",
                        written[field], p[field]
                    ));
                }
            }
            for field in ["created_at", "expires_at"] {
                if !same_time(&p[field], &written[field]) {
                    return Err(format!(
                        "{field}: ours {} python {}",
                        written[field], p[field]
                    ));
                }
            }
            let p_result = p["result"].as_str().unwrap_or_default();
            if !json_eq::same_value(record.result().get(), p_result) {
                return Err(format!(
                    "result: ours {} python {p_result}",
                    record.result().get()
                ));
            }
            Ok(())
        }
        ("error", Err(err)) => {
            let class = class_of(&err);
            if class != python["class"] {
                return Err(format!(
                    "class: ours {class} ({err}) python {}",
                    python["class"]
                ));
            }
            if class == "invalid" {
                let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
                let want: Vec<&str> = python["fields"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                if fields != want {
                    return Err(format!("fields: ours {fields:?} python {want:?}"));
                }
                let kinds: Vec<&str> = err.problems().iter().map(|p| p.kind).collect();
                let want: Vec<&str> = python["types"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                if kinds != want {
                    return Err(format!("error types: ours {kinds:?} python {want:?}"));
                }
            }
            Ok(())
        }
        (_, Ok(record)) => Err(format!("we read a record ({record:?}), python: {python}")),
        (_, Err(err)) => Err(format!("we refused ({err}), python: {python}")),
    }
}

#[test]
fn generated_stored_values_decode_as_the_python_library_decodes_them() {
    let config = Config {
        cases: 1500,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(
        config,
        TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &[11; 32]),
    );
    let strategy = stored_value();
    let values: Vec<Vec<u8>> = (0..1500)
        .map(|_| strategy.new_tree(&mut runner).expect("value").current())
        .collect();
    let outcomes = python_outcomes(&values);
    let mut failures = Vec::new();
    for (bytes, python) in values.iter().zip(&outcomes) {
        if let Err(why) = check(bytes, python) {
            failures.push(format!("{}\n    {why}", String::from_utf8_lossy(bytes)));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} values decode differently:\n{}",
        failures.len(),
        values.len(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A Unix timestamp as pydantic may meet it: seconds or milliseconds (above 2e10), with
/// or without a fraction, near the ends of Python's range (year 0 and year 10000
/// included), as a JSON number or a numeric string.
fn unix_timestamp() -> impl Strategy<Value = String> {
    let number = prop_oneof![
        (-2e10..2e10f64).prop_map(|v| format!("{v:?}")),
        (2e10..2.6e14f64).prop_map(|v| format!("{v:?}")),
        (-6.3e13..-2e10f64).prop_map(|v| format!("{v:?}")),
        // Whole milliseconds plus a fraction of 1 to 4 digits (`.5` rounding included).
        (
            20_000_000_001..253_402_300_800_000i64,
            any::<bool>(),
            0..10_000u32,
            1..5usize
        )
            .prop_map(|(ms, negative, frac, digits)| {
                let sign = if negative && ms < 62_167_219_300_000 {
                    "-"
                } else {
                    ""
                };
                let frac = format!("{frac:04}");
                format!("{sign}{ms}.{}", &frac[..digits])
            }),
        // Around year 0 and the start of year 1, in milliseconds.
        (62_135_596_700_000..62_167_219_300_000i64, 0..3usize)
            .prop_map(|(ms, tail)| { format!("-{ms}{}", ["", ".5", ".0001"][tail]) }),
        // Around the end of year 9999.
        (253_402_300_700_000..253_402_300_900_000i64).prop_map(|ms| ms.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
    ];
    (number, any::<bool>()).prop_map(
        |(text, quoted)| {
            if quoted { format!("\"{text}\"") } else { text }
        },
    )
}

#[test]
fn generated_unix_timestamps_decode_as_the_python_library_decodes_them() {
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &[3; 32]),
    );
    let strategy = (unix_timestamp(), unix_timestamp());
    let values: Vec<Vec<u8>> = (0..3000)
        .map(|_| {
            let (created, expires) = strategy.new_tree(&mut runner).expect("value").current();
            format!(
                r#"{{"operation":"user.create","idempotency_key":"k-1","result":1,"created_at":{created},"expires_at":{expires}}}"#
            )
            .into_bytes()
        })
        .collect();
    let outcomes = python_outcomes(&values);
    let failures: Vec<String> = values
        .iter()
        .zip(&outcomes)
        .filter_map(|(bytes, python)| {
            check(bytes, python)
                .err()
                .map(|why| format!("{}\n    {why}", String::from_utf8_lossy(bytes)))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} timestamps decode differently:\n{}",
        failures.len(),
        values.len(),
        failures[..failures.len().min(20)].join("\n")
    );
}
