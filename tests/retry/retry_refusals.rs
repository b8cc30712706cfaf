//! Which failures of a `POST` the retry policy reads as a refusal, one the upstream did not act
//! on: a 408 is (the server gave up before it had the whole request), and a request whose
//! `Idempotency-Key` is empty is not made safe to send twice by it.

use crate::axum_serve;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::response::Response;
use http::StatusCode;
use tower::{ServiceBuilder, ServiceExt};
use tower_webhook::retry::RetryPolicy;

/// A server on 127.0.0.1 that answers its first request `first` and the others 201; returns the
/// URL of a comments endpoint on it and the count of requests it saw.
async fn server(first: StatusCode) -> (reqwest::Url, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    let app = tower::service_fn(move |_: axum::extract::Request| {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        let status = if n == 0 { first } else { StatusCode::CREATED };
        async move {
            Ok::<_, std::convert::Infallible>(
                Response::builder()
                    .status(status)
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
        }
    });
    let (addr, _server) = axum_serve::serve(app).await;
    let url = format!("http://{addr}/repos/octo/repo/issues/1/comments");
    (url.parse().unwrap(), hits)
}

/// A policy whose backoff is a few milliseconds.
fn policy() -> RetryPolicy {
    RetryPolicy::new()
        .max_retries(2)
        .backoff(Duration::from_millis(1), Duration::from_millis(5))
        .without_budget()
}

fn client() -> reqwest::Client {
    crate::client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A comment `POST` to `url`, with an `Idempotency-Key` of `key` when there is one.
fn comment(url: reqwest::Url, key: Option<&'static str>) -> reqwest::Request {
    let mut req = reqwest::Request::new(reqwest::Method::POST, url);
    *req.body_mut() = Some(r#"{"body":"LGTM"}"#.into());
    if let Some(key) = key {
        req.headers_mut()
            .insert("idempotency-key", http::HeaderValue::from_static(key));
    }
    req
}

/// Posts one comment through the policy to a server answering its first request `first`;
/// returns the final status and how many requests the server saw.
async fn post(first: StatusCode, key: Option<&'static str>) -> (StatusCode, usize) {
    let (url, hits) = server(first).await;
    let res = ServiceBuilder::new()
        .layer(policy().into_layer())
        .service(client())
        .oneshot(comment(url, key))
        .await
        .unwrap();
    (res.status(), hits.load(Ordering::SeqCst))
}

/// A 408 says the server did not get the whole request in time, so it did not act on it, and
/// RFC 9110 (section 15.5.9) lets the client send it again: the comment is posted on the retry.
/// It was not sent again, as after a 502 or 504, and the comment was lost.
#[tokio::test]
async fn a_post_answered_408_is_sent_again() {
    assert_eq!(
        post(StatusCode::REQUEST_TIMEOUT, None).await,
        (StatusCode::CREATED, 2)
    );
    // A 502 may come after the upstream acted: not sent again.
    assert_eq!(
        post(StatusCode::BAD_GATEWAY, None).await,
        (StatusCode::BAD_GATEWAY, 1)
    );
}

/// The same 408 as a reqwest error (`error_for_status`) is read as the answer would be.
#[tokio::test]
async fn a_408_made_an_error_is_a_refusal_too() {
    let (url, hits) = server(StatusCode::REQUEST_TIMEOUT).await;
    let res = ServiceBuilder::new()
        .layer(policy().into_layer())
        .and_then(|res: reqwest::Response| async move { res.error_for_status() })
        .service(client())
        .oneshot(comment(url, None))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

/// An empty `Idempotency-Key` (or one of blanks) names no key an upstream could deduplicate
/// by, so it does not make a `POST` safe to send twice after a 502. It did: the comment could
/// be posted twice. A real key still does.
#[tokio::test]
async fn an_empty_idempotency_key_does_not_make_a_post_repeatable() {
    for blank in ["", "  "] {
        assert_eq!(
            post(StatusCode::BAD_GATEWAY, Some(blank)).await,
            (StatusCode::BAD_GATEWAY, 1),
            "Idempotency-Key: {blank:?}"
        );
    }
    assert_eq!(
        post(StatusCode::BAD_GATEWAY, Some("comment-42")).await,
        (StatusCode::CREATED, 2)
    );
}

/// The same holds for an `http::Request`, as `RetryRequest::is_idempotent` tells it.
#[test]
fn is_idempotent_ignores_an_empty_key() {
    use tower_webhook::retry::RetryRequest;
    let with_key = |key: &'static str| {
        http::Request::post("/comments")
            .header("idempotency-key", key)
            .body(String::new())
            .unwrap()
    };
    assert!(!with_key("").is_idempotent());
    assert!(!with_key(" \t").is_idempotent());
    assert!(with_key("comment-42").is_idempotent());
}
