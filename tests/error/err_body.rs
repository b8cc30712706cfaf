//! WebhookErrorLayer and a response body that fails or panics after the head went out: HTTP
//! responses are cut short (never complete-looking), gRPC calls end with a status in trailers
//! (or gRPC-web's trailer frame), and each failure is logged once.

use crate::echo;
use crate::failing_body;
use crate::hyper_one;
use crate::incoming;
use crate::logs;

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use echo::Echo;
use failing_body::Failing;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper_one::{Http, exchange, http2_sender, serve_one};
use logs::Logs;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_webhook::error::WebhookErrorLayer;

/// How the endpoints' body fails after its first frame.
#[derive(Clone, Copy, Debug)]
enum Then {
    /// Panics with [`PANIC`].
    Panic,
    /// Yields `upstream connection lost`.
    Error,
    /// Yields tower's `Elapsed` (a timeout, which the layer knows).
    Timeout,
}

const PANIC: &str = "the stream broke, token=s3cr3t";

impl Then {
    /// A body that yields `first`, then fails this way.
    fn body(self, first: impl Into<Bytes>) -> Failing {
        match self {
            Then::Panic => Failing::panic(first, PANIC),
            Then::Error => Failing::error(first, "upstream connection lost"),
            Then::Timeout => Failing::error(first, tower::timeout::error::Elapsed::new()),
        }
    }
}

/// A body whose `Drop` panics, after one frame and an error.
struct PanicsOnDrop(Failing);

impl http_body::Body for PanicsOnDrop {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.0).poll_frame(cx)
    }
}

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        panic!("the body's drop panicked too");
    }
}

/// A plain HTTP app behind the layer: `/fine` answers in full, `/panic`, `/error` and
/// `/timeout` stream a first chunk and then fail that way.
fn http_app() -> impl tower::Service<
    Request<hyper::body::Incoming>,
    Response = Response<
        tower_webhook::error::ResponseBody<http_body_util::Either<Failing, Full<Bytes>>>,
    >,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
+ Send
+ 'static {
    use http_body_util::Either;
    ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(|req: Request<hyper::body::Incoming>| async move {
            let then = match req.uri().path() {
                "/panic" => Then::Panic,
                "/error" => Then::Error,
                "/timeout" => Then::Timeout,
                _ => {
                    return Ok::<_, Infallible>(Response::new(Either::Right(Full::new(
                        Bytes::from_static(b"fine"),
                    ))));
                }
            };
            Ok(Response::new(Either::Left(then.body("partial"))))
        })
}

/// Sends a GET for `path` over a new HTTP/1.1 connection and reads until the server closes it
/// (at most 10 s): everything the client received.
async fn http1_exchange(addr: std::net::SocketAddr, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n");
    String::from_utf8_lossy(&exchange(addr, request.as_bytes()).await).into_owned()
}

/// Over HTTP/1.1 a body that panics or fails after its first chunk: the client gets the head
/// and the chunk, then the connection closes without the last chunk, so it cannot take the
/// response for a complete one. The failure is logged once, at `error`, with the panic's
/// message or the error.
#[tokio::test]
async fn http1_a_body_that_panics_or_fails_is_cut_short_and_logged() {
    for (path, line, cause) in [
        (
            "/panic",
            "the response body panicked while it streamed",
            PANIC,
        ),
        (
            "/error",
            "the response body failed while it streamed",
            "upstream connection lost",
        ),
    ] {
        let (logs, _guard) = Logs::capture();
        let addr = serve_one(Http::One, http_app()).await;
        let received = http1_exchange(addr, path).await;
        assert!(received.starts_with("HTTP/1.1 200 OK\r\n"), "{received}");
        assert!(received.contains("partial"), "{received}");
        assert!(!received.ends_with("0\r\n\r\n"), "{received}");
        assert!(!received.contains(cause), "{received}");
        let logs = logs.text();
        assert!(logs.contains(line), "{logs}");
        assert!(logs.contains(cause), "{logs}");
        assert!(logs.contains("ERROR"), "{logs}");
        assert_eq!(logs.matches("the response body").count(), 1, "{logs}");
    }
}

