//! The error layer's response body when the inner body fails while it streams: an HTTP answer is
//! cut short, a gRPC call ends with an error status, even when the error panics.

use crate::failing_body;
use crate::hyper_one;
use crate::logs;

use std::convert::Infallible;
use std::fmt;

use bytes::Bytes;
use failing_body::Failing;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper_one::{Http, exchange, serve_one};
use logs::Logs;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_webhook::error::{Problem, WebhookErrorLayer};

/// An error whose `Display` panics (a broken `Error` impl).
#[derive(Debug)]
struct DisplayPanics;

impl fmt::Display for DisplayPanics {
    fn fmt(&self, _f: &mut fmt::Formatter<'_>) -> fmt::Result {
        panic!("the error's display panicked, token=s3cr3t")
    }
}

impl std::error::Error for DisplayPanics {}

/// An error whose `Drop` panics.
#[derive(Debug)]
struct DropPanics;

impl fmt::Display for DropPanics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an error that panics when dropped")
    }
}

impl std::error::Error for DropPanics {}

impl Drop for DropPanics {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("the error's drop panicked");
        }
    }
}

/// `"first"`, as a gRPC message when `content_type` is a gRPC one.
fn first(content_type: &str) -> Bytes {
    if content_type.starts_with("application/grpc") {
        Bytes::from_static(b"\0\0\0\0\x05first")
    } else {
        Bytes::from_static(b"first")
    }
}

/// The layer over a handler that answers `status` and `content_type` (and `extra` headers)
/// with a body that yields `"first"` (as a gRPC message for a gRPC type), then the error
/// `error()` makes.
async fn answer(
    request_type: Option<&'static str>,
    status: StatusCode,
    content_type: &'static str,
    extra: &'static [(&'static str, &'static str)],
    error: fn() -> BoxError,
) -> Response<tower_webhook::error::ResponseBody<Failing>> {
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(move |_req: Request<Full<Bytes>>| async move {
            let mut res = Response::new(Failing::error(first(content_type), error()));
            *res.status_mut() = status;
            res.headers_mut()
                .insert("content-type", HeaderValue::from_static(content_type));
            for (name, value) in extra {
                res.headers_mut()
                    .insert(*name, HeaderValue::from_static(value));
            }
            Ok::<_, Infallible>(res)
        });
    let mut req = Request::post("/test.Echo/Say");
    if let Some(request_type) = request_type {
        req = req.header("content-type", request_type);
        // Native gRPC over HTTP/2, whose trailers end the call (over HTTP/1.x they would be
        // dropped, and the stream is cut short).
        if !request_type.starts_with("application/grpc-web") {
            req = req.version(http::Version::HTTP_2);
        }
    }
    svc.oneshot(req.body(Full::default()).unwrap())
        .await
        .unwrap()
}

/// Polls the body after its first frame: what it ends with, and whether it then ends.
async fn after_first(
    res: Response<tower_webhook::error::ResponseBody<Failing>>,
) -> Result<Frame<Bytes>, BoxError> {
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.into_data().unwrap().ends_with(b"first"));
    let last = body.frame().await.expect("a last frame or an error");
    assert!(body.frame().await.is_none(), "the body ends after it");
    last
}

