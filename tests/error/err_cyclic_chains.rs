//! WebhookErrorLayer: cyclic error chains, 413 and the connection, the pushback of a `CircuitOpen`
//! answered by tonic.

use crate::hyper_one;
use crate::logs;

use std::error::Error;
use std::fmt;
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_one::{Http, http2_sender, read_head, serve_one};
use logs::Logs;
use serde_json::Value;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_webhook::error::{WebhookErrorLayer, types};

/// Every test here logs through its own subscriber (see `tests/common/logs.rs`).
fn capture_logs() -> (Logs, tracing::subscriber::DefaultGuard) {
    Logs::capture()
}

/// Runs `f` on a thread of its own and waits for it at most 20 s: a walk that never ends fails
/// the test instead of hanging the suite (the looping thread is then left behind).
fn within_deadline<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the error's chain was walked forever")
}

/// Runs the future `make` makes on a current-thread runtime, within the deadline.
fn run<T: Send + 'static, F: std::future::Future<Output = T>>(
    make: impl FnOnce() -> F + Send + 'static,
) -> T {
    within_deadline(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(make())
    })
}

// ---------------------------------------------------------------------------------------------
// Cyclic source chains

/// A broken `Error` whose `source()` is itself.
#[derive(Debug)]
struct OwnSource;

impl fmt::Display for OwnSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("i am my own cause")
    }
}

impl Error for OwnSource {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(self)
    }
}

/// Two errors, each the other's source.
#[derive(Debug)]
struct Ping(usize);

static PAIR: [Ping; 2] = [Ping(0), Ping(1)];

impl fmt::Display for Ping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ping {}", self.0)
    }
}

impl Error for Ping {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&PAIR[(self.0 + 1) % 2])
    }
}

/// An error that wraps `inner` and names it as its source.
#[derive(Debug)]
struct Wrapped(BoxError);

impl fmt::Display for Wrapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("could not handle the delivery")
    }
}

impl Error for Wrapped {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.0)
    }
}

/// The layer answered an error whose chain loops by walking it forever (and building an
/// endless log line): the request hung and a core spun at 100 %.
#[test]
fn an_error_whose_source_is_itself_is_answered_500() {
    let (logs, res) = run(|| async {
        let (logs, _guard) = capture_logs();
        let svc = ServiceBuilder::new()
            .layer(WebhookErrorLayer::new())
            .service_fn(|_req: Request<Full<Bytes>>| async {
                Err::<Response<Full<Bytes>>, BoxError>(Box::new(Wrapped(Box::new(OwnSource))))
            });
        let res = svc.oneshot(Request::new(Full::default())).await.unwrap();
        (logs, res)
    });
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let text = logs.text();
    assert!(
        text.contains("could not handle the delivery: i am my own cause"),
        "{text}"
    );
    // The loop is cut short and said to be: not repeated as far as the walk goes.
    assert!(text.matches("i am my own cause").count() <= 2, "{text}");
    assert!(text.contains("i am my own cause: ..."), "{text}");
}

#[test]
fn an_error_in_a_cycle_of_two_is_answered_500() {
    let res = run(|| async {
        let (_logs, _guard) = capture_logs();
        let svc = ServiceBuilder::new()
            .layer(WebhookErrorLayer::new())
            .service_fn(|_req: Request<Full<Bytes>>| async {
                Err::<Response<Full<Bytes>>, BoxError>(Box::new(Wrapped(Box::new(Ping(0)))))
            });
        svc.oneshot(Request::new(Full::default())).await.unwrap()
    });
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

/// A known error before the loop is still recognised.
#[test]
fn a_known_error_before_a_cycle_is_still_recognised() {
    use tower_webhook::error::HttpError;
    /// A recognised error whose chain goes on into a loop.
    #[derive(Debug)]
    struct Conflict;
    impl fmt::Display for Conflict {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("conflict")
        }
    }
    impl Error for Conflict {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&PAIR[0])
        }
    }
    impl HttpError for Conflict {
        fn status(&self) -> StatusCode {
            StatusCode::CONFLICT
        }
        fn problem_type(&self) -> &str {
            "urn:example:conflict"
        }
    }
    let res = run(|| async {
        let (_logs, _guard) = capture_logs();
        let svc = ServiceBuilder::new()
            .layer(WebhookErrorLayer::new().recognize::<Conflict>())
            .service_fn(|_req: Request<Full<Bytes>>| async {
                Err::<Response<Full<Bytes>>, BoxError>(Box::new(Wrapped(Box::new(Conflict))))
            });
        svc.oneshot(Request::new(Full::default())).await.unwrap()
    });
    assert_eq!(res.status(), StatusCode::CONFLICT);
}