#[tokio::test]
async fn http2_a_body_that_panics_resets_its_stream_and_the_connection_goes_on() {
    let (logs, _guard) = Logs::capture();
    let addr = serve_one(Http::Two, http_app()).await;
    let mut sender = http2_sender(addr).await;
    for path in ["/panic", "/error", "/timeout"] {
        let req = Request::get(format!("http://test{path}"))
            .body(Full::default())
            .unwrap();
        let res = sender.send_request(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let mut body = res.into_body();
        let outcome = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match body.frame().await {
                    Some(Ok(_)) => continue,
                    Some(Err(err)) => break Err(err),
                    None => break Ok(()),
                }
            }
        })
        .await
        .expect("the stream ends");
        assert!(outcome.is_err(), "{path}: the stream must not end cleanly");
    }
    // The same connection still serves.
    sender.ready().await.unwrap();
    let req = Request::get("http://test/fine")
        .body(Full::default())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"fine");
    let logs = logs.text();
    assert_eq!(
        logs.matches("the response body panicked while it streamed")
            .count(),
        1,
        "{logs}"
    );
    assert_eq!(
        logs.matches("the response body failed while it streamed")
            .count(),
        2,
        "{logs}"
    );
}

/// After a failure the body ends: it is not polled again, and its failure is logged once.
#[tokio::test]
async fn a_failed_body_ends_and_a_drop_panic_is_caught() {
    let (logs, _guard) = Logs::capture();
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(PanicsOnDrop(Then::Error.body("partial"))))
        });
    let res = svc.oneshot(Request::new(Full::default())).await.unwrap();
    let mut body = res.into_body();
    assert_eq!(
        body.frame().await.unwrap().unwrap().into_data().unwrap(),
        "partial"
    );
    // The error was logged; the server is handed one that says only that the body failed.
    let err = body.frame().await.unwrap().unwrap_err();
    assert_eq!(err.to_string(), "the response body failed");
    assert!(body.frame().await.is_none());
    assert!(body.frame().await.is_none());
    drop(body);
    let logs = logs.text();
    assert_eq!(
        logs.matches("the response body failed while it streamed")
            .count(),
        1,
        "{logs}"
    );
    assert!(
        logs.contains("the response body panicked while it was dropped"),
        "{logs}"
    );
    assert!(logs.contains("the body's drop panicked too"), "{logs}");
}

// ---------------------------------------------------------------------------------------------
// gRPC

/// A gRPC message frame carrying `message`.
fn grpc_frame(message: &str) -> Bytes {
    use prost::Message as _;
    let encoded = Echo {
        message: message.to_owned(),
    }
    .encode_to_vec();
    let mut frame = BytesMut::new();
    frame.put_u8(0);
    frame.put_u32(encoded.len() as u32);
    frame.put_slice(&encoded);
    frame.freeze()
}

/// A hand-written gRPC endpoint behind the layer: it answers every call with one message
/// (`"first"`; in base64 for `-web-text`), then fails as `then` says.
fn grpc_app(
    then: Then,
) -> impl tower::Service<
    Request<hyper::body::Incoming>,
    Response = Response<tower_webhook::error::ResponseBody<Failing>>,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
+ Send
+ 'static {
    ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(move |req: Request<hyper::body::Incoming>| async move {
            use base64::Engine as _;
            let content_type = req.headers()["content-type"].clone();
            let first = if content_type
                .as_bytes()
                .starts_with(b"application/grpc-web-text")
            {
                let text = base64::engine::general_purpose::STANDARD.encode(grpc_frame("first"));
                Bytes::from(text)
            } else {
                grpc_frame("first")
            };
            let mut res = Response::new(then.body(first));
            res.headers_mut().insert("content-type", content_type);
            Ok::<_, Infallible>(res)
        })
}

/// A real tonic client calls the hand-written endpoint over HTTP/2: it reads the message,
/// then the status the trailers carry.
async fn tonic_call(addr: std::net::SocketAddr) -> tonic::Status {
    let request = tonic::Request::new(Echo {
        message: "hello".to_owned(),
    });
    tokio::time::timeout(Duration::from_secs(10), echo::say(addr, request))
        .await
        .expect("the call ends")
        .expect_err("the call fails after its message")
}

