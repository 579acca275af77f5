//! The integration tests of this crate, one test binary (modules by subject).

mod conformance;
mod differential;
mod memory_store;
mod properties;
mod python_agreement;
mod validation;
mod wire_parity;
