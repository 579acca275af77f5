//! The Python library's exposition after a fixed call sequence (the testkit's
//! conformance `metrics.txt`)
//! against ours after the same calls.

use std::collections::BTreeMap;

use idempotency_core::{ErrorType, IdempotencyMetrics, LatencyMethod};
use idempotency_metrics::PrometheusMetrics;

type Samples = BTreeMap<(String, Vec<(String, String)>), f64>;

/// Parses exposition text into samples keyed by name and sorted labels, `le` normalized
/// to its number, `_created` series left out.
fn samples(text: &str) -> Samples {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if name.ends_with("_created") {
            continue;
        }
        let mut pairs: Vec<(String, String)> = labels
            .split(',')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').expect("label");
                let v = v.trim_matches('"');
                let v = if k == "le" && v != "+Inf" {
                    v.parse::<f64>().expect("le").to_string()
                } else {
                    v.to_owned()
                };
                (k.to_owned(), v)
            })
            .collect();
        pairs.sort();
        out.insert((name.to_owned(), pairs), value.parse().expect("value"));
    }
    out
}

fn python_section(prefix: &str) -> String {
    let text = idempotency_testkit::conformance::text("metrics.txt");
    let marker = format!("# ---- registry: prefix={prefix} ----");
    let start = text.find(&marker).expect("section") + marker.len();
    let rest = &text[start..];
    let end = rest.find("# ---- registry").unwrap_or(rest.len());
    rest[..end].to_owned()
}

fn run_sequence(metrics: &PrometheusMetrics) {
    metrics.record_hit("user.create");
    metrics.record_hit("user.create");
    metrics.record_miss("user.create");
    metrics.record_collision("user.create");
    metrics.record_error("user.create", ErrorType::StorageGet);
    metrics.record_latency("user.create", LatencyMethod::Get, 0.003);
    metrics.record_bulk_hit("user.create", 5);
    metrics.record_bulk_miss("user.create", 2);
}

fn ours(prefix: Option<&str>) -> String {
    let registry = prometheus::Registry::new();
    let metrics = PrometheusMetrics::register(&registry, prefix).expect("register");
    run_sequence(&metrics);
    prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("encode")
}

#[test]
fn the_unprefixed_exposition_matches_the_python_library() {
    let python = samples(&python_section("None"));
    assert!(!python.is_empty());
    assert_eq!(samples(&ours(None)), python);
}

#[test]
fn the_prefixed_exposition_matches_the_python_library() {
    let python = samples(&python_section("'svc'"));
    assert!(
        python
            .keys()
            .all(|(name, _)| name.starts_with("svc_idempotency_"))
    );
    assert_eq!(samples(&ours(Some("svc"))), python);
}

#[test]
fn a_collector_lives_only_in_the_registries_it_is_given() {
    let registry = prometheus::Registry::new();
    let first = PrometheusMetrics::register(&registry, Some("dup")).expect("first");
    let shared = first.clone();
    first.record_hit("op");
    shared.record_hit("op");
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("encode");
    assert!(
        text.contains(r#"dup_idempotency_operations_total{operation="op",status="hit"} 2"#),
        "{text}"
    );
    // Registering the same names again is the registry's error, not a hidden reuse.
    let again = PrometheusMetrics::register(&registry, Some("dup"));
    assert!(
        matches!(again, Err(prometheus::Error::AlreadyReg)),
        "{again:?}"
    );
    // Another registry gets series of its own; the default registry gets nothing.
    let (third, other) = PrometheusMetrics::with_own_registry(Some("dup")).expect("own");
    third.record_hit("op");
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&other.gather())
        .expect("encode");
    assert!(text.contains(r#"status="hit"} 1"#), "{text}");
    assert!(
        prometheus::default_registry()
            .gather()
            .iter()
            .all(|f| !f.name().contains("idempotency")),
        "nothing went to the process-wide registry"
    );
}

#[test]
fn odd_label_values_and_durations_do_not_panic() {
    let registry = prometheus::Registry::new();
    let metrics = PrometheusMetrics::register(&registry, None).expect("register");
    metrics.record_error("ö\"\n{}", ErrorType::Decode);
    metrics.record_latency("op", LatencyMethod::Get, f64::NAN);
    metrics.record_latency("op", LatencyMethod::Get, -1.0);
    metrics.record_latency("op", LatencyMethod::Get, f64::INFINITY);
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("encode");
    assert!(text.contains("error_decode_error"));
    assert!(
        !text.contains("idempotency_operation_duration_seconds_count"),
        "no bogus latency was observed"
    );
}
