//! Test support for idempotency-kit. Never published.
//!
//! - [`RedisServer`]: a throwaway `redis-server` on a free loopback port, stopped and its
//!   files removed when dropped (also when the test panics). It never touches a server it
//!   did not start: port 6379 and any port in use are skipped.
//! - [`RedisCluster`]: three masters with one replica each, made with
//!   `redis-cli --cluster create`.
//! - [`resp`]: a tiny synchronous RESP client for inspecting servers from tests.
//! - [`json_eq`]: JSON comparison by value that keeps integers of any size exact.
//! - [`proxy`]: a loopback TCP proxy that can delay, drop or freeze traffic.
//! - [`postgres`]: a throwaway Postgres server per test binary and a database per test
//!   ([`postgres::TestDatabase`]).
//! - [`nats`]: a throwaway `nats-server -js` ([`nats::NatsServer`]).
//! - [`rabbitmq`]: a virtual host per test on the local `RabbitMQ` broker
//!   ([`rabbitmq::RabbitVhost`]), removed on drop.
//!
//! Where `redis-server` (or Postgres's `initdb`, `nats-server`, `rabbitmqctl`) is missing, starting a server panics
//! with an install hint: a test that needs it fails, it never passes by skipping.

// Test support panics by design: a failed set-up is a failed test.
#![allow(clippy::missing_panics_doc)]

mod cluster;
pub mod conformance;

pub mod history;

mod metrics;
pub mod nats;
pub mod postgres;
pub mod proxy;
pub mod python;
pub mod rabbitmq;
pub mod resp;
pub mod sentinel;
mod server;
mod shared;
pub mod tls;

pub use cluster::RedisCluster;
pub use idempotency_contract::json_eq;
pub use metrics::{RecordingMetrics, error_type};
pub use server::{RedisServer, ServerOptions, free_port, require_redis};
pub use shared::{shared_cluster, shared_server};

/// Encodes bytes as standard base64 (padded), for sending them to Python line by line.
pub fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (with or without padding), for test vectors.
///
/// # Panics
/// On a character outside the base64 alphabet.
pub fn base64_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text
        .bytes()
        .filter(|&c| c != b'=' && !c.is_ascii_whitespace())
    {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// The identity of `operation` and `key`, which the test knows to be valid.
///
/// # Panics
/// When they are not valid identifiers.
pub fn record_id(operation: &str, key: &str) -> idempotency_core::RecordId {
    idempotency_core::RecordId::new(operation, key)
        .unwrap_or_else(|e| panic!("{operation:?}/{key:?} are not valid identifiers: {e}"))
}

/// A key no other test of this process (or of another test process) uses.
pub fn unique_key(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
