//! The request fingerprint: by default SHA-256 over method, path and query, selected
//! headers and the body bytes, each length-prefixed; or over chosen members of a JSON
//! body; or a function of the application's. Same key, different request → 422.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::HeaderName;
use http::request::Parts;
use sha2::{Digest, Sha256};

use crate::constants::FINGERPRINT_DOMAIN;
use crate::encoding::hash_field;

/// A fingerprint function over the request's parts and buffered body.
pub type FingerprintFn = dyn Fn(&Parts, &Bytes) -> String + Send + Sync;

/// What the fingerprint covers.
#[derive(Clone, Default)]
pub(crate) enum FingerprintBy {
    /// Method, path and query, the selected headers, the body bytes.
    #[default]
    Request,
    /// The members of a JSON body at these JSON pointers (RFC 6901), compared as JSON
    /// values (key order and number spelling do not matter); a missing member is `null`.
    JsonPointers(Vec<String>),
    /// The application's function.
    Custom(Arc<FingerprintFn>),
}

impl std::fmt::Debug for FingerprintBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Request => f.write_str("Request"),
            Self::JsonPointers(p) => f.debug_tuple("JsonPointers").field(p).finish(),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// The fingerprint of a buffered request under `by`. A body that is not JSON under
/// [`FingerprintBy::JsonPointers`] falls back to the whole request's fingerprint, so
/// such requests are still compared strictly.
pub(crate) fn fingerprint_by(
    by: &FingerprintBy,
    parts: &Parts,
    headers: &[HeaderName],
    body: &Bytes,
) -> String {
    match by {
        FingerprintBy::Request => fingerprint(parts, headers, body),
        FingerprintBy::Custom(f) => f(parts, body),
        FingerprintBy::JsonPointers(pointers) => {
            let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) else {
                return fingerprint(parts, headers, body);
            };
            let selected: BTreeMap<&str, &serde_json::Value> = pointers
                .iter()
                .map(|p| {
                    (
                        p.as_str(),
                        json.pointer(p).unwrap_or(&serde_json::Value::Null),
                    )
                })
                .collect();
            idempotency_coordinator::fingerprint_of(&selected)
                .unwrap_or_else(|_| fingerprint(parts, headers, body))
        }
    }
}

/// The hex SHA-256 fingerprint of a buffered request.
pub(crate) fn fingerprint(parts: &Parts, headers: &[HeaderName], body: &Bytes) -> String {
    let mut hasher = Sha256::new();
    hasher.update(FINGERPRINT_DOMAIN);
    hash_field(&mut hasher, parts.method.as_str().as_bytes());
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    hash_field(&mut hasher, target.as_bytes());
    for name in headers {
        hash_field(&mut hasher, name.as_str().as_bytes());
        let values: Vec<&[u8]> = parts
            .headers
            .get_all(name)
            .iter()
            .map(http::HeaderValue::as_bytes)
            .collect();
        hasher.update((values.len() as u64).to_be_bytes());
        for value in values {
            hash_field(&mut hasher, value);
        }
    }
    hash_field(&mut hasher, body);
    let digest = hasher.finalize();
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_pointers_compare_the_selected_members_as_json() {
        let by = FingerprintBy::JsonPointers(vec!["/amount".to_owned(), "/to/iban".to_owned()]);
        let ct = [http::header::CONTENT_TYPE];
        let of = |body: &'static str| {
            fingerprint_by(
                &by,
                &parts("/pay", "json"),
                &ct,
                &Bytes::from_static(body.as_bytes()),
            )
        };
        let base = of(r#"{"amount": 10, "to": {"iban": "X"}, "note": "a"}"#);
        assert_eq!(
            base,
            of(r#"{"note": "b", "to": {"iban": "X"}, "amount": 10}"#)
        );
        assert_eq!(base, of(r#"{"amount":10,"to":{"iban":"X"}}"#), "whitespace");
        assert_ne!(base, of(r#"{"amount": 11, "to": {"iban": "X"}}"#));
        assert_ne!(base, of(r#"{"amount": 10}"#), "a missing member is null");
        // Not JSON: the whole request counts.
        assert_eq!(
            of("not json"),
            fingerprint(
                &parts("/pay", "json"),
                &ct,
                &Bytes::from_static(b"not json")
            )
        );
    }

    fn parts(uri: &str, content_type: &str) -> Parts {
        http::Request::post(uri)
            .header("content-type", content_type)
            .body(())
            .expect("request")
            .into_parts()
            .0
    }

    #[test]
    fn every_input_counts() {
        let ct = [http::header::CONTENT_TYPE];
        let base = fingerprint(&parts("/a?x=1", "json"), &ct, &Bytes::from_static(b"{}"));
        assert_eq!(base.len(), 64);
        assert_eq!(
            base,
            fingerprint(&parts("/a?x=1", "json"), &ct, &Bytes::from_static(b"{}"))
        );
        assert_ne!(
            base,
            fingerprint(&parts("/a?x=2", "json"), &ct, &Bytes::from_static(b"{}"))
        );
        assert_ne!(
            base,
            fingerprint(&parts("/a?x=1", "text"), &ct, &Bytes::from_static(b"{}"))
        );
        assert_ne!(
            base,
            fingerprint(&parts("/a?x=1", "json"), &ct, &Bytes::from_static(b"[]"))
        );
    }
}
