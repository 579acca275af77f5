//! Settings: loading, validation that lists every problem, and the one-call wiring.

use std::time::Duration;

use idempotency_coordinator::{
    IdempotencyError, IdempotencySettings, InFlight, OnStorageError, redis_coordinator,
};

#[test]
fn settings_load_with_the_python_field_names() {
    let settings: IdempotencySettings = serde_json::from_str(
        r#"{"enabled": true, "key_prefix": "svc:", "metrics_enabled": true, "default_ttl_minutes": 60,
            "min_ttl_seconds": 60, "max_ttl_seconds": 2592000, "operation_ttls": {"order.create": 3600},
            "in_flight": "raise", "in_flight_lease_seconds": 10, "on_storage_error": "raise"}"#,
    )
    .expect("settings");
    settings.validate().expect("valid");
    assert_eq!(settings.in_flight, InFlight::Raise);
    assert_eq!(settings.on_storage_error, OnStorageError::Raise);
    assert_eq!(settings.lease(), Duration::from_secs(10));
    assert!(
        serde_json::from_str::<IdempotencySettings>(r#"{"in_fligth": "wait"}"#).is_err(),
        "typos are refused"
    );
    assert_eq!(
        serde_json::from_str::<IdempotencySettings>("{}").expect("defaults"),
        IdempotencySettings::default()
    );
}

