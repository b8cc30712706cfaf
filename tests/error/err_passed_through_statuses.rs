//! WebhookErrorLayer: a 413 or 408 passed through from an inner layer and the connection, the media
//! type of a gRPC answer, and problem extension members.

use crate::axum_serve;
use crate::hyper_one;
use crate::logs;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_one::{Http, http2_sender, read_head, serve_one};
use logs::Logs;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::{BoxError, ServiceBuilder};
use tower_webhook::error::{Problem, WebhookErrorLayer};

/// Every test here logs through its own subscriber (see `tests/common/logs.rs`).
fn capture_logs() -> (Logs, tracing::subscriber::DefaultGuard) {
    Logs::capture()
}

/// How many `connection` header lines the (lower-cased) head has, and their values.
fn connection_lines(head: &str) -> Vec<&str> {
    head.split("\r\n")
        .filter_map(|line| line.strip_prefix("connection:"))
        .map(str::trim)
        .collect()
}

/// Reads the rest of the stream, up to 10 s: the server must close the connection.
async fn expect_eof(stream: &mut tokio::net::TcpStream) {
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .expect("the server closes the connection")
        .ok();
}

// ---------------------------------------------------------------------------------------------
// A 413 (or 408) made by an inner layer or the handler, passed through

/// An axum app whose handler takes its body as `Bytes` under a 16-byte `DefaultBodyLimit`,
/// behind `WebhookErrorLayer`, on one HTTP/1.1 connection.
async fn serve_axum_with_body_limit() -> std::net::SocketAddr {
    use axum::extract::DefaultBodyLimit;
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(|body: Bytes| async move { body }),
        )
        .layer(DefaultBodyLimit::max(16));
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service(app);
    serve_one(Http::One, svc).await
}

/// axum answers a body over its `DefaultBodyLimit` with a plain 413 of its own, with most of
/// the refused body still on the connection. The layer's own 413 says `Connection: close`; this
/// one, passed through, did not, so a client with a connection pool could send its next
/// delivery on a connection hyper is about to close.
#[tokio::test]
async fn an_axum_body_limit_413_over_http1_says_the_connection_closes() {
    let (_logs, _guard) = capture_logs();
    let addr = serve_axum_with_body_limit().await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = b"POST /hook HTTP/1.1\r\nhost: a\r\ncontent-length: 4096\r\n\r\n".to_vec();
    request.extend_from_slice(&[b'x'; 64]);
    stream.write_all(&request).await.unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("http/1.1 413 "), "{head}");
    assert_eq!(connection_lines(&head), ["close"], "{head}");
    expect_eof(&mut stream).await;
}

/// What a handler sends for `/status/{code}`, with the `connection` header of `?connection=`.
async fn status_handler(
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, BoxError> {
    let code: u16 = req.uri().path().trim_start_matches("/status/").parse()?;
    let mut res = Response::new(Full::new(Bytes::from_static(b"refused")));
    *res.status_mut() = StatusCode::from_u16(code)?;
    if let Some(value) = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("connection="))
    {
        res.headers_mut()
            .insert("connection", value.replace("%20", " ").parse()?);
    }
    Ok(res)
}

/// Sends `GET path` on `stream` and reads the head and the 7-byte body of the answer.
async fn get_on(stream: &mut tokio::net::TcpStream, path: &str) -> String {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: a\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(stream).await;
    let mut body = [0; 7];
    stream.read_exact(&mut body).await.unwrap();
    assert_eq!(&body, b"refused");
    head
}

/// A handler's own `StatusCode::PAYLOAD_TOO_LARGE` gets `Connection: close` too, once, whatever
/// `connection` header the handler set: `keep-alive` is replaced, `close` is not repeated, and
/// other options are kept beside it.
#[tokio::test]
async fn a_handler_413_over_http1_says_close_once() {
    let (_logs, _guard) = capture_logs();
    for (query, expected) in [
        ("", "close"),
        ("?connection=keep-alive", "close"),
        ("?connection=Close", "Close"),
        ("?connection=x-trace,%20close", "x-trace, close"),
        ("?connection=x-trace", "close, x-trace"),
        ("?connection=keep-alive,%20x-trace", "close, x-trace"),
    ] {
        let svc = ServiceBuilder::new()
            .layer(WebhookErrorLayer::new())
            .service_fn(status_handler);
        let addr = serve_one(Http::One, svc).await;
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = get_on(&mut stream, &format!("/status/413{query}")).await;
        assert!(head.starts_with("http/1.1 413 "), "{head}");
        assert_eq!(
            connection_lines(&head),
            [expected.to_ascii_lowercase()],
            "{query}: {head}"
        );
        expect_eof(&mut stream).await;
    }
}