#[tokio::test]
async fn grpc_a_body_that_panics_ends_the_call_with_internal() {
    let (logs, _guard) = Logs::capture();
    let addr = serve_one(Http::Two, grpc_app(Then::Panic)).await;
    let status = tonic_call(addr).await;
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    assert_eq!(status.message(), "Internal Server Error");
    let logs = logs.text();
    assert!(logs.contains(PANIC), "{logs}");
    assert!(logs.contains("grpc_status=13"), "{logs}");
}

#[tokio::test]
async fn grpc_a_body_error_ends_the_call_with_its_mapped_code() {
    let (logs, _guard) = Logs::capture();
    let addr = serve_one(Http::Two, grpc_app(Then::Timeout)).await;
    let status = tonic_call(addr).await;
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");

    let addr = serve_one(Http::Two, grpc_app(Then::Error)).await;
    let status = tonic_call(addr).await;
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    // An unknown error's text describes internals: the client gets none of it.
    assert!(!status.message().contains("upstream"), "{status:?}");
    let logs = logs.text();
    assert!(logs.contains("upstream connection lost"), "{logs}");
    assert!(logs.contains("grpc_status=4"), "{logs}");
}

/// A real tonic server whose server-streaming method sends one message, then its stream
/// panics: the tonic client gets the message, then `Internal`, and the server goes on.
#[tokio::test]
async fn tonic_a_stream_that_panics_ends_the_call_with_internal() {
    let (logs, _guard) = Logs::capture();
    let (addr, incoming) = incoming::loopback().await;
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(WebhookErrorLayer::new())
            .add_service(count::CountService)
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    for _ in 0..2 {
        let mut client = tonic::client::Grpc::new(channel.clone());
        client.ready().await.unwrap();
        let request = tonic::Request::new(Echo {
            message: "count".to_owned(),
        });
        let mut stream = client
            .server_streaming(
                request,
                http::uri::PathAndQuery::from_static(count::COUNT),
                echo::codec(),
            )
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().unwrap();
        assert_eq!(first.message, "one");
        let status = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the stream ends")
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
        assert!(!status.message().contains("s3cr3t"), "{status:?}");
    }
    let logs = logs.text();
    assert_eq!(logs.matches(PANIC).count(), 2, "{logs}");
    server.abort();
}

/// A server-streaming method, written by hand: `test.Count/Count` sends `"one"`, then its
/// stream panics.
mod count {
    use std::convert::Infallible;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures_util::stream::{self, BoxStream, StreamExt};
    use http::{Request, Response};
    use tonic::Status;

    use super::echo::{Echo, codec};

    pub(super) const COUNT: &str = "/test.Count/Count";

    #[derive(Clone, Debug, Default)]
    pub(super) struct CountService;

    impl tonic::server::NamedService for CountService {
        const NAME: &'static str = "test.Count";
    }

    struct Count;

    impl tonic::server::ServerStreamingService<Echo> for Count {
        type Response = Echo;
        type ResponseStream = BoxStream<'static, Result<Echo, Status>>;
        type Future = std::future::Ready<Result<tonic::Response<Self::ResponseStream>, Status>>;

        fn call(&mut self, _request: tonic::Request<Echo>) -> Self::Future {
            let first = stream::iter([Ok(Echo {
                message: "one".to_owned(),
            })]);
            // It waits once, as a stream on its source does, so tonic sends the first message.
            let mut waited = false;
            let broken = stream::poll_fn(move |cx| -> Poll<Option<Result<Echo, Status>>> {
                if !std::mem::replace(&mut waited, true) {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                panic!("{}", super::PANIC)
            });
            std::future::ready(Ok(tonic::Response::new(first.chain(broken).boxed())))
        }
    }

