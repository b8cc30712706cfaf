//! `Retry-After` as the retry policy and the circuit breaker read it (RFC 9110, section
//! 10.2.3): delta-seconds or an HTTP date in any of its three formats (section 5.6.7).

use std::time::{Duration, SystemTime};

use http::HeaderMap;
use tower_webhook::retry::retry_after;

fn read(value: &str) -> Option<Duration> {
    let mut headers = HeaderMap::new();
    headers.insert("retry-after", value.parse().unwrap());
    retry_after(&headers)
}

#[test]
fn delta_seconds() {
    assert_eq!(read("0"), Some(Duration::ZERO));
    assert_eq!(read("120"), Some(Duration::from_secs(120)));
    assert_eq!(read(" 120\t"), Some(Duration::from_secs(120)));
    assert_eq!(read("99999999999999999999999"), Some(Duration::MAX));
    for bad in ["", "-1", "+5", "1.5", "1 20", "120s"] {
        assert_eq!(read(bad), None, "{bad:?}");
    }
}

#[test]
fn past_dates_in_each_format_are_no_wait() {
    for past in [
        "Sun, 06 Nov 1994 08:49:37 GMT",  // IMF-fixdate
        "Sunday, 06-Nov-94 08:49:37 GMT", // obsolete RFC 850 format
        "Sun Nov  6 08:49:37 1994",       // ANSI C's asctime() format
        "Thu, 01 Jan 1970 00:00:00 GMT",
        // Before the Unix epoch: still a valid HTTP date, and still in the past.
        "Sun, 06 Nov 1960 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1960",
        "Mon, 01 Jan 0001 00:00:00 GMT",
    ] {
        assert_eq!(read(past), Some(Duration::ZERO), "{past:?}");
    }
}

#[test]
fn future_dates_in_each_format_are_the_time_left() {
    let at = SystemTime::now() + Duration::from_secs(3600);
    let imf = httpdate::fmt_http_date(at);
    let wait = read(&imf).unwrap();
    assert!(wait > Duration::from_secs(3590) && wait <= Duration::from_secs(3600));
    // The same instant in asctime() format: `Www Mmm dd hh:mm:ss yyyy` (day padded with a space).
    let (wday, rest) = imf.split_once(", ").unwrap();
    let parts: Vec<&str> = rest.split(' ').collect();
    let day: u8 = parts[0].parse().unwrap();
    let asctime = format!("{wday} {} {day:>2} {} {}", parts[1], parts[3], parts[2]);
    let wait = read(&asctime).unwrap();
    assert!(wait > Duration::from_secs(3590), "{asctime:?}");
}

#[test]
fn malformed_dates_are_unreadable() {
    for bad in [
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "sun, 06 Nov 1994 08:49:37 GMT",
        "Sun, 32 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1960 24:00:00 GMT",
        "Sun, 06 Foo 1960 08:49:37 GMT",
        "Sun, 06 Nov 196 08:49:37 GMT",
        "Sun Nov 32 08:49:37 1960",
        "Mon, 06 Nov 1960 08:49:37 GMT", // 6 November 1960 was a Sunday
        "Thu, 29 Feb 1900 00:00:00 GMT", // 1900 was not a leap year
        "2015-10-21T07:28:00Z",
    ] {
        assert_eq!(read(bad), None, "{bad:?}");
    }
}

#[test]
fn the_first_of_several_fields_counts() {
    let mut headers = HeaderMap::new();
    headers.append("retry-after", "120".parse().unwrap());
    headers.append("retry-after", "5".parse().unwrap());
    assert_eq!(retry_after(&headers), Some(Duration::from_secs(120)));
}
