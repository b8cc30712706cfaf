//! Circuit breaker, review 12.

// Every test logs through its own subscriber, also those that do not read the logs (see
// `err_review3.rs` for why).
#[path = "common/hyper_one.rs"]
mod hyper_one;
#[path = "common/logs.rs"]
mod logs;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_one::{Http, http2_sender, serve_one};
use logs::Logs;
use tower::ServiceBuilder;
use tower_webhook::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerHandle, CircuitBreakerLayer, CircuitState,
};

/// Waits (at most 10 s) until `done` holds for the breaker's snapshot.
async fn until(handle: &CircuitBreakerHandle, done: impl Fn(&CircuitBreakerHandle) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done(handle) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A gRPC answer with no `grpc-status` in its headers and an empty body (no trailers either)
/// is `Unknown` to a gRPC client: a failure. Served by hyper, whose server never polls a body
/// that says it has ended, it was recorded as nothing at all (the body was dropped unread, as
/// a cancelled call), so an upstream (or route) answering only that never opened the breaker.
#[tokio::test]
async fn an_empty_grpc_answer_without_a_status_served_by_hyper_is_a_failure() {
    let (_logs, _guard) = Logs::capture();
    let (layer, handle) =
        CircuitBreakerLayer::pair(CircuitBreakerConfig::default().consecutive_failures(1)).unwrap();
    let app =
        ServiceBuilder::new()
            .layer(layer)
            .service_fn(|_: Request<hyper::body::Incoming>| async {
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("content-type", "application/grpc")
                        .body(Full::<Bytes>::default())
                        .unwrap(),
                )
            });
    let addr = serve_one(Http::Two, app).await;
    let mut sender = http2_sender(addr).await;
    let req = Request::post(format!("http://{addr}/test.Echo/Say"))
        .header("content-type", "application/grpc")
        .body(Full::default())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let received = res.into_body().collect().await.unwrap();
    assert!(received.trailers().is_none());

    until(&handle, |h| h.state() == CircuitState::Open).await;
    assert_eq!(handle.state(), CircuitState::Open);
}