/// The `grpc-status` a gRPC ending says, native trailers or gRPC-web's trailer frame.
fn grpc_status_of(frame: Frame<Bytes>) -> String {
    match frame.into_trailers() {
        Ok(trailers) => trailers["grpc-status"].to_str().unwrap().to_owned(),
        Err(frame) => {
            let data = frame.into_data().unwrap();
            assert_eq!(data[0], 0x80, "a trailer frame");
            let block = std::str::from_utf8(&data[5..]).unwrap();
            block
                .lines()
                .find_map(|line| line.strip_prefix("grpc-status:"))
                .expect("grpc-status in the trailer frame")
                .to_owned()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// An error whose `Display` or `Drop` panics

#[tokio::test]
async fn an_http_body_error_whose_display_panics_still_cuts_the_response_short() {
    let (logs, _guard) = Logs::capture();
    let res = answer(None, StatusCode::OK, "text/plain", &[], || {
        DisplayPanics.into()
    })
    .await;
    // Before the fix, the panic in the error's `Display` escaped `poll_frame` (into the
    // server's connection task, taking an HTTP/2 connection's other streams with it).
    let err = tokio::spawn(after_first(res))
        .await
        .expect("poll_frame does not panic")
        .expect_err("the response is cut short");
    // What the server gets can be displayed (hyper and axum log it): not the broken error.
    let shown = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| err.to_string()))
        .expect("displays");
    assert!(!shown.is_empty());
    let logs = logs.text();
    assert!(
        logs.contains("the response body failed while it streamed"),
        "{logs}"
    );
    assert!(logs.contains("the error's display panicked"), "{logs}");
}

#[tokio::test]
async fn a_grpc_body_error_whose_display_panics_still_ends_with_internal() {
    let (logs, _guard) = Logs::capture();
    for request_type in ["application/grpc", "application/grpc-web"] {
        let res = answer(
            Some(request_type),
            StatusCode::OK,
            request_type,
            &[],
            || DisplayPanics.into(),
        )
        .await;
        let last = tokio::spawn(after_first(res))
            .await
            .expect("poll_frame does not panic")
            .expect("the call ends with a status");
        assert_eq!(grpc_status_of(last), "13", "{request_type}");
    }
    let logs = logs.text();
    assert_eq!(
        logs.matches("the response body failed while it streamed")
            .count(),
        2,
        "{logs}"
    );
}

#[tokio::test]
async fn a_grpc_body_error_whose_drop_panics_still_ends_with_its_status() {
    let (logs, _guard) = Logs::capture();
    let res = answer(
        Some("application/grpc"),
        StatusCode::OK,
        "application/grpc",
        &[],
        || DropPanics.into(),
    )
    .await;
    let last = tokio::spawn(after_first(res))
        .await
        .expect("poll_frame does not panic")
        .expect("the call ends with a status");
    assert_eq!(grpc_status_of(last), "13");
    let logs = logs.text();
    assert!(logs.contains("the error's drop panicked"), "{logs}");
}

// ---------------------------------------------------------------------------------------------
// An error that says "success"

#[tokio::test]
async fn a_grpc_body_error_with_a_success_status_never_ends_the_call_with_ok() {
    let (logs, _guard) = Logs::capture();
    let errors: [fn() -> BoxError; 3] = [
        || Problem::new(StatusCode::OK).into(),
        || Problem::new(StatusCode::ACCEPTED).into(),
        || tonic::Status::ok("all good, but the stream broke").into(),
    ];
    for (i, error) in errors.into_iter().enumerate() {
        for request_type in ["application/grpc", "application/grpc-web"] {
            let res = answer(Some(request_type), StatusCode::OK, request_type, &[], error).await;
            let last = after_first(res).await.expect("the call ends with a status");
            // `0` would tell the client the call succeeded, its stream complete.
            assert_eq!(grpc_status_of(last), "13", "error {i}, {request_type}");
        }
    }
    let logs = logs.text();
    assert!(!logs.contains("grpc_status=0"), "{logs}");
    assert!(logs.contains("grpc_status=13"), "{logs}");
}

// ---------------------------------------------------------------------------------------------
// A gRPC request answered with something that is not a gRPC stream

/// A gRPC request, and the status, type and other headers of its answer.
type Case = (
    &'static str,
    StatusCode,
    &'static str,
    &'static [(&'static str, &'static str)],
);

#[tokio::test]
async fn a_grpc_request_answered_without_a_grpc_stream_is_cut_short_like_http() {
    let (_logs, _guard) = Logs::capture();
    let cases: [Case; 5] = [
        // A router's fallback, a proxy's error page: not gRPC at all.
        ("application/grpc-web", StatusCode::OK, "text/html", &[]),
        (
            "application/grpc-web-text",
            StatusCode::NOT_FOUND,
            "text/plain",
            &[],
        ),
        (
            "application/grpc",
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            &[],
        ),
        // A gRPC type, but not a 200: not a gRPC stream either.
        (
            "application/grpc-web",
            StatusCode::BAD_GATEWAY,
            "application/grpc-web",
            &[],
        ),
        // Trailers-only: the call's status was sent already, in the head.
        (
            "application/grpc",
            StatusCode::OK,
            "application/grpc",
            &[("grpc-status", "0")],
        ),
    ];
    for (request_type, status, content_type, extra) in cases {
        let res = answer(Some(request_type), status, content_type, extra, || {
            "upstream connection lost".into()
        })
        .await;
        let last = after_first(res).await;
        // Before the fix, a gRPC-web trailer frame went into an HTML page or a plain-text body,
        // which then ended as if complete.
        let err = last.expect_err(&format!("{request_type} answered {status} {content_type}"));
        assert_eq!(err.to_string(), "the response body failed");
    }
}

/// Serves one HTTP/1.1 connection whose every answer has `headers` and a body that sends
/// `first`, then fails; sends it a gRPC-web call and returns all the client received.
async fn grpc_web_call_answered_with(
    headers: &'static [(&'static str, &'static str)],
    first: &'static str,
) -> String {
    http1_call_answered_with("application/grpc-web+proto", headers, move || {
        Failing::error(first, "upstream lost")
    })
    .await
}

/// What a gRPC call of `request_type` over a real HTTP/1.1 connection receives when it is
/// answered with `headers` and the body `body` makes.
async fn http1_call_answered_with(
    request_type: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: impl Fn() -> Failing + Clone + Send + 'static,
) -> String {
    let app = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(move |_req: Request<hyper::body::Incoming>| {
            let body = body.clone();
            async move {
                let mut res = Response::new(body());
                for (name, value) in headers {
                    res.headers_mut()
                        .insert(*name, HeaderValue::from_static(value));
                }
                Ok::<_, Infallible>(res)
            }
        });
    let addr = serve_one(Http::One, app).await;
    let request = format!(
        "POST /test.Echo/Say HTTP/1.1\r\nhost: test\r\ncontent-type: {request_type}\r\n\
         content-length: 0\r\nconnection: close\r\n\r\n"
    );
    let received = exchange(addr, request.as_bytes()).await;
    String::from_utf8_lossy(&received).into_owned()
}

/// Native gRPC over HTTP/1.1 (a client or proxy that speaks it so): hyper drops trailers there
/// unless the client asked for them, so a stream that fails is cut short (no last chunk), never
/// ended by the last chunk alone, which reads as a complete response with no status.
#[tokio::test]
async fn http1_a_native_grpc_stream_that_fails_is_cut_short() {
    let (_logs, _guard) = Logs::capture();
    let received = http1_call_answered_with(
        "application/grpc",
        &[("content-type", "application/grpc")],
        || Failing::error("\0\0\0\0\x05first", "upstream lost"),
    )
    .await;
    assert!(received.starts_with("HTTP/1.1 200 OK\r\n"), "{received}");
    assert!(received.contains("first"), "{received}");
    assert!(!received.ends_with("0\r\n\r\n"), "{received}");
}

/// A gRPC-web answer whose body says its exact length (a proxied upstream body) with no
/// `Content-Length` header: hyper would declare that length itself, and the trailer frame
/// ending a failed stream would be cut to it, reading as a complete response. The stream is
/// sent without a declared length instead, and ends with its whole trailer frame.
#[tokio::test]
async fn http1_a_grpc_web_stream_of_an_exact_size_ends_with_its_whole_trailer_frame() {
    let (_logs, _guard) = Logs::capture();
    let received = http1_call_answered_with(
        "application/grpc-web+proto",
        &[("content-type", "application/grpc-web+proto")],
        || Failing::error("\0\0\0\0\x05first", "upstream lost").of_exact_size(12),
    )
    .await;
    assert!(received.starts_with("HTTP/1.1 200 OK\r\n"), "{received}");
    let head = received
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .to_ascii_lowercase();
    assert!(!head.contains("content-length"), "{received}");
    assert!(received.contains("grpc-status:13"), "{received}");
    assert!(received.ends_with("0\r\n\r\n"), "{received}");
}

/// A native gRPC stream whose body says its exact length: hyper would declare that length as
/// the stream's `content-length` over HTTP/2, and the trailers that end a failed call after it
/// would be a protocol error for the client instead of its `grpc-status`. Its length is left
/// open (at least what the body said).
#[tokio::test]
async fn a_native_grpc_stream_of_an_exact_size_reports_no_exact_size() {
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(|_req: Request<Full<Bytes>>| async {
            let body = Failing::error(first("application/grpc"), "upstream lost").of_exact_size(10);
            let mut res = Response::new(body);
            res.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/grpc"));
            Ok::<_, Infallible>(res)
        });
    let req = Request::post("/test.Echo/Say")
        .header("content-type", "application/grpc")
        .version(http::Version::HTTP_2)
        .body(Full::default())
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    let hint = http_body::Body::size_hint(res.body());
    assert_eq!((hint.exact(), hint.lower()), (None, 10));
}

/// Over a real HTTP/1.1 connection: a gRPC-web request whose answer is an HTML page that fails
/// while it streams gets no last chunk (the page is cut short), and no trailer frame in it.
#[tokio::test]
async fn http1_a_grpc_web_request_answered_with_a_page_is_cut_short() {
    let (_logs, _guard) = Logs::capture();
    let received =
        grpc_web_call_answered_with(&[("content-type", "text/html")], "<html>partial").await;
    assert!(received.starts_with("HTTP/1.1 200 OK\r\n"), "{received}");
    assert!(received.contains("<html>partial"), "{received}");
    assert!(!received.contains("grpc-status"), "{received}");
    assert!(!received.ends_with("0\r\n\r\n"), "{received}");
}

// ---------------------------------------------------------------------------------------------
// A gRPC stream of a declared length

/// A gRPC-web answer whose length was declared (`Content-Length`, as a proxy passes on an
/// upstream's) has no room for a trailer frame after a failure: over a real HTTP/1.1 connection
/// it is cut short, never ended with a trailer frame cut to the declared length, which read as a
/// complete response.
#[tokio::test]
async fn http1_a_grpc_web_stream_of_a_declared_length_is_cut_short() {
    let (_logs, _guard) = Logs::capture();
    // A whole message of 10 bytes, 2 more declared: fewer than the layer's trailer frame
    // takes, which the stream, between two messages, would otherwise end with.
    let received = grpc_web_call_answered_with(
        &[
            ("content-type", "application/grpc-web+proto"),
            ("content-length", "12"),
        ],
        "\0\0\0\0\x05first",
    )
    .await;
    assert!(received.starts_with("HTTP/1.1 200 OK\r\n"), "{received}");
    assert!(
        received.ends_with("\r\n\r\n\0\0\0\0\x05first"),
        "{received}"
    );
}

// ---------------------------------------------------------------------------------------------
// A gRPC-web stream that fails inside a message

/// What a gRPC-web stream of `request_type` whose inner body sends `chunk`, then fails, ends
/// with after that chunk.
async fn web_stream_ends(
    request_type: &'static str,
    chunk: &'static [u8],
) -> Result<Frame<Bytes>, BoxError> {
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(move |_req: Request<Full<Bytes>>| async move {
            let mut res = Response::new(Failing::error(Bytes::from_static(chunk), "upstream lost"));
            res.headers_mut()
                .insert("content-type", HeaderValue::from_static(request_type));
            Ok::<_, Infallible>(res)
        });
    let req = Request::post("/test.Echo/Say")
        .header("content-type", request_type)
        .body(Full::default())
        .unwrap();
    let mut body = svc.oneshot(req).await.unwrap().into_body();
    assert_eq!(
        body.frame().await.unwrap().unwrap().into_data().unwrap(),
        chunk
    );
    let last = body.frame().await.expect("a last frame or an error");
    assert!(body.frame().await.is_none(), "the body ends after it");
    last
}

/// A gRPC-web stream that fails between two messages ends with its trailer frame; one that fails
/// inside a message (its prefix, or its bytes, cut off; in `-web-text`, inside a base64 quantum)
/// is cut short like an HTTP response: the client would read a trailer frame as the rest of the
/// message.
#[tokio::test]
async fn a_grpc_web_stream_that_fails_inside_a_message_is_cut_short() {
    use base64::Engine as _;
    let (_logs, _guard) = Logs::capture();
    const WEB: &str = "application/grpc-web+proto";
    const TEXT: &str = "application/grpc-web-text+proto";
    // Between messages: two whole ones; in base64, a padded segment (`\0\0\0\0\x05first`).
    for (request_type, chunk) in [
        (WEB, &b"\0\0\0\0\x05first\0\0\0\0\0"[..]),
        (TEXT, &b"AAAAAAVmaXJzdA=="[..]),
    ] {
        let last = web_stream_ends(request_type, chunk)
            .await
            .expect("a trailer frame");
        let data = last.into_data().unwrap();
        let frame = if request_type == TEXT {
            Bytes::from(
                base64::engine::general_purpose::STANDARD
                    .decode(&data)
                    .unwrap(),
            )
        } else {
            data
        };
        assert_eq!(frame[0], 0x80, "{request_type}");
        assert!(frame[5..].starts_with(b"grpc-status:"), "{request_type}");
    }
    // Inside one: a message of 10 bytes with 5 sent, a prefix cut off, the same in base64, a
    // whole message in base64 that stops inside a quantum (no padding, or half of it). After
    // the stream's own trailer frame (its status told), and in base64 the layer cannot follow
    // (a line break), the stream is cut short too.
    let partial = base64::engine::general_purpose::STANDARD.encode(b"\0\0\0\0\x0afirst");
    let partial: &'static [u8] = Box::leak(partial.into_bytes().into_boxed_slice());
    for (request_type, chunk) in [
        (WEB, &b"\0\0\0\0\x0afirst"[..]),
        (WEB, &b"\0\0\0"[..]),
        (TEXT, partial),
        (TEXT, &b"AAAAAAVmaXJzdA"[..]),
        (TEXT, &b"AAAAAAVmaXJzdA="[..]),
        (
            WEB,
            &b"\0\0\0\0\x05first\x80\0\0\0\x0fgrpc-status:0\r\n"[..],
        ),
        (TEXT, &b"AAAAAAVmaXJzdA==\r\n"[..]),
    ] {
        let err = web_stream_ends(request_type, chunk)
            .await
            .expect_err(&format!("{request_type} {chunk:?}"));
        assert_eq!(err.to_string(), "the response body failed");
    }
}

/// Over a real HTTP/1.1 connection, a gRPC-web stream cut inside a message gets no trailer
/// frame and no last chunk: the client sees the response cut short.
#[tokio::test]
async fn http1_a_grpc_web_stream_cut_inside_a_message_is_cut_short() {
    let (_logs, _guard) = Logs::capture();
    let received = grpc_web_call_answered_with(
        &[("content-type", "application/grpc-web+proto")],
        "\0\0\0\0\nfirst",
    )
    .await;
    assert!(received.starts_with("HTTP/1.1 200 OK\r\n"), "{received}");
    assert!(received.contains("first"), "{received}");
    assert!(!received.contains("grpc-status"), "{received}");
    assert!(!received.ends_with("0\r\n\r\n"), "{received}");
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.0

/// An HTTP/1.0 answer without a declared length is delimited by the connection's close, so a
/// body that fails can only end it the way a complete one ends: the documented limit of
/// "cut short". With a `Content-Length`, the client can tell.
#[tokio::test]
async fn http1_0_a_body_that_fails_ends_as_the_connection_closes() {
    let (_logs, _guard) = Logs::capture();
    let app = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(|_req: Request<hyper::body::Incoming>| async {
            Ok::<_, Infallible>(Response::new(Failing::error(
                &b"partial"[..],
                "upstream lost",
            )))
        });
    let addr = serve_one(Http::One, app).await;
    let received = exchange(addr, b"GET / HTTP/1.0\r\nhost: test\r\n\r\n").await;
    let received = String::from_utf8_lossy(&received)
        .into_owned()
        .to_ascii_lowercase();
    assert!(!received.contains("content-length"), "{received}");
    assert!(!received.contains("transfer-encoding"), "{received}");
    assert!(received.ends_with("\r\n\r\npartial"), "{received}");
}
