//! Defaults of the layer.

use std::time::Duration;

/// The request header carrying the key (IETF draft "The Idempotency-Key HTTP Header Field").
pub const DEFAULT_KEY_HEADER: &str = "idempotency-key";

/// The response header set on a replayed response.
pub const DEFAULT_REPLAYED_HEADER: &str = "idempotent-replayed";

/// The longest key accepted, in Unicode characters.
pub const DEFAULT_MAX_KEY_CHARS: usize = 255;

/// The largest response body buffered and stored (1 MiB); larger responses are returned
/// but not stored.
pub const DEFAULT_MAX_RESPONSE_BODY: usize = 1024 * 1024;

/// The largest request body buffered for the fingerprint (1 MiB); larger requests get 413.
pub const DEFAULT_MAX_REQUEST_BODY: usize = 1024 * 1024;

/// `Retry-After` on a 409 (key in flight) and a 503 (storage down).
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The base of the problem `type` URIs (RFC 9457); each problem appends its slug.
///
/// Stable identifiers, not links: `.invalid` is reserved never to resolve (RFC 6761).
/// Point the base at your own documentation with `with_problem_base` to give clients
/// the link the draft asks for (`docs/http.md`, Problems).
pub const DEFAULT_PROBLEM_BASE: &str = "https://idempotency-kit.invalid/problems/";

/// Version tag hashed into every storage key, so a future derivation cannot collide.
pub(crate) const STORAGE_KEY_DOMAIN: &[u8] = b"idempotency-http/storage-key/v1";

/// Version tag hashed into every fingerprint.
pub(crate) const FINGERPRINT_DOMAIN: &[u8] = b"idempotency-http/fingerprint/v1";
