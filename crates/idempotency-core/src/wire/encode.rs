//! The encoder: a record as the Python library 0.5.0 stores it, byte for byte.

use super::timestamp::write_timestamp;
use crate::record::IdempotencyRecord;

impl IdempotencyRecord {
    /// Encodes the record as the Python library stores it.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(160 + self.result().get().len());
        out.push_str("{\"operation\":");
        push_json_str(&mut out, self.operation());
        out.push_str(",\"idempotency_key\":");
        push_json_str(&mut out, self.idempotency_key());
        out.push_str(",\"result\":");
        out.push_str(self.result().get());
        out.push_str(",\"created_at\":\"");
        write_timestamp(&mut out, self.created_at());
        out.push_str("\",\"expires_at\":\"");
        write_timestamp(&mut out, self.expires_at());
        out.push_str("\",\"status\":\"");
        out.push_str(self.status().as_str());
        out.push_str("\",\"fingerprint\":");
        match self.fingerprint() {
            Some(f) => push_json_str(&mut out, f),
            None => out.push_str("null"),
        }
        if let Some(owner) = self.owner() {
            out.push_str(",\"owner\":");
            push_json_str(&mut out, owner);
        }
        out.push('}');
        out
    }
}

/// Appends `s` as a JSON string with `serde_json`'s escaping (the same as orjson's).
fn push_json_str(out: &mut String, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        // Serializing a str cannot fail.
        out.push_str(&serde_json::to_string(s).unwrap_or_default());
    }
}
