//! WebhookErrorLayer: what a gRPC caller is told of a `tonic::Status`, and errors that panic when
//! dropped.

use crate::axum_serve;
use crate::logs;

use crate::echo;
use crate::incoming;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use logs::Logs;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_webhook::error::{Problem, WebhookErrorLayer};

/// Every test here logs through its own subscriber (see `tests/common/logs.rs`).
fn capture_logs() -> (Logs, tracing::subscriber::DefaultGuard) {
    Logs::capture()
}

// ---------------------------------------------------------------------------------------------
// A tonic::Status's details and metadata

/// Serves `EchoService` on a loopback port behind `WebhookErrorLayer` and a filter that refuses
/// every call with `refuse()`; returns the result of one unary call from a real tonic client.
async fn call_refused_with(refuse: fn() -> tonic::Status) -> tonic::Status {
    use echo::{Echo, EchoService};

    let (addr, incoming) = incoming::loopback().await;
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(WebhookErrorLayer::new())
            .layer(tower::filter::FilterLayer::new(
                move |_req: Request<tonic::body::Body>| {
                    Err::<Request<tonic::body::Body>, BoxError>(refuse().into())
                },
            ))
            .add_service(EchoService)
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });

    let request = tonic::Request::new(Echo {
        message: "hello".to_owned(),
    });
    let status = echo::say(addr, request).await.unwrap_err();
    server.abort();
    status
}

/// The rich error details (`google.rpc.Status`, sent as `grpc-status-details-bin`) and the
/// custom metadata of a client error are what its author wrote for the client, and what a
/// tonic server sends for the same `Status`: the layer dropped both, so a client lost the
/// field violations of an `InvalidArgument`.
#[tokio::test]
async fn a_tonic_client_gets_the_details_and_metadata_of_a_client_error_status() {
    let (_logs, _guard) = capture_logs();
    fn invalid() -> tonic::Status {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert("x-invalid-field", "repository".parse().unwrap());
        metadata.insert_bin(
            "x-trace-bin",
            tonic::metadata::MetadataValue::from_bytes(&[0, 1, 2, 255]),
        );
        tonic::Status::with_details_and_metadata(
            tonic::Code::InvalidArgument,
            "repository is required",
            Bytes::from_static(b"\x08\x03\x12\x16repository is required"),
            metadata,
        )
    }
    let status = call_refused_with(invalid).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "repository is required");
    assert_eq!(
        status.details(),
        b"\x08\x03\x12\x16repository is required",
        "the details reach the client"
    );
    assert_eq!(
        status.metadata().get("x-invalid-field").unwrap(),
        "repository"
    );
    assert_eq!(
        status
            .metadata()
            .get_bin("x-trace-bin")
            .unwrap()
            .to_bytes()
            .unwrap(),
        &[0, 1, 2, 255][..]
    );
}

/// A server error's message is not passed on (it may describe internals), nor are its details
/// (a `DebugInfo` carries a stack trace) or metadata.
#[tokio::test]
async fn a_server_error_status_keeps_its_details_and_metadata_to_itself() {
    let (_logs, _guard) = capture_logs();
    fn internal() -> tonic::Status {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert("x-upstream-host", "db-7.internal".parse().unwrap());
        tonic::Status::with_details_and_metadata(
            tonic::Code::Internal,
            "connection refused by db-7.internal",
            Bytes::from_static(b"stack trace"),
            metadata,
        )
    }
    let status = call_refused_with(internal).await;
    assert_eq!(status.code(), tonic::Code::Internal);
    assert!(!status.message().contains("db-7"));
    assert!(status.details().is_empty());
    assert!(status.metadata().get("x-upstream-host").is_none());
}

