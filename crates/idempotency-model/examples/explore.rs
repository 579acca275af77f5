//! Runs every configuration of the suite (or a bigger one with `--big`) and prints the
//! states explored, the time taken and any violated property with its counterexample.
//!
//! `CARGO_TARGET_DIR=… cargo run --release -p idempotency-model --example explore`

use std::time::Instant;

use idempotency_model::store::Stored;
use idempotency_model::{Config, Defect, ProtocolModel, check};

fn run(name: &str, config: Config) {
    let started = Instant::now();
    let checked = check(ProtocolModel::new(config));
    println!(
        "{name}: {} states in {:.1?}",
        checked.states,
        started.elapsed()
    );
    for (property, actions) in checked.violations {
        println!("  VIOLATED {property}: {actions:?}");
    }
}

fn main() {
    let configs = [
        ("two callers", Config::two_callers()),
        (
            "three callers, not JSON",
            Config::three_callers(Stored::NotJson),
        ),
        (
            "three callers, not a record",
            Config::three_callers(Stored::NotRecord),
        ),
        (
            "three callers, abandoned",
            Config::three_callers(Stored::Abandoned),
        ),
        (
            "three callers, wrong type",
            Config::three_callers(Stored::WrongType),
        ),
        ("python", Config::with_python()),
        ("stored errors", Config::stored_errors()),
        ("refused writes", Config::refused_writes()),
        (
            "refused takeovers, abandoned",
            Config::refused_takeovers(Stored::Abandoned),
        ),
        ("unstorable results", Config::unstorable_results()),
        ("two keys", Config::two_keys()),
        ("two keys, full", Config::two_keys_full()),
    ];
    for (name, config) in configs.clone() {
        run(name, config);
    }
    for defect in Defect::ALL {
        for (name, config) in configs.clone() {
            run(&format!("{defect:?} / {name}"), config.with_defect(defect));
        }
    }
}
