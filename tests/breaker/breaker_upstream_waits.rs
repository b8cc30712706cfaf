//! Circuit breaker: the waits an upstream asks for (a 429's or a problem's `Retry-After`), the
//! longest half-open wait, a caller that stops waiting for the breaker, and an empty gRPC answer
//! served by hyper.

// Every test logs through its own subscriber, also those that do not read the logs (see
// `tests/common/logs.rs`).
use crate::hyper_one;
use crate::logs;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_one::{Http, http2_sender, serve_one};
use logs::Logs;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_webhook::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerHandle, CircuitBreakerLayer, CircuitState,
    KeyedCircuitBreakerLayer,
};
use tower_webhook::error::WebhookErrorLayer;

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
    let (logs, _guard) = Logs::capture();
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
    assert!(
        logs.text().contains("circuit breaker opened"),
        "{}",
        logs.text()
    );
}

/// An answer of the upstream: its status, then headers.
fn answer(status: u16, headers: &[(&'static str, &'static str)]) -> Response<Full<Bytes>> {
    let mut res = Response::builder().status(status);
    for (name, value) in headers {
        res = res.header(*name, *value);
    }
    res.body(Full::default()).unwrap()
}

type Headers = &'static [(&'static str, &'static str)];

/// A `429` that is not held against the upstream (the default) still asks for a wait: it must
/// not end the wait a `503` asked for just before, as a success that asks for nothing does.
/// With the `http::Response` classifier it did (the reqwest one kept it), so failures that
/// opened the breaker right after opened it for its open duration, not for the wait the
/// upstream had asked for twice. The same for gRPC's `RESOURCE_EXHAUSTED` with a pushback.
#[tokio::test(start_paused = true)]
async fn a_too_many_requests_answer_keeps_the_wait_the_upstream_asked_for() {
    let (_logs, _guard) = Logs::capture();
    let config = CircuitBreakerConfig::default()
        .consecutive_failures(2)
        .honor_retry_after(Duration::from_secs(600));
    let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    let svc =
        ServiceBuilder::new().layer(layer).service_fn(
            |(status, headers): (u16, Headers)| async move {
                Ok::<_, BoxError>(answer(status, headers))
            },
        );
    let grpc = |code: &'static str| -> Headers {
        match code {
            "14" => &[
                ("content-type", "application/grpc"),
                ("grpc-status", "14"),
                ("grpc-retry-pushback-ms", "120000"),
            ],
            _ => &[
                ("content-type", "application/grpc"),
                ("grpc-status", "8"),
                ("grpc-retry-pushback-ms", "120000"),
            ],
        }
    };
    let http: [(u16, Headers); 2] = [
        (503, &[("retry-after", "120")]),
        (429, &[("retry-after", "120")]),
    ];
    for [refused, too_many] in [http, [(200, grpc("14")), (200, grpc("8"))]] {
        handle.reset();
        for call in [refused, too_many, (500, &[][..]), (500, &[][..])] {
            svc.clone().oneshot(call).await.unwrap();
        }
        let snapshot = handle.snapshot();
        assert_eq!(snapshot.state, CircuitState::Open);
        assert_eq!(snapshot.retry_after_ms, Some(120_000), "{too_many:?}");

        // A plain success still ends the wait.
        handle.reset();
        for call in [refused, (200, &[][..]), (500, &[][..]), (500, &[][..])] {
            svc.clone().oneshot(call).await.unwrap();
        }
        assert_eq!(handle.snapshot().retry_after_ms, Some(30_000));
    }
}

/// A maximum wait in HALF_OPEN past what the breaker can time (such as `Duration::MAX`, meant
/// as "no limit") was accepted, and every call refused while a probe ran was told to come back
/// in 34 years (`Retry-After: 1099511598`). It is refused now, like an open duration over a
/// year; a year is still accepted, and leaving it unset still means no limit.
#[tokio::test(start_paused = true)]
async fn a_maximum_half_open_wait_over_a_year_is_refused() {
    let (_logs, _guard) = Logs::capture();
    let year = Duration::from_secs(365 * 86_400);
    for wait in [Duration::MAX, year + Duration::from_millis(1)] {
        let config = CircuitBreakerConfig::default().max_half_open_wait(wait);
        let err = CircuitBreakerLayer::new(config.clone()).unwrap_err();
        assert_eq!(err.setting(), "max_half_open_wait", "{err}");
        let keyed = KeyedCircuitBreakerLayer::<u8, _>::new(config, 4, |_: &()| 0u8).unwrap_err();
        assert_eq!(keyed.setting(), "max_half_open_wait");
    }

    // A year is accepted: a refusal during a probe tells the time left of it.
    let config = CircuitBreakerConfig::default().max_half_open_wait(year);
    let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .layer(layer)
        .service_fn(|req: Request<u32>| async move {
            if *req.body() == 1 {
                std::future::pending::<()>().await;
            }
            Ok::<_, BoxError>(answer(200, &[]))
        });
    handle.transition_to_open().unwrap();
    tokio::time::advance(Duration::from_secs(30)).await;
    let probe = tokio::spawn(svc.clone().oneshot(Request::new(1)));
    tokio::task::yield_now().await;
    assert_eq!(handle.snapshot().half_open_permits_taken, 1);
    let res = svc.clone().oneshot(Request::new(2)).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], year.as_secs().to_string());
    probe.abort();
}