#[test]
fn validation_lists_every_problem() {
    let settings = IdempotencySettings {
        min_ttl_seconds: 0,
        max_ttl_seconds: 30,
        default_ttl_minutes: 60,
        in_flight_lease_seconds: 0,
        operation_ttls: [("op".to_owned(), 5_000)].into_iter().collect(),
        ..IdempotencySettings::default()
    };
    let err = settings.validate().expect_err("invalid");
    let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "min_ttl",
            "default_ttl",
            "in_flight_lease_seconds",
            "operation_ttls.op"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_wires_store_metrics_and_coordinator_from_settings() {
    let server = idempotency_testkit::RedisServer::start();
    let client = idempotency_redis::connect_client(
        &server.url(),
        &idempotency_redis::ConnectOptions::default(),
    )
    .await
    .expect("client");
    let settings = IdempotencySettings {
        key_prefix: "wired:".into(),
        metrics_enabled: true,
        operation_ttls: [("order.create".to_owned(), 120)].into_iter().collect(),
        ..IdempotencySettings::default()
    };
    let registry = prometheus::Registry::new();
    let metrics = idempotency_metrics::PrometheusMetrics::register(&registry, None)
        .expect("register")
        .shared();
    let coordinator = redis_coordinator(&settings, client, Some(metrics)).expect("wired");
    let first: u32 = coordinator
        .call("order.create", Some("k"))
        .run(|| async { Ok::<_, IdempotencyError>(1) })
        .await
        .expect("call");
    let again: u32 = coordinator
        .call("order.create", Some("k"))
        .run(|| async { Ok::<_, IdempotencyError>(2) })
        .await
        .expect("replay");
    assert_eq!((first, again), (1, 1));
    let ttl = server
        .cmd(&["TTL", "wired:order.create:k"])
        .as_int()
        .expect("ttl under the configured prefix");
    assert!(
        (119..=120).contains(&ttl),
        "the operation override applied: {ttl}"
    );
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("encode");
    assert!(
        text.contains(r#"idempotency_operations_total{operation="order.create",status="hit"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"idempotency_operations_total{operation="order.create",status="miss"} 1"#),
        "{text}"
    );
    let invalid = IdempotencySettings {
        in_flight_lease_seconds: 0,
        ..IdempotencySettings::default()
    };
    let client = idempotency_redis::connect_client(
        &server.url(),
        &idempotency_redis::ConnectOptions::default(),
    )
    .await
    .expect("client");
    assert!(
        redis_coordinator(&invalid, client, None)
            .expect_err("invalid")
            .is_validation()
    );
    // Metrics asked for without a collector: a configuration error, never a silent
    // registration on the process-wide registry.
    let client = idempotency_redis::connect_client(
        &server.url(),
        &idempotency_redis::ConnectOptions::default(),
    )
    .await
    .expect("client");
    let err = redis_coordinator(&settings, client, None).expect_err("no collector");
    assert_eq!(
        err.class(),
        idempotency_core::ErrorClass::Configuration,
        "{err}"
    );
}

#[tokio::test]
async fn a_malformed_redis_url_is_a_configuration_error_not_an_outage() {
    let err = idempotency_redis::connect_client(
        "redis://127.0.0.1:notaport",
        &idempotency_redis::ConnectOptions::default(),
    )
    .await
    .expect_err("bad url");
    assert_eq!(
        err.class(),
        idempotency_core::ErrorClass::Configuration,
        "{err}"
    );
    assert!(!err.is_storage());
}

#[tokio::test]
async fn a_policy_is_kept_as_given_not_rounded_to_minutes() {
    use idempotency_core::IdempotencyRepository;
    // A 30-second default TTL is valid for this policy; copying it into settings in whole
    // minutes turned it into 0 and refused it.
    let policy = idempotency_core::IdempotencyDomainService::new(
        std::time::Duration::from_secs(30),
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(120),
    )
    .expect("policy");
    let coordinator =
        idempotency_coordinator::Coordinator::builder(idempotency_coordinator::MemoryStore::new())
            .policy(policy)
            .build()
            .expect("a 30 s default TTL is accepted");
    let _: u32 = coordinator
        .call("op", Some("k"))
        .run(|| async { Ok::<_, IdempotencyError>(1) })
        .await
        .expect("call");
    let record = coordinator
        .store()
        .get(&idempotency_core::RecordId::new("op", "k").expect("valid"))
        .await
        .expect("get")
        .expect("stored");
    let lifetime = record.expires_at() - record.created_at();
    assert_eq!(
        lifetime,
        time::Duration::seconds(30),
        "the policy's own default"
    );
}

#[tokio::test]
async fn a_lease_keeps_its_milliseconds_and_under_a_second_is_refused() {
    use idempotency_core::{Claim, Clock, Lease, RecordId, ReservationStore};
    let store = idempotency_coordinator::MemoryStore::new();
    let err = idempotency_coordinator::Coordinator::builder(store.clone())
        .lease(std::time::Duration::from_millis(999))
        .build()
        .expect_err("under 1 s");
    assert!(err.is_validation(), "{err}");
    assert!(err.problems().iter().any(|p| p.field == "lease"), "{err}");
    // 1.5 s is kept as 1.5 s, not truncated to 1 s: the owner still holds the key at
    // 1.2 s.
    let coordinator = idempotency_coordinator::Coordinator::builder(store.clone())
        .lease(std::time::Duration::from_millis(1500))
        .build()
        .expect("1.5 s");
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let owner = tokio::spawn({
        let coordinator = coordinator.clone();
        async move {
            coordinator
                .call("op", Some("lease"))
                .run(|| async move {
                    let _ = started_tx.send(());
                    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
                    Ok::<_, IdempotencyError>(1u32)
                })
                .await
        }
    });
    started_rx.await.expect("started");
    let probe = Lease::new(
        RecordId::new("op", "lease").expect("valid"),
        None,
        Clock::system(),
    );
    let pending = match store
        .claim(&probe, std::time::Duration::from_secs(1))
        .await
        .expect("claim")
    {
        Claim::Found(record) => record,
        Claim::Acquired => panic!("the owner's reservation was gone"),
    };
    let lease = pending.expires_at() - pending.created_at();
    assert!(
        lease > time::Duration::milliseconds(1400) && lease < time::Duration::milliseconds(1600),
        "lease {lease}"
    );
    assert_eq!(owner.await.expect("task").expect("owner"), 1);
}

#[tokio::test]
async fn an_operation_ttl_keeps_its_milliseconds() {
    let policy = idempotency_core::IdempotencyDomainService::new(
        Duration::from_secs(60),
        Duration::from_secs(1),
        Duration::from_secs(600),
    )
    .expect("policy");
    let stored = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&stored);
    let coordinator =
        idempotency_coordinator::Coordinator::builder(idempotency_coordinator::MemoryStore::new())
            .policy(policy)
            .operation_ttl("op", Duration::from_millis(1500))
            .on_record_created(move |r| seen.lock().expect("hook lock").push(r.ttl))
            .build()
            .expect("1.5 s is inside the policy");
    coordinator
        .call("op", Some("k"))
        .ttl(Duration::from_secs(300))
        .run(|| async { Ok::<_, IdempotencyError>(1u8) })
        .await
        .expect("run");
    // Not truncated to 1 s, and it wins over the call's TTL.
    assert_eq!(
        *stored.lock().expect("hook lock"),
        [Duration::from_millis(1500)]
    );
    // Under the policy's minimum, it is refused at build, to the millisecond.
    let err =
        idempotency_coordinator::Coordinator::builder(idempotency_coordinator::MemoryStore::new())
            .policy(policy)
            .operation_ttl("op", Duration::from_millis(999))
            .build()
            .expect_err("under 1 s");
    assert!(
        err.problems()
            .iter()
            .any(|p| p.field == "operation_ttls.op" && p.message.contains("999ms")),
        "{err}"
    );
}

#[test]
fn operation_ttls_are_checked_against_the_policy_in_use() {
    let policy = idempotency_core::IdempotencyDomainService::new(
        Duration::from_secs(60),
        Duration::from_secs(1),
        Duration::from_secs(600),
    )
    .expect("policy");
    let builder = || {
        idempotency_coordinator::Coordinator::builder(idempotency_coordinator::MemoryStore::new())
            .policy(policy)
    };
    // 30 s is inside this policy (not inside the default settings' 60 s minimum).
    builder()
        .operation_ttl("op", Duration::from_secs(30))
        .build()
        .expect("30 s is valid for the policy in use");
    // 3600 s is outside it: refused at build, not on every call.
    let err = builder()
        .operation_ttl("op", Duration::from_secs(3600))
        .build()
        .expect_err("outside the policy");
    assert!(
        err.problems()
            .iter()
            .any(|p| p.field == "operation_ttls.op"),
        "{err}"
    );
    let err =
        idempotency_coordinator::Coordinator::builder(idempotency_coordinator::MemoryStore::new())
            .lease(Duration::MAX)
            .build()
            .expect_err("an unbounded lease");
    assert!(err.problems().iter().any(|p| p.field == "lease"), "{err}");
}

#[test]
fn a_key_prefix_without_its_separator_is_refused() {
    // `svc:t1` + `0op` and `svc:t10` + `op` would share `svc:t10op:…`.
    let settings = idempotency_coordinator::IdempotencySettings {
        key_prefix: "svc:t1".into(),
        ..Default::default()
    };
    let refused = settings.validate().expect_err("a prefix without ':'");
    assert!(
        refused.problems().iter().any(|p| p.field == "key_prefix"),
        "{refused}"
    );
    for fine in ["svc:t1:", "", "idempotency:"] {
        let settings = idempotency_coordinator::IdempotencySettings {
            key_prefix: fine.into(),
            ..Default::default()
        };
        assert!(settings.validate().is_ok(), "{fine:?}");
    }
}