/// Other statuses pass through as they are, and the connection serves the next request.
#[tokio::test]
async fn other_passed_through_statuses_keep_the_connection() {
    let (_logs, _guard) = capture_logs();
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(status_handler);
    let addr = serve_one(Http::One, svc).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    for code in [200, 400, 412, 414, 429, 500] {
        let head = get_on(&mut stream, &format!("/status/{code}")).await;
        assert!(head.starts_with(&format!("http/1.1 {code} ")), "{head}");
        assert!(connection_lines(&head).is_empty(), "{head}");
    }
}

/// tower-http's `TimeoutLayer` answers a handler past its deadline with a plain 408, the
/// request body maybe unread: a 408 says the server closes the connection (RFC 9110, section
/// 15.5.9), as the layer's own 408 does.
#[tokio::test]
async fn a_tower_http_timeout_408_over_http1_says_the_connection_closes() {
    let (_logs, _guard) = capture_logs();
    #[allow(deprecated)] // `TimeoutLayer::new` is what tower-http's docs still show
    let timeout = tower_http::timeout::TimeoutLayer::new(Duration::from_millis(50));
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .layer(timeout)
        .service_fn(|_req: Request<hyper::body::Incoming>| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, BoxError>(Response::new(Full::<Bytes>::default()))
        });
    let addr = serve_one(Http::One, svc).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("http/1.1 408 "), "{head}");
    assert_eq!(connection_lines(&head), ["close"], "{head}");
}

