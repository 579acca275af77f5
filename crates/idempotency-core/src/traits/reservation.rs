//! Fenced reservations: the optional ability a coordinator uses to hold a key while its
//! action runs.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::Result;
use crate::record::IdempotencyRecord;
use crate::traits::storage::IdempotencyRepository;

/// What a caller holds after it reserved a key: the identifiers and its owner token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    operation: String,
    key: String,
    token: String,
    fingerprint: Option<String>,
    created_at: Option<time::OffsetDateTime>,
}

impl Lease {
    /// A lease on validated identifiers with the given owner token.
    pub fn new(operation: &str, key: &str, token: String, fingerprint: Option<&str>) -> Self {
        Self {
            operation: operation.to_owned(),
            key: key.to_owned(),
            token,
            fingerprint: fingerprint.map(str::to_owned),
            created_at: None,
        }
    }

    /// The same lease remembering when its pending record was made (kept on renewal).
    #[must_use]
    pub fn with_created_at(mut self, created_at: time::OffsetDateTime) -> Self {
        self.created_at = Some(created_at);
        self
    }

    /// When the pending record was made, if the store recorded it.
    pub fn created_at(&self) -> Option<time::OffsetDateTime> {
        self.created_at
    }

    /// The operation.
    pub fn operation(&self) -> &str {
        &self.operation
    }

    /// The idempotency key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The owner token written into the pending record.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The fingerprint of the reservation.
    pub fn fingerprint(&self) -> Option<&str> {
        self.fingerprint.as_deref()
    }
}

/// The outcome of [`ReservationStore::claim`].
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The key was free; it now holds our pending record.
    Acquired(Lease),
    /// The key holds this record (completed: a hit; pending: someone else's action runs).
    Found(IdempotencyRecord),
}

impl Claim {
    /// The lease, when the key was acquired.
    pub fn into_lease(self) -> Option<Lease> {
        match self {
            Self::Acquired(lease) => Some(lease),
            Self::Found(_) => None,
        }
    }
}

/// Whether a fenced write found our reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// It was ours (or, for `complete`, the key was empty) and the write was made.
    Held,
    /// Another owner's record is there; nothing was written.
    Lost,
}

/// A subscription to changes of one key, made by [`ReservationStore::watch`].
pub trait KeyWatch: Send {
    /// Waits until the key is completed or released, or `timeout` passes; `true` when
    /// woken by a change. A change between `watch` and this call is not missed.
    fn changed(&mut self, timeout: Duration) -> impl Future<Output = bool> + Send;
}

/// Fenced single-key operations for the coordinator. Each call is one atomic step on the
/// store (one round trip on Redis).
///
/// Invariant all implementations keep: a write that names a lease changes the key only
/// while the key holds the pending record carrying that lease's token (or, for
/// `complete`, nothing). A caller whose lease ran out and was taken over can therefore
/// never overwrite or delete the newer owner's record.
///
/// A repository without these abilities still works through
/// [`Unfenced`](crate::Unfenced), which emulates them with `save`/`get`/`replace`/
/// `delete` without the guarantee.
pub trait ReservationStore: IdempotencyRepository {
    /// The subscription type of [`ReservationStore::watch`].
    type Watch: KeyWatch;

    /// Reserves a free key with a pending record (owner token, `lease` as its
    /// lifetime), or returns the unexpired record that holds it.
    ///
    /// # Errors
    /// Validation, storage and record decoding errors.
    fn claim(
        &self,
        operation: &str,
        key: &str,
        lease: Duration,
        fingerprint: Option<&str>,
    ) -> impl Future<Output = Result<Claim>> + Send;

    /// Writes the completed record if the key still holds our pending record or nothing.
    ///
    /// # Errors
    /// Storage errors.
    fn complete(
        &self,
        lease: &Lease,
        record: &IdempotencyRecord,
    ) -> impl Future<Output = Result<Fence>> + Send;

    /// Pushes our pending record's expiry `lease` ahead, if we still own it.
    ///
    /// # Errors
    /// Storage errors.
    fn renew(
        &self,
        lease: &Lease,
        duration: Duration,
    ) -> impl Future<Output = Result<Fence>> + Send;

    /// Deletes our pending record, if we still own it.
    ///
    /// # Errors
    /// Storage errors.
    fn release(&self, lease: &Lease) -> impl Future<Output = Result<Fence>> + Send;

    /// Subscribes to completion and release of the key.
    ///
    /// # Errors
    /// Storage errors.
    fn watch(&self, operation: &str, key: &str)
    -> impl Future<Output = Result<Self::Watch>> + Send;
}

/// A fresh owner token: unique per process start and call, not guessable from outside
/// without the process's random seed. 32 hex characters.
pub fn new_owner_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::OnceLock;
    static SEED: OnceLock<(u64, u64)> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let (a, b) = *SEED.get_or_init(|| {
        let state = std::collections::hash_map::RandomState::new();
        let mut h = state.build_hasher();
        h.write_u32(std::process::id());
        let a = h.finish();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        (a, h.finish())
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Mixing the counter through the seeded hash keeps tokens from being sequential.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write_u64(a ^ n);
    format!("{:016x}{:016x}", h.finish() ^ b, n)
}

/// A fresh reservation for a store's `claim`: the pending record carrying a new owner
/// token (lifetime `lease`, `result: null`), and the [`Lease`] that names it.
///
/// # Errors
/// Validation of the identifiers and of the lease (at least 1 s).
///
/// # Examples
/// ```
/// # fn main() -> Result<(), idempotency_core::IdempotencyError> {
/// let (record, lease) = idempotency_core::new_reservation("op", "k", std::time::Duration::from_secs(30), None)?;
/// assert!(record.is_pending());
/// assert_eq!(record.owner(), Some(lease.token()));
/// # Ok(()) }
/// ```
pub fn new_reservation(
    operation: &str,
    key: &str,
    lease: Duration,
    fingerprint: Option<&str>,
) -> Result<(IdempotencyRecord, Lease)> {
    let token = new_owner_token();
    let record = crate::IdempotencyDomainService::default()
        .create_pending_record(operation, key, lease, fingerprint)?
        .with_owner(token.clone());
    let lease = Lease::new(
        record.operation(),
        record.idempotency_key(),
        token,
        fingerprint,
    )
    .with_created_at(record.created_at());
    Ok((record, lease))
}
