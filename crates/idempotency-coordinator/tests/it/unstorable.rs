//! Results the store could write but no client could read back (a lone surrogate escape,
//! nesting beyond pydantic's 200 levels) or that the adapter cannot encode: the action
//! runs once, its caller gets the value, every retry gets `ResultNotStorable`, on every
//! store alike. And a finished record nobody can read is never taken over.

use idempotency_coordinator::{InFlight, JsonAdapter, Outcome};
use idempotency_core::{IdempotencyError, IdempotencyRepository, RawValue};
use idempotency_testkit::unique_key;

use crate::common::Runs;

fn raw(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_owned()).expect("JSON text")
}

fn nested(depth: usize) -> serde_json::Value {
    let mut value = serde_json::json!(1);
    for _ in 0..depth {
        value = serde_json::Value::Array(vec![value]);
    }
    value
}

/// Three calls under one key whose action returns `make()`: how often it ran and what
/// each call got (`Ok` text, or the error).
async fn three_calls<S, T, A>(
    env: &crate::common::Env<S>,
    adapter: A,
    make: impl Fn() -> T + Clone + Send + 'static,
) -> (usize, Vec<Result<(T, Outcome), IdempotencyError>>)
where
    S: idempotency_core::ReservationStore + Clone,
    T: Send + 'static,
    A: idempotency_core::ResultAdapter<T> + Clone,
{
    let coordinator = env.coordinator(|b| b);
    let key = unique_key("unstorable");
    let runs = Runs::default();
    let mut answers = Vec::new();
    for _ in 0..3 {
        let (runs, make) = (runs.clone(), make.clone());
        let answer = coordinator
            .call("op", Some(&key))
            .adapter(adapter.clone())
            .run_with_outcome(|| async move {
                runs.tick();
                Ok::<_, IdempotencyError>(make())
            })
            .await;
        answers.push(answer);
    }
    (runs.get(), answers)
}

fn assert_runs_once<T: std::fmt::Debug>(
    runs: usize,
    answers: &[Result<(T, Outcome), IdempotencyError>],
) {
    assert_eq!(runs, 1, "the action ran again: {answers:?}");
    assert!(
        matches!(answers[0], Ok((_, Outcome::Executed))),
        "the first caller gets its value: {:?}",
        answers[0]
    );
    for answer in &answers[1..] {
        assert!(
            matches!(answer, Err(IdempotencyError::ResultNotStorable { .. })),
            "a retry gets the typed error: {answer:?}"
        );
    }
}

