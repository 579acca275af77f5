//! Counters of the local cache, separate from the store's metrics (whose series match
//! the Python library's and are left unchanged). Their snapshot type lives in core
//! ([`idempotency_core::LocalCacheStats`], re-exported here as `CacheStats`), so that
//! the Prometheus crate exports it without depending on this one.

use std::sync::atomic::{AtomicU64, Ordering};

/// A counter bumped on every read: one cache line per stripe, threads spread over the
/// stripes, so concurrent hits on several cores do not fight over one line.
#[derive(Debug, Default)]
pub(crate) struct Striped([Padded; 16]);

#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

impl Striped {
    pub(crate) fn add(&self) {
        use std::cell::Cell;
        thread_local! {
            static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
        }
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let stripe = STRIPE.with(|s| {
            if s.get() == usize::MAX {
                s.set(NEXT.fetch_add(1, Ordering::Relaxed) as usize % 16);
            }
            s.get()
        });
        self.0[stripe].0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn sum(&self) -> u64 {
        self.0.iter().map(|p| p.0.load(Ordering::Relaxed)).sum()
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: Striped,
    pub(crate) misses: Striped,
    pub(crate) fills: AtomicU64,
    pub(crate) fenced: AtomicU64,
    pub(crate) invalidations: AtomicU64,
    pub(crate) flushes: AtomicU64,
    pub(crate) retracks: AtomicU64,
    pub(crate) server_flushes: AtomicU64,
    pub(crate) node_flushes: AtomicU64,
}

impl Counters {
    pub(crate) fn load(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}
