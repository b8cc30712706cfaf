//! Circuit breaker: the wait of a rejection answered by tonic (gRPC's pushback), and keyed breakers
//! called without `poll_ready`.

use crate::echo;
use crate::incoming;

use std::time::Duration;

use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_webhook::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerLayer, CircuitOpen, CircuitState, OpenDuration,
};

/// The `grpc-retry-pushback-ms` of `status`, in milliseconds.
fn pushback_ms(status: &tonic::Status) -> u64 {
    status
        .metadata()
        .get("grpc-retry-pushback-ms")
        .unwrap_or_else(|| panic!("no pushback in {status:?}"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// A rejection by an OPEN breaker, waiting `open_for`.
async fn rejection(open_for: Duration) -> CircuitOpen {
    let config = CircuitBreakerConfig::default().open_duration(OpenDuration::Fixed(open_for));
    let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    handle.transition_to_open().unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_: http::Request<()>| async { Ok::<_, BoxError>(http::Response::new(())) });
    let err = svc.oneshot(http::Request::new(())).await.unwrap_err();
    *err.downcast::<CircuitOpen>().unwrap()
}

/// A tonic server answers a handler's `Status::from(circuit_open)` itself. The HTTP answer of
/// the same rejection carries `Retry-After`; the gRPC one carried no `grpc-retry-pushback-ms`
/// (gRPC's server pushback, A6), so a gRPC client could not tell when to come back.
#[tokio::test(start_paused = true)]
async fn a_status_made_from_a_rejection_carries_its_pushback() {
    let open = rejection(Duration::from_secs(20)).await;
    let status = tonic::Status::from(open.clone());
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(pushback_ms(&status), 20_000);
    // The same wait as the HTTP answer's `Retry-After`.
    assert_eq!(open.retry_after(), Some(Duration::from_secs(20)));
    // And the status a tonic client finds in the rejection's chain (`Status::from_error`).
    let found = tonic::Status::from_error(Box::new(open));
    assert_eq!(found.code(), tonic::Code::Unavailable);
    assert_eq!(pushback_ms(&found), 20_000);
}

/// A rejection with no wait (FORCED_OPEN ends only by hand) has no pushback: the client's own
/// policy decides.
#[tokio::test(start_paused = true)]
async fn a_rejection_without_a_wait_has_no_pushback() {
    let (layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
    handle.transition_to_forced_open().unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_: http::Request<()>| async { Ok::<_, BoxError>(http::Response::new(())) });
    let err = svc.oneshot(http::Request::new(())).await.unwrap_err();
    let open = err.downcast_ref::<CircuitOpen>().unwrap();
    assert_eq!(open.state(), CircuitState::ForcedOpen);
    let status = tonic::Status::from(open.clone());
    assert!(status.metadata().get("grpc-retry-pushback-ms").is_none());
    let found = tonic::Status::from_error(err);
    assert!(found.metadata().get("grpc-retry-pushback-ms").is_none());
}

/// A real tonic server with the breaker in front of its service (no error layer): tonic turns
/// the rejection into the status in its chain, and a real tonic client reads the pushback.
#[tokio::test]
async fn a_tonic_client_of_a_tonic_server_behind_an_open_breaker_sees_the_pushback() {
    use echo::{Echo, EchoService};

    let config =
        CircuitBreakerConfig::default().open_duration(OpenDuration::Fixed(Duration::from_secs(20)));
    let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    handle.transition_to_open().unwrap();

    let (addr, incoming) = incoming::loopback().await;
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(EchoService)
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });

    let request = tonic::Request::new(Echo {
        message: "hello".to_owned(),
    });
    let status = tokio::time::timeout(Duration::from_secs(10), echo::say(addr, request))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let pushback = pushback_ms(&status);
    assert!((1_000..=20_000).contains(&pushback), "{pushback}");
    server.abort();
}

/// A keyed breaker called without `poll_ready` made the key's breaker for a call it did not
/// make; with the map full, that took the slot of a breaker counting failures, so a failing key
/// that comes and goes could be kept from ever opening by calls that were never made.
#[tokio::test]
async fn a_keyed_call_without_poll_ready_makes_no_breaker() {
    use tower::Service;
    use tower_webhook::circuit_breaker::KeyedCircuitBreakerLayer;
    let config = CircuitBreakerConfig::default().consecutive_failures(3);
    let per_host = |req: &(&'static str, u16)| req.0;
    let (layer, handle) = KeyedCircuitBreakerLayer::pair(config, 1, per_host).unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service_fn(
        |(_host, status): (&'static str, u16)| async move {
            Ok::<_, BoxError>(http::Response::builder().status(status).body(()).unwrap())
        },
    );
    // One failure on record for `a`, which stays CLOSED.
    svc.ready().await.unwrap().call(("a", 502)).await.unwrap();
    assert_eq!(handle.get(&"a").unwrap().snapshot().consecutive_failures, 1);

    // A call without `poll_ready` is refused, and changes no breaker.
    let err = svc.call(("b", 200)).await.unwrap_err();
    assert!(err.is::<CircuitOpen>());
    assert!(handle.get(&"b").is_none());
    assert_eq!(handle.len(), 1);
    assert_eq!(handle.get(&"a").unwrap().snapshot().consecutive_failures, 1);

    // One for a key that has a breaker is told by it, as before.
    let err = svc.call(("a", 200)).await.unwrap_err();
    assert!(err.is::<CircuitOpen>());
    assert_eq!(handle.get(&"a").unwrap().snapshot().not_permitted_calls, 1);
}