on_all!(a_lone_surrogate_result_runs_once, |env| {
    let (runs, answers) = three_calls(&env, JsonAdapter, || raw(r#"{"cut":"\ud83d"}"#)).await;
    assert_runs_once(runs, &answers);
});

on_all!(a_result_nested_past_the_decoders_limit_runs_once, |env| {
    let (runs, answers) = three_calls(&env, idempotency_core::SerdeAdapter, || nested(250)).await;
    assert_runs_once(runs, &answers);
});

on_all!(a_result_the_adapter_cannot_encode_runs_once, |env| {
    // A map with non-string keys has no JSON form.
    let make = || std::collections::BTreeMap::from([((1u8, 2u8), 3u8)]);
    let (runs, answers) = three_calls(&env, idempotency_core::SerdeAdapter, make).await;
    assert_runs_once(runs, &answers);
});

on_all!(
    results_at_the_decoders_limit_are_stored_and_replayed,
    |env| {
        // 199 arrays inside the record's object: the deepest a record holds.
        let (runs, answers) =
            three_calls(&env, idempotency_core::SerdeAdapter, || nested(199)).await;
        assert_eq!(runs, 1);
        assert!(
            answers[1..]
                .iter()
                .all(|a| matches!(a, Ok((v, Outcome::Replayed)) if *v == nested(199))),
            "{answers:?}"
        );
        let (runs, answers) = three_calls(&env, JsonAdapter, || raw(r#""\ud83d\ude00""#)).await;
        assert_eq!(runs, 1);
        assert!(
            answers[1..]
                .iter()
                .all(|a| matches!(a, Ok((v, Outcome::Replayed))
                if serde_json::from_str::<String>(v.get()).is_ok_and(|s| s == "\u{1f600}"))),
            "{answers:?}"
        );
    }
);

on_all!(the_unreserved_flow_keeps_an_unstorable_result_too, |env| {
    let coordinator = env.coordinator(|b| b.in_flight(InFlight::Run));
    let key = unique_key("unstorable-run");
    let runs = Runs::default();
    let mut answers = Vec::new();
    for _ in 0..3 {
        let runs = runs.clone();
        let answer = coordinator
            .call("op", Some(&key))
            .adapter(JsonAdapter)
            .run(|| async move {
                runs.tick();
                Ok::<_, IdempotencyError>(raw(r#""\udc00""#))
            })
            .await;
        answers.push(answer.map(|r| r.get().to_owned()));
    }
    assert_eq!(runs.get(), 1, "{answers:?}");
    assert!(
        matches!(answers[2], Err(IdempotencyError::ResultNotStorable { .. })),
        "{answers:?}"
    );
    // The stored record reads back (a stored error), so no claim would take it over.
    let found = env
        .store
        .get(&idempotency_testkit::record_id("op", &key))
        .await
        .expect("readable")
        .expect("a record");
    assert!(found.is_stored_error());
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_record_no_client_can_read_is_never_taken_over() {
    let env = crate::common::standalone().await;
    let coordinator = env.coordinator(|b| b);
    let key = unique_key("unreadable-finished");
    let redis_key = format!("idempotency:op:{key}");
    // What a broken writer leaves: a completed record whose result Python cannot read.
    let value = format!(
        r#"{{"operation":"op","idempotency_key":"{key}","result":"\ud83d","created_at":"2025-01-01T00:00:00Z","expires_at":"2999-01-01T00:00:00Z","status":"completed","fingerprint":null}}"#
    );
    let port = crate::common::port_of(&env, &redis_key);
    idempotency_testkit::resp::command(port, &["SET", &redis_key, &value, "EX", "600"])
        .expect("plant");
    let runs = Runs::default();
    for _ in 0..3 {
        let runs = runs.clone();
        let answer = coordinator
            .call("op", Some(&key))
            .run(|| async move {
                runs.tick();
                Ok::<_, IdempotencyError>(1u32)
            })
            .await;
        assert!(
            matches!(&answer, Err(e) if e.class() == idempotency_core::ErrorClass::Data),
            "{answer:?}"
        );
    }
    assert_eq!(
        runs.get(),
        0,
        "a finished record was taken over and run again"
    );
    let still = idempotency_testkit::resp::command(port, &["GET", &redis_key]).expect("get");
    assert_eq!(still.as_bytes(), Some(value.as_bytes()), "the value stays");
}

on_all!(
    concurrent_callers_of_an_unstorable_result_run_it_once,
    |env| {
        let coordinator = env.coordinator(|b| b);
        let key = unique_key("unstorable-many");
        let runs = Runs::default();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (coordinator, runs, key) = (coordinator.clone(), runs.clone(), key.clone());
                tokio::spawn(async move {
                    coordinator
                        .call("op", Some(&key))
                        .adapter(JsonAdapter)
                        .run_detached(move || async move {
                            runs.tick();
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            Ok::<_, IdempotencyError>(raw(r#"["\ud800"]"#))
                        })
                        .await
                })
            })
            .collect();
        let mut values = 0;
        for task in tasks {
            match task.await.expect("task") {
                Ok(_) => values += 1,
                Err(IdempotencyError::ResultNotStorable { .. }) => {}
                Err(other) => panic!("{other}"),
            }
        }
        assert_eq!(runs.get(), 1, "the action ran again");
        assert_eq!(values, 1, "only the caller that ran it gets the value");
    }
);

/// An application error that carries a JSON value, stored by policy.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum Declined {
    Declined(serde_json::Value),
    Library(String),
}

impl From<IdempotencyError> for Declined {
    fn from(e: IdempotencyError) -> Self {
        Self::Library(e.to_string())
    }
}

on_all!(
    a_stored_error_no_client_could_read_back_still_runs_once,
    |env| {
        let coordinator = env.coordinator(|b| b);
        let key = unique_key("unstorable-error");
        let runs = Runs::default();
        let mut answers = Vec::new();
        for _ in 0..3 {
            let runs = runs.clone();
            let answer: Result<u32, Declined> = coordinator
                .call("op", Some(&key))
                .store_errors(|e: &Declined| matches!(e, Declined::Declined(_)))
                .run(|| async move {
                    runs.tick();
                    Err(Declined::Declined(nested(250)))
                })
                .await;
            answers.push(answer);
        }
        assert_eq!(runs.get(), 1, "the action ran again: {answers:?}");
        assert!(
            matches!(answers[0], Err(Declined::Declined(_))),
            "{:?}",
            answers[0]
        );
        for answer in &answers[1..] {
            assert!(
                matches!(answer, Err(Declined::Library(text)) if text.contains("could not be stored")),
                "{answer:?}"
            );
        }
    }
);

/// A record without `status` is read as completed: unreadable (its expiry has no
/// timezone), it is still never taken over. So is one behind a byte-order mark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_record_without_status_is_never_taken_over() {
    let env = crate::common::standalone().await;
    let coordinator = env.coordinator(|b| b);
    for (name, prefix, status) in [
        ("no-status", "", ""),
        ("bom", "\u{feff}", r#","status":"completed""#),
    ] {
        let key = unique_key(name);
        let redis_key = format!("idempotency:op:{key}");
        let value = format!(
            r#"{prefix}{{"operation":"op","idempotency_key":"{key}","result":1,"created_at":"2025-01-01T00:00:00Z","expires_at":"2999-01-01T00:00:00"{status},"fingerprint":null}}"#
        );
        let port = crate::common::port_of(&env, &redis_key);
        idempotency_testkit::resp::command(port, &["SET", &redis_key, &value, "EX", "600"])
            .expect("plant");
        let runs = Runs::default();
        let answer = {
            let runs = runs.clone();
            coordinator
                .call("op", Some(&key))
                .run(|| async move {
                    runs.tick();
                    Ok::<_, IdempotencyError>(1u32)
                })
                .await
        };
        assert!(
            matches!(&answer, Err(e) if e.class() == idempotency_core::ErrorClass::Data),
            "{name}: {answer:?}"
        );
        assert_eq!(runs.get(), 0, "{name}: a finished record was taken over");
    }
}