    impl tower::Service<Request<tonic::body::Body>> for CountService {
        type Response = Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<tonic::body::Body>) -> Self::Future {
            Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(codec());
                Ok(grpc.server_streaming(Count, req).await)
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// gRPC-web: the trailers are the last message of the body

/// Sends a gRPC-web call typed `content_type` over HTTP/1.1 and returns the decoded body: the
/// response is complete (chunked, with its last chunk).
async fn grpc_web_call(addr: std::net::SocketAddr, content_type: &str) -> Vec<u8> {
    let request = format!(
        "POST /test.Echo/Say HTTP/1.1\r\nhost: test\r\ncontent-type: {content_type}\r\n\
         content-length: 0\r\nconnection: close\r\n\r\n"
    );
    let received = exchange(addr, request.as_bytes()).await;
    let split = received
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    let head = String::from_utf8_lossy(&received[..split]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    dechunk(&received[split..])
}

/// The content of a chunked body, which must end with its last chunk.
fn dechunk(mut chunked: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = chunked
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk size line");
        let size = usize::from_str_radix(std::str::from_utf8(&chunked[..line_end]).unwrap(), 16)
            .expect("a hex chunk size");
        chunked = &chunked[line_end + 2..];
        if size == 0 {
            assert_eq!(chunked, b"\r\n", "the body ends after its last chunk");
            return body;
        }
        body.extend_from_slice(&chunked[..size]);
        assert_eq!(&chunked[size..size + 2], b"\r\n");
        chunked = &chunked[size + 2..];
    }
}

/// Splits a gRPC-web body into its frames: (flags, payload).
fn web_frames(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while !body.is_empty() {
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        frames.push((body[0], body[5..5 + len].to_vec()));
        body = &body[5 + len..];
    }
    frames
}

#[tokio::test]
async fn grpc_web_a_body_that_panics_ends_with_a_trailer_frame() {
    let (_logs, _guard) = Logs::capture();
    let addr = serve_one(Http::One, grpc_app(Then::Panic)).await;
    let body = grpc_web_call(addr, "application/grpc-web+proto").await;
    let frames = web_frames(&body);
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[0].0, 0);
    assert_eq!(&frames[0].1[..], &grpc_frame("first")[5..]);
    assert_eq!(frames[1].0, 0x80, "the trailer frame");
    let trailers = String::from_utf8(frames[1].1.clone()).unwrap();
    assert_eq!(
        trailers,
        "grpc-status:13\r\ngrpc-message:Internal Server Error\r\n"
    );
}

#[tokio::test]
async fn grpc_web_text_gets_its_trailer_frame_in_base64() {
    use base64::Engine as _;
    let (_logs, _guard) = Logs::capture();
    let addr = serve_one(Http::One, grpc_app(Then::Timeout)).await;
    // The endpoint's first message, in base64, then the layer's trailer frame, in base64.
    let body = grpc_web_call(addr, "application/grpc-web-text").await;
    let first = base64::engine::general_purpose::STANDARD.encode(grpc_frame("first"));
    assert_eq!(&body[..first.len()], first.as_bytes());
    let trailer = base64::engine::general_purpose::STANDARD
        .decode(&body[first.len()..])
        .expect("base64");
    let frames = web_frames(&trailer);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].0, 0x80);
    let trailers = String::from_utf8(frames[0].1.clone()).unwrap();
    assert!(trailers.starts_with("grpc-status:4\r\n"), "{trailers}");
}

/// Real parts end to end: a tonic server behind tonic-web's `GrpcWebLayer`, its streaming
/// method panicking after one message, called by a tonic client through tonic-web's
/// `GrpcWebClientLayer` over HTTP/1.1. The client reads the layer's trailer frame as the call's
/// status.
#[tokio::test]
async fn tonic_web_client_reads_the_trailer_frame_of_a_stream_that_panicked() {
    use tower::Layer as _;
    let (logs, _guard) = Logs::capture();
    let app = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .layer(tonic_web::GrpcWebLayer::new())
        .service(count::CountService);
    let addr = serve_one(Http::One, app).await;

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let web = tonic_web::GrpcWebClientLayer::new().layer(client);
    let origin: http::Uri = format!("http://{addr}").parse().unwrap();
    let mut grpc = tonic::client::Grpc::with_origin(web, origin);
    grpc.ready().await.unwrap();
    let request = tonic::Request::new(Echo {
        message: "count".to_owned(),
    });
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        let mut stream = grpc
            .server_streaming(
                request,
                http::uri::PathAndQuery::from_static(count::COUNT),
                echo::codec(),
            )
            .await?
            .into_inner();
        let first = stream.message().await?;
        let end = stream.message().await;
        Ok::<_, tonic::Status>((first, end))
    })
    .await
    .expect("the call ends");
    let (first, end) = outcome.expect("the call starts and sends its first message");
    assert_eq!(first.unwrap().message, "one");
    let status = end.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    assert_eq!(status.message(), "Internal Server Error");
    assert!(logs.text().contains(PANIC));
}