/// `CircuitOpen::find` and `is_in` walked a cyclic chain forever.
#[test]
fn circuit_open_find_ends_on_a_cyclic_chain() {
    use tower_webhook::circuit_breaker::CircuitOpen;
    let found = within_deadline(|| {
        let err = Wrapped(Box::new(OwnSource));
        (
            CircuitOpen::find(&err).is_some(),
            CircuitOpen::is_in(&PAIR[1]),
        )
    });
    assert_eq!(found, (false, false));
}

/// The retry policy walked a failed call's cyclic chain forever.
#[test]
fn the_retry_policy_ends_on_a_cyclic_chain() {
    use tower_webhook::retry::RetryPolicy;
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    let res = run(move || async move {
        let svc = ServiceBuilder::new()
            .layer(
                RetryPolicy::new()
                    .backoff(Duration::from_millis(1), Duration::from_millis(2))
                    .into_layer(),
            )
            .service_fn(move |_req: Request<String>| {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async { Err::<Response<String>, BoxError>(Box::new(Wrapped(Box::new(Ping(1))))) }
            });
        svc.oneshot(Request::get("/").body(String::new()).unwrap())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    assert_eq!(res.unwrap_err(), "could not handle the delivery");
    // A GET failing with an unknown error is retried as usual.
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 4);
}

/// A signature layer's body error whose cause loops was classified by walking it forever.
#[test]
fn a_signature_body_error_with_a_cyclic_cause_is_a_400() {
    use tower_webhook::error::HttpError;
    use tower_webhook::signature::SignatureValidationError;
    let status = within_deadline(|| {
        SignatureValidationError::Body(Box::new(Wrapped(Box::new(OwnSource)))).status()
    });
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

// ---------------------------------------------------------------------------------------------
// 413 and the connection

/// Reads the body of the answer whose head is `head`, then checks the server closes the
/// connection.
async fn read_body_then_eof(stream: &mut tokio::net::TcpStream, head: &str) -> Value {
    use tokio::io::AsyncReadExt;
    let length: usize = head
        .split("\r\n")
        .find_map(|line| line.strip_prefix("content-length: "))
        .unwrap()
        .parse()
        .unwrap();
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.unwrap();
    let mut rest = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut rest))
        .await
        .expect("the server closes the connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "the connection stays open after the answer");
    serde_json::from_slice(&body).unwrap()
}

/// A handler that reads its body through a 16-byte limit.
async fn read_at_most_16(
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, BoxError> {
    let body = Limited::new(req.into_body(), 16).collect().await?;
    Ok(Response::new(Full::new(body.to_bytes())))
}

/// A body cut by a length limit while it was read leaves the rest of it on the connection:
/// hyper does not keep such a connection, but the 413 did not say so, so a client with a
/// connection pool could send its next delivery on a connection about to close, and lose it.
#[tokio::test]
async fn a_413_from_a_body_cut_mid_way_says_the_connection_closes() {
    use tokio::io::AsyncWriteExt;
    let (_logs, _guard) = capture_logs();
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(read_at_most_16);
    let addr = serve_one(Http::One, svc).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // 64 of the 4096 bytes announced: the limit stops the read with most of the body unsent.
    let mut request = b"POST /hook HTTP/1.1\r\nhost: a\r\ncontent-length: 4096\r\n\r\n".to_vec();
    request.extend_from_slice(&[b'x'; 64]);
    stream.write_all(&request).await.unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("http/1.1 413 "), "{head}");
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    let doc = read_body_then_eof(&mut stream, &head).await;
    assert_eq!(doc["type"], types::PAYLOAD_TOO_LARGE);
}

/// The same for a 413 decided from `Content-Length` before anything was read: the signature
/// layer refuses a body announced larger than its limit, which stays unread on the connection.
#[tokio::test]
async fn a_413_decided_from_content_length_says_the_connection_closes() {
    use tokio::io::AsyncWriteExt;
    use tower_webhook::signature::SignatureLayer;
    let (_logs, _guard) = capture_logs();
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .map_request(|req: Request<hyper::body::Incoming>| req.map(axum::body::Body::new))
        .layer(
            SignatureLayer::github("It's a Secret to Everybody")
                .unwrap()
                .max_body_size(16),
        )
        .service_fn(|_req: Request<axum::body::Body>| async {
            Ok::<_, BoxError>(Response::new(Full::<Bytes>::default()))
        });
    let addr = serve_one(Http::One, svc).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /hook HTTP/1.1\r\nhost: a\r\ncontent-length: 4096\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("http/1.1 413 "), "{head}");
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    let doc = read_body_then_eof(&mut stream, &head).await;
    assert_eq!(doc["type"], types::PAYLOAD_TOO_LARGE);
}

