//! WebhookErrorLayer: errors wrapped in an `io::Error`, and what a real server sends with a 408
//! (the connection closes over HTTP/1.1, no `Connection` header over HTTP/2).

use crate::axum_serve;
use crate::hyper_one;
use crate::logs;

use std::net::SocketAddr;
use std::time::Duration;

use axum_serve::serve;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_one::{Http, http2_sender, read_head, serve_one};
use logs::Logs;
use serde_json::Value;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_webhook::error::{Problem, WebhookErrorLayer, types};

/// Every test here logs through its own subscriber (see `tests/common/logs.rs`).
fn capture_logs() -> (Logs, tracing::subscriber::DefaultGuard) {
    Logs::capture()
}

// ---------------------------------------------------------------------------------------------
// Errors inside an `io::Error`

/// A handler whose body-reading code works in `io::Result`, as code reading through `AsyncRead`
/// does: a body error becomes `io::Error::other(e)`.
async fn read_body_as_io(req: axum::extract::Request) -> Result<Response<String>, BoxError> {
    let body = Limited::new(req.into_body(), 16)
        .collect()
        .await
        .map_err(std::io::Error::other)?;
    Ok(Response::new(format!("{} bytes", body.to_bytes().len())))
}

/// `io::Error::other(e)` hides `e` from the `source()` chain (its `source()` is `e`'s source),
/// so an oversize body read through io code was answered 500 instead of 413.
#[tokio::test]
async fn a_length_limit_inside_an_io_error_is_413() {
    let (_logs, _guard) = capture_logs();
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(read_body_as_io);
    let (addr, server) = serve(svc).await;

    let res = crate::client::new()
        .post(format!("http://{addr}/hook"))
        .body(vec![b'x'; 1024])
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    let doc: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(doc["type"], types::PAYLOAD_TOO_LARGE);

    // A body within the limit still reaches the handler.
    let res = crate::client::new()
        .post(format!("http://{addr}/hook"))
        .body("small")
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "5 bytes");
    server.abort();
}

/// The same for the crate's own errors and a handler's `Problem`: whatever an `io::Error`
/// carries is recognised, also further down its chain.
#[tokio::test]
async fn an_error_carried_by_an_io_error_is_answered_as_itself() {
    let (_logs, _guard) = capture_logs();
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(|_req: Request<Full<Bytes>>| async {
            let problem =
                Problem::new(StatusCode::UNPROCESSABLE_ENTITY).with_detail("unknown event");
            Err::<Response<Full<Bytes>>, _>(std::io::Error::other(problem))
        });
    let res = svc.oneshot(Request::new(Full::default())).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["detail"], "unknown event");

    // An io::Error whose inner error wraps the recognised one.
    #[derive(Debug, thiserror::Error)]
    #[error("reading the delivery")]
    struct Reading(#[source] tower::timeout::error::Elapsed);
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(|_req: Request<Full<Bytes>>| async {
            let err = std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                Reading(tower::timeout::error::Elapsed::new()),
            );
            Err::<Response<Full<Bytes>>, _>(err)
        });
    let res = svc.oneshot(Request::new(Full::default())).await.unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);

    // A plain io::Error is still an unknown error.
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(|_req: Request<Full<Bytes>>| async {
            Err::<Response<Full<Bytes>>, _>(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
        });
    let res = svc.oneshot(Request::new(Full::default())).await.unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

// ---------------------------------------------------------------------------------------------
// 408 and the connection

/// A handler that reads its whole body; `RequestBodyTimeoutLayer` outside it cuts a stalled one.
async fn read_all(
    req: Request<tower_http::timeout::TimeoutBody<hyper::body::Incoming>>,
) -> Result<Response<Full<Bytes>>, BoxError> {
    let body = req.into_body().collect().await?;
    Ok(Response::new(Full::new(body.to_bytes())))
}

/// Serves one HTTP/1.1 connection: `WebhookErrorLayer` over a 200 ms body timeout.
async fn serve_http1_with_body_timeout() -> SocketAddr {
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            Duration::from_millis(200),
        ))
        .service_fn(read_all);
    serve_one(Http::One, svc).await
}

