//! The protocol as implemented: no safety property is violated in any configuration,
//! and the model is not vacuous (a second caller does replay the stored value).

use std::time::Instant;

use idempotency_model::model::{REPLAYED, REPLAYED_ERROR};
use idempotency_model::store::Stored;
use idempotency_model::{Config, Failures, InFlight, Mode, OnStorageError, ProtocolModel, check};
use stateright::{Checker, Model};

fn holds(name: &str, config: Config) {
    let started = Instant::now();
    let checked = check(ProtocolModel::new(config));
    println!(
        "{name}: {} states in {:.1?}",
        checked.states,
        started.elapsed()
    );
    assert!(
        checked.violations.is_empty(),
        "{name}: {:#?}",
        checked.violations
    );
}

#[test]
fn two_callers_with_every_fault_once() {
    holds("two callers", Config::two_callers());
}

#[test]
fn three_skewed_callers_over_a_value_that_is_not_json() {
    holds("not json", Config::three_callers(Stored::NotJson));
}

#[test]
fn three_skewed_callers_over_json_that_is_not_a_record() {
    holds("not a record", Config::three_callers(Stored::NotRecord));
}

#[test]
fn three_skewed_callers_over_an_abandoned_reservation() {
    holds("abandoned", Config::three_callers(Stored::Abandoned));
}

#[test]
fn three_skewed_callers_over_a_wrong_type_value() {
    holds("wrong type", Config::three_callers(Stored::WrongType));
}

#[test]
fn our_callers_next_to_the_python_client_renewing_and_deleting() {
    holds("python", Config::with_python());
}

#[test]
fn stored_errors_with_every_fault_once() {
    holds("stored errors", Config::stored_errors());
}

#[test]
fn attached_calls_storing_errors() {
    holds(
        "attached, stored errors",
        Config {
            mode: Mode::Attached,
            ..Config::stored_errors()
        },
    );
}

#[test]
fn two_keys_with_skewed_clocks() {
    holds("two keys", Config::two_keys());
}

#[test]
fn fail_open_counts_its_unconfirmed_runs() {
    holds(
        "fail open",
        Config {
            on_storage_error: OnStorageError::Run,
            ..Config::two_callers()
        },
    );
}

#[test]
fn attached_calls_count_cancellations_after_the_effect() {
    holds(
        "attached",
        Config {
            mode: Mode::Attached,
            failures: Failures::Released,
            ..Config::two_callers()
        },
    );
}

#[test]
fn raise_mode_callers() {
    holds(
        "raise",
        Config {
            in_flight: InFlight::Raise,
            ..Config::three_callers(Stored::NotJson)
        },
    );
}

#[test]
fn a_second_caller_replays_the_stored_value() {
    let checker = ProtocolModel::new(Config::two_callers())
        .checker()
        .spawn_bfs()
        .join();
    assert!(checker.discovery(REPLAYED).is_some());
}

#[test]
fn a_second_caller_replays_the_stored_error() {
    let checker = ProtocolModel::new(Config::stored_errors())
        .checker()
        .spawn_bfs()
        .join();
    assert!(checker.discovery(REPLAYED_ERROR).is_some());
}

/// The biggest configuration: about half a million states, seconds in release mode.
/// `cargo test --release -p idempotency-model --test protocol -- --ignored`
#[test]
#[ignore = "half a million states; run in release mode"]
fn two_keys_with_a_cancellation_too() {
    holds("two keys, full", Config::two_keys_full());
}
