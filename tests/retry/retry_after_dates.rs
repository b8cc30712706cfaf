//! The retry policy and the shared `Retry-After` reading: an HTTP date is read on the server's
//! clock, against the response's own `Date`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::http::StatusCode;
use http::HeaderMap;
use tower::{ServiceBuilder, ServiceExt};
use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitState};
use tower_webhook::retry::{RetryPolicy, retry_after};

/// A server on 127.0.0.1 whose clock is `skew` off ours (ahead when `ahead`): its first answer
/// is a 503 with its `Date` and `Retry-After` = that date + `wait`, the others 200. Returns its
/// URL and when each request reached it.
async fn skewed_server(
    skew: Duration,
    ahead: bool,
    wait: u64,
) -> (String, Arc<Mutex<Vec<Instant>>>) {
    let hits = Arc::new(Mutex::new(Vec::new()));
    let seen = hits.clone();
    let app = axum::Router::new().route(
        "/",
        axum::routing::any(move || {
            let first = {
                let mut hits = seen.lock().unwrap();
                hits.push(Instant::now());
                hits.len() == 1
            };
            async move {
                if !first {
                    return axum::response::Response::new(axum::body::Body::empty());
                }
                let now = if ahead {
                    SystemTime::now() + skew
                } else {
                    SystemTime::now() - skew
                };
                // Both on the server's clock, in whole seconds as HTTP dates are.
                let date = httpdate::fmt_http_date(now);
                let at = httpdate::parse_http_date(&date).unwrap() + Duration::from_secs(wait);
                axum::response::Response::builder()
                    .status(StatusCode::SERVICE_UNAVAILABLE)
                    .header("date", date)
                    .header("retry-after", httpdate::fmt_http_date(at))
                    .body(axum::body::Body::empty())
                    .unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/"), hits)
}

const HOUR: Duration = Duration::from_secs(3600);

/// Sends one `GET` through the retry policy to a server whose clock is an hour off; returns
/// the final status and the gaps between the requests the server saw.
async fn get_through_policy(ahead: bool) -> (StatusCode, Vec<Duration>) {
    let (url, hits) = skewed_server(HOUR, ahead, 2).await;
    let client = crate::client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let policy = RetryPolicy::new()
        .max_retries(1)
        .backoff(Duration::from_millis(1), Duration::from_millis(5))
        .max_retry_after(Duration::from_secs(10));
    let svc = ServiceBuilder::new()
        .layer(policy.into_layer())
        .service(client);
    let req = reqwest::Request::new(reqwest::Method::GET, url.parse().unwrap());
    let status = svc.oneshot(req).await.unwrap().status();
    let hits = hits.lock().unwrap();
    (status, hits.windows(2).map(|w| w[1] - w[0]).collect())
}

/// A server whose clock is an hour behind ours sends `Retry-After` two seconds past its `Date`:
/// the policy waits those two seconds (it read the date as an hour past and retried at once).
#[tokio::test]
async fn retry_after_date_behind_our_clock_is_read_against_the_servers_date() {
    let (status, gaps) = get_through_policy(false).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(gaps.len(), 1, "one retry");
    assert!(gaps[0] >= Duration::from_secs(2), "waited {:?}", gaps[0]);
}

/// A server whose clock is an hour ahead of ours sends `Retry-After` two seconds past its
/// `Date`: the policy waits those two seconds (it read an hour, longer than `max_retry_after`,
/// and gave up).
#[tokio::test]
async fn retry_after_date_ahead_of_our_clock_is_read_against_the_servers_date() {
    let (status, gaps) = get_through_policy(true).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "retried, within max_retry_after (10 s)"
    );
    assert_eq!(gaps.len(), 1, "one retry");
    assert!(gaps[0] >= Duration::from_secs(2), "waited {:?}", gaps[0]);
}

/// The breaker's open duration honours the upstream's `Retry-After` on the server's clock too:
/// two minutes past its `Date`, whether its clock is an hour behind ours (read as no wait: the
/// default 30 s) or an hour ahead (read as an hour: the 10-minute cap).
#[tokio::test]
async fn breaker_open_duration_reads_retry_after_against_the_servers_date() {
    for ahead in [false, true] {
        let (url, _) = skewed_server(HOUR, ahead, 120).await;
        let config = CircuitBreakerConfig::default()
            .consecutive_failures(1)
            .honor_retry_after(Duration::from_secs(600));
        let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
        let client = crate::client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let svc = ServiceBuilder::new().layer(layer).service(client);
        let req = reqwest::Request::new(reqwest::Method::GET, url.parse().unwrap());
        let res = svc.oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(handle.state(), CircuitState::Open);
        let left = handle.snapshot().retry_after_ms.unwrap();
        assert!(
            (60_000..=120_000).contains(&left),
            "server clock ahead: {ahead}; open for {left} ms"
        );
    }
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        let name = http::header::HeaderName::from_bytes(name.as_bytes()).unwrap();
        headers.append(name, value.parse().unwrap());
    }
    headers
}

/// `retry_after` reads a date against the same headers' `Date`; without a usable one, against
/// our clock; delta-seconds are unchanged by a `Date`.
#[test]
fn retry_after_reads_a_date_against_the_headers_date() {
    let date = "Sun, 06 Nov 1994 08:49:37 GMT";
    let two_later = "Sun, 06 Nov 1994 08:49:39 GMT";
    assert_eq!(
        retry_after(&headers(&[("date", date), ("retry-after", two_later)])),
        Some(Duration::from_secs(2))
    );
    // Before the server's `Date`: no wait.
    assert_eq!(
        retry_after(&headers(&[("date", two_later), ("retry-after", date)])),
        Some(Duration::ZERO)
    );
    // The other two date formats, in either header.
    assert_eq!(
        retry_after(&headers(&[
            ("date", "Sunday, 06-Nov-94 08:49:37 GMT"),
            ("retry-after", "Sun Nov  6 08:49:39 1994"),
        ])),
        Some(Duration::from_secs(2))
    );
    // Delta-seconds ignore `Date`.
    assert_eq!(
        retry_after(&headers(&[("date", date), ("retry-after", "7")])),
        Some(Duration::from_secs(7))
    );
    // A date before 1970 is still no wait.
    assert_eq!(
        retry_after(&headers(&[
            ("date", date),
            ("retry-after", "Sun, 06 Nov 1960 08:49:37 GMT")
        ])),
        Some(Duration::ZERO)
    );
    // An unusable `Date`: our clock, by which 1994 is past and an hour from now is an hour.
    let soon = httpdate::fmt_http_date(SystemTime::now() + HOUR);
    for bad in ["yesterday", "", "Sun, 06 Nov 1994 08:49:37 UTC"] {
        assert_eq!(
            retry_after(&headers(&[("date", bad), ("retry-after", two_later)])),
            Some(Duration::ZERO),
            "{bad:?}"
        );
        let wait = retry_after(&headers(&[("date", bad), ("retry-after", &soon)])).unwrap();
        assert!(wait > HOUR - Duration::from_secs(60), "{bad:?}: {wait:?}");
    }
}

/// Several `Date` fields: the first counts, as for `Retry-After`.
#[test]
fn the_first_date_counts() {
    assert_eq!(
        retry_after(&headers(&[
            ("date", "Sun, 06 Nov 1994 08:49:30 GMT"),
            ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("retry-after", "Sun, 06 Nov 1994 08:49:40 GMT"),
        ])),
        Some(Duration::from_secs(10))
    );
}

/// A server on 127.0.0.1 whose `/limited` answers 429 to its first call and 201 after; and the
/// count of calls.
async fn limited_server() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    let app = axum::Router::new().route(
        "/limited",
        axum::routing::any(move || {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    StatusCode::TOO_MANY_REQUESTS
                } else {
                    StatusCode::CREATED
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), hits)
}

/// Both reqwest versions, the same checks: a `POST` to a URL with a fragment that the upstream
/// refused with 429 is sent again, as one to the same URL without it. reqwest never sends the
/// fragment, and the URL of its answer (or of the error `error_for_status` makes of it) has
/// none: the answer was read as one to another request, after a redirect, and not retried.
macro_rules! a_fragment_is_not_a_redirect {
    ($name:ident, $reqwest:ident) => {
        #[tokio::test]
        async fn $name() {
            use $reqwest as reqwest;
            crate::client::install_tls();
            for error_for_status in [false, true] {
                let (base, hits) = limited_server().await;
                let client = reqwest::Client::builder().no_proxy().build().unwrap();
                let svc = ServiceBuilder::new()
                    .layer(
                        RetryPolicy::new()
                            .backoff(Duration::from_millis(1), Duration::from_millis(5))
                            .into_layer(),
                    )
                    .and_then(move |res: reqwest::Response| async move {
                        if error_for_status {
                            res.error_for_status()
                        } else {
                            Ok(res)
                        }
                    })
                    .service(client);
                let url = format!("{base}/limited#new-comment");
                let mut req = reqwest::Request::new(reqwest::Method::POST, url.parse().unwrap());
                *req.body_mut() = Some("{}".into());
                let status = svc.oneshot(req).await.map(|res| res.status());
                assert_eq!(
                    status.map_err(|err| err.status()),
                    Ok(StatusCode::CREATED),
                    "error_for_status: {error_for_status}"
                );
                assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 2);
            }
        }
    };
}

a_fragment_is_not_a_redirect!(a_fragment_is_not_a_redirect_reqwest_0_13, reqwest);
a_fragment_is_not_a_redirect!(a_fragment_is_not_a_redirect_reqwest_0_12, reqwest_0_12);