/// HTTP/2 has no `Connection` header (RFC 9113, section 8.2.2): a passed-through 413 there
/// ends its stream only.
#[tokio::test]
async fn a_passed_through_413_over_http2_has_no_connection_header() {
    let (_logs, _guard) = capture_logs();
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(status_handler);
    let addr = serve_one(Http::Two, svc).await;
    let mut sender = http2_sender(addr).await;
    for _ in 0..2 {
        let res = sender
            .send_request(
                Request::get(format!("http://{addr}/status/413"))
                    .body(Full::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(res.headers().get("connection").is_none());
    }
}

// ---------------------------------------------------------------------------------------------
// The media type of a gRPC answer

/// A service that refuses every call with a 403 problem.
async fn refuse(_req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, BoxError> {
    Err(Problem::new(StatusCode::FORBIDDEN).into())
}

/// Posts a gRPC-web call with `content_type` over HTTP/1.1 and returns the answer's head.
async fn grpc_web_call(content_type: &str) -> String {
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(refuse);
    let addr = serve_one(Http::One, svc).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /test.Echo/Say HTTP/1.1\r\nhost: a\r\ncontent-type: {content_type}\r\n\
         content-length: 5\r\n\r\n\0\0\0\0\0"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    read_head(&mut stream).await
}

/// The content type of an answer's (lower-cased) head.
fn content_type(head: &str) -> &str {
    head.split("\r\n")
        .find_map(|line| line.strip_prefix("content-type: "))
        .unwrap()
}

/// A gRPC-web client that sent `+json` or `+proto` got a trailers-only answer typed
/// `application/grpc-web`, without its codec: connect-es checks the answer's codec against its
/// own, and reported "unexpected response content type" (`INTERNAL`) instead of the refusal.
/// tonic-web answers with the codec too. The answer now carries the request's media type
/// (without its parameters).
#[tokio::test]
async fn a_grpc_web_answer_keeps_the_request_s_codec() {
    let (_logs, _guard) = capture_logs();
    for (sent, answered) in [
        ("application/grpc-web+proto", "application/grpc-web+proto"),
        ("application/grpc-web+json", "application/grpc-web+json"),
        (
            "application/grpc-web+json; charset=utf-8",
            "application/grpc-web+json",
        ),
        (
            "application/grpc-web-text+proto",
            "application/grpc-web-text+proto",
        ),
        ("Application/gRPC-Web+Proto", "application/grpc-web+proto"),
        ("application/grpc-web", "application/grpc-web"),
        ("application/grpc-web-text", "application/grpc-web-text"),
        ("application/grpc-web;charset=utf-8", "application/grpc-web"),
    ] {
        let head = grpc_web_call(sent).await;
        assert!(head.starts_with("http/1.1 200 "), "{head}");
        assert!(head.contains("\r\ngrpc-status: 7\r\n"), "{head}");
        assert_eq!(content_type(&head), answered, "{sent}");
    }
}

/// A native gRPC call over HTTP/2 with a codec gets its answer in the same codec.
#[tokio::test]
async fn a_native_grpc_answer_keeps_the_request_s_codec() {
    let (_logs, _guard) = capture_logs();
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(refuse);
    let addr = serve_one(Http::Two, svc).await;
    let mut sender = http2_sender(addr).await;
    for (sent, answered) in [
        ("application/grpc+proto", "application/grpc+proto"),
        ("application/grpc+json", "application/grpc+json"),
        ("application/grpc", "application/grpc"),
    ] {
        let res = sender
            .send_request(
                Request::post(format!("http://{addr}/test.Echo/Say"))
                    .header("content-type", sent)
                    .header("te", "trailers")
                    .body(Full::new(Bytes::from_static(&[0; 5])))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["grpc-status"], "7");
        assert_eq!(res.headers()["content-type"], answered, "{sent}");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert!(body.is_empty());
    }
}

// ---------------------------------------------------------------------------------------------
// Extension members (RFC 9457, section 3.2)

/// An axum app behind `WebhookErrorLayer`: `/credit` answers an "out of credit" problem with
/// extension members, `/named?{name}` one with an extension member named from the query
/// string (as a name taken from data would be).
async fn serve_problems() -> std::net::SocketAddr {
    use axum::routing::get;
    let out_of_credit = || async {
        Err::<(), _>(
            Problem::new(StatusCode::FORBIDDEN)
                .with_type("https://example.com/probs/out-of-credit")
                .with_title("You do not have enough credit.")
                .with_detail("Your current balance is 30, but that costs 50.")
                .with_extension("balance", 30)
                .with_extension("accounts", json!(["/account/12345", "/account/67890"]))
                .with_extension("limits", json!({"daily": 100, "monthly": null})),
        )
    };
    let named = |uri: axum::http::Uri| async move {
        let name = uri.query().unwrap_or_default().to_owned();
        Err::<(), _>(
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY)
                .with_detail("a field is wrong")
                .with_extension(name, "from data"),
        )
    };
    let app = axum::Router::new()
        .route("/credit", get(out_of_credit))
        .route("/named", get(named));
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service(app);
    axum_serve::serve(svc).await.0
}

/// GETs `path` from `addr` with a request id; the answer's status, content type and document.
async fn get_problem(addr: std::net::SocketAddr, path: &str) -> (u16, String, Value) {
    let res = crate::client::new()
        .get(format!("http://{addr}{path}"))
        .header("x-request-id", "req-7")
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
    let doc = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    (status, content_type, doc)
}

/// `Problem` had no extension members (RFC 9457, section 3.2), so an API could not tell its
/// clients the `balance` of an "out of credit" problem in the document. They are written as
/// top-level members, beside the standard ones.
#[tokio::test]
async fn a_problem_s_extension_members_reach_the_client() {
    let (_logs, _guard) = capture_logs();
    let addr = serve_problems().await;
    let (status, content_type, doc) = get_problem(addr, "/credit").await;
    assert_eq!(status, 403);
    assert_eq!(content_type, "application/problem+json");
    assert_eq!(
        doc,
        json!({
            "type": "https://example.com/probs/out-of-credit",
            "title": "You do not have enough credit.",
            "status": 403,
            "detail": "Your current balance is 30, but that costs 50.",
            "instance": "req-7",
            "balance": 30,
            "accounts": ["/account/12345", "/account/67890"],
            "limits": {"daily": 100, "monthly": null},
        })
    );
}

/// A name taken from data may be a standard member's: it does not replace the member nor
/// panic, the rest of the document is as it would be, and a warning says why.
#[tokio::test]
async fn an_extension_named_like_a_standard_member_is_left_out() {
    let (logs, _guard) = capture_logs();
    let addr = serve_problems().await;
    for name in ["type", "title", "status", "detail", "instance"] {
        let (status, _, doc) = get_problem(addr, &format!("/named?{name}")).await;
        assert_eq!(status, 422, "{name}");
        assert_eq!(
            doc,
            json!({
                "type": "about:blank",
                "title": "Unprocessable Entity",
                "status": 422,
                "detail": "a field is wrong",
                "instance": "req-7",
            }),
            "{name}"
        );
    }
    let text = logs.text();
    assert_eq!(
        text.matches("cannot take the name of a standard member")
            .count(),
        5,
        "{text}"
    );
    assert!(text.contains("member=\"instance\""), "{text}");
    // Names are case-sensitive in JSON: `Status` is an extension like any other.
    let (_, _, doc) = get_problem(addr, "/named?Status").await;
    assert_eq!(doc["Status"], "from data");
    assert_eq!(doc["status"], 422);
    assert_eq!(doc.as_object().unwrap().len(), 6, "{doc}");
}

/// A gRPC caller gets no document, so no extension member either; the answer is the usual one.
#[tokio::test]
async fn a_grpc_caller_gets_the_code_of_a_problem_with_extensions() {
    let (_logs, _guard) = capture_logs();
    let addr = serve_problems().await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"GET /credit HTTP/1.1\r\nhost: a\r\ncontent-type: application/grpc-web+proto\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("http/1.1 200 "), "{head}");
    assert!(head.contains("\r\ngrpc-status: 7\r\n"), "{head}");
    assert!(!head.contains("/account/"), "{head}");
    assert!(head.contains("\r\ncontent-length: 0\r\n"), "{head}");
}
