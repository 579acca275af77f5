//! Each defect of issue 10, put back into the model, is found: the checker reports a
//! counterexample (printed with `--nocapture`), while the same configuration without it
//! holds (`tests/protocol.rs`).

use idempotency_model::model::{AT_MOST_ONCE, COMPLETED_STANDS, EVENTUALLY_FREE};
use idempotency_model::store::Stored;
use idempotency_model::{Config, Defect, ProtocolModel, check};

fn found(defect: Defect, config: Config, property: &str) {
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
