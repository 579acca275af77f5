//! Fenced reservations: claim, finish, renew, release and watch, each one statement.
//!
//! Invariants (the statements in `statements.rs` enforce them; this file only reads
//! their answers):
//! - of concurrent claims of a free or expired key exactly one acquires: the primary key
//!   admits one row, and a takeover locks the newest version of the row and judges its
//!   expiry there, on the server's clock;
//! - a claim that found neither its own write nor a live row runs again (its snapshot
//!   predates a row it waited for); it never answers from a stale read;
//! - a pending row whose record no client can read is taken over only while it holds the
//!   very text the claim read (compare and set); a finished one is never taken over;
//! - `finish`, `renew` and `release` write only while the key holds the live pending
//!   row carrying the lease's token (`finish` also into an empty or expired key).

use std::time::Duration;

use idempotency_core::{
    Claim, Fence, FencingToken, Finished, IdempotencyError, IdempotencyRecord, Lease, RecordId,
    ReservationStore, Result, holds_lease,
};
use sqlx::{PgConnection, Row};

use crate::constants::{MAX_CLAIM_ATTEMPTS, NOTIFY_CHANNEL};
use crate::errors::{row_error, storage_error};
use crate::record_text::RecordText;
use crate::statements;
use crate::store::{PostgresStore, decode, micros};
use crate::wake::PostgresWatch;

/// What one claim statement answered: acquired (with the row's fence), or the live
/// record that holds the key.
#[derive(Debug)]
pub(crate) enum Claimed {
    Acquired(i64),
    Found(IdempotencyRecord),
}

impl PostgresStore {
    /// Runs the claim statement on `conn` (a pooled connection, or the open transaction
    /// of a transactional call) until it answers.
    pub(crate) async fn claim_on(
        &self,
        conn: &mut PgConnection,
        lease: &Lease,
        duration: Duration,
    ) -> std::result::Result<Claimed, ClaimError> {
        // Any clock will do for the text: the statement writes the server's times.
        let pending = lease.pending_record(duration)?;
        let pending_text = RecordText::of(&pending)?;
        let operation = lease.operation();
        for _ in 0..MAX_CLAIM_ATTEMPTS {
            let row = self
                .query(statements::CLAIM)
                .bind(self.prefix())
                .bind(operation)
                .bind(lease.key())
                .bind(lease.fingerprint())
                .bind(lease.token())
                .bind(&pending_text.head)
                .bind(&pending_text.tail)
                .bind(micros(duration))
                .fetch_optional(&mut *conn)
                .await
                .map_err(ClaimError::Sql)?;
            // No row: the key's row was committed after this statement's snapshot (a
            // claim we waited for); a new statement sees it.
            let Some(row) = row else { continue };
            let acquired: bool = row.try_get(0).map_err(ClaimError::Sql)?;
            let text: String = row.try_get(1).map_err(ClaimError::Sql)?;
            let fence: i64 = row.try_get(2).map_err(ClaimError::Sql)?;
            let status: String = row.try_get(3).map_err(ClaimError::Sql)?;
            if acquired {
                return Ok(Claimed::Acquired(fence));
            }
            let record = match decode(&text, operation, lease.key()) {
                Ok(record) => record,
                // A reservation nobody can read holds nothing: take it over, only if its
                // text is still the one we read; else look again.
                Err(_) if status == "pending" => {
                    match self
                        .take_over(conn, lease, duration, &pending_text, &text)
                        .await?
                    {
                        Some(fence) => return Ok(Claimed::Acquired(fence)),
                        None => continue,
                    }
                }
                // A finished record that cannot be read is refused, never taken over: its
                // action ran.
                Err(e) => return Err(e.into()),
            };
            // Our own live reservation (a claim sent again) is ours.
            return Ok(if holds_lease(&record, lease.token()) {
                Claimed::Acquired(fence)
            } else {
                Claimed::Found(record)
            });
        }
        Err(IdempotencyError::storage(
            Some(operation),
            "the claim found the key changing under it on every attempt",
        )
        .into())
    }

    /// Takes over the pending row that holds exactly `unreadable`; its fence when taken.
    async fn take_over(
        &self,
        conn: &mut PgConnection,
        lease: &Lease,
        duration: Duration,
        pending: &RecordText,
        unreadable: &str,
    ) -> std::result::Result<Option<i64>, ClaimError> {
        let row = self
            .query(statements::TAKEOVER)
            .bind(self.prefix())
            .bind(lease.operation())
            .bind(lease.key())
            .bind(lease.fingerprint())
            .bind(lease.token())
            .bind(&pending.head)
            .bind(&pending.tail)
            .bind(micros(duration))
            .bind(unreadable)
            .fetch_optional(&mut *conn)
            .await
            .map_err(ClaimError::Sql)?;
        row.map(|row| row.try_get(0))
            .transpose()
            .map_err(ClaimError::Sql)
    }

