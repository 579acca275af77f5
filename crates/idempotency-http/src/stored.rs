//! The stored form of a response and its replay.
//!
//! Stored through the coordinator as JSON (`SerdeAdapter`):
//! `{"status":201,"headers":[{"name":"content-type","value":"application/json"}],"body":"<base64>"}`.
//! A header value that is not UTF-8 is stored as `value_base64` instead of `value`; the
//! body is standard base64 (padded). Hop-by-hop headers (and those named by
//! `Connection`), `Date`, `Content-Length` (recomputed), the replay header, the deny
//! list (default [`DEFAULT_DENY_HEADERS`](crate::DEFAULT_DENY_HEADERS)) and values
//! marked sensitive are not stored.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::response::Parts;
use http::{Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::body::{ResponseBody, full};
use crate::encoding;

/// Hop-by-hop headers (RFC 9110 §7.6.1) and the ones every replay recomputes.
const NEVER_STORED: [HeaderName; 10] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::DATE,
    header::CONTENT_LENGTH,
];

/// One stored header.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredHeader {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
}

/// A response as stored and replayed.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StoredResponse {
    status: u16,
    headers: Vec<StoredHeader>,
    body: String,
    /// The response this call's handler produced, whole (with the headers that are not
    /// stored): what the first client gets. Never serialized.
    #[serde(skip)]
    live: Option<(Parts, Bytes)>,
}

impl StoredResponse {
    /// The storable form of a buffered response, keeping the live response alongside.
    pub(crate) fn new(
        parts: Parts,
        body: Bytes,
        deny: &[HeaderName],
        replayed: &HeaderName,
    ) -> Self {
        let named_by_connection: Vec<String> = parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|name| name.trim().to_ascii_lowercase())
            .collect();
        let headers = parts
            .headers
            .iter()
            .filter(|(name, value)| {
                !NEVER_STORED.contains(name)
                    && !deny.contains(name)
                    // A value the handler marked sensitive (`HeaderValue::set_sensitive`).
                    && !value.is_sensitive()
                    && *name != replayed
                    && !named_by_connection.iter().any(|n| n == name.as_str())
            })
            .map(|(name, value)| match value.to_str() {
                Ok(text) => StoredHeader {
                    name: name.as_str().to_owned(),
                    value: Some(text.to_owned()),
                    value_base64: None,
                },
                Err(_) => StoredHeader {
                    name: name.as_str().to_owned(),
                    value: None,
                    value_base64: Some(encoding::encode(value.as_bytes())),
                },
            })
            .collect();
        Self {
            status: parts.status.as_u16(),
            headers,
            body: encoding::encode(&body),
            live: Some((parts, body)),
        }
    }

    /// The response for this request: the live one when this call ran the handler, else
    /// the stored one marked as replayed. `None` when the stored form is unreadable.
    pub(crate) fn into_response(self, replayed: &HeaderName) -> Option<Response<ResponseBody>> {
        if let Some((mut parts, body)) = self.live {
            // The body is now one buffer: let the server frame it.
            parts.headers.remove(header::TRANSFER_ENCODING);
            parts.headers.remove(header::CONTENT_LENGTH);
            return Some(Response::from_parts(parts, full(body)));
        }
        let status = StatusCode::from_u16(self.status).ok()?;
        let mut headers = HeaderMap::with_capacity(self.headers.len() + 1);
        for h in self.headers {
            let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
            let value = match (h.value, h.value_base64) {
                (Some(text), _) => HeaderValue::from_str(&text).ok()?,
                (None, Some(b64)) => HeaderValue::from_bytes(&encoding::decode(&b64)?).ok()?,
                (None, None) => return None,
            };
            headers.append(name, value);
        }
        headers.insert(replayed.clone(), HeaderValue::from_static("true"));
        let body = encoding::decode(&self.body)?;
        let mut response = Response::new(full(Bytes::from(body)));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Some(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_form_drops_hop_by_hop_date_and_denied_headers() {
        let (parts, ()) = Response::builder()
            .status(201)
            .header("content-type", "application/json")
            .header("date", "Sat, 28 Nov 2026 13:00:00 GMT")
            .header("connection", "x-hop")
            .header("x-hop", "1")
            .header("set-cookie", "s=1")
            .header(
                "x-bytes",
                HeaderValue::from_bytes(b"\xfe\xe9").expect("value"),
            )
            .body(())
            .expect("response")
            .into_parts();
        let replayed = HeaderName::from_static("idempotent-replayed");
        let stored = StoredResponse::new(
            parts,
            Bytes::from_static(b"{\"id\":1}"),
            &[header::SET_COOKIE],
            &replayed,
        );
        let json = serde_json::to_string(&stored).expect("json");
        assert_eq!(
            json,
            r#"{"status":201,"headers":[{"name":"content-type","value":"application/json"},{"name":"x-bytes","value_base64":"/uk="}],"body":"eyJpZCI6MX0="}"#
        );
        let back: StoredResponse = serde_json::from_str(&json).expect("decode");
        let response = back.into_response(&replayed).expect("replay");
        assert_eq!(response.status(), 201);
        assert_eq!(response.headers()["idempotent-replayed"], "true");
        assert_eq!(response.headers()["x-bytes"].as_bytes(), b"\xfe\xe9");
        assert!(response.headers().get("set-cookie").is_none());
    }
}
