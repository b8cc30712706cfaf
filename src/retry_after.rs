//! The `Retry-After` header and gRPC's `grpc-retry-pushback-ms`, shared by the circuit breaker
//! and the retry policy.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, header};

/// `Retry-After` as a delay: delta-seconds or an HTTP date (a date in the past is no delay).
///
/// A date is on the server's clock: it is read against the same message's `Date` (RFC 9110,
/// section 10.2.3: relative to the message's origination), so a server whose clock is off ours
/// still gets the wait it asked for. Only without a usable `Date` is it read against ours.
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
    let Ok(when) = httpdate::parse_http_date(value) else {
        return is_before_1970(value).then_some(Duration::ZERO);
    };
    let now = origination(headers).unwrap_or_else(SystemTime::now);
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `after` (a `Retry-After` read by [`parse`]) when it names a wait; without one (none, or
/// `0`), the wait until a spent rate-limit quota is renewed, if `headers` say it is spent (see
/// [`rate_limit_reset`]). Shared by the retry policy and the circuit breaker.
pub(crate) fn or_rate_limit_reset(
    after: Option<Duration>,
    headers: &HeaderMap,
) -> Option<Duration> {
    match after {
        Some(after) if !after.is_zero() => Some(after),
        after => rate_limit_reset(headers).or(after),
    }
}

/// The wait until a spent rate-limit quota is renewed, when `headers` say the quota is spent:
/// `X-RateLimit-Remaining: 0` with `X-RateLimit-Reset` (GitHub's primary rate limit), or
/// `RateLimit-Remaining: 0` with `RateLimit-Reset` (GitLab's), the reset in UTC epoch seconds.
/// Like an HTTP date, the reset is on the server's clock, so it is read against the message's
/// `Date`, and against the local clock only without one.
///
/// `None` when the quota is not spent, the reset is unreadable, or it is not after the
/// message's `Date` (a reset in delta-seconds, as drafts of the IETF `RateLimit` fields write
/// it, reads as a time long past): nothing then says how long to wait.
fn rate_limit_reset(headers: &HeaderMap) -> Option<Duration> {
    const FIELDS: [(&str, &str); 2] = [
        ("x-ratelimit-remaining", "x-ratelimit-reset"),
        ("ratelimit-remaining", "ratelimit-reset"),
    ];
    let digits = |name: &str| {
        let value = headers.get(name)?.to_str().ok()?.trim();
        (!value.is_empty() && value.bytes().all(|b| b.is_ascii_digit())).then_some(value)
    };
    FIELDS.into_iter().find_map(|(remaining, reset)| {
        // `0`, however written (`00`): the quota is spent.
        if !digits(remaining)?.bytes().all(|b| b == b'0') {
            return None;
        }
        // All digits: only a value past `u64` fails to parse, a time past any wait.
        let reset = Duration::from_secs(digits(reset)?.parse().unwrap_or(u64::MAX));
        let now = origination(headers).unwrap_or_else(SystemTime::now);
        let since_epoch = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        reset
            .checked_sub(since_epoch)
            .filter(|wait| !wait.is_zero())
    })
}

/// The message's `Date` (its first field), when it is a valid HTTP date `httpdate` can
/// represent (from 1970): the server's clock when it sent the message.
fn origination(headers: &HeaderMap) -> Option<SystemTime> {
    let value = headers.get(header::DATE)?.to_str().ok()?.trim();
    httpdate::parse_http_date(value).ok()
}

/// What a gRPC server asks of a client's next attempt with `grpc-retry-pushback-ms`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Pushback {
    /// No pushback: the policy decides.
    None,
    /// Wait this long before the next attempt.
    Wait(Duration),
    /// A negative or unreadable value: the server asks not to retry (gRPC's retry design, A6).
    DoNotRetry,
}

/// The `grpc-retry-pushback-ms` in `headers` (a trailers-only answer's, or a status's
/// metadata).
pub(crate) fn grpc_pushback(headers: &HeaderMap) -> Pushback {
    let Some(value) = headers.get("grpc-retry-pushback-ms") else {
        return Pushback::None;
    };
    let digits = value.as_bytes();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Pushback::DoNotRetry;
    }
    // All digits: only too many of them fail to parse, a wait longer than any policy's.
    let millis = std::str::from_utf8(digits)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    Pushback::Wait(Duration::from_millis(millis))
}

/// Whether `value` is a valid HTTP date before 1970, which `httpdate` cannot represent: an
/// IMF-fixdate or an asctime date (an RFC 850 date's two-digit year is never before 1970).
///
/// The Gregorian calendar repeats every 400 years, weekdays and leap days included, so the
/// same date some multiple of 400 years on, from 1970, is valid exactly when this one is.
fn is_before_1970(value: &str) -> bool {
    // `Sun, 06 Nov 1994 08:49:37 GMT` and `Sun Nov  6 08:49:37 1994`.
    let at = match value.len() {
        29 => 12,
        24 => 20,
        _ => return false,
    };
    let Some(year) = value
        .get(at..at + 4)
        .filter(|y| y.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|y| y.parse::<u16>().ok())
        .filter(|&y| y < 1970)
    else {
        return false;
    };
    let later = year + 400 * (1970 - year).div_ceil(400);
    let shifted = format!("{}{later}{}", &value[..at], &value[at + 4..]);
    httpdate::parse_http_date(&shifted).is_ok()
}
