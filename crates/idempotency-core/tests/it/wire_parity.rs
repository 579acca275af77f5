//! Wire parity with the Python idempotency-kit 0.5.0, generated: seeded streams of values
//! per class (float ties and near-ties, subnormals, extremes, `-0.0`, integers around
//! 2^53 / 2^63 / 2^64 and past 4300 digits, unicode escapes and surrogates, deep nesting,
//! key order and duplicates), each compared with what Python makes of it: the canonical
//! fingerprint text and its hash, the stored result bytes (orjson) and the decode verdict
//! of a record holding it. Python runs once per class, in the testkit's venv.
//!
//! `IDEMPOTENCY_PARITY_SCALE=N` multiplies every class's count (the long run: see
//! `docs/redis.md`, "Wire parity"); the default keeps the suite's run short.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use idempotency_core::{
    IdempotencyRecord, RawValue, canonical_json, fingerprint_of, to_result_json,
};
use idempotency_testkit::{base64_encode, json_eq};
use serde_json::Value;

/// Reads one request per line (`F <hex bits>`, `I <decimal>` or `T <base64 JSON text>`)
/// and answers one JSON line: the canonical text, its SHA-256, orjson's bytes and the
/// decode of a record holding the value (`null` where Python raised).
const PYTHON: &str = r#"
import sys, json, base64, struct, hashlib, math
import orjson
from pydantic_core import to_jsonable_python
from idempotency_kit.core.models.entities import IdempotencyRecord

def attempt(f):
    try:
        return f()
    except BaseException:
        return None

def canonical(value):
    return json.dumps(to_jsonable_python({"v": value}), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

def norm(v):
    if isinstance(v, float) and not math.isfinite(v): return None
    if isinstance(v, dict): return {k: norm(x) for k, x in v.items()}
    if isinstance(v, list): return [norm(x) for x in v]
    return v

def decode(stored):
    record = ('{"operation":"op","idempotency_key":"k","result":' + stored +
              ',"created_at":"2025-01-01T00:00:00Z","expires_at":"2999-01-01T00:00:00Z",' +
              '"status":"completed","fingerprint":null}')
    r = IdempotencyRecord.model_validate_json(record.encode("utf-8", "surrogatepass"))
    return json.dumps(norm(r.result), ensure_ascii=False, allow_nan=False)

for line in sys.stdin:
    kind, arg = line.split()
    text, ok = None, True
    if kind == "F":
        value = struct.unpack(">d", bytes.fromhex(arg))[0]
    elif kind == "I":
        value = int(arg)
    else:
        text = base64.b64decode(arg).decode("utf-8", "surrogatepass")
        try:
            value = json.loads(text)
        except BaseException:
            ok, value = False, None
    canon = attempt(lambda: canonical(value)) if ok else None
    digest = attempt(lambda: hashlib.sha256(canon.encode("utf-8")).hexdigest()) if canon is not None else None
    stored = attempt(lambda: orjson.dumps(value).decode()) if ok else None
    source = text if text is not None else stored
    decoded = attempt(lambda: decode(source)) if source is not None else None
    print(json.dumps({"canon": canon if digest else None, "fp": digest, "stored": stored, "decode": decoded}), flush=True)
"#;

/// A small seeded generator (xorshift64*): the same stream on every run and machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[usize::try_from(self.below(items.len() as u64)).expect("index")]
    }
}