    /// The fenced write of a final record, on `conn`.
    pub(crate) async fn finish_on(
        &self,
        conn: &mut PgConnection,
        lease: &Lease,
        finished: Finished<'_>,
        ttl: Duration,
    ) -> std::result::Result<Fence, ClaimError> {
        let record = lease.finished_record_at(lease.clock().now(), finished, ttl)?;
        let text = RecordText::of(&record)?;
        let row = self
            .query(statements::FINISH)
            .bind(self.prefix())
            .bind(lease.operation())
            .bind(lease.key())
            .bind(lease.token())
            .bind(finished.status().as_str())
            .bind(lease.fingerprint())
            .bind(&text.head)
            .bind(&text.tail)
            .bind(micros(ttl))
            .bind(NOTIFY_CHANNEL)
            .bind(self.storage_key(lease.id()))
            .fetch_one(&mut *conn)
            .await
            .map_err(ClaimError::Sql)?;
        let written: i64 = row.try_get(0).map_err(ClaimError::Sql)?;
        let held: bool = row.try_get(2).map_err(ClaimError::Sql)?;
        let resent: bool = row.try_get(3).map_err(ClaimError::Sql)?;
        Ok(match (written > 0, held, resent) {
            (true, true, _) | (false, _, true) => Fence::Held,
            (true, false, _) => Fence::Vacated,
            (false, _, false) => Fence::Lost,
        })
    }

    async fn connection(
        &self,
        operation: &str,
    ) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>> {
        self.pool()
            .acquire()
            .await
            .map_err(|e| storage_error(Some(operation), e))
    }
}

/// A claim's failure: the kit's error, or the server's (which a transactional call
/// reads before turning it into the kit's).
#[derive(Debug)]
pub(crate) enum ClaimError {
    Kit(IdempotencyError),
    Sql(sqlx::Error),
}

impl From<IdempotencyError> for ClaimError {
    fn from(e: IdempotencyError) -> Self {
        Self::Kit(e)
    }
}

impl ClaimError {
    pub(crate) fn into_kit(self, operation: &str) -> IdempotencyError {
        match self {
            Self::Kit(e) => e,
            Self::Sql(e) => storage_error(Some(operation), e),
        }
    }
}

impl ReservationStore for PostgresStore {
    type Watch = PostgresWatch;

    async fn claim(&self, lease: &Lease, duration: Duration) -> Result<Claim> {
        let operation = lease.operation();
        let mut conn = self.connection(operation).await?;
        match self.claim_on(&mut conn, lease, duration).await {
            Ok(Claimed::Acquired(_)) => Ok(Claim::Acquired),
            Ok(Claimed::Found(record)) => Ok(Claim::Found(record)),
            Err(e) => Err(e.into_kit(operation)),
        }
    }

    async fn finish(&self, lease: &Lease, finished: Finished<'_>, ttl: Duration) -> Result<Fence> {
        let operation = lease.operation();
        let mut conn = self.connection(operation).await?;
        self.finish_on(&mut conn, lease, finished, ttl)
            .await
            .map_err(|e| e.into_kit(operation))
    }

    async fn renew(&self, lease: &Lease, duration: Duration) -> Result<Fence> {
        let operation = lease.operation();
        let text = RecordText::of(&lease.pending_record(duration)?)?;
        let row = self
            .query(statements::RENEW)
            .bind(self.prefix())
            .bind(operation)
            .bind(lease.key())
            .bind(lease.token())
            .bind(&text.head)
            .bind(&text.tail)
            .bind(micros(duration))
            .fetch_optional(self.pool())
            .await
            .map_err(|e| storage_error(Some(operation), e))?;
        Ok(if row.is_some() {
            Fence::Held
        } else {
            Fence::Lost
        })
    }

    async fn release(&self, lease: &Lease) -> Result<Fence> {
        let operation = lease.operation();
        let row = self
            .query(statements::RELEASE)
            .bind(self.prefix())
            .bind(operation)
            .bind(lease.key())
            .bind(lease.token())
            .bind(NOTIFY_CHANNEL)
            .bind(self.storage_key(lease.id()))
            .fetch_one(self.pool())
            .await
            .map_err(|e| storage_error(Some(operation), e))?;
        let gone: i64 = row.try_get(0).map_err(|e| row_error(Some(operation), e))?;
        Ok(if gone > 0 { Fence::Held } else { Fence::Lost })
    }

    async fn fencing_token(&self, lease: &Lease) -> Result<Option<FencingToken>> {
        let operation = lease.operation();
        let row = self
            .query(statements::FENCING_TOKEN)
            .bind(self.prefix())
            .bind(operation)
            .bind(lease.key())
            .bind(lease.token())
            .fetch_optional(self.pool())
            .await
            .map_err(|e| storage_error(Some(operation), e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let fence: i64 = row.try_get(0).map_err(|e| row_error(Some(operation), e))?;
        Ok(Some(FencingToken::new(fence.unsigned_abs())))
    }

    async fn watch(&self, id: &RecordId) -> Result<PostgresWatch> {
        self.inner.wakeups.watch(self.storage_key(id)).await
    }
}