/// The metadata cannot replace what the layer answers: the code, the message, the content
/// type, the wait; an upstream's response headers in it are not sent; nor does an HTTP caller
/// get gRPC metadata as headers.
#[tokio::test]
async fn a_status_metadata_does_not_replace_the_answer_s_own_headers() {
    let (_logs, _guard) = capture_logs();
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(|_req: Request<Full<Bytes>>| async {
            let mut status = tonic::Status::not_found("no such installation");
            let metadata = status.metadata_mut();
            metadata.insert("grpc-status", "0".parse().unwrap());
            metadata.insert("grpc-message", "all good".parse().unwrap());
            metadata.insert("content-type", "text/html".parse().unwrap());
            metadata.insert("connection", "keep-alive".parse().unwrap());
            metadata.insert("x-installation", "42".parse().unwrap());
            // What a status a tonic client made of an upstream's answer carries: that
            // upstream's response headers, not this server's to send.
            for (name, value) in [
                ("set-cookie", "session=upstream; Path=/"),
                ("alt-svc", "h3=\":443\""),
                ("strict-transport-security", "max-age=63072000"),
                ("date", "Wed, 02 Dec 2026 18:00:00 GMT"),
                ("server", "envoy"),
                ("via", "1.1 upstream-proxy"),
                ("cache-control", "no-cache"),
                ("content-language", "en"),
                ("x-envoy-upstream-service-time", "12"),
                ("clear-site-data", "\"cookies\""),
                ("access-control-allow-credentials", "true"),
            ] {
                metadata.insert(name, value.parse().unwrap());
            }
            Err::<Response<Full<Bytes>>, BoxError>(status.into())
        });
    let grpc = Request::post("/test.Echo/Say")
        .header("content-type", "application/grpc-web+proto")
        .body(Full::default())
        .unwrap();
    let res = svc.clone().oneshot(grpc).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let headers = res.headers();
    assert_eq!(headers.get_all("grpc-status").iter().count(), 1);
    assert_eq!(headers["grpc-status"], "5");
    assert_eq!(headers.get_all("grpc-message").iter().count(), 1);
    assert_eq!(headers["grpc-message"], "no such installation");
    assert_eq!(headers.get_all("content-type").iter().count(), 1);
    assert_eq!(headers["content-type"], "application/grpc-web+proto");
    assert!(headers.get("connection").is_none());
    assert_eq!(headers["x-installation"], "42");
    for name in [
        "set-cookie",
        "alt-svc",
        "strict-transport-security",
        "date",
        "server",
        "via",
        "cache-control",
        "content-language",
        "x-envoy-upstream-service-time",
        "clear-site-data",
        "access-control-allow-credentials",
    ] {
        assert!(headers.get(name).is_none(), "{name}");
    }

    let res = svc.oneshot(Request::new(Full::default())).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert!(res.headers().get("x-installation").is_none());
}

// ---------------------------------------------------------------------------------------------
// A tonic::Status a tonic client made of its own failure

/// The answer of a service behind the layer that returns `status` as its error: to an HTTP
/// caller (status, problem document, with `detail` if any) and to a gRPC caller (`grpc-status`,
/// `grpc-message`).
async fn answers_to(
    status: fn() -> tonic::Status,
) -> (StatusCode, serde_json::Value, String, String) {
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(move |_: Request<Full<Bytes>>| async move {
            Err::<Response<Full<Bytes>>, BoxError>(status().into())
        });
    let res = svc
        .clone()
        .oneshot(Request::new(Full::default()))
        .await
        .unwrap();
    let http_status = res.status();
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["status"], http_status.as_u16());
    let grpc = Request::post(echo::SAY)
        .header("content-type", "application/grpc")
        .body(Full::default())
        .unwrap();
    let res = svc.oneshot(grpc).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let header = |name: &str| {
        res.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    (
        http_status,
        doc,
        header("grpc-status"),
        header("grpc-message"),
    )
}

