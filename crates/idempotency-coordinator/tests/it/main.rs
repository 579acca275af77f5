//! The integration tests of this crate, one test binary (modules by subject).

#[macro_use]
mod common;

mod behaviour;
mod coalescing;
mod drain;
mod failover;
mod faults;
mod future_size;
mod history;
mod macro_runtime;
mod macro_ui;
mod mixed_fleet;
mod outcomes;
mod protocol_v2;
mod refused_writes;
mod review_v2;
mod review_v3;
mod security;
mod sentinel;
mod settings;
mod tls;
mod unstorable;
