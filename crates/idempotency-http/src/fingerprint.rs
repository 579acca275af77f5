//! The request fingerprint: SHA-256 over method, path and query, selected headers and
//! the body bytes, each length-prefixed. Same key, different request → 422.

use bytes::Bytes;
use http::HeaderName;
use http::request::Parts;
use sha2::{Digest, Sha256};

use crate::constants::FINGERPRINT_DOMAIN;

/// The hex SHA-256 fingerprint of a buffered request.
pub(crate) fn fingerprint(parts: &Parts, headers: &[HeaderName], body: &Bytes) -> String {
    let mut hasher = Sha256::new();
    hasher.update(FINGERPRINT_DOMAIN);
    field(&mut hasher, parts.method.as_str().as_bytes());
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    field(&mut hasher, target.as_bytes());
    for name in headers {
        field(&mut hasher, name.as_str().as_bytes());
        let values: Vec<&[u8]> = parts
            .headers
            .get_all(name)
            .iter()
            .map(http::HeaderValue::as_bytes)
            .collect();
        hasher.update((values.len() as u64).to_be_bytes());
        for value in values {
            field(&mut hasher, value);
        }
    }
    field(&mut hasher, body);
    let digest = hasher.finalize();
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

fn field(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_be_bytes());
    hasher.update(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

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
