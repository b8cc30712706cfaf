//! The retry policy and a spent rate-limit quota: `X-RateLimit-Remaining: 0` with
//! `X-RateLimit-Reset` (GitHub's primary rate limit) or `RateLimit-*` (GitLab's), read on the
//! server's clock, waited out up to `max_retry_after` instead of retried within the backoff.

use crate::axum_serve;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::Full;
use tokio::time::Instant;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_webhook::retry::RetryPolicy;

/// The first answer of a rate-limited upstream: its status, its `Date` (`skew` off ours, ahead
/// when `ahead`), and the headers `limit` makes of that date (UTC epoch seconds).
#[derive(Clone, Copy)]
struct Limited {
    status: u16,
    skew: Duration,
    ahead: bool,
    limit: fn(u64) -> Vec<(&'static str, String)>,
}

/// A server on 127.0.0.1 that answers its first request as `first` says and the others `201`;
/// returns its URL and when each request reached it.
async fn server(first: Limited) -> (String, Arc<Mutex<Vec<Instant>>>) {
    let hits = Arc::new(Mutex::new(Vec::new()));
    let seen = hits.clone();
    let app = tower::service_fn(move |_: axum::extract::Request| {
        let n = {
            let mut hits = seen.lock().unwrap();
            hits.push(Instant::now());
            hits.len()
        };
        async move {
            let mut res = Response::builder();
            if n == 1 {
                let now = if first.ahead {
                    SystemTime::now() + first.skew
                } else {
                    SystemTime::now() - first.skew
                };
                let date = httpdate::fmt_http_date(now);
                let epoch = httpdate::parse_http_date(&date)
                    .unwrap()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                res = res.status(first.status).header("date", date);
                for (name, value) in (first.limit)(epoch) {
                    res = res.header(name, value);
                }
            } else {
                res = res.status(StatusCode::CREATED);
            }
            Ok::<_, std::convert::Infallible>(res.body(axum::body::Body::empty()).unwrap())
        }
    });
    let (addr, _server) = axum_serve::serve(app).await;
    (
        format!("http://{addr}/repos/octo/repo/issues/1/comments"),
        hits,
    )
}

/// A policy whose backoff is a few milliseconds, so that a wait of a second or more can only be
/// the upstream's.
fn policy() -> RetryPolicy {
    RetryPolicy::new()
        .max_retries(3)
        .backoff(Duration::from_millis(1), Duration::from_millis(5))
        .max_retry_after(Duration::from_secs(10))
        .without_budget()
}

/// Posts a comment through the policy and a reqwest client; returns the final status and the
/// gaps between the requests the server saw.
async fn post(first: Limited) -> (StatusCode, Vec<Duration>) {
    let (url, hits) = server(first).await;
    let client = crate::client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(policy().into_layer())
        .service(client);
    let mut req = reqwest::Request::new(reqwest::Method::POST, url.parse().unwrap());
    *req.body_mut() = Some(r#"{"body":"LGTM"}"#.into());
    let status = svc.oneshot(req).await.unwrap().status();
    let hits = hits.lock().unwrap();
    (status, hits.windows(2).map(|w| w[1] - w[0]).collect())
}

const HOUR: Duration = Duration::from_secs(3600);

/// GitHub's primary rate limit: a 429 with `X-RateLimit-Remaining: 0` and the reset 2 s after
/// the response's `Date`, from a server whose clock is an hour off ours (`ahead` or behind).
/// Returns the final status and the gaps between the requests.
async fn post_past_a_github_limit(ahead: bool) -> (StatusCode, Vec<Duration>) {
    post(Limited {
        status: 429,
        skew: HOUR,
        ahead,
        limit: |date| {
            vec![
                ("x-ratelimit-limit", "5000".into()),
                ("x-ratelimit-remaining", "0".into()),
                ("x-ratelimit-reset", (date + 2).to_string()),
                ("x-ratelimit-resource", "core".into()),
            ]
        },
    })
    .await
}

/// The comment is posted once the quota is renewed, 2 s on. It was sent again within 5 ms,
/// three times, meeting the same limit each time (and on our clock the reset was an hour past).
#[tokio::test]
async fn a_spent_github_quota_is_waited_out_until_its_reset() {
    let (status, gaps) = post_past_a_github_limit(false).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert!(gaps[0] >= Duration::from_millis(1900), "{gaps:?}");
}

/// On a server an hour ahead of us, the reset is still 2 s on, not an hour (longer than
/// `max_retry_after`, which would end the retries).
#[tokio::test]
async fn a_github_reset_is_read_on_the_servers_clock() {
    let (status, gaps) = post_past_a_github_limit(true).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert!(gaps[0] >= Duration::from_millis(1900), "{gaps:?}");
}

/// GitLab's 429 carries `Retry-After` as well as `RateLimit-Reset`: `Retry-After` is the wait.
#[tokio::test]
async fn retry_after_comes_before_a_gitlab_reset() {
    let (status, gaps) = post(Limited {
        status: 429,
        skew: Duration::ZERO,
        ahead: false,
        limit: |date| {
            vec![
                ("retry-after", "1".into()),
                ("ratelimit-remaining", "0".into()),
                ("ratelimit-reset", (date + 3600).to_string()),
            ]
        },
    })
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert!(gaps[0] >= Duration::from_millis(900), "{gaps:?}");
}

/// A GitLab quota renewed in an hour, longer than `max_retry_after`, without `Retry-After`:
/// the 429 is returned at once, the request sent once (it was sent four times within
/// milliseconds).
#[tokio::test]
async fn a_gitlab_quota_renewed_in_an_hour_is_not_retried() {
    let (status, gaps) = post(Limited {
        status: 429,
        skew: Duration::ZERO,
        ahead: false,
        limit: |date| {
            vec![
                ("ratelimit-remaining", "0".into()),
                ("ratelimit-reset", (date + 3600).to_string()),
            ]
        },
    })
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(gaps.is_empty(), "{gaps:?}");
}

type Body = Full<Bytes>;

/// Sends one `method` request to an upstream whose first answer is `status` with `headers` and
/// the others 200, through `policy()` with one retry; returns the attempts and the gap between
/// the first two.
async fn attempts(method: &str, status: u16, headers: HeaderMap) -> (usize, Option<Duration>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let hits = seen.clone();
    let svc = ServiceBuilder::new()
        .layer(
            policy()
                .max_retries(1)
                .max_retry_after(Duration::from_secs(60))
                .into_layer(),
        )
        .service_fn(move |_: Request<Body>| {
            let n = {
                let mut hits = hits.lock().unwrap();
                hits.push(Instant::now());
                hits.len()
            };
            let mut res = http::Response::new(Body::default());
            if n == 1 {
                *res.status_mut() = StatusCode::from_u16(status).unwrap();
                *res.headers_mut() = headers.clone();
            }
            async move { Ok::<_, BoxError>(res) }
        });
    let req = Request::builder()
        .method(method)
        .uri("/repos/octo/repo")
        .body(Body::default())
        .unwrap();
    svc.oneshot(req).await.unwrap();
    let seen = seen.lock().unwrap();
    (seen.len(), seen.get(1).map(|at| *at - seen[0]))
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    pairs
        .iter()
        .map(|(name, value)| (name.parse().unwrap(), value.parse().unwrap()))
        .collect()
}

const DATE: &str = "Tue, 01 Dec 2026 00:00:00 GMT";
/// `DATE` in UTC epoch seconds.
const EPOCH: u64 = 1_796_083_200;

/// How the headers of a spent quota are read, one case at a time.
#[tokio::test(start_paused = true)]
async fn a_spent_quota_is_read_from_its_headers_and_nothing_else() {
    assert_eq!(
        httpdate::parse_http_date(DATE).unwrap(),
        SystemTime::UNIX_EPOCH + Duration::from_secs(EPOCH)
    );
    let reset = |secs: u64| (EPOCH + secs).to_string();
    let (in_5, in_90) = (reset(5), reset(90));
    let backoff = Duration::from_millis(1);
    // The exact wait of a reset read against `Date`, for `GET` and `POST` alike.
    for method in ["GET", "POST"] {
        for remaining in ["0", "00", " 0 "] {
            let h = [
                ("date", DATE),
                ("x-ratelimit-remaining", remaining),
                ("x-ratelimit-reset", &in_5),
            ];
            let seen = attempts(method, 429, headers(&h)).await;
            assert_eq!(
                seen,
                (2, Some(Duration::from_secs(5))),
                "{method} {remaining:?}"
            );
        }
    }
    // `Retry-After: 0` names no wait: the reset does.
    let h = [
        ("date", DATE),
        ("retry-after", "0"),
        ("ratelimit-remaining", "0"),
        ("ratelimit-reset", &in_5),
    ];
    assert_eq!(
        attempts("GET", 429, headers(&h)).await,
        (2, Some(Duration::from_secs(5)))
    );
    // Longer than `max_retry_after` (60 s), or past any wait: given up at once.
    for far in [in_90.as_str(), "99999999999999999999999"] {
        let h = [
            ("date", DATE),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", far),
        ];
        assert_eq!(attempts("GET", 429, headers(&h)).await, (1, None), "{far}");
    }
    // Without `Date`, read against our clock (not paused: the wall clock).
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    let local = (now.as_secs() + 30).to_string();
    let h = [
        ("x-ratelimit-remaining", "0"),
        ("x-ratelimit-reset", &local),
    ];
    let (n, gap) = attempts("GET", 429, headers(&h)).await;
    assert_eq!(n, 2);
    let gap = gap.unwrap();
    assert!(
        gap > Duration::from_secs(20) && gap <= Duration::from_secs(30),
        "{gap:?}"
    );
    // Nothing says the quota is spent, or how long to wait: the backoff, as before.
    let quick: [&[(&str, &str)]; 6] = [
        &[
            ("date", DATE),
            ("x-ratelimit-remaining", "1"),
            ("x-ratelimit-reset", &in_90),
        ],
        &[
            ("date", DATE),
            ("x-ratelimit-remaining", "-0"),
            ("x-ratelimit-reset", &in_90),
        ],
        &[("date", DATE), ("x-ratelimit-reset", &in_90)],
        &[("date", DATE), ("x-ratelimit-remaining", "0")],
        // Delta-seconds, as drafts of the IETF fields write the reset: long past as a time.
        &[
            ("date", DATE),
            ("ratelimit-remaining", "0"),
            ("ratelimit-reset", "30"),
        ],
        &[
            ("date", DATE),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "soon"),
        ],
    ];
    for h in quick {
        let (n, gap) = attempts("GET", 429, headers(h)).await;
        assert_eq!(n, 2, "{h:?}");
        assert!(gap.unwrap() <= backoff, "{h:?}: {gap:?}");
    }
    // A quota is not a refusal: a `POST` answered 503 is not sent again, whatever its reset.
    let h = [
        ("date", DATE),
        ("x-ratelimit-remaining", "0"),
        ("x-ratelimit-reset", &in_5),
    ];
    assert_eq!(attempts("POST", 503, headers(&h)).await, (1, None));
    // Nor is a status the policy does not retry: a 403 rate limit is left to the caller.
    assert_eq!(attempts("GET", 403, headers(&h)).await, (1, None));
}
