//! Single cases where we disagreed with the Python idempotency-kit 0.5.0 (each outcome
//! found by running Python 0.5.0; the generated comparison is `differential.rs`).

use idempotency_core::{IdempotencyError, IdempotencyRecord, canonical_json, fingerprint_of};

fn record_with(result: &str, extra: &str) -> String {
    format!(
        r#"{{"operation":"o","idempotency_key":"k","result":{result},"created_at":"2026-01-01T00:00:00Z","expires_at":"2099-01-01T00:00:00Z"{extra}}}"#
    )
}

fn decode(text: &str) -> Result<IdempotencyRecord, IdempotencyError> {
    IdempotencyRecord::from_json(text.as_bytes(), "o", "k")
}

fn is_corrupted(text: &str) -> bool {
    matches!(decode(text), Err(IdempotencyError::CorruptedRecord { .. }))
}

#[test]
fn an_unknown_field_holding_json_python_cannot_read_makes_the_record_corrupted() {
    // Python parses the whole text before it looks at a field: one bad value anywhere
    // and the record is unreadable to it, so it must be to us (else one side replays and
    // the other runs the action again).
    for extra in [
        r#","zz":"\ud800""#.to_owned(),
        r#","zz":"\udc00x""#.to_owned(),
        r#","zz":["\ud800"]"#.to_owned(),
        r#","zz":{"\ud800":1}"#.to_owned(),
        format!(r#","zz":{}"#, "1".repeat(4301)),
        format!(r#","zz":{}.5"#, "1".repeat(5000)),
        format!(r#","zz":[{}]"#, "9".repeat(4301)),
    ] {
        let text = record_with("1", &extra);
        assert!(is_corrupted(&text), "{}", &extra[..extra.len().min(40)]);
    }
}

#[test]
fn unknown_fields_python_reads_are_ignored() {
    for extra in [
        r#","zz":1e400"#.to_owned(),
        r#","zz":NaN"#.to_owned(),
        r#","zz":"\ud83d\ude00""#.to_owned(),
        format!(r#","zz":{}"#, "1".repeat(4300)),
        format!(r#","zz":{}{}"#, "[".repeat(199), "]".repeat(199)),
    ] {
        let record = decode(&record_with("1", &extra))
            .unwrap_or_else(|e| panic!("{}: {e}", &extra[..extra.len().min(40)]));
        assert_eq!(record.result().get(), "1");
    }
}

#[test]
fn a_float_with_an_integer_part_beyond_4300_digits_is_corrupted_whatever_its_exponent() {
    // Python limits the digits before the point or exponent: `1…1e-5000` is refused
    // though its value is tiny.
    for result in [
        format!("{}e-5000", "1".repeat(4301)),
        format!("{}.5e-5000", "1".repeat(4301)),
        format!("-{}E-5000", "1".repeat(4301)),
        format!("[{}e-5000]", "1".repeat(4301)),
    ] {
        assert!(is_corrupted(&record_with(&result, "")), "{}", &result[..20]);
    }
    let read = decode(&record_with(&format!("{}.5e-5000", "1".repeat(4300)), ""))
        .expect("4300 digits are read");
    assert!(read.result().get().ends_with(".5e-5000"));
}

#[test]
fn the_fast_decoder_keeps_only_what_the_detailed_one_would_write() {
    // Whitespace and a repeated key inside a result are re-written by the detailed
    // decoder: both paths must give the same record, so the same bytes on re-write.
    let cases = [
        (r#"{"a": [1, 2]}"#, r#"{"a":[1,2]}"#),
        (r#"{"a":1,"a":2}"#, r#"{"a":2}"#),
        (r#""a\/b""#, r#""a/b""#),
        (r#"{"x":1e400}"#, r#"{"x":null}"#),
    ];
    for (result, replayed) in cases {
        let record = decode(&record_with(result, "")).expect(result);
        assert_eq!(record.result().get(), replayed, "{result}");
    }
}

#[test]
fn negative_numeric_strings_in_year_zero_are_datetime_parsing_errors() {
    // Python 0.5.0: `datetime_parsing` (pydantic's parser reads year 0, Python's
    // `datetime` refuses it); before year 0 the string is tried as a date instead.
    let kind = |stamp: &str| {
        let text = format!(
            r#"{{"operation":"o","idempotency_key":"k","result":1,"created_at":"2026-01-01T00:00:00Z","expires_at":"{stamp}"}}"#
        );
        let err = decode(&text).expect_err(stamp);
        err.problems().iter().map(|p| p.kind).collect::<Vec<_>>()
    };
    assert_eq!(kind("-62135596800001"), ["datetime_parsing"]);
    assert_eq!(kind("-62135596800000.5"), ["datetime_parsing"]);
    assert_eq!(kind("-62167219200001"), ["datetime_from_date_parsing"]);
    assert_eq!(kind("253402300800000"), ["datetime_from_date_parsing"]);
}

#[test]
fn non_finite_floats_fingerprint_as_python_writes_them() {
    // Python 0.5.0: `json.dumps` writes NaN, Infinity, -Infinity (hashes from
    // `fingerprint_of(**values)`).
    let mut values = std::collections::BTreeMap::new();
    values.insert("x", f64::NAN);
    assert_eq!(canonical_json(&values).expect("canonical"), r#"{"x":NaN}"#);
    assert_eq!(
        fingerprint_of(&values).expect("fp"),
        "c238cb6e9ac5407491b0988102620ab9445290d2ed7713c516a2b28bd2388968"
    );
    values.clear();
    values.insert("x", f64::INFINITY);
    values.insert("y", f64::NEG_INFINITY);
    assert_eq!(
        canonical_json(&values).expect("canonical"),
        r#"{"x":Infinity,"y":-Infinity}"#
    );
    assert_eq!(
        fingerprint_of(&values).expect("fp"),
        "19937f3ed0ef33e7e5e8f746b5633a7879d77b6efad363ddf57c05ab22f6a367"
    );
}

#[test]
fn non_finite_floats_nested_beside_exact_integers_fingerprint_as_python() {
    #[derive(serde::Serialize)]
    struct Inner {
        b: f32,
    }
    #[derive(serde::Serialize)]
    struct Values {
        n: u128,
        a: (f64, Option<f64>, Inner, Option<()>),
    }
    let values = Values {
        n: u128::from(u64::MAX) + 1,
        a: (
            f64::NAN,
            Some(1.0),
            Inner {
                b: f32::NEG_INFINITY,
            },
            None,
        ),
    };
    assert_eq!(
        canonical_json(&values).expect("canonical"),
        r#"{"a":[NaN,1.0,{"b":-Infinity},null],"n":18446744073709551616}"#
    );
    assert_eq!(
        fingerprint_of(&values).expect("fp"),
        "a8be8a29b16b400560b7a3e0268ed823039b06bcfa88ac7b80585d3a32a50c43"
    );
}
