//! The integration tests of this crate, one test binary (modules by subject).

#[macro_use]
mod common;

mod admin;
mod cache;
mod cache_attacks;
mod cache_server_events;
mod conformance;
mod fencing_attacks;
mod fleet_decode;
mod hostile;
mod races;
mod repository;
mod reservations;
mod sentinel;
