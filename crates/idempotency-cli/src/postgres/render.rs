//! Table output for Postgres rows; `--json` prints the admin API's JSON instead.

use std::fmt::Write as _;

use idempotency_core::IdempotencyRecord;
use idempotency_postgres::admin::{Content, Inspection, Stats};

use crate::escape;
use crate::render::{bytes, pretty_result, ttl};

/// The lifetime left, `expired` once past.
pub(crate) fn lifetime(found: &Inspection) -> String {
    if found.expired {
        "expired".to_owned()
    } else {
        ttl(found.ttl)
    }
}

/// The inspect table: one `label  value` line per field, then the result pretty-printed.
pub(crate) fn inspection(found: &Inspection) -> String {
    let json = found.to_json();
    let text = |name: &str| match json.get(name) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => "-".to_owned(),
        Some(other) => other.to_string(),
    };
    let mut status = found.status_label().to_owned();
    if found.expired {
        status.push_str(" (past its expires_at: treated as absent; the sweep removes it)");
    }
    let mut out = String::new();
    let mut line = |label: &str, value: &str| {
        let _ = writeln!(out, "{label:<12} {}", escape::field(value));
    };
    line("storage key", &found.storage_key);
    line("operation", found.id.operation());
    line("key", found.id.key());
    line("status", &status);
    line("owner", &found.owner_label());
    line("fence", &found.fence.to_string());
    line("created at", &text("created_at"));
    line("expires at", &text("expires_at"));
    line("ttl", &lifetime(found));
    line("fingerprint", &text("fingerprint"));
    line(
        "size",
        &format!(
            "{} record, {} row",
            bytes(found.raw.len() as u64),
            bytes(found.row_bytes)
        ),
    );
    match &found.content {
        Content::Record(r) if r.is_pending() => {
            let _ = writeln!(out, "{:<12} - (pending: the action is running)", "result");
        }
        Content::Record(r) => {
            let _ = writeln!(out, "result\n{}", pretty_result(r.result().get()));
        }
        Content::Unreadable { reason } => {
            let _ = writeln!(out, "{:<12} {}", "error", escape::field(reason));
            let _ = writeln!(out, "{:<12} {}", "raw", escape::field(&found.raw_preview()));
        }
        _ => {}
    }
    out
}

/// The list table's header.
pub(crate) const LIST_HEADER: &str =
    "STATUS      TTL          OWNER                             OPERATION / KEY";

/// One list row.
pub(crate) fn list_row(found: &Inspection) -> String {
    let status = if found.record().is_some_and(IdempotencyRecord::is_pending) && found.expired {
        "abandoned"
    } else {
        found.status_label()
    };
    format!(
        "{:<11} {:<12} {:<33} {} / {}",
        status,
        lifetime(found),
        escape::field(&found.owner_label()),
        escape::field(found.id.operation()),
        escape::field(found.id.key())
    )
}

/// The stats tables.
pub(crate) fn stats(stats: &Stats) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "counted all {} rows exactly ({} expired, awaiting the sweep)",
        stats.rows, stats.expired_rows
    );
    let _ = writeln!(
        out,
        "\n{:<32} {:>9} {:>10} {:>13}",
        "OPERATION", "PENDING", "COMPLETED", "STORED-ERROR"
    );
    for (operation, by_status) in &stats.counts {
        let n = |s: &str| by_status.get(s).copied().unwrap_or(0);
        let operation = escape::field(operation);
        let _ = writeln!(
            out,
            "{operation:<32} {:>9} {:>10} {:>13}",
            n("pending"),
            n("completed"),
            n("stored_error")
        );
    }
    let _ = writeln!(out, "\n{:<12} {:>9}", "TTL", "ROWS");
    for (bucket, rows) in &stats.ttl_histogram {
        let _ = writeln!(out, "{bucket:<12} {rows:>9}");
    }
    let _ = writeln!(
        out,
        "\nsize: {} in the rows counted (pg_column_size)",
        bytes(stats.row_bytes)
    );
    if let Some(table) = stats.table_bytes {
        let _ = writeln!(
            out,
            "table idempotency_records (every prefix, indexes, TOAST): {}",
            bytes(table)
        );
    }
    out
}
