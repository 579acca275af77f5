//! One row, read whole, and what it says.

use std::time::Duration;

use idempotency_core::{IdempotencyRecord, RecordId, Result};
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::Admin;
use crate::errors::{row_error, storage_error};
use crate::statements;

/// What a row's `record` column holds.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Content {
    /// A record the kit can read.
    Record(Box<IdempotencyRecord>),
    /// Text the kit cannot read as a record (written by hand or by another program).
    Unreadable {
        /// Why, as the decoder says it.
        reason: String,
    },
}

/// One row as found by [`Admin::inspect`] or [`Admin::list`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Inspection {
    /// The record's storage key: the store's prefix, then `operation:key` (the `NOTIFY`
    /// payload of the key).
    pub storage_key: String,
    /// The row's identity.
    pub id: RecordId,
    /// The `status` column.
    pub status_column: String,
    /// The fencing token of the owner that wrote the row.
    pub fence: i64,
    /// The `owner_token` column: the lease that wrote the row.
    pub owner_token: Option<String>,
    /// The lifetime left by the server's clock (`expires_at` minus now); `None` once past.
    pub ttl: Option<Duration>,
    /// Whether `expires_at` has passed by the server's clock: every statement of the store
    /// treats the row as absent, and the sweep will delete it.
    pub expired: bool,
    /// The whole row's size as stored (`pg_column_size` of the row, compressed values at
    /// their compressed size), without the index entries.
    pub row_bytes: u64,
    /// The record text read. An eviction removes the row only while it still holds
    /// exactly this text and [`Inspection::fence`].
    pub raw: String,
    /// What the text is.
    pub content: Content,
}

impl Inspection {
    /// Reads a row of [`statements::ADMIN_INSPECT`]'s shape; `None` for an identity the
    /// kit would refuse (a row written by another program).
    pub(super) fn from_row(prefix: &str, row: &PgRow) -> Result<Option<Self>> {
        let fail = |e| row_error(None, e);
        let operation: String = row.try_get("operation").map_err(fail)?;
        let key: String = row.try_get("idempotency_key").map_err(fail)?;
        let Ok(id) = RecordId::new(&operation, &key) else {
            return Ok(None);
        };
        let raw: String = row.try_get("record").map_err(fail)?;
        let ttl_seconds: Option<f64> = row.try_get("ttl_seconds").map_err(fail)?;
        let expired: bool = row.try_get("expired").map_err(fail)?;
        let row_bytes: i64 = row.try_get("row_bytes").map_err(fail)?;
        let content = match IdempotencyRecord::from_json(raw.as_bytes(), &operation, &key) {
            Ok(record) => Content::Record(Box::new(record)),
            Err(e) => Content::Unreadable {
                reason: with_sources(&e),
            },
        };
        let mut storage_key = String::with_capacity(prefix.len() + id.as_str().len());
        storage_key.push_str(prefix);
        storage_key.push_str(id.as_str());
        Ok(Some(Self {
            storage_key,
            id,
            status_column: row.try_get("status").map_err(fail)?,
            fence: row.try_get("fence").map_err(fail)?,
            owner_token: row.try_get("owner_token").map_err(fail)?,
            ttl: ttl_seconds
                .filter(|s| *s > 0.0 && !expired)
                .and_then(|s| Duration::try_from_secs_f64(s).ok()),
            expired,
            row_bytes: u64::try_from(row_bytes).unwrap_or(0),
            raw,
            content,
        }))
    }

    /// The record, when the text is one.
    pub fn record(&self) -> Option<&IdempotencyRecord> {
        match &self.content {
            Content::Record(r) => Some(r),
            Content::Unreadable { .. } => None,
        }
    }

