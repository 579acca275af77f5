//! Fenced reservations: the optional ability a coordinator uses to hold a key while its
//! action runs (protocol v2).
//!
//! # The protocol
//! 1. The caller makes a [`Lease`] (a fresh owner token) **before** anything is sent, so a
//!    call dropped while its claim is in flight can still release what the claim wrote.
//! 2. [`ReservationStore::claim`] writes the pending record carrying the token if the key
//!    is free, and otherwise returns what holds the key. A pending record carrying *our*
//!    token is ours (a claim re-sent after a lost reply finds its own write): acquired.
//!    A value nobody can read is taken over atomically (deleted only if its bytes are
//!    unchanged, and claimed in the same step), so exactly one caller runs, fenced.
//! 3. [`ReservationStore::renew`], [`ReservationStore::complete`] and
//!    [`ReservationStore::release`] change the key only while it holds the pending record
//!    carrying the token (`complete` also into an empty key; a re-sent `complete` that
//!    finds the very record it writes is success).
//!
//! Liveness is the store's: a key the store still holds is alive, whatever its
//! `expires_at` says to a client's clock. Nothing deletes a pending record except its
//! owner's release, the store's own expiry, or the takeover of an abandoned one (past
//! its `expires_at` by more than an hour on the store's clock, see [`is_abandoned`], and
//! held with no expiry, so that nobody would ever free it).

use std::future::Future;
use std::time::Duration;

use serde_json::value::RawValue;

use crate::claim::{Claim, Fence, Finished};
use crate::error::{IdempotencyError, Result};
use crate::fencing::FencingToken;
use crate::identity::RecordId;
use crate::lease::Lease;
#[cfg(doc)]
use crate::lease::{holds_lease, is_abandoned};
#[cfg(doc)]
use crate::record::RecordStatus;
use crate::traits::storage::IdempotencyRepository;

/// A subscription to changes of one key, made by [`ReservationStore::watch`].
pub trait KeyWatch: Send {
    /// Waits until the key is completed or released, or `timeout` passes; `true` when
    /// woken by a change. A change after `watch` returned and before this call is not
    /// missed.
    fn changed(&mut self, timeout: Duration) -> impl Future<Output = bool> + Send;
}

/// Fenced single-key operations for the coordinator. Each call is one atomic step on the
/// store (one round trip on Redis; a claim that takes over an unreadable value adds one per
/// takeover, and the server's clock is sampled at most every 30 s).
///
/// Invariants every implementation keeps (the store contract tests check them on each
/// store):
/// - a write that names a lease changes the key only while the key holds the pending
///   record carrying that lease's token ([`holds_lease`]), or, for `complete`, nothing;
///   a caller whose lease ran out and was taken over can never overwrite or delete the
///   newer owner's record, nor a completed record;
/// - liveness is the store's: a held key is never judged dead by a client clock, and
///   nothing but `release`, the store's expiry or the takeover of an abandoned record
///   ([`is_abandoned`], on the store's clock, and only one the store never expires)
///   removes a pending record;
/// - `claim` is idempotent for its lease: repeating it (a re-sent command) returns
///   [`Claim::Acquired`] while our pending record is there;
/// - no value under the key makes `claim` return without either the key held by us or a
///   decodable record in hand: unreadable values are taken over atomically, values of
///   another type are a data error naming the key.
///
/// A repository without these abilities still works through
/// [`Unfenced`](crate::Unfenced), which emulates them with `save`/`get`/`replace`/
/// `delete` without the fencing guarantee.
pub trait ReservationStore: IdempotencyRepository {
    /// The subscription type of [`ReservationStore::watch`].
    type Watch: KeyWatch;

    /// Reserves the lease's key with its pending record (living `lease`), or returns the
    /// record that holds it.
    ///
    /// # Errors
    /// Storage errors; a data error when the key holds something that is not a record
    /// and cannot be taken over (a value of another type); a lease under 1 s.
    fn claim(
        &self,
        lease: &Lease,
        duration: Duration,
    ) -> impl Future<Output = Result<Claim>> + Send;

    /// Writes the lease's final record (built from the lease, so it cannot land under
    /// another key; living `ttl`) if the key still holds our pending record or nothing:
    /// the one fenced write behind [`ReservationStore::complete`] and
    /// [`ReservationStore::complete_with_error`].
    ///
    /// # Errors
    /// Storage errors; a `ttl` that ends past the year 9999.
    fn finish(
        &self,
        lease: &Lease,
        finished: Finished<'_>,
        ttl: Duration,
    ) -> impl Future<Output = Result<Fence>> + Send;

    /// Writes the completed record of the lease (holding `result`, living `ttl`) under the
    /// fence of [`ReservationStore::finish`].
    ///
    /// # Errors
    /// As [`ReservationStore::finish`].
    fn complete(
        &self,
        lease: &Lease,
        result: &RawValue,
        ttl: Duration,
    ) -> impl Future<Output = Result<Fence>> + Send {
        self.finish(lease, Finished::Value(result), ttl)
    }

    /// Writes the lease's record holding a stored error of the action (status
    /// [`RecordStatus::StoredError`], living `ttl`) under the fence of
    /// [`ReservationStore::finish`]: retries replay the error instead of running again.
    ///
    /// # Errors
    /// As [`ReservationStore::finish`].
    fn complete_with_error(
        &self,
        lease: &Lease,
        error: &RawValue,
        ttl: Duration,
    ) -> impl Future<Output = Result<Fence>> + Send {
        self.finish(lease, Finished::Error(error), ttl)
    }

    /// Pushes our pending record's expiry `duration` ahead, if we still own it.
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

    /// The fencing token of the lease's run: larger than that of every earlier owner of
    /// the key on this store, and the same for every call with the same lease. `None`
    /// when the key no longer holds the lease's pending record (the lease was lost: the
    /// action must not start). A coordinator asks for it only for actions that take one
    /// (`Call::run_fenced`), one round trip before the action starts.
    ///
    /// The default answers with a configuration error: a store that gives no tokens
    /// (the kit's stores all give them; the store contract checks it).
    ///
    /// # Errors
    /// Storage errors; a configuration error from a store without tokens.
    fn fencing_token(
        &self,
        lease: &Lease,
    ) -> impl Future<Output = Result<Option<FencingToken>>> + Send {
        let _ = lease;
        std::future::ready(Err(IdempotencyError::configuration(
            "this store gives no fencing tokens",
            None,
        )))
    }

    /// Subscribes to completion and release of the key.
    ///
    /// # Errors
    /// Storage errors.
    fn watch(&self, id: &RecordId) -> impl Future<Output = Result<Self::Watch>> + Send;
}
