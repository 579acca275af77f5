//! AUTH: a password server and an ACL user; a wrong password fails at start-up.

use std::time::Duration;

use idempotency_coordinator::{Coordinator, IdempotencyError, InFlight};
use idempotency_redis::{ConnectOptions, RedisStore};
use idempotency_testkit::{RedisServer, ServerOptions};

fn options() -> ConnectOptions {
    ConnectOptions::default()
        .with_connect_timeout(Duration::from_secs(2))
        .with_command_timeout(Duration::from_secs(2))
}

fn server_with(args: &[&str]) -> RedisServer {
    RedisServer::start_with(&ServerOptions {
        args: args.iter().map(|s| (*s).to_owned()).collect(),
        ..ServerOptions::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_from_the_url_authenticates_commands_and_wake_ups() {
    let server = server_with(&["--requirepass", "s3cret"]);
    let url = format!("redis://:s3cret@127.0.0.1:{}", server.port());
    let store = RedisStore::connect(&url, &options())
        .await
        .expect("authenticated");
    let coordinator = Coordinator::builder(store)
        .in_flight(InFlight::Wait)
        .wait_safety_poll(Duration::from_secs(20))
        .build()
        .expect("c");
    // A waiter woken by the owner's completion: the subscriber connection authenticated too
    // (with a 20 s safety poll, only the push can wake it in time).
    let owner = {
        let coordinator = coordinator.clone();
        tokio::spawn(async move {
            coordinator
                .call("op", Some("k"))
                .run(|| async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<_, IdempotencyError>(1u32)
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let waited: u32 = tokio::time::timeout(
        Duration::from_secs(5),
        coordinator
            .call("op", Some("k"))
            .run(|| async { Ok::<_, IdempotencyError>(2u32) }),
    )
    .await
    .expect("woken by the push, not the 20 s poll")
    .expect("waiter");
    assert_eq!((owner.await.expect("task").expect("owner"), waited), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_from_the_url_works() {
    let server = server_with(&[
        "--user",
        "app",
        "on",
        ">app-pass",
        "~idempotency:*",
        "&*",
        "+@all",
        "--user",
        "default",
        "off",
    ]);
    let url = format!("redis://app:app-pass@127.0.0.1:{}", server.port());
    let store = RedisStore::connect(&url, &options())
        .await
        .expect("acl user");
    let coordinator = Coordinator::builder(store).build().expect("c");
    let v: u32 = coordinator
        .call("op", Some("k"))
        .run(|| async { Ok::<_, IdempotencyError>(5) })
        .await
        .expect("call");
    let replay: u32 = coordinator
        .call("op", Some("k"))
        .run(|| async { Ok::<_, IdempotencyError>(6) })
        .await
        .expect("replay");
    assert_eq!((v, replay), (5, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_an_error_at_start_up() {
    let server = server_with(&["--requirepass", "s3cret"]);
    for url in [
        format!("redis://:wrong@127.0.0.1:{}", server.port()),
        format!("redis://127.0.0.1:{}", server.port()),
        format!("redis://nobody:s3cret@127.0.0.1:{}", server.port()),
    ] {
        let err = RedisStore::connect(&url, &options())
            .await
            .expect_err("refused");
        // The deployment's mistake, not an outage that fail-open would run through.
        assert_eq!(
            err.class(),
            idempotency_core::ErrorClass::Configuration,
            "{err:?}"
        );
        let cause = std::error::Error::source(&err)
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(
            cause.contains("WRONGPASS")
                || cause.contains("NOAUTH")
                || cause.to_lowercase().contains("auth"),
            "{cause}"
        );
    }
}

/// Every event at `info` and above, its fields formatted.
#[derive(Default)]
struct LoudEvents(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LoudEvents {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                let _ = std::fmt::Write::write_fmt(
                    &mut self.0,
                    format_args!("{}={value:?} ", field.name()),
                );
            }
        }
        if *event.metadata().level() > tracing::Level::INFO {
            return;
        }
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(fields.0);
    }
}

/// Keys are chosen by clients and may be secrets: events above `debug` carry a short
/// hash instead (a non-record value under the key, an unreadable finished record, a
/// key reused for another request).
#[tokio::test(flavor = "current_thread")]
async fn keys_never_appear_in_events_above_debug() {
    use tracing_subscriber::layer::SubscriberExt;
    let seen = LoudEvents::default();
    let events = std::sync::Arc::clone(&seen.0);
    let _default = tracing::subscriber::set_default(tracing_subscriber::registry().with(seen));
    tracing::callsite::rebuild_interest_cache();
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), &options())
        .await
        .expect("connect");
    let coordinator = Coordinator::builder(store).build().expect("coordinator");
    let secret = "card-4242-4242-secret";
    let hashed = format!("{secret}-hash");
    server.cmd(&["HSET", &format!("idempotency:op:{hashed}"), "f", "v"]);
    let unreadable = format!("{secret}-unreadable");
    server.cmd(&[
        "SET",
        &format!("idempotency:op:{unreadable}"),
        &format!(r#"{{"operation":"op","idempotency_key":"{unreadable}","result":"\ud83d","created_at":"2025-01-01T00:00:00Z","expires_at":"2999-01-01T00:00:00Z","status":"completed","fingerprint":null}}"#),
    ]);
    for key in [&hashed, &unreadable] {
        let refused = coordinator
            .call("op", Some(key))
            .run(|| async { Ok::<_, IdempotencyError>(1u8) })
            .await;
        assert!(refused.is_err());
    }
    let reused = format!("{secret}-reused");
    for fingerprint in ["one", "another"] {
        let _ = coordinator
            .call("op", Some(&reused))
            .fingerprint(fingerprint)
            .run(|| async { Ok::<_, IdempotencyError>(1u8) })
            .await;
    }
    let events = events
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    assert!(events.len() >= 3, "{events:#?}");
    for event in &events {
        assert!(
            !event.contains(secret),
            "a key reached an event above debug: {event}"
        );
    }
    assert!(events.iter().any(|e| e.contains("key#")), "{events:#?}");
}
