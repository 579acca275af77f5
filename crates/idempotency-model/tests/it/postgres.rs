//! The Postgres model: with the record in the business transaction every property holds
//! under crashes between any two steps; with the completion written outside the
//! transaction, the checker finds a crash that leaves a record without its effect and a
//! key stuck behind a dead claim.

use idempotency_model::postgres::{
    NO_STUCK_KEY, PgConfig, PgKind, PgVariant, PostgresModel, RECORD_HAS_EFFECT, check_postgres,
};

#[test]
fn the_record_in_the_transaction_holds_under_crashes_at_every_step() {
    let checked = check_postgres(PostgresModel::new(PgConfig::mixed()));
    println!("{} states", checked.states);
    assert!(checked.violations.is_empty(), "{:#?}", checked.violations);
    assert!(
        checked.unreached.is_empty(),
        "never reached: {:?}",
        checked.unreached
    );
}

#[test]
fn transactional_clients_alone_hold_under_three_crashes() {
    let config = PgConfig {
        clients: vec![PgKind::Transactional; 3],
        crashes: 3,
        expiries: 0,
        variant: PgVariant::InTransaction,
    };
    let checked = check_postgres(PostgresModel::new(config));
    assert!(checked.violations.is_empty(), "{:#?}", checked.violations);
}

#[test]
fn the_completion_outside_the_transaction_is_caught() {
    let checked = check_postgres(PostgresModel::new(
        PgConfig::mixed().with_variant(PgVariant::CompletionOutsideTransaction),
    ));
    for (name, path) in &checked.violations {
        println!("{name}: {path:?}");
    }
    let found: Vec<&str> = checked.violations.iter().map(|(name, _)| *name).collect();
    assert!(found.contains(&RECORD_HAS_EFFECT), "found {found:?}");
    assert!(found.contains(&NO_STUCK_KEY), "found {found:?}");
}
