//! Integration tests of idempotency-postgres, against a Postgres server the testkit
//! starts for this binary (a fresh database per test).

mod admin;
mod claims;
mod common;
mod contract;
mod coordinator;
mod crash;
mod migration;
mod recovery;
mod repository;
mod stalled_owner;
mod transactional;
mod wake;