/// A 408 means the server closes the connection rather than wait (RFC 9110, section 15.5.9: it
/// SHOULD say `Connection: close`). hyper closed the connection of a stalled body after the
/// answer, but the answer did not say so, so a client with a connection pool could send its
/// next delivery on a connection about to close, and lose it.
#[tokio::test]
async fn a_408_over_http1_says_the_connection_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_logs, _guard) = capture_logs();
    let addr = serve_http1_with_body_timeout().await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // 10 of the 100 bytes announced, then nothing.
    stream
        .write_all(b"POST /hook HTTP/1.1\r\nhost: a\r\ncontent-length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("http/1.1 408 "), "{head}");
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    let length: usize = head
        .split("\r\n")
        .find_map(|line| line.strip_prefix("content-length: "))
        .unwrap()
        .parse()
        .unwrap();
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.unwrap();
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["type"], types::TIMEOUT);
    // And the connection does close.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .expect("the server closes the connection")
        .ok();
    assert!(rest.is_empty());
}

/// `/slow` times out, anything else is a conflict.
async fn slow_or_busy(
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, BoxError> {
    if req.uri().path() == "/slow" {
        Err(tower::timeout::error::Elapsed::new().into())
    } else {
        Err(Problem::new(StatusCode::CONFLICT).into())
    }
}

/// The same 408 by `timeout_status`, and other answers keep the connection open.
#[tokio::test]
async fn only_a_408_closes_the_connection() {
    use tokio::io::AsyncWriteExt;
    let (_logs, _guard) = capture_logs();
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new().timeout_status(StatusCode::REQUEST_TIMEOUT))
        .service_fn(slow_or_busy);
    let addr = serve_one(Http::One, svc).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /busy HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("http/1.1 409 "), "{head}");
    assert!(!head.contains("connection:"), "{head}");
    let length: usize = head
        .split("\r\n")
        .find_map(|line| line.strip_prefix("content-length: "))
        .unwrap()
        .parse()
        .unwrap();
    let mut body = vec![0; length];
    tokio::io::AsyncReadExt::read_exact(&mut stream, &mut body)
        .await
        .unwrap();

    // The same connection, then a 408.
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("http/1.1 408 "), "{head}");
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
}

/// HTTP/2 has no `Connection` header (RFC 9113, section 8.2.2): a 408 there is a plain answer
/// on its stream.
#[tokio::test]
async fn a_408_over_http2_has_no_connection_header() {
    let (_logs, _guard) = capture_logs();
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new().timeout_status(StatusCode::REQUEST_TIMEOUT))
        .service_fn(|_req: Request<hyper::body::Incoming>| async {
            Err::<Response<Full<Bytes>>, _>(tower::timeout::error::Elapsed::new())
        });
    let addr = serve_one(Http::Two, svc).await;
    let mut sender = http2_sender(addr).await;
    for _ in 0..2 {
        let res = sender
            .send_request(
                Request::get(format!("http://{addr}/hook"))
                    .body(Full::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::REQUEST_TIMEOUT);
        assert!(res.headers().get("connection").is_none());
        let doc: Value =
            serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(doc["status"], 408);
    }
}

// ---------------------------------------------------------------------------------------------
// The request id in the log

/// A request id with letters past ASCII (hyper takes them in a header) was logged as an empty
/// `request_id`, so the failure could not be found by its id.
#[tokio::test(flavor = "current_thread")]
async fn a_request_id_past_ascii_is_logged_as_it_is() {
    let (logs, _guard) = capture_logs();
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(|_req: Request<Full<Bytes>>| async {
            Err::<Response<Full<Bytes>>, _>(Problem::new(StatusCode::CONFLICT))
        });
    let id = http::HeaderValue::from_bytes("livraison-é7".as_bytes()).unwrap();
    let req = Request::builder()
        .header("x-request-id", id.clone())
        .body(Full::default())
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::CONFLICT);
    // Echoed as it came; not an `instance`, which must be a URI.
    assert_eq!(res.headers()["x-request-id"], id);
    let text = logs.text();
    assert!(text.contains("livraison-é7"), "{text}");
}
