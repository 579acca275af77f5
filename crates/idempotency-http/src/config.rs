//! What a layer is configured with: the modes, the settings every request reads, the
//! counters, and their defaults. The builder (`layer.rs`) writes it; the service reads it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderName, Method, StatusCode, header};
use idempotency_coordinator::{InFlight, OnStorageError};

use crate::constants::{
    DEFAULT_KEY_HEADER, DEFAULT_MAX_KEY_CHARS, DEFAULT_MAX_REQUEST_BODY, DEFAULT_MAX_RESPONSE_BODY,
    DEFAULT_PROBLEM_BASE, DEFAULT_REPLAYED_HEADER, DEFAULT_RETRY_AFTER,
};
use crate::fingerprint::FingerprintBy;
use crate::policy::store_by_default;
use crate::scope::ClientScope;

/// Whether requests of a covered method must carry a key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KeyRequirement {
    /// A request without the key gets 400.
    Required,
    /// A request without the key passes through untouched (no idempotency).
    #[default]
    Optional,
}

/// What a duplicate gets while the first request with its key is still being handled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WhileInFlight {
    /// 409 with `Retry-After` at once (the draft's behaviour).
    #[default]
    Conflict,
    /// Wait for the first request's response (at most the layer's maximum wait, default
    /// one lease: [`IdempotencyLayerBuilder::with_max_wait`](crate::IdempotencyLayerBuilder::with_max_wait)), then replay it; 409 if it
    /// is still in flight after that.
    Wait,
}

/// What a request gets when the idempotency store cannot be reached before the handler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StorageDown {
    /// 503 with `Retry-After`; the handler does not run.
    #[default]
    FailClosed,
    /// Run the handler without protection (at least once), logging and counting it.
    FailOpen,
}

/// Decides from a response's status whether it is stored.
pub type StorePolicyFn = dyn Fn(StatusCode) -> bool + Send + Sync;

/// Counters of the layer (shared by every clone of the layer and its services).
#[derive(Debug, Default)]
pub struct LayerStats {
    oversized: AtomicU64,
    not_stored: AtomicU64,
}

impl LayerStats {
    /// Responses returned but not stored because their body was over the limit.
    pub fn oversized(&self) -> u64 {
        self.oversized.load(Ordering::Relaxed)
    }

    /// Responses returned but not stored for any reason (policy, size, trailers, body
    /// error); their keys were released.
    pub fn not_stored(&self) -> u64 {
        self.not_stored.load(Ordering::Relaxed)
    }

    pub(crate) fn count_not_stored(&self, oversized: bool) {
        self.not_stored.fetch_add(1, Ordering::Relaxed);
        if oversized {
            self.oversized.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The layer's configuration, shared by its services.
pub(crate) struct Config {
    pub(crate) key_header: HeaderName,
    pub(crate) replayed_header: HeaderName,
    pub(crate) max_key_chars: usize,
    pub(crate) methods: Vec<Method>,
    pub(crate) requirement: KeyRequirement,
    pub(crate) operation: Option<String>,
    pub(crate) scope: ClientScope,
    pub(crate) fingerprint_headers: Vec<HeaderName>,
    pub(crate) fingerprint_by: FingerprintBy,
    pub(crate) max_request_body: usize,
    pub(crate) max_response_body: usize,
    pub(crate) deny_headers: Vec<HeaderName>,
    pub(crate) store_policy: Arc<StorePolicyFn>,
    pub(crate) retry_after: Duration,
    pub(crate) problem_base: String,
    pub(crate) ttl: Option<Duration>,
    pub(crate) in_flight: InFlight,
    pub(crate) max_wait: Option<Duration>,
    pub(crate) on_storage_error: OnStorageError,
    pub(crate) stats: Arc<LayerStats>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("key_header", &self.key_header)
            .field("methods", &self.methods)
            .field("requirement", &self.requirement)
            .field("operation", &self.operation)
            .field("scope", &self.scope)
            .field("max_request_body", &self.max_request_body)
            .field("max_response_body", &self.max_response_body)
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            key_header: HeaderName::from_static(DEFAULT_KEY_HEADER),
            replayed_header: HeaderName::from_static(DEFAULT_REPLAYED_HEADER),
            max_key_chars: DEFAULT_MAX_KEY_CHARS,
            methods: vec![Method::POST, Method::PATCH],
            requirement: KeyRequirement::Optional,
            operation: None,
            scope: ClientScope::Credentials {
                cookies: Vec::new(),
            },
            fingerprint_headers: vec![header::CONTENT_TYPE],
            fingerprint_by: FingerprintBy::Request,
            max_request_body: DEFAULT_MAX_REQUEST_BODY,
            max_response_body: DEFAULT_MAX_RESPONSE_BODY,
            deny_headers: DEFAULT_DENY_HEADERS
                .iter()
                .map(|name| HeaderName::from_static(name))
                .collect(),
            store_policy: Arc::new(store_by_default),
            retry_after: DEFAULT_RETRY_AFTER,
            problem_base: DEFAULT_PROBLEM_BASE.to_owned(),
            ttl: None,
            in_flight: InFlight::Raise,
            max_wait: None,
            on_storage_error: OnStorageError::Raise,
            stats: Arc::default(),
        }
    }
}

/// Response headers the layer never stores nor replays by default: cookies set for the
/// first client and the usual credential headers (a replay must not hand them to a
/// retry). Values the handler marks sensitive (`HeaderValue::set_sensitive`) are never
/// stored either. Add names with [`IdempotencyLayerBuilder::with_deny_headers`](crate::IdempotencyLayerBuilder::with_deny_headers).
pub const DEFAULT_DENY_HEADERS: [&str; 8] = [
    "set-cookie",
    "set-cookie2",
    "authorization",
    "proxy-authorization",
    "x-auth-token",
    "x-api-key",
    "x-csrf-token",
    "x-xsrf-token",
];
