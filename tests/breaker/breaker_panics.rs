//! The circuit breaker and a call that panics: in the inner service's `call`, in its future, or
//! in a gRPC response body before its trailers. A panic is the call failing (as an exception is
//! for resilience4j), whether an outer `WebhookErrorLayer` answers it or the task dies with it.

// Every test logs through its own subscriber, also those that do not read the logs (see
// `tests/common/logs.rs`).
use crate::logs;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use logs::Logs;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_webhook::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerHandle, CircuitBreakerLayer, CircuitState,
};
use tower_webhook::error::WebhookErrorLayer;

/// A breaker that opens on the first failure, and its handle.
fn breaker() -> (CircuitBreakerLayer, CircuitBreakerHandle) {
    CircuitBreakerLayer::pair(
        CircuitBreakerConfig::default()
            .consecutive_failures(1)
            .open_duration(tower_webhook::circuit_breaker::OpenDuration::Fixed(
                Duration::from_secs(60),
            )),
    )
    .unwrap()
}

/// Where the inner service panics.
#[derive(Clone, Copy, Debug)]
enum Where {
    Call,
    Future,
}

/// A service that panics in `call` or in its future.
#[derive(Clone)]
struct Panicking(Where);

impl Service<Request<Full<Bytes>>> for Panicking {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<Full<Bytes>>) -> Self::Future {
        match self.0 {
            Where::Call => panic!("the handler's call panicked"),
            Where::Future => Box::pin(async { panic!("the handler's future panicked") }),
        }
    }
}

/// Behind `WebhookErrorLayer`, a handler that panics is answered 500, and the breaker records
/// the call as failed: it opens. It recorded nothing before (the panic dropped the call, as a
/// cancelled one), so a handler that panicked on every request never opened it.
#[tokio::test]
async fn a_handler_that_panics_behind_the_error_layer_is_a_failure() {
    let (logs, _guard) = Logs::capture();
    for place in [Where::Call, Where::Future] {
        let (layer, handle) = breaker();
        let svc = ServiceBuilder::new()
            .layer(WebhookErrorLayer::new())
            .layer(layer)
            .service(Panicking(place));
        let res = svc.oneshot(Request::new(Full::default())).await.unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR, "{place:?}");
        // One failure opens it (the window starts again empty once open).
        assert_eq!(handle.state(), CircuitState::Open, "{place:?}");
    }
    // The error layer still answers and logs the panic once per call.
    assert_eq!(logs.text().matches("handler panicked").count(), 2);
}

/// Without a layer that catches it, the panic ends the task that ran the call: the breaker
/// still records the failure while it unwinds.
#[tokio::test]
async fn a_call_whose_task_dies_of_a_panic_is_a_failure() {
    let (_logs, _guard) = Logs::capture();
    let (layer, handle) = breaker();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(Panicking(Where::Future));
    let task = tokio::spawn(svc.oneshot(Request::new(Full::default())));
    assert!(task.await.unwrap_err().is_panic());
    assert_eq!(handle.state(), CircuitState::Open);
}

/// A half-open probe that panics fails the probe, so the breaker opens again. It gave its
/// permit back before, as a cancelled probe does, and the breaker probed again at once.
#[tokio::test(start_paused = true)]
async fn a_probe_that_panics_opens_the_breaker_again() {
    let (_logs, _guard) = Logs::capture();
    let (layer, handle) = breaker();
    handle.transition_to_open().unwrap();
    handle.transition_to_half_open().unwrap();
    let generation = handle.snapshot().generation;
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .layer(layer)
        .service(Panicking(Where::Future));
    let res = svc.oneshot(Request::new(Full::default())).await.unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(handle.state(), CircuitState::Open);
    assert!(handle.snapshot().generation > generation);
}

/// A gRPC response body that panics after the head, before its trailers: the error layer ends
/// the call with `grpc-status: 13`, and the breaker, which waits for the trailers to classify
/// a gRPC answer, records a failure.
#[tokio::test]
async fn a_grpc_body_that_panics_before_its_trailers_is_a_failure() {
    struct PanicsAfterHead;

    impl http_body::Body for PanicsAfterHead {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            panic!("the gRPC stream panicked")
        }
    }

    let (_logs, _guard) = Logs::capture();
    let (layer, handle) = breaker();
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .layer(layer)
        .service_fn(|_req: Request<Full<Bytes>>| async {
            let mut res = Response::new(PanicsAfterHead);
            res.headers_mut()
                .insert("content-type", "application/grpc".parse().unwrap());
            Ok::<_, BoxError>(res)
        });
    // gRPC over HTTP/2, whose trailers end the call.
    let req = Request::builder()
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .body(Full::default())
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // Nothing is recorded until the body ends.
    assert_eq!(handle.snapshot().buffered_calls, 0);
    let collected = res.into_body().collect().await.unwrap();
    let trailers = collected.trailers().expect("the call ends with trailers");
    assert_eq!(trailers["grpc-status"], "13");
    assert_eq!(handle.state(), CircuitState::Open);
}

/// A call dropped before it ends (a cancelled request) still records nothing: only a panic
/// is a failure.
#[tokio::test]
async fn a_cancelled_call_still_records_nothing() {
    let (_logs, _guard) = Logs::capture();
    let (layer, handle) = breaker();
    let mut svc =
        ServiceBuilder::new()
            .layer(layer)
            .service_fn(|_req: Request<Full<Bytes>>| async {
                std::future::pending::<Result<Response<Full<Bytes>>, BoxError>>().await
            });
    let future = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(Full::default()));
    assert!(
        tokio::time::timeout(Duration::from_millis(10), future)
            .await
            .is_err()
    );
    let snapshot = handle.snapshot();
    assert_eq!(
        (snapshot.failed_calls, snapshot.buffered_calls),
        (0, 0),
        "{snapshot:?}"
    );
    assert_eq!(handle.state(), CircuitState::Closed);
}
