//! The commands on Postgres, over [`idempotency_postgres::admin`]: the same commands,
//! exit codes and JSON keys as on Redis, with a row's fields in place of a key's.

mod render;

use std::time::{Duration, Instant};

use idempotency_core::{RecordId, RecordStatus};
use idempotency_postgres::admin::{Admin, Eviction, ListFilter, StatsOptions, WatchOutcome};

use crate::failure::Failure;
use crate::{err, escape, out};

pub(crate) async fn inspect(admin: &Admin, id: &RecordId, json: bool) -> Result<(), Failure> {
    let Some(found) = admin.inspect(id).await.map_err(|e| Failure::from_kit(&e))? else {
        return Err(Failure::NotFound(format!(
            "no record under {}",
            escape::field(&admin.storage_key(id))
        )));
    };
    if json {
        out(&found.to_json_text());
    } else {
        out(render::inspection(&found).trim_end());
    }
    if found.is_unreadable() {
        return Err(Failure::Data(format!(
            "{} holds a value that is not a record ({})",
            escape::field(&found.storage_key),
            found.status_label()
        )));
    }
    Ok(())
}

/// The listing the `list` arguments ask for.
pub(crate) fn filter(
    operation: Option<&str>,
    status: Option<RecordStatus>,
    limit: Option<usize>,
) -> ListFilter {
    let mut filter = ListFilter::new();
    if let Some(op) = operation {
        filter = filter.operation(op);
    }
    if let Some(status) = status {
        filter = filter.status(status);
    }
    if let Some(limit) = limit {
        filter = filter.limit(limit);
    }
    filter
}

pub(crate) async fn list(admin: &Admin, filter: ListFilter, json: bool) -> Result<(), Failure> {
    let limit = filter.limit_value();
    let mut pages = admin.list(filter);
    let mut shown = 0usize;
    if !json {
        out(render::LIST_HEADER);
    }
    while let Some(page) = pages.next_page().await.map_err(|e| Failure::from_kit(&e))? {
        for found in &page {
            shown += 1;
            if json {
                out(&found.summary_json().to_string());
            } else {
                out(&render::list_row(found));
            }
        }
    }
    if !json {
        let stopped = if limit.is_some_and(|l| shown >= l) {
            " (limit reached)"
        } else {
            ""
        };
        out(&format!(
            "{shown} record(s){stopped}; {} row(s) read",
            pages.scanned()
        ));
    }
    Ok(())
}

pub(crate) async fn evict(
    admin: &Admin,
    id: &RecordId,
    force: bool,
    json: bool,
) -> Result<(), Failure> {
    let eviction = admin
        .evict(id, force)
        .await
        .map_err(|e| Failure::from_kit(&e))?;
    match eviction {
        Eviction::Removed { removed, forced } => {
            if json {
                out(&serde_json::json!({
                    "evicted": true,
                    "forced": forced,
                    "removed": removed.to_json(),
                })
                .to_string());
            } else if forced {
                out(&format!(
                    "evicted {}: a LIVE reservation of owner {} (forced; its owner may still be running)",
                    escape::field(&removed.storage_key),
                    escape::field(&removed.owner_label())
                ));
            } else {
                out(&format!(
                    "evicted {}: {} record, owner {}, {} bytes",
                    escape::field(&removed.storage_key),
                    removed.status_label(),
                    escape::field(&removed.owner_label()),
                    removed.raw.len()
                ));
            }
            Ok(())
        }
        Eviction::NotFound { storage_key } => Err(Failure::NotFound(format!(
            "no record under {}",
            escape::field(&storage_key)
        ))),
        Eviction::LiveReservation(found) => {
            if json {
                out(&serde_json::json!({
                    "evicted": false,
                    "reason": "live_reservation",
                    "record": found.summary_json(),
                })
                .to_string());
            }
            Err(Failure::Refused(format!(
                "{} is a live reservation of owner {} (ttl {}); pass --force to remove it",
                escape::field(&found.storage_key),
                escape::field(&found.owner_label()),
                render::lifetime(&found)
            )))
        }
        Eviction::Changed(found) => Err(Failure::Refused(format!(
            "{} changed while it was being evicted; nothing was removed (inspect it again)",
            escape::field(&found.storage_key)
        ))),
        other => Err(Failure::Data(format!(
            "unexpected eviction outcome: {other:?}"
        ))),
    }
}

pub(crate) async fn stats(
    admin: &Admin,
    operation: Option<&str>,
    json: bool,
) -> Result<(), Failure> {
    let mut options = StatsOptions::new();
    if let Some(op) = operation {
        options = options.operation(op);
    }
    let stats = admin
        .stats(&options)
        .await
        .map_err(|e| Failure::from_kit(&e))?;
    if json {
        out(&stats.to_json().to_string());
    } else {
        out(render::stats(&stats).trim_end());
    }
    Ok(())
}

pub(crate) async fn watch(
    admin: &Admin,
    id: &RecordId,
    timeout: Duration,
    json: bool,
) -> Result<(), Failure> {
    let start = Instant::now();
    let outcome = admin
        .watch_with(id, timeout, |found| {
            err(&format!(
                "waiting for {} (pending, owner {}, ttl {})",
                escape::field(&found.storage_key),
                escape::field(&found.owner_label()),
                render::lifetime(found)
            ));
        })
        .await
        .map_err(|e| Failure::from_kit(&e))?;
    let waited = start.elapsed();
    let storage_key = escape::field(&admin.storage_key(id)).into_owned();
    let report = |outcome: &str, record: Option<serde_json::Value>| {
        if json {
            out(&serde_json::json!({
                "outcome": outcome,
                "waited_ms": u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
                "record": record,
            })
            .to_string());
        }
    };
    match outcome {
        WatchOutcome::Completed(found) => {
            report("completed", Some(found.to_json()));
            if !json {
                out(&format!(
                    "completed after {:.1}s\n{}",
                    waited.as_secs_f64(),
                    render::inspection(&found).trim_end()
                ));
            }
            Ok(())
        }
        WatchOutcome::Released => {
            report("released", None);
            if !json {
                out(&format!(
                    "released after {:.1}s: {storage_key} is gone (its owner released it or its lease ran out)",
                    waited.as_secs_f64()
                ));
            }
            Ok(())
        }
        WatchOutcome::NotFound => {
            report("not_found", None);
            Err(Failure::NotFound(format!("no record under {storage_key}")))
        }
        WatchOutcome::Unreadable(found) => {
            report("unreadable", Some(found.to_json()));
            Err(Failure::Data(format!(
                "{storage_key} holds a value that is not a record ({})",
                found.status_label()
            )))
        }
        WatchOutcome::TimedOut(found) => {
            report("timed_out", Some(found.summary_json()));
            Err(Failure::TimedOut(format!(
                "{storage_key} is still pending after {:.1}s (owner {})",
                waited.as_secs_f64(),
                escape::field(&found.owner_label())
            )))
        }
        other => Err(Failure::Data(format!(
            "unexpected watch outcome: {other:?}"
        ))),
    }
}
