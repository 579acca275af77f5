//! The `status` label values, precomputed so recording allocates nothing.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::LazyLock;

use idempotency_core::error_type;

/// `error_<type>` for every error type the kit reports.
static ERROR_STATUSES: LazyLock<HashMap<&'static str, String>> = LazyLock::new(|| {
    error_type::ALL
        .iter()
        .map(|t| (*t, format!("error_{t}")))
        .collect()
});

/// The `status` label of an error type; allocates only for types outside the kit's set.
pub(crate) fn error_status(error_type: &str) -> Cow<'static, str> {
    match ERROR_STATUSES.get(error_type) {
        Some(s) => Cow::Borrowed(s.as_str()),
        None => Cow::Owned(format!("error_{error_type}")),
    }
}
