//! Which responses are stored (and replayed) and which release the key.

use http::StatusCode;

/// The default outcome policy: store 2xx to 4xx except 408 (Request Timeout), 409
/// (Conflict), 425 (Too Early) and 429 (Too Many Requests); release the key on those and
/// on 5xx (and 1xx), so the retry runs the handler again.
pub fn store_by_default(status: StatusCode) -> bool {
    matches!(status.as_u16(), 200..=499) && !matches!(status.as_u16(), 408 | 409 | 425 | 429)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy() {
        for (code, stored) in [
            (200, true),
            (201, true),
            (302, true),
            (400, true),
            (404, true),
            (422, true),
            (408, false),
            (409, false),
            (425, false),
            (429, false),
            (500, false),
            (503, false),
            (101, false),
        ] {
            assert_eq!(
                store_by_default(StatusCode::from_u16(code).expect("status")),
                stored,
                "{code}"
            );
        }
    }
}