/// HTTP/2 has no `Connection` header (RFC 9113, section 8.2.2): a 413 there ends its stream
/// only, and the connection serves the next request.
#[tokio::test]
async fn a_413_over_http2_has_no_connection_header() {
    let (_logs, _guard) = capture_logs();
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(read_at_most_16);
    let addr = serve_one(Http::Two, svc).await;
    let mut sender = http2_sender(addr).await;
    for _ in 0..2 {
        let res = sender
            .send_request(
                Request::post(format!("http://{addr}/hook"))
                    .body(Full::new(Bytes::from(vec![b'x'; 64])))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(res.headers().get("connection").is_none());
    }
}

/// gRPC-web runs over HTTP/1.1 too: its call cut by the same length limit is answered
/// trailers-only (`OUT_OF_RANGE`), with the rest of the body still on the connection, which
/// hyper does not keep either. The answer said nothing of it.
#[tokio::test]
async fn a_grpc_web_call_cut_by_a_length_limit_says_the_connection_closes() {
    use tokio::io::AsyncWriteExt;
    let (_logs, _guard) = capture_logs();
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(read_at_most_16);
    let addr = serve_one(Http::One, svc).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = b"POST /test.Echo/Say HTTP/1.1\r\nhost: a\r\n\
        content-type: application/grpc-web+proto\r\ncontent-length: 4096\r\n\r\n"
        .to_vec();
    request.extend_from_slice(&[0; 64]);
    stream.write_all(&request).await.unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("http/1.1 200 "), "{head}");
    assert!(head.contains("\r\ngrpc-status: 11\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
}

// ---------------------------------------------------------------------------------------------
// A tonic::Status's pushback

/// A `tonic::Status` error whose author set `grpc-retry-pushback-ms` (a rate limiter, an
/// upstream's answer passed on) lost it: the gRPC caller got the code without the wait, and an
/// HTTP caller no `Retry-After`.
#[tokio::test]
async fn a_tonic_status_keeps_its_pushback() {
    let (_logs, _guard) = capture_logs();
    fn busy() -> tonic::Status {
        let mut status = tonic::Status::unavailable("try later");
        status
            .metadata_mut()
            .insert("grpc-retry-pushback-ms", "2500".parse().unwrap());
        status
    }
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(|_req: Request<Full<Bytes>>| async {
            Err::<Response<Full<Bytes>>, BoxError>(busy().into())
        });
    let grpc = Request::post("/test.Echo/Say")
        .header("content-type", "application/grpc")
        .body(Full::default())
        .unwrap();
    let res = svc.clone().oneshot(grpc).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "14");
    assert_eq!(res.headers()["grpc-retry-pushback-ms"], "2500");

    let res = svc.oneshot(Request::new(Full::default())).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "3");

    // A negative pushback asks not to retry, and so does one that is no whole number (gRPC
    // A6): a gRPC caller is asked the same, an HTTP caller gets no wait. `-0` is a retry
    // without a wait.
    for (value, told) in [("-1", "-1"), ("soon", "-1"), ("-", "-1"), ("-0", "0")] {
        let svc = ServiceBuilder::new()
            .layer(WebhookErrorLayer::new())
            .service_fn(move |_req: Request<Full<Bytes>>| async move {
                let mut status = tonic::Status::unavailable("busy");
                status
                    .metadata_mut()
                    .insert("grpc-retry-pushback-ms", value.parse().unwrap());
                Err::<Response<Full<Bytes>>, BoxError>(status.into())
            });
        let grpc = Request::post("/test.Echo/Say")
            .header("content-type", "application/grpc")
            .body(Full::default())
            .unwrap();
        let res = svc.clone().oneshot(grpc).await.unwrap();
        assert_eq!(res.headers()["grpc-status"], "14", "{value}");
        assert_eq!(res.headers()["grpc-retry-pushback-ms"], told, "{value}");
        let res = svc.oneshot(Request::new(Full::default())).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(res.headers().get("grpc-retry-pushback-ms").is_none());
        if told == "-1" {
            assert!(res.headers().get("retry-after").is_none(), "{value}");
        }
    }
}