/// A handler that passes on the status its own tonic client got when its call to an upstream
/// ran past the client's deadline (`Endpoint::timeout`): tonic makes it `Cancelled`, "Timeout
/// expired", with the `TimeoutExpired` as its source. It was answered 499 / `Cancelled` with
/// "Timeout expired" as the detail, as if the caller had given up; it is the upstream's
/// timeout, answered like tower's: 504 / `DeadlineExceeded`.
#[tokio::test]
async fn an_upstream_call_past_a_tonic_clients_deadline_is_a_gateway_timeout() {
    use echo::{Echo, EchoService};
    let (logs, _guard) = capture_logs();

    // The real thing first: a tonic client whose call to a slow upstream times out.
    let (addr, incoming) = incoming::loopback().await;
    let upstream = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(EchoService)
            .serve_with_incoming(incoming)
            .await
    });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .timeout(Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.unwrap();
    let slow = tonic::Request::new(Echo {
        message: "slow".to_owned(),
    });
    let timed_out = client
        .unary(
            slow,
            http::uri::PathAndQuery::from_static(echo::SAY),
            echo::codec(),
        )
        .await
        .unwrap_err();
    upstream.abort();
    assert_eq!(timed_out.code(), tonic::Code::Cancelled, "{timed_out:?}");
    assert!(std::error::Error::source(&timed_out).is_some());

    // The same status, answered by the layer.
    fn timeout() -> tonic::Status {
        tonic::Status::from_error(Box::new(tonic::TimeoutExpired(())))
    }
    assert_eq!(timeout().code(), timed_out.code());
    assert_eq!(timeout().message(), timed_out.message());
    let (status, doc, grpc_status, grpc_message) = answers_to(timeout).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(doc["type"], tower_webhook::error::types::TIMEOUT);
    assert!(doc.get("detail").is_none(), "{doc}");
    assert_eq!(grpc_status, "4", "DeadlineExceeded");
    assert!(!grpc_message.contains("Timeout expired"), "{grpc_message}");
    let text = logs.text();
    assert!(
        text.contains("ERROR"),
        "logged as a failure of the server's: {text}"
    );
}

/// A status a tonic client made of a stream the upstream reset (`CANCEL`, `ENHANCE_YOUR_CALM`,
/// `INADEQUATE_SECURITY`): a transport failure on the way to the upstream, with the h2 error as
/// its source. Its code was passed on (499 / `Cancelled`, 429 / `ResourceExhausted`, 403 /
/// `PermissionDenied`) with "h2 protocol error: ..." as the detail and the `grpc-message`, as if
/// the caller had done something wrong. It is a bad gateway now, with nothing of the transport
/// in the answer; a status an upstream or a handler answered (no source, or a cause of the
/// handler's own) is still passed on.
#[tokio::test]
async fn a_status_made_of_an_upstreams_reset_stream_is_a_bad_gateway() {
    let (logs, _guard) = capture_logs();
    fn cancel() -> tonic::Status {
        tonic::Status::from_error(Box::new(h2::Error::from(h2::Reason::CANCEL)))
    }
    fn calm() -> tonic::Status {
        tonic::Status::from_error(Box::new(h2::Error::from(h2::Reason::ENHANCE_YOUR_CALM)))
    }
    fn security() -> tonic::Status {
        tonic::Status::from_error(Box::new(h2::Error::from(h2::Reason::INADEQUATE_SECURITY)))
    }
    // What tonic makes of them, for the record: codes that would be client errors.
    assert_eq!(cancel().code(), tonic::Code::Cancelled);
    assert_eq!(calm().code(), tonic::Code::ResourceExhausted);
    assert_eq!(security().code(), tonic::Code::PermissionDenied);
    for made in [cancel, calm, security] {
        let (status, doc, grpc_status, grpc_message) = answers_to(made).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{doc}");
        assert!(doc.get("detail").is_none(), "{doc}");
        assert_eq!(grpc_status, "14", "Unavailable");
        assert!(!grpc_message.contains("h2"), "{grpc_message}");
    }
    // The failure is in the log, at error level, with its message.
    let text = logs.text();
    assert!(text.contains("ERROR"), "{text}");
    assert!(text.contains("h2 protocol error"), "{text}");
    // A status without a source is an answer: its code and message are passed on.
    fn answered() -> tonic::Status {
        tonic::Status::resource_exhausted("quota of the installation spent")
    }
    let (status, doc, grpc_status, grpc_message) = answers_to(answered).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(doc["detail"], "quota of the installation spent");
    assert_eq!(grpc_status, "8");
    assert_eq!(grpc_message, "quota of the installation spent");

    // Nor is one a handler gave a cause of its own, for its log: a payload that can never be
    // valid is a 400 / `InvalidArgument`, not a 502 / `Unavailable` its sender retries.
    fn explained() -> tonic::Status {
        let mut status = tonic::Status::invalid_argument("the payload has no repository");
        status.set_source(std::sync::Arc::new(std::io::Error::other(
            "missing field `repository`",
        )));
        status
    }
    let (status, doc, grpc_status, grpc_message) = answers_to(explained).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{doc}");
    assert_eq!(doc["detail"], "the payload has no repository");
    assert_eq!(grpc_status, "3");
    assert_eq!(grpc_message, "the payload has no repository");
}