fn scale() -> usize {
    std::env::var("IDEMPOTENCY_PARITY_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

/// One generated value.
#[derive(Debug, Clone)]
enum Sample {
    Float(f64),
    Int(i128),
    /// A big integer (beyond 128 bits) as decimal text.
    BigInt(String),
    Text(String),
}

/// Python's answers, one per sample.
fn python_answers(samples: &[Sample]) -> Vec<Value> {
    let mut input = String::new();
    for s in samples {
        match s {
            Sample::Float(x) => {
                let _ = writeln!(input, "F {:016x}", x.to_bits());
            }
            Sample::Int(n) => {
                let _ = writeln!(input, "I {n}");
            }
            Sample::BigInt(t) | Sample::Text(t) => {
                let _ = writeln!(input, "T {}", base64_encode(t.as_bytes()));
            }
        }
    }
    let answers = idempotency_testkit::python::json_lines(PYTHON, input);
    assert_eq!(answers.len(), samples.len(), "one answer per sample");
    answers
}

/// What Rust makes of a sample, in the same four parts.
#[derive(Debug, PartialEq)]
struct Answer {
    canon: Option<String>,
    fp: Option<String>,
    stored: Option<String>,
    decode: Option<String>,
}

fn record_with(result: &str) -> String {
    format!(
        r#"{{"operation":"op","idempotency_key":"k","result":{result},"created_at":"2025-01-01T00:00:00Z","expires_at":"2999-01-01T00:00:00Z","status":"completed","fingerprint":null}}"#
    )
}

fn decode(stored: &str) -> Option<String> {
    IdempotencyRecord::from_json(record_with(stored).as_bytes(), "op", "k")
        .ok()
        .map(|r| r.result().get().to_owned())
}

fn named<T: serde::Serialize>(value: T) -> BTreeMap<&'static str, T> {
    BTreeMap::from([("v", value)])
}

fn rust_answer(sample: &Sample) -> Answer {
    match sample {
        Sample::Float(x) => {
            let stored = to_result_json(x).ok().map(|r| r.get().to_owned());
            Answer {
                canon: canonical_json(&named(x)).ok(),
                fp: fingerprint_of(&named(x)).ok(),
                decode: stored.as_deref().and_then(decode),
                stored,
            }
        }
        Sample::Int(n) => {
            let stored = to_result_json(n).ok().map(|r| r.get().to_owned());
            Answer {
                canon: canonical_json(&named(n)).ok(),
                fp: fingerprint_of(&named(n)).ok(),
                decode: stored.as_deref().and_then(decode),
                stored,
            }
        }
        Sample::BigInt(text) | Sample::Text(text) => {
            let raw = RawValue::from_string(format!("{{\"v\":{text}}}")).ok();
            // Stored bytes: through `serde_json::Value`, compared only where it holds the
            // value exactly (its canonical text is the raw text's).
            let value: Option<Value> = serde_json::from_str(text).ok();
            let exact = match (&raw, &value) {
                (Some(raw), Some(value)) => {
                    canonical_json(raw).ok().is_some()
                        && canonical_json(raw).ok() == canonical_json(&named(value)).ok()
                }
                _ => false,
            };
            Answer {
                canon: raw.as_ref().and_then(|r| canonical_json(r).ok()),
                fp: raw.as_ref().and_then(|r| fingerprint_of(r).ok()),
                stored: if exact {
                    value.and_then(|v| to_result_json(&v).ok().map(|r| r.get().to_owned()))
                } else {
                    None
                },
                decode: decode(text),
            }
        }
    }
}

/// Compares every sample; returns the mismatches, each with the value and both answers.
fn mismatches(class: &str, samples: &[Sample]) -> Vec<String> {
    let answers = python_answers(samples);
    let mut out = Vec::new();
    for (sample, py) in samples.iter().zip(&answers) {
        let ours = rust_answer(sample);
        let theirs = |field: &str| py[field].as_str().map(str::to_owned);
        let mut wrong = Vec::new();
        // Where Rust has no form for the value (text `serde_json` refuses, such as `NaN`),
        // there is nothing to compare: only a value both sides produce must agree.
        if ours.canon.is_some() && ours.canon != theirs("canon") {
            wrong.push(format!(
                "canonical: rust {:?}, python {:?}",
                ours.canon,
                theirs("canon")
            ));
        }
        if ours.canon.is_none() && theirs("canon").is_some() && !matches!(sample, Sample::Text(_)) {
            wrong.push(format!(
                "canonical: rust refused, python {:?}",
                theirs("canon")
            ));
        }
        if ours.fp.is_some() && ours.fp != theirs("fp") {
            wrong.push(format!(
                "fingerprint: rust {:?}, python {:?}",
                ours.fp,
                theirs("fp")
            ));
        }
        if ours.stored.is_some() && ours.stored != theirs("stored") {
            wrong.push(format!(
                "stored: rust {:?}, python {:?}",
                ours.stored,
                theirs("stored")
            ));
        }
        if matches!(sample, Sample::Float(_) | Sample::Int(_))
            && ours.stored.is_none() != theirs("stored").is_none()
        {
            wrong.push(format!(
                "stored: rust {:?}, python {:?}",
                ours.stored,
                theirs("stored")
            ));
        }
        let decode_agrees = match (&ours.decode, theirs("decode")) {
            (None, None) => true,
            (Some(a), Some(b)) => json_eq::same_value(a, &b),
            // Python read the value Rust never stored (a typed value Rust refused to
            // store has no decode to compare).
            (None, Some(_)) => ours.stored.is_none() && !matches!(sample, Sample::Text(_)),
            (Some(_), None) => false,
        };
        if !decode_agrees {
            wrong.push(format!(
                "decode: rust {:?}, python {:?}",
                ours.decode,
                theirs("decode")
            ));
        }
        if !wrong.is_empty() {
            out.push(format!("[{class}] {sample:?}: {}", wrong.join("; ")));
        }
    }
    out
}

fn check(class: &str, samples: &[Sample]) {
    let found = mismatches(class, samples);
    assert!(
        found.is_empty(),
        "{} of {} {class} values differ from Python; the first ones:\n{}",
        found.len(),
        samples.len(),
        found
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Doubles that sit exactly halfway between two shortest decimal spellings, and their
/// neighbours: `n + k/4` and `n + k/8` where the spacing of doubles is 1/4 or 1/8.
fn float_ties(rng: &mut Rng, n: usize) -> Vec<Sample> {
    (0..n)
        .map(|i| {
            let base = match i % 4 {
                // Spacing 1/8 in [2^49, 2^50), 1/4 in [2^50, 2^51): ties at .125, .25, ….
                0 => (1u64 << 49) + rng.below(1 << 49),
                1 => (1u64 << 50) + rng.below(1 << 50),
                // Microsecond timestamps as floats.
                2 => 1_600_000_000 + rng.below(200_000_000),
                _ => 1_000_000_000_000_000 + rng.below(1_000_000_000_000),
            };
            #[allow(clippy::cast_precision_loss)]
            let x = match i % 4 {
                2 => base as f64 + (rng.below(1_000_000) as f64) / 1e6,
                3 => base as f64 + 0.3,
                _ => base as f64 + (rng.below(8) as f64) / 8.0,
            };
            // A neighbour now and then: one ulp either side.
            let x = match rng.below(3) {
                0 => f64::from_bits(x.to_bits() + 1),
                1 => f64::from_bits(x.to_bits() - 1),
                _ => x,
            };
            Sample::Float(if rng.below(2) == 0 { x } else { -x })
        })
        .collect()
}

/// Doubles from every part of the range: random bit patterns, subnormals, the extremes
/// and the decades where Python switches to exponent notation.
fn float_range(rng: &mut Rng, n: usize) -> Vec<Sample> {
    let fixed = [
        0.0,
        -0.0,
        f64::MIN_POSITIVE,
        f64::MAX,
        f64::MIN,
        f64::EPSILON,
        5e-324,
        -5e-324,
        1e16,
        9_999_999_999_999_998.0,
        1e-4,
        1e-5,
        0.000_099_999_999_999_999_99,
        1e22,
        1e23,
        0.1,
        0.2 + 0.1,
        1e15 + 0.3,
    ];
    let mut out: Vec<Sample> = fixed.iter().copied().map(Sample::Float).collect();
    while out.len() < n {
        let x = match rng.below(4) {
            0 => f64::from_bits(rng.next()),
            // Subnormals.
            1 => f64::from_bits(rng.below(1 << 52) | (rng.below(2) << 63)),
            // Around the notation switches (1e-5, 1e-4, 1e16) and powers of ten.
            2 => {
                let exp = *rng.pick(&[-6i32, -5, -4, -3, 14, 15, 16, 17, 21, 22, 23]);
                let x = 10f64.powi(exp);
                let ulps = rng.below(5);
                f64::from_bits(x.to_bits() + ulps).max(f64::from_bits(x.to_bits() - ulps.min(2)))
            }
            // Short decimals, the usual payload.
            _ => {
                #[allow(clippy::cast_precision_loss)]
                let m = rng.below(1_000_000) as f64;
                m / 10f64.powi(i32::try_from(rng.below(8)).expect("small"))
            }
        };
        if x.is_finite() {
            out.push(Sample::Float(x));
        }
    }
    out
}

/// Integers around 2^53, 2^63, 2^64 (typed: `i128`), past 128 bits and around 4300
/// digits (text).
fn integers(rng: &mut Rng, n: usize) -> Vec<Sample> {
    let mut out = Vec::new();
    while out.len() < n {
        let center: i128 = *rng.pick(&[
            1i128 << 53,
            -(1i128 << 53),
            1i128 << 63,
            -(1i128 << 63),
            1i128 << 64,
            0,
        ]);
        let offset = i128::from(rng.below(2048)) - 1024;
        out.push(Sample::Int(center + offset));
        if rng.below(8) == 0 {
            let digits = *rng.pick(&[39usize, 60, 4299, 4300, 4301]);
            let mut text = String::with_capacity(digits + 1);
            if rng.below(2) == 0 {
                text.push('-');
            }
            text.push(char::from(
                b'1' + u8::try_from(rng.below(9)).expect("digit"),
            ));
            for _ in 1..digits {
                text.push(char::from(
                    b'0' + u8::try_from(rng.below(10)).expect("digit"),
                ));
            }
            out.push(Sample::BigInt(text));
        }
    }
    out
}

/// JSON texts: number spellings (ties, `-0`, exponents), strings with escapes and
/// surrogates, nesting near pydantic's limit, objects with key order and duplicates.
fn texts(rng: &mut Rng, n: usize) -> Vec<Sample> {
    let numbers = [
        "-0",
        "0",
        "-0.0",
        "0e0",
        "-0e-0",
        "1E400",
        "-1e400",
        "1e-400",
        "1000000000000000.25",
        "1000000000000000.2",
        "1000000000000000.3",
        "0.30000000000000004",
        "1.5e300",
        "9007199254740993",
        "9007199254740993.0",
        "18446744073709551616",
        "-9223372036854775809",
        "2.5E-7",
        "1e16",
        "123456789012345678901234567890.5",
    ];
    let strings = [
        r#""\ud83d\ude00""#,
        r#""\ud83d""#,
        r#""\ude00""#,
        r#""a\ud83dz""#,
        r#""\u00e9\u4e2d""#,
        "\"é中😀\"",
        r#""\u0000\u001f\u007f""#,
        r#""\/\\\"""#,
        r#""\u2028\u2029""#,
        "\"\u{202e}rtl\"",
    ];
    let mut out = Vec::new();
    while out.len() < n {
        let text = match rng.below(5) {
            0 => (*rng.pick(&numbers)).to_owned(),
            1 => (*rng.pick(&strings)).to_owned(),
            2 => {
                // Nesting around pydantic's 200 (the value sits inside the record).
                let depth = usize::try_from(195 + rng.below(10)).expect("small");
                let leaf = *rng.pick(&numbers);
                format!("{}{leaf}{}", "[".repeat(depth), "]".repeat(depth))
            }
            3 => {
                let keys = ["b", "a", "é", "A", "aa", "\u{1f600}", "b"];
                let count = rng.below(5);
                let members: Vec<String> = (0..count)
                    .map(|_| format!("\"{}\":{}", rng.pick(&keys), rng.pick(&numbers[..8])))
                    .collect();
                format!("{{{}}}", members.join(","))
            }
            _ => {
                let a = *rng.pick(&numbers);
                let b = *rng.pick(&strings);
                format!("[{a},{b},{{\"k\":{a}}}]")
            }
        };
        out.push(Sample::Text(text));
    }
    out
}

#[test]
fn float_ties_and_near_ties_are_spelt_as_python_spells_them() {
    let mut rng = Rng(0x5eed_0001);
    check("float ties", &float_ties(&mut rng, 3000 * scale()));
}

#[test]
fn floats_across_the_range_are_spelt_as_python_spells_them() {
    let mut rng = Rng(0x5eed_0002);
    check("floats", &float_range(&mut rng, 3000 * scale()));
}

#[test]
fn integers_of_every_width_agree_with_python() {
    let mut rng = Rng(0x5eed_0003);
    check("integers", &integers(&mut rng, 2000 * scale()));
}

#[test]
fn json_texts_agree_with_python() {
    let mut rng = Rng(0x5eed_0004);
    check("texts", &texts(&mut rng, 2000 * scale()));
}

#[test]
fn the_tie_from_the_report_is_spelt_with_the_even_digit() {
    // 1e15 + 0.3 is exactly 1000000000000000.25: Python writes …0.2 in both places.
    let x = 1e15 + 0.3;
    assert_eq!(
        to_result_json(&x).expect("stored").get(),
        "1000000000000000.2"
    );
    assert_eq!(
        canonical_json(&named(x)).expect("canonical"),
        r#"{"v":1000000000000000.2}"#
    );
}

#[test]
fn a_negative_zero_integer_is_read_and_replayed_as_zero() {
    let record = IdempotencyRecord::from_json(record_with("[-0,{\"a\":-0}]").as_bytes(), "op", "k")
        .expect("a record");
    assert_eq!(record.result().get(), r#"[0,{"a":0}]"#);
    let numbers: (u64, BTreeMap<String, i64>) =
        serde_json::from_str(record.result().get()).expect("integers");
    assert_eq!(numbers.0, 0);
    // The float -0.0 stays a float.
    let float =
        IdempotencyRecord::from_json(record_with("-0.0").as_bytes(), "op", "k").expect("a record");
    assert_eq!(float.result().get(), "-0.0");
}

#[test]
fn check_storable_agrees_with_the_decoder_a_claim_uses() {
    let mut results: Vec<String> = (190..=210)
        .map(|depth| format!("{}1{}", "[".repeat(depth), "]".repeat(depth)))
        .collect();
    results.extend(
        [
            r#""\ud83d""#,
            r#""\ud83d\ude00""#,
            r#"{"a":"\udc00"}"#,
            "-0",
            "[1e400]",
            r#"{"a":1,"a":2}"#,
        ]
        .map(str::to_owned),
    );
    results.push("1".repeat(4300));
    results.push("1".repeat(4301));
    let mut checked = 0;
    for text in results {
        let mut de = serde_json::Deserializer::from_str(&text);
        de.disable_recursion_limit();
        let raw: Box<RawValue> = serde::Deserialize::deserialize(&mut de).expect("JSON text");
        checked += 1;
        let storable = idempotency_core::check_storable(&raw).is_ok();
        let decodes =
            IdempotencyRecord::from_json(record_with(&text).as_bytes(), "op", "k").is_ok();
        assert_eq!(storable, decodes, "{}", &text[..text.len().min(60)]);
    }
    assert_eq!(checked, 29);
}
