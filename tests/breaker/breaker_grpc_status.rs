//! Regressions of the circuit breaker and the error layer on gRPC status rules: an answer without a
//! readable `grpc-status` is a failure, and a rejection wrapped in a `tonic::Status` is answered as
//! a rejection.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_webhook::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerHandle, CircuitBreakerLayer, CircuitOpen,
};
use tower_webhook::error::{WebhookErrorLayer, types};

// ---------------------------------------------------------------- gRPC answers with no status

use crate::trailer_body;
use trailer_body::TrailerBody;

/// What the upstream answers: `grpc-status` in the headers, and the trailers.
#[derive(Clone, Default)]
struct GrpcReply {
    content_type: Option<&'static str>,
    header_status: Option<&'static str>,
    trailers: Option<Vec<(&'static str, &'static str)>>,
}

fn grpc_breaker() -> (
    impl Service<
        Request<GrpcReply>,
        Response = Response<impl Body<Data = Bytes, Error = std::convert::Infallible>>,
        Error = BoxError,
    >,
    CircuitBreakerHandle,
) {
    let config = CircuitBreakerConfig::default()
        .consecutive_failures(0)
        .failure_rate_threshold(100.0)
        .minimum_calls(100);
    let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|req: Request<GrpcReply>| async move {
            let reply = req.into_body();
            let trailers = reply.trailers.map(|pairs| {
                let mut map = HeaderMap::new();
                for (name, value) in pairs {
                    map.insert(name, HeaderValue::from_static(value));
                }
                map
            });
            let mut res = Response::new(TrailerBody {
                data: Some(Bytes::from_static(b"\0\0\0\0\0")),
                trailers,
            });
            let content_type = reply.content_type.unwrap_or("application/grpc");
            res.headers_mut()
                .insert("content-type", HeaderValue::from_static(content_type));
            if let Some(status) = reply.header_status {
                res.headers_mut()
                    .insert("grpc-status", HeaderValue::from_static(status));
            }
            Ok::<_, BoxError>(res)
        });
    (svc, handle)
}

/// Sends `reply` through the breaker and reads the whole answer, as a gRPC client does.
async fn read_grpc<S, B>(svc: &mut S, reply: GrpcReply)
where
    S: Service<Request<GrpcReply>, Response = Response<B>, Error = BoxError>,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(reply))
        .await
        .unwrap();
    res.into_body().collect().await.unwrap();
}

/// gRPC over HTTP/2 requires a `grpc-status`: an answer that ends without one (a stream a proxy
/// cut short with `RST_STREAM(NO_ERROR)`, an upstream that crashed mid-answer) is `UNKNOWN` to
/// gRPC clients (tonic, grpc-go), and so is a `grpc-status` that is not a number. `UNKNOWN` is a
/// failure for the breaker; such answers used to count as successes.
#[tokio::test(start_paused = true)]
async fn a_grpc_answer_without_a_readable_status_is_a_failure() {
    let (mut svc, handle) = grpc_breaker();

    // A well-formed OK, for reference.
    let ok = GrpcReply {
        trailers: Some(vec![("grpc-status", "0")]),
        ..GrpcReply::default()
    };
    read_grpc(&mut svc, ok).await;
    let s = handle.snapshot();
    assert_eq!((s.buffered_calls, s.failed_calls), (1, 0));

    // The body ends with no trailers at all.
    read_grpc(&mut svc, GrpcReply::default()).await;
    let s = handle.snapshot();
    assert_eq!((s.buffered_calls, s.failed_calls), (2, 1), "no trailers");

    // Trailers, but no `grpc-status` in them.
    let no_status = GrpcReply {
        trailers: Some(vec![("grpc-message", "bye")]),
        ..GrpcReply::default()
    };
    read_grpc(&mut svc, no_status).await;
    let s = handle.snapshot();
    assert_eq!((s.buffered_calls, s.failed_calls), (3, 2), "no grpc-status");

    // A `grpc-status` that is not a number, in the trailers and in the headers.
    let garbled = GrpcReply {
        trailers: Some(vec![("grpc-status", "OK")]),
        ..GrpcReply::default()
    };
    read_grpc(&mut svc, garbled).await;
    let s = handle.snapshot();
    assert_eq!(
        (s.buffered_calls, s.failed_calls),
        (4, 3),
        "garbled trailer"
    );

    let garbled = GrpcReply {
        header_status: Some("fourteen"),
        ..GrpcReply::default()
    };
    read_grpc(&mut svc, garbled).await;
    let s = handle.snapshot();
    assert_eq!((s.buffered_calls, s.failed_calls), (5, 4), "garbled header");

    // gRPC-Web carries its trailers inside the body: no HTTP trailers is no failure there.
    let web = GrpcReply {
        content_type: Some("application/grpc-web+proto"),
        ..GrpcReply::default()
    };
    read_grpc(&mut svc, web).await;
    let s = handle.snapshot();
    assert_eq!((s.buffered_calls, s.failed_calls), (6, 4), "gRPC-Web");
}

// ---------------------------------------------------------------- wrapped rejections

/// A `CircuitOpen` from a breaker that was opened by hand (so it knows when it closes).
async fn circuit_open() -> CircuitOpen {
    let (layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
    handle.transition_to_open().unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_: Request<()>| async { Ok::<_, BoxError>(Response::new(())) });
    let err = svc.oneshot(Request::new(())).await.unwrap_err();
    *err.downcast::<CircuitOpen>().unwrap()
}

/// The crate's `From<CircuitOpen> for tonic::Status` keeps the rejection as the status' source;
/// the error layer answers it as a rejection (503, `Retry-After`, the circuit-open type), not as
/// a generic gRPC `UNAVAILABLE` from the upstream with no hint of when to come back.
#[tokio::test(start_paused = true)]
async fn a_circuit_open_inside_a_tonic_status_is_answered_as_a_rejection() {
    let open = circuit_open().await;
    assert!(open.retry_after().is_some());
    let mut open = Some(open);
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(move |_: Request<Full<Bytes>>| {
            let status = tonic::Status::from(open.take().unwrap());
            async move { Err::<Response<Full<Bytes>>, BoxError>(status.into()) }
        });
    let res = svc.oneshot(Request::new(Full::default())).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "30");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["type"], types::CIRCUIT_OPEN);
}
