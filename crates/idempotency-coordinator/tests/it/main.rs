//! The integration tests of this crate, one test binary (modules by subject).

#[macro_use]
mod common;

mod behaviour;
mod coalescing;
mod drain;
mod failover;
mod faults;
mod fencing;
mod fencing_attacks;
mod future_size;
mod history;
mod liveness;
mod macro_runtime;
mod macro_ui;
mod mixed_fleet;
mod modes_and_stored_errors;
mod outcomes;
mod ownership;
mod postgres_wiring;
mod refused_writes;
mod security;
mod sentinel;
mod settings;
mod tls;
mod unstorable;
