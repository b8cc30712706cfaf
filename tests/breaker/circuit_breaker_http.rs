//! The circuit breaker as tower middleware: readiness contract, HTTP and gRPC classification,
//! `Retry-After`, `WebhookErrorLayer`, keyed breakers.

use std::future::Future;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_webhook::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerHandle, CircuitBreakerLayer, CircuitOpen, CircuitState,
    DefaultClassifier, KeyedCircuitBreakerLayer, OpenDuration, Outcome,
};
use tower_webhook::error::{WebhookErrorLayer, types};

fn poll_once<F: Future>(future: Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

// ---------------------------------------------------------------- tower readiness contract

#[tokio::test(start_paused = true)]
async fn closed_breaker_forwards_readiness() {
    let (layer, _handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
    let layer = layer.with_classifier(|_: &Result<&'static str, BoxError>| Outcome::Success);
    let (mut svc, mut mock) = tower_test::mock::spawn_layer::<&'static str, &'static str, _>(layer);

    mock.allow(0);
    assert!(
        svc.poll_ready().is_pending(),
        "inner not ready: breaker must not be ready"
    );
    mock.allow(1);
    assert!(matches!(svc.poll_ready(), Poll::Ready(Ok(()))));
    let response = svc.call("hello");
    let (request, send) = mock.next_request().await.unwrap();
    assert_eq!(request, "hello");
    send.send_response("world");
    assert_eq!(response.await.unwrap(), "world");
}

#[tokio::test(start_paused = true)]
async fn open_breaker_is_ready_without_polling_inner_and_rejects_in_call() {
    let (layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
    let layer = layer.with_classifier(|_: &Result<&'static str, BoxError>| Outcome::Success);
    let (mut svc, mut mock) = tower_test::mock::spawn_layer::<&'static str, &'static str, _>(layer);
    handle.transition_to_open().unwrap();

    // The inner service is not ready; the open breaker must not wait for it, nor fail.
    mock.allow(0);
    assert!(matches!(svc.poll_ready(), Poll::Ready(Ok(()))));
    let mut response = pin!(svc.call("hello"));
    match poll_once(response.as_mut()) {
        Poll::Ready(Err(err)) => {
            let open = err.downcast_ref::<CircuitOpen>().expect("CircuitOpen");
            assert_eq!(open.retry_after(), Some(Duration::from_secs(30)));
        }
        other => panic!(
            "expected a ready rejection, got {:?}",
            other.map(|r| r.is_ok())
        ),
    }
    assert!(
        mock.poll_request().is_pending(),
        "the inner service was called"
    );

    // FORCED_OPEN behaves the same.
    handle.transition_to_forced_open().unwrap();
    assert!(matches!(svc.poll_ready(), Poll::Ready(Ok(()))));
    assert!(matches!(
        poll_once(pin!(svc.call("x"))),
        Poll::Ready(Err(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn backpressure_mode_waits_until_the_open_deadline() {
    let (layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
    let layer = layer
        .with_backpressure()
        .with_classifier(|_: &Result<&'static str, BoxError>| Outcome::Success);
    let (mut svc, mut mock) = tower_test::mock::spawn_layer::<&'static str, &'static str, _>(layer);
    handle.transition_to_open().unwrap();
    mock.allow(1);
    assert!(svc.poll_ready().is_pending());
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(svc.poll_ready().is_pending());
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(svc.is_woken());
    assert!(matches!(svc.poll_ready(), Poll::Ready(Ok(()))));
    let response = svc.call("probe");
    let (_, send) = mock.next_request().await.unwrap();
    send.send_response("ok");
    response.await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
}

/// A caller parked by backpressure is let go as soon as the breaker leaves OPEN by hand
/// (a reset, or a probe asked for now), not when the old open duration would have ended.
#[tokio::test(start_paused = true)]
async fn backpressure_lets_parked_callers_go_when_the_breaker_is_reset() {
    // A backpressure breaker forced OPEN, with a caller parked in `poll_ready`.
    let parked = || {
        let (layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
        let layer = layer
            .with_backpressure()
            .with_classifier(|_: &Result<&'static str, BoxError>| Outcome::Success);
        let (mut svc, mut mock) =
            tower_test::mock::spawn_layer::<&'static str, &'static str, _>(layer);
        mock.allow(1);
        handle.transition_to_open().unwrap();
        assert!(svc.poll_ready().is_pending());
        (svc, mock, handle)
    };

    let (mut svc, _mock, handle) = parked();
    tokio::time::advance(Duration::from_secs(1)).await;
    handle.reset();
    assert!(svc.is_woken(), "the parked caller is woken by the reset");
    assert!(matches!(svc.poll_ready(), Poll::Ready(Ok(()))));

    // The same for a manual move to HALF_OPEN: the parked caller becomes the probe.
    let (mut svc, mut mock, handle) = parked();
    handle.transition_to_half_open().unwrap();
    assert!(
        svc.is_woken(),
        "the parked caller is woken by the move to HALF_OPEN"
    );
    assert!(matches!(svc.poll_ready(), Poll::Ready(Ok(()))));
    let response = svc.call("probe");
    let (_, send) = mock.next_request().await.unwrap();
    send.send_response("ok");
    response.await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
}

// ---------------------------------------------------------------- HTTP classification

use crate::trailer_body;
use trailer_body::TrailerBody;

#[derive(Clone, Default)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    trailer_status: Option<u16>,
}

fn reply(status: u16) -> Reply {
    Reply {
        status,
        ..Reply::default()
    }
}

fn grpc(headers_status: Option<u16>, trailer_status: Option<u16>) -> Reply {
    let mut headers = vec![("content-type", "application/grpc".to_owned())];
    if let Some(code) = headers_status {
        headers.push(("grpc-status", code.to_string()));
    }
    Reply {
        status: 200,
        headers,
        trailer_status,
    }
}

async fn upstream(req: Request<Reply>) -> Result<Response<TrailerBody>, BoxError> {
    let reply = req.into_body();
    let trailers = reply.trailer_status.map(|code| {
        let mut map = HeaderMap::new();
        map.insert("grpc-status", HeaderValue::from(code));
        map
    });
    let mut res = Response::new(TrailerBody {
        data: Some(Bytes::from_static(b"payload")),
        trailers,
    });
    *res.status_mut() = StatusCode::from_u16(reply.status)?;
    for (name, value) in reply.headers {
        res.headers_mut()
            .insert(name, HeaderValue::from_str(&value)?);
    }
    Ok(res)
}

fn http_breaker(
    config: CircuitBreakerConfig,
    classifier: DefaultClassifier,
) -> (
    impl Service<
        Request<Reply>,
        Response = Response<
            impl Body<Data = Bytes, Error = std::convert::Infallible> + std::fmt::Debug,
        >,
        Error = BoxError,
    > + Clone,
    CircuitBreakerHandle,
) {
    let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer.with_classifier(classifier))
        .service_fn(upstream);
    (svc, handle)
}

fn counting() -> CircuitBreakerConfig {
    CircuitBreakerConfig::default()
        .consecutive_failures(0)
        .failure_rate_threshold(100.0)
        .minimum_calls(100)
}

async fn send<S, B>(svc: &mut S, reply: Reply) -> Response<B>
where
    S: Service<Request<Reply>, Response = Response<B>, Error = BoxError>,
{
    svc.ready()
        .await
        .unwrap()
        .call(Request::new(reply))
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn http_statuses_are_classified_like_tower_http() {
    let (mut svc, handle) = http_breaker(counting(), DefaultClassifier::new());
    for status in [200, 201, 404, 400, 408, 429, 500, 502, 503, 504] {
        send(&mut svc, reply(status)).await;
    }
    let s = handle.snapshot();
    assert_eq!((s.buffered_calls, s.failed_calls), (10, 4));

    let classifier = DefaultClassifier::new()
        .timeout_is_failure(true)
        .too_many_requests_is_failure(true);
    let (mut svc, handle) = http_breaker(counting(), classifier);
    for status in [408, 429, 404] {
        send(&mut svc, reply(status)).await;
    }
    assert_eq!(handle.snapshot().failed_calls, 2);
}

#[tokio::test(start_paused = true)]
async fn inner_errors_are_failures_unless_classified_neutral() {
    let (layer, handle) = CircuitBreakerLayer::pair(counting()).unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(|_: Request<()>| async { Err::<Response<String>, BoxError>("refused".into()) });
    assert!(
        svc.ready()
            .await
            .unwrap()
            .call(Request::new(()))
            .await
            .is_err()
    );
    assert_eq!(handle.snapshot().failed_calls, 1);

    let mut svc = ServiceBuilder::new()
        .layer(layer.with_classifier(
            DefaultClassifier::new().with_error_outcome(|_: &BoxError| Outcome::Neutral),
        ))
        .service_fn(|_: Request<()>| async {
            Err::<Response<String>, BoxError>("cancelled".into())
        });
    assert!(
        svc.ready()
            .await
            .unwrap()
            .call(Request::new(()))
            .await
            .is_err()
    );
    assert_eq!(handle.snapshot().buffered_calls, 1);
}

#[tokio::test(start_paused = true)]
async fn grpc_status_is_read_from_headers_or_from_trailers_at_end_of_stream() {
    let (mut svc, handle) = http_breaker(counting(), DefaultClassifier::new());

    // Trailers-only: classified at once.
    send(&mut svc, grpc(Some(14), None)).await;
    assert_eq!(handle.snapshot().failed_calls, 1);

    // Status in the trailers: nothing is known until the body has been read.
    let res = send(&mut svc, grpc(None, Some(14))).await;
    assert_eq!(handle.snapshot().buffered_calls, 1);
    let collected = res.into_body().collect().await.unwrap();
    assert!(collected.trailers().is_some());
    assert_eq!(handle.snapshot().failed_calls, 2);

    // OK and client-side codes are successes; Cancelled is neutral.
    for code in [0, 5, 3, 16] {
        let res = send(&mut svc, grpc(None, Some(code))).await;
        res.into_body().collect().await.unwrap();
    }
    let res = send(&mut svc, grpc(None, Some(1))).await;
    res.into_body().collect().await.unwrap();
    let s = handle.snapshot();
    assert_eq!((s.buffered_calls, s.failed_calls), (6, 2));

    // Unavailable, DeadlineExceeded, Internal are failures.
    for code in [14, 4, 13] {
        let res = send(&mut svc, grpc(None, Some(code))).await;
        res.into_body().collect().await.unwrap();
    }
    assert_eq!(handle.snapshot().failed_calls, 5);
}

#[tokio::test(start_paused = true)]
async fn a_grpc_body_without_trailers_is_classified_when_its_last_frame_is_read() {
    let (mut svc, handle) = http_breaker(counting(), DefaultClassifier::new());
    let res = send(&mut svc, grpc(None, None)).await;
    let mut body = res.into_body();
    // A reader that stops when the body says it has ended (as hyper does) never polls past the
    // last data frame.
    let frame = body.frame().await.unwrap().unwrap();
    assert!(frame.is_data());
    assert!(body.is_end_stream());
    assert_eq!(handle.snapshot().buffered_calls, 1);
    // With no `grpc-status` at its end, the answer is `Unknown` to a gRPC client: a failure.
    assert_eq!(handle.snapshot().failed_calls, 1);
}

#[tokio::test(start_paused = true)]
async fn grpc_probe_whose_body_is_dropped_returns_its_permit() {
    let config = CircuitBreakerConfig::default().consecutive_failures(1);
    let (mut svc, handle) = http_breaker(config, DefaultClassifier::new());
    send(&mut svc, reply(500)).await;
    tokio::time::advance(Duration::from_secs(30)).await;

    let res = send(&mut svc, grpc(None, Some(0))).await;
    assert_eq!(handle.snapshot().half_open_permits_taken, 1);
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(reply(200)))
        .await
        .unwrap_err();
    assert!(err.is::<CircuitOpen>());
    drop(res);
    assert_eq!(handle.snapshot().half_open_permits_taken, 0);
    assert_eq!(handle.state(), CircuitState::HalfOpen);

    // A probe read to its end with grpc-status 0 closes the breaker.
    let res = send(&mut svc, grpc(None, Some(0))).await;
    res.into_body().collect().await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn upstream_retry_after_is_honored_and_capped() {
    let config = CircuitBreakerConfig::default()
        .consecutive_failures(1)
        .open_duration(OpenDuration::Fixed(Duration::from_secs(5)))
        .honor_retry_after(Duration::from_secs(60));
    let open_for = |reply: Reply| {
        let config = config.clone();
        async move {
            let (mut svc, _) = http_breaker(config, DefaultClassifier::new());
            send(&mut svc, reply).await;
            let err = svc
                .ready()
                .await
                .unwrap()
                .call(Request::new(reply_ok()))
                .await
                .unwrap_err();
            err.downcast_ref::<CircuitOpen>()
                .unwrap()
                .retry_after()
                .unwrap()
        }
    };
    let mut r = reply(503);
    r.headers.push(("retry-after", "20".to_owned()));
    assert_eq!(open_for(r).await, Duration::from_secs(20));
    let mut r = reply(503);
    r.headers.push(("retry-after", "3600".to_owned()));
    assert_eq!(open_for(r).await, Duration::from_secs(60));
    let mut r = reply(503);
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(40));
    r.headers.push(("retry-after", date));
    let after = open_for(r).await;
    assert!(
        after > Duration::from_secs(38) && after <= Duration::from_secs(40),
        "{after:?}"
    );
    // gRPC's `grpc-retry-pushback-ms` on UNAVAILABLE is its `Retry-After`; a negative one is
    // no wait, and on a verdict (INTERNAL) it is not an overload's.
    for (code, pushback, expected) in [
        (14, "20000", 20),
        (14, "3600000", 60),
        (14, "-1", 5),
        (13, "20000", 5),
    ] {
        let mut r = grpc(Some(code), None);
        r.headers
            .push(("grpc-retry-pushback-ms", pushback.to_owned()));
        assert_eq!(
            open_for(r).await,
            Duration::from_secs(expected),
            "{code} {pushback}"
        );
    }
    // Shorter than the open duration: the open duration wins.
    let mut r = reply(503);
    r.headers.push(("retry-after", "1".to_owned()));
    assert_eq!(open_for(r).await, Duration::from_secs(5));
    // Not honored unless configured.
    let (mut svc, _) = http_breaker(
        CircuitBreakerConfig::default()
            .consecutive_failures(1)
            .open_duration(OpenDuration::Fixed(Duration::from_secs(5))),
        DefaultClassifier::new(),
    );
    let mut r = reply(503);
    r.headers.push(("retry-after", "20".to_owned()));
    send(&mut svc, r).await;
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(reply_ok()))
        .await
        .unwrap_err();
    assert_eq!(
        err.downcast_ref::<CircuitOpen>().unwrap().retry_after(),
        Some(Duration::from_secs(5))
    );
}

fn reply_ok() -> Reply {
    reply(200)
}

// ---------------------------------------------------------------- WebhookErrorLayer

#[tokio::test(start_paused = true)]
async fn circuit_open_becomes_503_problem_json_with_retry_after() {
    let (layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .layer(layer)
        .service_fn(upstream);
    handle.transition_to_open().unwrap();
    tokio::time::advance(Duration::from_millis(12_500)).await;

    let res = svc
        .clone()
        .oneshot(
            Request::builder()
                .header("x-request-id", "r-1")
                .body(reply_ok())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "18");
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["type"], types::CIRCUIT_OPEN);
    assert_eq!(problem["status"], 503);
    assert_eq!(problem["instance"], "r-1");

    // A gRPC caller gets Unavailable.
    let req = Request::builder()
        .header("content-type", "application/grpc")
        .body(reply_ok())
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["grpc-status"], "14");
}

/// A call refused while OPEN whose open period ends between `poll_ready` and `call` has no
/// wait left, and one refused in OPEN's last moments has less than a second: either way the
/// answer asks for at least a second (rounded up, never down), since `Retry-After: 0` invites
/// an immediate retry.
#[tokio::test(start_paused = true)]
async fn a_refusal_asks_for_at_least_a_second() {
    let open_for = Duration::from_secs(30);
    for (left_when_ready, waited, expected) in [
        (Duration::from_millis(500), Duration::from_millis(500), "1"),
        (Duration::from_millis(500), Duration::from_secs(3), "1"),
        (Duration::from_millis(500), Duration::ZERO, "1"),
        (Duration::from_millis(1), Duration::ZERO, "1"),
        (Duration::from_millis(1500), Duration::ZERO, "2"),
    ] {
        let (layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
        let mut svc = ServiceBuilder::new()
            .layer(WebhookErrorLayer::new())
            .layer(layer)
            .service_fn(upstream);
        handle.transition_to_open().unwrap();
        tokio::time::advance(open_for - left_when_ready).await;
        let svc = svc.ready().await.unwrap();
        tokio::time::advance(waited).await;
        let res = svc.call(Request::new(reply_ok())).await.unwrap();
        let case = format!("{left_when_ready:?} left at poll_ready, then {waited:?}");
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{case}");
        assert_eq!(res.headers()["retry-after"], expected, "{case}");
    }
}

// ---------------------------------------------------------------- keyed breakers

#[tokio::test(start_paused = true)]
async fn keyed_breakers_are_isolated_and_bounded() {
    let config = CircuitBreakerConfig::default()
        .consecutive_failures(1)
        .name("hosts");
    let key = |req: &Request<(&'static str, u16)>| req.body().0;
    let (layer, handle) = KeyedCircuitBreakerLayer::pair(config, 2, key).unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service_fn(
        |req: Request<(&'static str, u16)>| async move {
            let mut res = Response::new(String::new());
            *res.status_mut() = StatusCode::from_u16(req.body().1)?;
            Ok::<_, BoxError>(res)
        },
    );
    let mut hit = async |host: &'static str, status: u16| {
        svc.ready()
            .await
            .unwrap()
            .call(Request::new((host, status)))
            .await
    };
    hit("a", 500).await.unwrap();
    assert!(hit("a", 200).await.unwrap_err().is::<CircuitOpen>());
    hit("b", 200).await.unwrap();
    assert_eq!(handle.get(&"a").unwrap().state(), CircuitState::Open);
    assert_eq!(handle.get(&"b").unwrap().state(), CircuitState::Closed);
    assert_eq!(handle.get(&"a").unwrap().name(), "hosts/a");

    // Full (a open, b closed and idle): c replaces b, never a.
    hit("c", 200).await.unwrap();
    assert_eq!(handle.len(), 2);
    assert!(handle.get(&"b").is_none());
    assert!(handle.get(&"a").is_some());
    // Both remaining are open: a new key goes to the overflow breaker.
    hit("c", 500).await.unwrap();
    hit("d", 500).await.unwrap();
    assert!(handle.get(&"d").is_none());
    assert_eq!(handle.overflow().state(), CircuitState::Open);
    let snapshots = handle.snapshots();
    assert_eq!(snapshots.len(), 2);
    assert!(snapshots.iter().all(|(_, s)| s.state == CircuitState::Open));
}

/// Media types are case-insensitive (RFC 9110, section 8.3.1): a gRPC answer whose
/// `content-type` is in another case is still read by its `grpc-status`.
#[tokio::test(start_paused = true)]
async fn a_grpc_content_type_in_another_case_is_still_grpc() {
    let (mut svc, handle) = http_breaker(counting(), DefaultClassifier::new());
    for content_type in ["Application/GRPC", "application/gRPC+proto"] {
        let mut reply = grpc(Some(14), None);
        reply.headers[0].1 = content_type.to_owned();
        send(&mut svc, reply).await;
    }
    assert_eq!(handle.snapshot().failed_calls, 2);
}
