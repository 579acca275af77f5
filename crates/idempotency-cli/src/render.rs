//! Table output (the default); `--json` prints the admin API's JSON instead.

use std::fmt::Write as _;
use std::time::Duration;

use idempotency_core::IdempotencyRecord;
use idempotency_redis::admin::{Content, Inspection, Stats};

use crate::escape;

/// `1h 2m`, `3m 4s`, `5.123s`; `no expiry` for `None`.
pub(crate) fn ttl(d: Option<Duration>) -> String {
    let Some(d) = d else {
        return "no expiry".to_owned();
    };
    let secs = d.as_secs();
    if secs >= 3600 {
        format!("{}h {}m", secs / 3600, secs % 3600 / 60)
    } else if secs >= 60 {
        format!("{}m {}s", secs / 60, secs % 60)
    } else {
        format!("{:.3}s", d.as_secs_f64())
    }
}

/// `812 B`, `3.2 KiB`, `1.5 MiB`.
pub(crate) fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
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
    if found.is_expired() {
        status.push_str(" (past its expires_at: treated as absent)");
    } else if found.record().is_some_and(IdempotencyRecord::is_pending)
        && !found.is_live_reservation()
    {
        status.push_str(" (abandoned)");
    }
    let mut out = String::new();
    let mut line = |label: &str, value: &str| {
        let _ = writeln!(out, "{label:<12} {}", escape::field(value));
    };
    line("redis key", &found.redis_key);
    line("operation", found.id.operation());
    line("key", found.id.key());
    line("status", &status);
    line("owner", &found.owner_label());
    line("created at", &text("created_at"));
    line("expires at", &text("expires_at"));
    line("redis ttl", &ttl(found.pttl));
    line("fingerprint", &text("fingerprint"));
    let memory = found.memory_bytes.map_or_else(|| "-".to_owned(), bytes);
    line(
        "size",
        &format!(
            "{} value, {memory} in memory",
            bytes(found.raw.len() as u64)
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
        Content::WrongType => {
            let _ = writeln!(
                out,
                "{:<12} the key holds a {}, not a string (not a record)",
                "error", found.redis_type
            );
        }
        _ => {}
    }
    out
}

/// A stored result, pretty-printed when that keeps every value exactly (re-read as a
/// [`serde_json::Value`], an integer beyond 64 bits would become a rounded float), else
/// the stored text as it is.
pub(crate) fn pretty_result(stored: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(stored) {
        Ok(value) if serde_json::to_string(&value).is_ok_and(|compact| compact == stored) => {
            serde_json::to_string_pretty(&value).unwrap_or_else(|_| stored.to_owned())
        }
        _ => stored.to_owned(),
    }
}

/// The list table's header.
pub(crate) const LIST_HEADER: &str =
    "STATUS      REDIS TTL    OWNER                             OPERATION / KEY";

/// One list row.
pub(crate) fn list_row(found: &Inspection) -> String {
    format!(
        "{:<11} {:<12} {:<33} {} / {}",
        found.status_label(),
        ttl(found.pttl),
        escape::field(&found.owner_label()),
        escape::field(found.id.operation()),
        escape::field(found.id.key())
    )
}

/// The stats tables.
pub(crate) fn stats(stats: &Stats, max_keys: usize) -> String {
    let mut out = String::new();
    if stats.sampled {
        let _ = writeln!(
            out,
            "SAMPLED: the first {} keys SCAN returned (the keyspace is larger; raise --sample to count more)",
            stats.examined
        );
    } else {
        let _ = writeln!(
            out,
            "examined all {} matching keys (not sampled; limit {max_keys})",
            stats.examined
        );
    }
    let statuses = [
        "pending",
        "completed",
        "stored_error",
        "unreadable",
        "wrong-type",
    ];
    let _ = writeln!(
        out,
        "\n{:<32} {:>9} {:>10} {:>13} {:>11} {:>11}",
        "OPERATION", "PENDING", "COMPLETED", "STORED-ERROR", "UNREADABLE", "WRONG-TYPE"
    );
    for (operation, by_status) in &stats.counts {
        let n = |s: &str| by_status.get(s).copied().unwrap_or(0);
        let operation = escape::field(operation);
        let _ = writeln!(
            out,
            "{operation:<32} {:>9} {:>10} {:>13} {:>11} {:>11}",
            n(statuses[0]),
            n(statuses[1]),
            n(statuses[2]),
            n(statuses[3]),
            n(statuses[4])
        );
    }
    let _ = writeln!(out, "\n{:<12} {:>9}", "REDIS TTL", "KEYS");
    for (bucket, keys) in &stats.ttl_histogram {
        let _ = writeln!(out, "{bucket:<12} {keys:>9}");
    }
    let _ = writeln!(
        out,
        "\nmemory: {} in the keys examined (MEMORY USAGE)",
        bytes(stats.memory_bytes)
    );
    if let Some(used) = stats.server_used_memory {
        let _ = writeln!(out, "server used_memory (all masters): {}", bytes(used));
    }
    if let Some(keys) = stats.db_keys {
        let _ = writeln!(out, "keys in the database (all masters, DBSIZE): {keys}");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn durations_and_sizes_read_as_people_write_them() {
        assert_eq!(super::ttl(None), "no expiry");
        assert_eq!(super::ttl(Some(Duration::from_millis(1500))), "1.500s");
        assert_eq!(super::ttl(Some(Duration::from_secs(3725))), "1h 2m");
        assert_eq!(super::bytes(812), "812 B");
        assert_eq!(super::bytes(2048), "2.0 KiB");
    }
}
