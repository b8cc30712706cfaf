//! The `reqwest-0-12` integration: a reqwest 0.12 client behind `RetryPolicy` and
//! `CircuitBreakerLayer` against an axum server on 127.0.0.1, as `retry.rs` and
//! `circuit_breaker_e2e.rs` do for reqwest 0.13.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use reqwest_0_12 as reqwest;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_webhook::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerLayer, CircuitOpen, CircuitState,
};
use tower_webhook::retry::RetryPolicy;

/// A server whose `/flaky` answers 503 (with `Retry-After: 0`) to its first `failures` calls,
/// then 200, whose `/gateway` answers 502, and whose `/loop` redirects to itself; and the count
/// of calls to `/flaky` and `/gateway`, and to `/loop`.
async fn server(failures: usize) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let flaky = Arc::new(AtomicUsize::new(0));
    let looped = Arc::new(AtomicUsize::new(0));
    let (f, l) = (flaky.clone(), looped.clone());
    let app = axum::Router::new()
        .route(
            "/flaky",
            axum::routing::any(move || {
                let n = f.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < failures {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            [("retry-after", "0")],
                            "down",
                        )
                    } else {
                        (StatusCode::OK, [("retry-after", "0")], "done")
                    }
                }
            }),
        )
        .route(
            "/gateway",
            axum::routing::any({
                let f = flaky.clone();
                move || {
                    f.fetch_add(1, Ordering::SeqCst);
                    async { (StatusCode::BAD_GATEWAY, "upstream failed") }
                }
            }),
        )
        .route(
            "/loop",
            axum::routing::get(move || {
                l.fetch_add(1, Ordering::SeqCst);
                async { axum::response::Redirect::temporary("/loop") }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), flaky, looped)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn retry(max_retries: u32) -> tower::retry::RetryLayer<RetryPolicy> {
    RetryPolicy::new()
        .max_retries(max_retries)
        .backoff(Duration::from_millis(1), Duration::from_millis(5))
        .into_layer()
}

#[tokio::test]
async fn a_reqwest_0_12_get_answered_503_is_sent_again_until_it_passes() {
    let (base, flaky, _) = server(2).await;
    let svc = ServiceBuilder::new().layer(retry(3)).service(client());
    let req = reqwest::Request::new(
        reqwest::Method::GET,
        format!("{base}/flaky").parse().unwrap(),
    );
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "done");
    assert_eq!(flaky.load(Ordering::SeqCst), 3, "two 503s, then the answer");
}

#[tokio::test]
async fn a_reqwest_0_12_post_is_sent_again_only_when_it_was_not_acted_on() {
    // A 502: the upstream may have acted, so a POST is not sent twice.
    let (base, flaky, _) = server(5).await;
    let svc = ServiceBuilder::new().layer(retry(3)).service(client());
    let post = |path: &str| {
        let mut req = reqwest::Request::new(
            reqwest::Method::POST,
            format!("{base}{path}").parse().unwrap(),
        );
        *req.body_mut() = Some("{}".into());
        req
    };
    let res = svc.clone().oneshot(post("/gateway")).await.unwrap();
    assert_eq!(res.status(), 502);
    assert_eq!(flaky.load(Ordering::SeqCst), 1);

    // A 503 with `Retry-After` is a refusal (read from the 0.12 response's headers): the POST
    // was not acted on, so it is sent again, up to the maximum.
    let res = svc.clone().oneshot(post("/flaky")).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(flaky.load(Ordering::SeqCst), 1 + 4);

    // A closed port: nothing was sent, so the POST is tried again, up to the maximum.
    let port = crate::unopened::closed_port();
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    let svc = ServiceBuilder::new()
        .layer(retry(2))
        .map_request(move |req: reqwest::Request| {
            counted.fetch_add(1, Ordering::SeqCst);
            req
        })
        .service(client());
    let mut req = reqwest::Request::new(
        reqwest::Method::POST,
        format!("http://127.0.0.1:{port}/comments").parse().unwrap(),
    );
    *req.body_mut() = Some("{}".into());
    let err = svc.oneshot(req).await.unwrap_err();
    assert!(err.is_connect(), "{err}");
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_reqwest_0_12_redirect_loop_is_not_sent_again() {
    let (base, _, looped) = server(0).await;
    let svc = ServiceBuilder::new().layer(retry(3)).service(client());
    let req = reqwest::Request::new(
        reqwest::Method::GET,
        format!("{base}/loop").parse().unwrap(),
    );
    let err = svc.oneshot(req).await.unwrap_err();
    assert!(err.is_redirect(), "{err}");
    assert_eq!(
        looped.load(Ordering::SeqCst),
        11,
        "one request and ten redirects"
    );
}

#[tokio::test]
async fn a_reqwest_0_12_client_behind_the_breaker_opens_on_5xx() {
    let (base, flaky, _) = server(usize::MAX).await;
    let config = CircuitBreakerConfig::default()
        .name("reqwest-0-12")
        .consecutive_failures(2);
    let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service(client());
    let get = || {
        reqwest::Request::new(
            reqwest::Method::GET,
            format!("{base}/flaky").parse().unwrap(),
        )
    };
    for _ in 0..2 {
        let res = svc.ready().await.unwrap().call(get()).await.unwrap();
        assert_eq!(res.status(), 503);
    }
    assert_eq!(handle.state(), CircuitState::Open);
    let err = svc.ready().await.unwrap().call(get()).await.unwrap_err();
    assert!(CircuitOpen::is_in(&*err), "{err}");
    assert_eq!(
        flaky.load(Ordering::SeqCst),
        2,
        "an open breaker called the server"
    );
}
