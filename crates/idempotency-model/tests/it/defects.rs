//! Each known defect (issue 10's six, then a refused claim failing open and an
//! unstorable result written), put back into the model, is found: the checker reports a
//! counterexample (printed with `--nocapture`), while the same configuration without it
//! holds (`tests/protocol.rs`).

use idempotency_model::Action::{
    self, Complete, CompleteUnstorable, Deliver, Effect, RefuseWrites, Start,
};
use idempotency_model::model::{AT_MOST_ONCE, COMPLETED_STANDS, EVENTUALLY_FREE, Outcome};
use idempotency_model::store::Stored;
use idempotency_model::{Config, Defect, ProtocolModel, State, check};
use stateright::Model;

/// The state after `steps` from the initial state, each step enabled where it is taken.
fn walk(model: &ProtocolModel, steps: &[Action]) -> State {
    let mut state = model.init_states().remove(0);
    for step in steps {
        let mut enabled = Vec::new();
        model.actions(&state, &mut enabled);
        assert!(enabled.contains(step), "{step:?} not enabled in {state:?}");
        state = model
            .next_state(&state, *step)
            .expect("every step leads somewhere");
    }
    state
}

/// Whether `property` holds in `state`.
fn holds_in(model: &ProtocolModel, state: &State, property: &str) -> bool {
    model
        .properties()
        .into_iter()
        .find(|p| p.name == property)
        .is_some_and(|p| (p.condition)(model, state))
}

fn found(defect: Defect, config: Config, property: &str) -> Vec<Action> {
    let checked = check(ProtocolModel::new(config.with_defect(defect)));
    let found = checked
        .violations
        .iter()
        .find(|(name, _)| *name == property);
    let Some((_, trace)) = found else {
        panic!(
            "{defect:?}: expected a violation of {property:?}, got {:?}",
            checked.violations
        );
    };
    println!("{defect:?} violates {property:?}: {trace:?}");
    trace.clone()
}

#[test]
fn client_clock_liveness_runs_twice() {
    found(
        Defect::ClientClockLiveness,
        Config::three_callers(Stored::WrongType),
        AT_MOST_ONCE,
    );
}

#[test]
fn guard_armed_after_the_claim_orphans_the_key() {
    found(
        Defect::GuardArmedAfterClaim,
        Config::two_callers(),
        EVENTUALLY_FREE,
    );
}

#[test]
fn resent_claim_not_recognised_orphans_the_key() {
    found(
        Defect::ResentClaimNotRecognised,
        Config::two_callers(),
        EVENTUALLY_FREE,
    );
}

#[test]
fn unreadable_value_run_unprotected_runs_twice() {
    found(
        Defect::UnreadableRunsUnprotected,
        Config::three_callers(Stored::NotJson),
        AT_MOST_ONCE,
    );
}

#[test]
fn owner_check_by_substring_overwrites_a_completed_record() {
    found(
        Defect::OwnerBySubstring,
        Config::two_callers(),
        COMPLETED_STANDS,
    );
}

#[test]
fn detached_release_on_cancellation_runs_twice() {
    found(
        Defect::DetachedReleasesOnCancel,
        Config::two_callers(),
        AT_MOST_ONCE,
    );
}

#[test]
fn refused_write_failing_open_runs_twice() {
    let trace = found(
        Defect::RefusedWriteFailsOpen,
        Config::refused_writes(),
        AT_MOST_ONCE,
    );
    // Found for the defect's reason: a fail-open run after the server answered the
    // claim with a refusal while the key held a record (not a counted loss).
    let model =
        ProtocolModel::new(Config::refused_writes().with_defect(Defect::RefusedWriteFailsOpen));
    let end = walk(&model, &trace);
    assert!(end.ledger[0].blind_runs > 0, "{end:?}");
}

/// The defect's own scenario, step by step: a key completed before the server began
/// refusing writes. With the defect the refused claim runs the action again and no
/// counted loss covers it; as implemented, it reads the key and replays the value.
#[test]
fn refused_write_failing_open_runs_a_completed_key_again() {
    let steps = [
        Start(0),
        Deliver(0),
        Effect(0),
        Complete(0),
        Deliver(0),
        RefuseWrites,
        Start(1),
        Deliver(1),
    ];
    let config = Config::refused_writes();
    let broken = ProtocolModel::new(config.clone().with_defect(Defect::RefusedWriteFailsOpen));
    let state = walk(&broken, &[&steps[..], &[Effect(1)]].concat());
    assert!(matches!(
        state.store[0],
        Some(Stored::Completed { exec: 0, .. })
    ));
    assert_eq!((state.ledger[0].effects, state.ledger[0].excused()), (2, 0));
    assert!(!holds_in(&broken, &state, AT_MOST_ONCE));

    let fixed = ProtocolModel::new(config);
    let state = walk(&fixed, &[&steps[..], &[Deliver(1)]].concat());
    assert!(state.clients[1].read_after_refusal);
    assert_eq!(state.clients[1].outcome, Some(Outcome::Value(0)));
    assert_eq!(state.ledger[0].effects, 1);
}

#[test]
fn unstorable_result_written_runs_twice() {
    let trace = found(
        Defect::UnstorableResultWritten,
        Config::unstorable_results(),
        AT_MOST_ONCE,
    );
    assert!(
        trace.iter().any(|a| matches!(a, CompleteUnstorable(_))),
        "{trace:?}"
    );
}