// ---------------------------------------------------------------------------------------------
// A failed call whose future or error panics when dropped

/// A handler's future that fails with a conflict, and whose `Drop` panics (a guard asserting
/// something the failure left undone).
struct FailsThenPanicsOnDrop;

impl Future for FailsThenPanicsOnDrop {
    type Output = Result<Response<Full<Bytes>>, BoxError>;

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Err(Problem::new(StatusCode::CONFLICT).into()))
    }
}

impl Drop for FailsThenPanicsOnDrop {
    fn drop(&mut self) {
        panic!("the transaction guard was dropped without commit or rollback");
    }
}

/// An error that wraps a conflict and panics when dropped.
#[derive(Debug)]
struct PanicsOnDrop(Problem);

impl std::fmt::Display for PanicsOnDrop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("conflicting update")
    }
}

impl std::error::Error for PanicsOnDrop {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        panic!("the error's guard was dropped while still armed");
    }
}

/// GETs `/` from `addr`, expecting an answer, not a dropped connection.
async fn get_status(addr: std::net::SocketAddr) -> StatusCode {
    let res = crate::client::new()
        .get(format!("http://{addr}/"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("the server answers instead of dropping the connection");
    StatusCode::from_u16(res.status().as_u16()).unwrap()
}

/// The layer answered the error, but the handler's future was dropped later, by the server: a
/// panic in its `Drop` unwound through the connection task, and the client got no answer.
#[tokio::test]
async fn a_failed_future_that_panics_when_dropped_is_still_answered() {
    let (logs, _guard) = capture_logs();
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(|_req: axum::extract::Request| FailsThenPanicsOnDrop);
    let (addr, server) = axum_serve::serve(svc).await;
    assert_eq!(get_status(addr).await, StatusCode::CONFLICT);
    assert_eq!(get_status(addr).await, StatusCode::CONFLICT);
    server.abort();
    let text = logs.text();
    assert!(
        text.contains("without commit or rollback"),
        "the panic is logged: {text}"
    );
}

/// The same for an error whose own `Drop` panics: the layer dropped it outside its guard.
#[tokio::test]
async fn an_error_that_panics_when_dropped_is_still_answered() {
    let (logs, _guard) = capture_logs();
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(|_req: axum::extract::Request| async {
            Err::<Response<Full<Bytes>>, BoxError>(
                PanicsOnDrop(Problem::new(StatusCode::CONFLICT)).into(),
            )
        });
    let (addr, server) = axum_serve::serve(svc).await;
    assert_eq!(get_status(addr).await, StatusCode::CONFLICT);
    assert_eq!(get_status(addr).await, StatusCode::CONFLICT);
    server.abort();
    let text = logs.text();
    assert!(
        text.contains("dropped while still armed"),
        "the panic is logged: {text}"
    );
}