    /// The record's status (`pending`, `completed`, `stored_error`), or `unreadable`.
    pub fn status_label(&self) -> &'static str {
        match &self.content {
            Content::Record(r) => r.status().as_str(),
            Content::Unreadable { .. } => "unreadable",
        }
    }

    /// Whether the text is not a record.
    pub fn is_unreadable(&self) -> bool {
        matches!(self.content, Content::Unreadable { .. })
    }

    /// The owner token of a reservation; `-` for finished records and unreadable rows.
    pub fn owner_label(&self) -> String {
        match self.record() {
            Some(r) if r.is_pending() => r
                .owner()
                .or(self.owner_token.as_deref())
                .unwrap_or("-")
                .to_owned(),
            _ => "-".to_owned(),
        }
    }

    /// Whether this is a reservation whose owner may still be running: pending and not
    /// expired by the server's clock (claims take over the others).
    pub fn is_live_reservation(&self) -> bool {
        !self.expired && self.record().is_some_and(IdempotencyRecord::is_pending)
    }

    /// Whether `expires_at` has passed by the server's clock.
    pub fn is_expired(&self) -> bool {
        self.expired
    }

    /// The first 200 characters of the text, for showing an unreadable one.
    pub fn raw_preview(&self) -> String {
        let mut preview: String = self.raw.chars().take(200).collect();
        if self.raw.chars().count() > 200 {
            preview.push('…');
        }
        preview
    }

    /// A summary without the result (what `list --json` prints): `storage_key`,
    /// `operation`, `key`, `status`, `owner` (the token or `null`), `owner_label`,
    /// `fence`, `created_at`, `expires_at` (as the record JSON spells them, `null` for an
    /// unreadable row), `ttl_ms` (`null`: expired), `row_bytes`, `size_bytes` (the
    /// record text), `expired`.
    pub fn summary_json(&self) -> serde_json::Value {
        let stored = self
            .record()
            .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.to_json()).ok())
            .unwrap_or(serde_json::Value::Null);
        serde_json::json!({
            "storage_key": self.storage_key,
            "operation": self.id.operation(),
            "key": self.id.key(),
            "status": self.status_label(),
            "owner": self.record().filter(|r| r.is_pending()).map(|_| self.owner_label()),
            "owner_label": self.owner_label(),
            "fence": self.fence,
            "created_at": stored.get("created_at"),
            "expires_at": stored.get("expires_at"),
            "ttl_ms": self.ttl.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            "row_bytes": self.row_bytes,
            "size_bytes": self.raw.len(),
            "expired": self.expired,
        })
    }

    /// Everything: the summary, then `fingerprint`, `result` (the stored JSON value), and
    /// for an unreadable row `error` (why) and `raw_preview`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut out = self.summary_json();
        if let Some(map) = out.as_object_mut() {
            let record = self.record();
            map.insert(
                "fingerprint".into(),
                record.and_then(IdempotencyRecord::fingerprint).into(),
            );
            let result = record.map_or(serde_json::Value::Null, |r| {
                r.result_value()
                    .unwrap_or_else(|_| r.result().get().to_owned().into())
            });
            map.insert("result".into(), result);
            if let Content::Unreadable { reason } = &self.content {
                map.insert("error".into(), reason.clone().into());
                map.insert("raw_preview".into(), self.raw_preview().into());
            }
        }
        out
    }

    /// [`Inspection::to_json`] as text, with the stored result written exactly as it is
    /// stored (an integer beyond 64 bits keeps every digit). What `inspect --json` prints.
    pub fn to_json_text(&self) -> String {
        let mut rest = self.to_json();
        if let Some(map) = rest.as_object_mut() {
            map.remove("result");
        }
        let mut text = rest.to_string();
        if text.ends_with('}') {
            text.pop();
            if text.len() > 1 {
                text.push(',');
            }
            text.push_str("\"result\":");
            text.push_str(self.record().map_or("null", |r| r.result().get()));
            text.push('}');
        }
        text
    }
}

/// An error and its sources, joined by `: `.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl Admin {
    /// Reads one row, expired or not (flagged [`Inspection::expired`]): `None` when the
    /// table has none under the key. Text the kit cannot read is returned as
    /// [`Content::Unreadable`], never as an error.
    ///
    /// # Errors
    /// [`IdempotencyError::Storage`](idempotency_core::IdempotencyError::Storage) when
    /// the statement fails or the server cannot be reached.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn run(admin: idempotency_postgres::admin::Admin) -> Result<(), idempotency_core::IdempotencyError> {
    /// use idempotency_core::RecordId;
    /// match admin.inspect(&RecordId::new("order.create", "k1")?).await? {
    ///     Some(found) => println!("{}", found.to_json_text()),
    ///     None => println!("no record"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn inspect(&self, id: &RecordId) -> Result<Option<Inspection>> {
        let row = self
            .store
            .query(statements::ADMIN_INSPECT)
            .bind(self.store.prefix())
            .bind(id.operation())
            .bind(id.key())
            .fetch_optional(self.store.pool())
            .await
            .map_err(|e| storage_error(Some(id.operation()), e))?;
        match row {
            Some(row) => Inspection::from_row(self.store.prefix(), &row),
            None => Ok(None),
        }
    }
}
