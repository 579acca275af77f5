//! Where a key lives: the operation (method and route) and the storage key derived from
//! tenant, operation and client key.
//!
//! The storage key is `base64url(SHA-256(domain ‖ tenant ‖ operation ‖ key))` with each
//! field length-prefixed (and the tenant tagged present or absent), so distinct
//! `(tenant, operation, key)` triples get distinct storage keys (up to SHA-256
//! collisions) whatever characters the client's key holds: the core's identifier rules
//! (no `:`, at most 255 characters, trimmed) are met by every derived key, and the
//! client's key, its tenant and its text never reach the store or the logs.

use std::fmt;
use std::sync::Arc;

use http::Method;
use http::request::Parts;
use sha2::{Digest, Sha256};

use crate::constants::STORAGE_KEY_DOMAIN;
use crate::encoding::{encode_url_safe, hash_field};

/// Maps a request's parts to its tenant.
pub type TenantFn = dyn Fn(&Parts) -> Option<String> + Send + Sync;

/// Whose key space a request's key lives in.
#[derive(Clone)]
pub(crate) enum ClientScope {
    /// The default: the request's credentials (`Authorization`, the named session
    /// cookies); a request with none shares the anonymous space.
    Credentials { cookies: Vec<String> },
    /// The application's tenant function.
    Tenant(Arc<TenantFn>),
    /// One space for every client (explicit opt-out).
    Shared,
}

impl fmt::Debug for ClientScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Credentials { cookies } => f
                .debug_struct("Credentials")
                .field("cookies", cookies)
                .finish(),
            Self::Tenant(_) => f.write_str("Tenant"),
            Self::Shared => f.write_str("Shared"),
        }
    }
}

/// The core's longest operation, in characters.
const MAX_OPERATION_CHARS: usize = 100;

/// The operation of a request: `"{METHOD} {route}"` when that is a valid core
/// operation, else `"{METHOD} ~{hash of the route}"` (a route holding `:` or too long).
/// Only a label (metrics, the Redis key's readable part): the storage key hashes the
/// full route, so two routes sharing a label never share keys.
pub(crate) fn operation_label(method: &Method, route: &str) -> String {
    // Braces become parentheses: a route template's `{id}` in a Redis key would be a
    // Cluster hash tag, putting every record of the route on one slot.
    let label = format!("{method} {route}")
        .replace('{', "(")
        .replace('}', ")");
    let valid = !label.contains(':')
        && label.chars().count() <= MAX_OPERATION_CHARS
        && label.trim() == label;
    if valid {
        label
    } else {
        let digest = Sha256::digest(route.as_bytes());
        format!("{method} ~{}", encode_url_safe(&digest[..12]))
    }
}

/// The label of a request whose route is not known (no `MatchedPath`, no configured
/// route): one per method, so metrics stay bounded whatever paths clients send.
pub(crate) fn unrouted_label(method: &Method) -> String {
    format!("{method} (unrouted)")
}

/// The scope a request's key lives in: its credentials by default (`Authorization` and
/// the named session cookies, length-prefixed; `None` when it carries none), the
/// tenant function's answer, or `None` for a shared key space. Only hashed into the
/// storage key: it never reaches the store or the logs.
pub(crate) fn client_scope(scope: &ClientScope, parts: &Parts) -> Option<String> {
    match scope {
        ClientScope::Shared => None,
        ClientScope::Tenant(tenant) => tenant(parts).map(|t| format!("tenant\0{t}")),
        ClientScope::Credentials { cookies } => {
            let mut out = String::new();
            for value in parts.headers.get_all(http::header::AUTHORIZATION) {
                push_field(&mut out, "authorization", value.as_bytes());
            }
            if !cookies.is_empty() {
                let jar = parts
                    .headers
                    .get_all(http::header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .filter_map(|pair| pair.trim().split_once('='));
                let mut found: Vec<(&str, &str)> = jar
                    .filter(|(name, _)| cookies.iter().any(|c| c == name))
                    .collect();
                found.sort_unstable();
                for (name, value) in found {
                    push_field(&mut out, name, value.as_bytes());
                }
            }
            (!out.is_empty()).then(|| format!("credentials\0{out}"))
        }
    }
}

/// Appends `name=value` with the name length-prefixed and the value's bytes encoded, so
/// no two distinct sets of credentials give the same text.
fn push_field(out: &mut String, name: &str, value: &[u8]) {
    use std::fmt::Write as _;
    let _ = write!(out, "{}:{name}=", name.len());
    out.push_str(&encode_url_safe(value));
    out.push(';');
}

/// The storage key for a client key in a tenant's scope of an operation.
pub(crate) fn storage_key(tenant: Option<&str>, method: &Method, route: &str, key: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(STORAGE_KEY_DOMAIN);
    match tenant {
        None => hasher.update([0u8]),
        Some(tenant) => {
            hasher.update([1u8]);
            hash_field(&mut hasher, tenant.as_bytes());
        }
    }
    hash_field(&mut hasher, method.as_str().as_bytes());
    hash_field(&mut hasher, route.as_bytes());
    hash_field(&mut hasher, key.as_bytes());
    encode_url_safe(&hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use idempotency_coordinator::RecordId;

    #[test]
    fn derived_keys_are_valid_core_identities() {
        for key in ["a:b", " spaced ", "日本", &"x".repeat(255)] {
            let op = operation_label(&Method::POST, "/a:b/{id}");
            let key = storage_key(Some("t"), &Method::POST, "/a:b/{id}", key);
            assert!(RecordId::new(&op, &key).is_ok(), "{op} {key}");
        }
    }

    #[test]
    fn fields_never_run_into_each_other() {
        let m = Method::POST;
        assert_ne!(
            storage_key(None, &m, "/x", "k"),
            storage_key(Some(""), &m, "/x", "k")
        );
        assert_ne!(
            storage_key(Some("ab"), &m, "/x", "c"),
            storage_key(Some("a"), &m, "/x", "bc")
        );
        assert_ne!(
            storage_key(None, &m, "/x", "k"),
            storage_key(None, &Method::PATCH, "/x", "k")
        );
        assert_eq!(
            storage_key(None, &m, "/x", "k"),
            storage_key(None, &m, "/x", "k")
        );
    }

    #[test]
    fn labels() {
        assert_eq!(
            operation_label(&Method::POST, "/orders/{id}"),
            "POST /orders/(id)"
        );
        assert!(operation_label(&Method::POST, "/a:b").starts_with("POST ~"));
    }
}
