//! The `Retry-After` header, shared by the circuit breaker and the retry policy.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, header};

/// `Retry-After` as a delay: delta-seconds or an HTTP date (a date in the past is no delay).
pub(crate) fn parse(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // All digits: a value too large for `u64` is simply very long.
        return Some(
            value
                .parse::<u64>()
                .map_or(Duration::MAX, Duration::from_secs),
        );
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}
