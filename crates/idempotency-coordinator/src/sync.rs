//! The primitives in-process coalescing synchronises with (`coalesce.rs` imports them
//! from here and nowhere else): std's `Mutex` and tokio's `watch`. The model
//! (`idempotency-model`, `tests/it/coalesce_as_shipped.rs`) compiles `coalesce.rs` as it
//! ships against shuttle's versions of the same names, to explore its interleavings.

pub(crate) use std::sync::{Mutex, MutexGuard};
pub(crate) use tokio::sync::watch;
