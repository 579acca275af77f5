//! The store contract of idempotency-kit: what every store keeps, written once, run by
//! every store — the in-memory store, Redis standalone, cluster and sentinel, the
//! caching store, `PostgreSQL`, and yours.
//!
//! One module per storage trait, each with an `all` function that runs every check of
//! that trait in turn. A store runs one line per trait it implements, from its own test
//! suite, against a live instance of its backend. Each check uses keys of its own (fresh
//! per run), so the suites can share a store with other tests; each panics, naming the
//! rule, when the store breaks it.
//!
//! - [`repository`], for `IdempotencyRepository`: insert-if-absent, unconditional
//!   replace, delete, expiry, values kept exactly;
//! - [`bulk`], for `BulkRepository`: partial saves, rollback of exactly what the call
//!   wrote, validation before any I/O;
//! - [`reservation`], for `ReservationStore` (protocol v2): one owner per key, fences
//!   against stale owners, re-sent claims, store-side liveness, wake-ups, stored errors,
//!   every storable result read back.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use idempotency_core::MemoryStore;
//!
//! let store = MemoryStore::new();
//! idempotency_contract::repository::all(&store).await;
//! idempotency_contract::bulk::all(&store).await;
//! idempotency_contract::reservation::all(&store).await;
//! # }
//! ```

// Every check panics when a store breaks its rule: that is what a test suite does, and
// the crate's documentation says so once instead of a `# Panics` section per check.
#![allow(clippy::missing_panics_doc)]

pub mod bulk;
mod join;
pub mod json_eq;
pub mod repository;
pub mod reservation;

use idempotency_core::{RecordId, new_owner_token};

/// A fresh identity under `operation`: the key is an owner token (unique per process
/// and call, and across processes), so checks never meet another run's keys.
pub(crate) fn fresh_id(operation: &str) -> RecordId {
    RecordId::new(operation, &format!("contract-{}", new_owner_token())).expect("valid identifiers")
}
