//! The retry policy: errors that stand for an upstream's answer (reqwest's `error_for_status`) are
//! read by their status, and the backoff doubles up to its cap.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use tower::{ServiceBuilder, ServiceExt};
use tower_webhook::retry::RetryPolicy;

/// A server whose `/missing` answers 404, `/down` 503, and `/limited` 429 to its first call and
/// 201 after; and the count of the calls it answered.
async fn server() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let (missing, down, limited) = (hits.clone(), hits.clone(), hits.clone());
    let app = axum::Router::new()
        .route(
            "/missing",
            axum::routing::any(move || {
                missing.fetch_add(1, Ordering::SeqCst);
                async { StatusCode::NOT_FOUND }
            }),
        )
        .route(
            "/down",
            axum::routing::any(move || {
                down.fetch_add(1, Ordering::SeqCst);
                async { StatusCode::SERVICE_UNAVAILABLE }
            }),
        )
        .route(
            "/limited",
            axum::routing::any(move || {
                let n = limited.fetch_add(1, Ordering::SeqCst);
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

fn policy() -> RetryPolicy {
    RetryPolicy::new()
        .max_retries(3)
        .backoff(Duration::from_millis(1), Duration::from_millis(5))
}

/// The same checks for each reqwest version: a client whose answers go through
/// `error_for_status`, under the retry policy.
macro_rules! status_errors_are_read_by_their_status {
    ($name:ident, $reqwest:ident) => {
        /// A reqwest error made from an answer (`Response::error_for_status`) is that answer:
        /// a 404 is a verdict, not retried even for a `GET` (it was retried up to
        /// `max_retries` times, as if the upstream had failed); a 429 is a refusal, retried
        /// even for a `POST` (it was never retried); a 503 is retried for a `GET` and not for a
        /// `POST`, as the response would be.
        #[tokio::test]
        async fn $name() {
            use $reqwest as reqwest;
            crate::client::install_tls();
            let (base, hits) = server().await;
            let client = reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            let svc = ServiceBuilder::new()
                .layer(policy().into_layer())
                .and_then(|res: reqwest::Response| async move { res.error_for_status() })
                .service(client);
            let call = |method: reqwest::Method, path: &str| {
                let mut req =
                    reqwest::Request::new(method, format!("{base}{path}").parse().unwrap());
                *req.body_mut() = Some("{}".into());
                let svc = svc.clone();
                let hits = hits.clone();
                async move {
                    hits.store(0, Ordering::SeqCst);
                    let result = svc.oneshot(req).await;
                    (
                        result.map(|res| res.status()).map_err(|err| err.status()),
                        hits.load(Ordering::SeqCst),
                    )
                }
            };

            let missing = call(reqwest::Method::GET, "/missing").await;
            assert_eq!(missing, (Err(Some(StatusCode::NOT_FOUND)), 1), "GET 404");

            let limited = call(reqwest::Method::POST, "/limited").await;
            assert_eq!(limited, (Ok(StatusCode::CREATED), 2), "POST 429");

            let down = call(reqwest::Method::GET, "/down").await;
            assert_eq!(
                down,
                (Err(Some(StatusCode::SERVICE_UNAVAILABLE)), 4),
                "GET 503"
            );
            let down = call(reqwest::Method::POST, "/down").await;
            assert_eq!(
                down,
                (Err(Some(StatusCode::SERVICE_UNAVAILABLE)), 1),
                "POST 503"
            );
        }
    };
}

status_errors_are_read_by_their_status!(a_reqwest_status_error_is_read_by_its_status, reqwest);
status_errors_are_read_by_their_status!(
    a_reqwest_0_12_status_error_is_read_by_its_status,
    reqwest_0_12
);

/// The backoff keeps doubling past retry 31: `base * 2^attempt` until it reaches the cap. The
/// factor stopped at `2^31`, so a small base never reached a cap above `base * 2^31` (with 1 µs
/// doubling up to an hour, every retry from the 32nd waited at most 36 minutes).
#[test]
fn the_backoff_doubles_up_to_the_cap_whatever_the_attempt() {
    let hour = Duration::from_secs(3600);
    let policy = RetryPolicy::new().backoff(Duration::from_micros(1), hour);
    assert_eq!(policy.max_delay(31), Duration::from_micros(1 << 31));
    assert_eq!(policy.max_delay(32), hour);
    assert_eq!(policy.max_delay(u32::MAX), hour);

    let policy = RetryPolicy::new().backoff(Duration::from_nanos(1), Duration::MAX);
    assert_eq!(policy.max_delay(40), Duration::from_nanos(1 << 40));
    assert_eq!(policy.max_delay(63), Duration::from_nanos(1 << 63));
    assert_eq!(policy.max_delay(127), Duration::MAX);
    assert_eq!(policy.max_delay(u32::MAX), Duration::MAX);

    let policy = RetryPolicy::new().backoff(Duration::ZERO, Duration::MAX);
    assert_eq!(policy.max_delay(u32::MAX), Duration::ZERO);
    let policy = RetryPolicy::new().backoff(Duration::MAX, Duration::from_secs(1));
    assert_eq!(policy.max_delay(0), Duration::from_secs(1));
    assert_eq!(policy.max_delay(200), Duration::from_secs(1));
}
