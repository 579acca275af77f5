//! The integration tests of this crate, one test binary: a real axum server on a
//! loopback port, a raw HTTP/1.1 client, on memory, standalone Redis and the cluster.

#[macro_use]
mod common;

mod behaviour;
mod concurrency;
mod conformance;
mod faults;
mod outcomes;
mod safety;
mod storage;
mod without_tower;