/// Counts the clones of a waker still alive.
struct CountedWake;

impl std::task::Wake for CountedWake {
    fn wake(self: std::sync::Arc<Self>) {}
}

/// In backpressure mode, a caller whose `poll_ready` waits for OPEN to end left its waker with
/// the breaker when it gave up (a request cancelled by its client or a timeout): the breaker
/// kept every such waker, and the task it wakes, until OPEN ended, and scanned them all at
/// each new wait. Thousands of cancelled requests during a long OPEN period piled up. A
/// service that stops waiting (dropped, or ready again) now takes its waker back, and a
/// transition still wakes those that wait.
#[tokio::test(start_paused = true)]
async fn a_caller_that_stops_waiting_for_open_to_end_leaves_no_waker_behind() {
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};

    let (_logs, _guard) = Logs::capture();
    let (layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
    let layer = layer.with_backpressure();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|n: u32| async move { Ok::<_, BoxError>(answer(200 + n as u16, &[])) });
    handle.transition_to_open().unwrap();

    // Cancelled callers, each of its own task: each waited, then was dropped.
    let wakes: Vec<_> = (0..1000).map(|_| Arc::new(CountedWake)).collect();
    for wake in &wakes {
        let waker = Waker::from(wake.clone());
        let mut caller = svc.clone();
        let polled = Service::poll_ready(&mut caller, &mut Context::from_waker(&waker));
        assert!(polled.is_pending());
    }
    let kept = wakes.iter().filter(|w| Arc::strong_count(w) > 1).count();
    assert_eq!(kept, 0, "wakers of dropped callers kept");

    // A caller that waits is still woken when OPEN ends early, and then admitted.
    let mut waiting = svc.clone();
    let ready = tokio::spawn(async move {
        waiting.ready().await.unwrap();
        waiting.call(0).await.unwrap().status()
    });
    tokio::task::yield_now().await;
    assert!(!ready.is_finished());
    handle.reset();
    assert_eq!(ready.await.unwrap(), 200);

    // One that stops waiting because OPEN has ended leaves nothing behind either.
    handle.transition_to_open().unwrap();
    let mut caller = svc.clone();
    let wake = Arc::new(CountedWake);
    let waker = Waker::from(wake.clone());
    let mut cx = Context::from_waker(&waker);
    assert!(Service::poll_ready(&mut caller, &mut cx).is_pending());
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(matches!(
        Service::poll_ready(&mut caller, &mut cx),
        Poll::Ready(Ok(()))
    ));
    drop(waker);
    assert_eq!(
        Arc::strong_count(&wake),
        1,
        "the waker of a caller no longer waiting kept"
    );
    drop(caller);
}

/// A route behind the breaker that fails with a `Problem` counts as the response the problem
/// becomes, by its status; a `503` problem with a `Retry-After` (the answer the error layer
/// makes of it) is such a response, but its wait was left out: with `honor_retry_after`, the
/// breaker it opened stayed open for its open duration only, while the same `503` returned as
/// a response kept it open as long as asked.
#[tokio::test(start_paused = true)]
async fn a_problem_with_a_retry_after_is_honoured_like_the_response_it_becomes() {
    use tower_webhook::error::Problem;

    let (_logs, _guard) = Logs::capture();
    let config = CircuitBreakerConfig::default()
        .consecutive_failures(1)
        .honor_retry_after(Duration::from_secs(600));
    let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .layer(layer)
        .service_fn(|req: Request<u16>| async move {
            let status = http::StatusCode::from_u16(*req.body()).unwrap();
            Err::<Response<Full<Bytes>>, _>(BoxError::from(
                Problem::new(status).with_retry_after(Duration::from_secs(120)),
            ))
        });
    let res = svc.clone().oneshot(Request::new(503)).await.unwrap();
    assert_eq!(res.headers()["retry-after"], "120");
    let snapshot = handle.snapshot();
    assert_eq!(snapshot.state, CircuitState::Open);
    assert_eq!(snapshot.retry_after_ms, Some(120_000));

    // As for responses, only a 429 or 503 asks for a wait: a 500 problem opens the breaker
    // for its open duration.
    handle.reset();
    svc.clone().oneshot(Request::new(500)).await.unwrap();
    assert_eq!(handle.snapshot().retry_after_ms, Some(30_000));
}
