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
    /// The body's bytes (one empty gRPC message when unset).
    body: Option<Vec<u8>>,
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
            let data = reply
                .body
                .map_or(Bytes::from_static(b"\0\0\0\0\0"), Bytes::from);
            let mut res = Response::new(TrailerBody {
                data: Some(data),
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
}

/// A type is gRPC when it is `application/grpc`, `application/grpc-web` or
/// `application/grpc-web-text`, in any case, with any codec or parameters, as the error layer
/// reads it: a type that only starts like one (`application/grpcx`) is an HTTP answer, whose 200
/// is a success without trailers.
#[tokio::test(start_paused = true)]
async fn only_grpc_media_types_are_classified_as_grpc() {
    let (mut svc, handle) = grpc_breaker();
    for (content_type, failed) in [
        ("application/grpcx", 0),
        ("application/grpc-webx", 0),
        ("application/grpc-gateway", 0),
        ("APPLICATION/GRPC+proto", 1),
        ("application/grpc; charset=utf-8", 2),
        ("Application/Grpc-Web+json", 3),
    ] {
        // No trailers: a failure for gRPC (`UNKNOWN`), a success for HTTP.
        let reply = GrpcReply {
            content_type: Some(content_type),
            ..GrpcReply::default()
        };
        read_grpc(&mut svc, reply).await;
        assert_eq!(handle.snapshot().failed_calls, failed, "{content_type}");
    }
}

/// A gRPC-Web frame: its flag byte, its length, its payload.
fn web_frame(flag: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// gRPC-Web carries its status in a trailer frame at the end of the body, which the breaker
/// reads as the body streams: its `grpc-status` is classified as a gRPC trailer's would be, in
/// `application/grpc-web` and in base64 `application/grpc-web-text` alike. A body that ends
/// without a trailer frame, or with one that has no status, is `Unknown` to gRPC-Web clients: a
/// failure. Such answers all counted as successes, as the trailers in the body went unread.
#[tokio::test(start_paused = true)]
async fn a_grpc_web_answer_is_classified_by_its_trailer_frame() {
    use base64::Engine as _;
    let message = web_frame(0, b"\x0a\x03one");
    let with_trailers = |trailers: &[u8]| [message.clone(), web_frame(0x80, trailers)].concat();
    let text = |bytes: Vec<u8>| {
        base64::engine::general_purpose::STANDARD
            .encode(bytes)
            .into_bytes()
    };
    // What the body is, its content type and bytes, and the calls then buffered and failed.
    type Case = (&'static str, &'static str, Vec<u8>, (u32, u32));
    let cases: Vec<Case> = vec![
        (
            "OK",
            "application/grpc-web+proto",
            with_trailers(b"grpc-status:0\r\n"),
            (1, 0),
        ),
        (
            "UNAVAILABLE",
            "application/grpc-web",
            with_trailers(b"grpc-status:14\r\ngrpc-message:down\r\n"),
            (2, 1),
        ),
        (
            "INTERNAL, as text",
            "application/grpc-web-text+proto",
            text(with_trailers(b"Grpc-Status: 13\r\n")),
            (3, 2),
        ),
        (
            "OK, as text",
            "application/grpc-web-text",
            text(with_trailers(b"grpc-status:0\r\n")),
            (4, 2),
        ),
        // CANCELLED says nothing of the upstream.
        (
            "CANCELLED",
            "application/grpc-web",
            with_trailers(b"grpc-status:1\r\n"),
            (4, 2),
        ),
        (
            "no trailer frame",
            "application/grpc-web",
            message.clone(),
            (5, 3),
        ),
        (
            "no status in the trailer frame",
            "application/grpc-web",
            with_trailers(b"grpc-message:bye\r\n"),
            (6, 4),
        ),
        (
            "cut inside the trailer frame",
            "application/grpc-web",
            with_trailers(b"grpc-status:0\r\n")[..message.len() + 8].to_vec(),
            (7, 5),
        ),
        (
            "not gRPC-Web",
            "application/grpc-web",
            b"<html>oops</html>".to_vec(),
            (8, 6),
        ),
        // Compressed trailers cannot be read here: not held against the upstream.
        (
            "compressed trailers",
            "application/grpc-web",
            [message.clone(), web_frame(0x81, b"\x1f\x8b")].concat(),
            (9, 6),
        ),
    ];
    let (mut svc, handle) = grpc_breaker();
    for (name, content_type, body, expected) in cases {
        let reply = GrpcReply {
            content_type: Some(content_type),
            body: Some(body),
            ..GrpcReply::default()
        };
        read_grpc(&mut svc, reply).await;
        let s = handle.snapshot();
        assert_eq!((s.buffered_calls, s.failed_calls), expected, "{name}");
    }

    // HTTP trailers with a status, as a proxy that speaks gRPC-Web over HTTP/2 may send them.
    let reply = GrpcReply {
        content_type: Some("application/grpc-web"),
        body: Some(message.clone()),
        trailers: Some(vec![("grpc-status", "14")]),
        ..GrpcReply::default()
    };
    read_grpc(&mut svc, reply).await;
    let s = handle.snapshot();
    assert_eq!((s.buffered_calls, s.failed_calls), (10, 7), "HTTP trailers");
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
