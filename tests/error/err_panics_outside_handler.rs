//! WebhookErrorLayer: panics outside the handler's future (in `poll_ready`, in an error's
//! `Display`, while it is classified), the wait a gRPC client is told, and the `Content-Length` of
//! a `HEAD` answer.

use crate::axum_serve;
use crate::hyper_one;
use crate::logs;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum_serve::serve;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_one::http2_sender;
use logs::Logs;
use serde_json::Value;
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt};
use tower_webhook::error::{HttpError, Problem, WebhookErrorLayer, WebhookProcessingError, types};

/// GETs `path`, expecting an answer (not a dropped connection): its status and body.
async fn get(addr: SocketAddr, path: &str) -> (StatusCode, Bytes) {
    let res = crate::client::new()
        .get(format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("the server answers instead of dropping the connection");
    let status = StatusCode::from_u16(res.status().as_u16()).unwrap();
    (status, res.bytes().await.unwrap())
}

/// Every test here logs through its own subscriber, also those that do not read the logs. Why a
/// capture sees every event of its thread, whichever test first reached a log callsite:
/// `tests/common/logs.rs`.
fn capture_logs() -> (Logs, tracing::subscriber::DefaultGuard) {
    Logs::capture()
}

// ---------------------------------------------------------------------------------------------
// A panic in the inner service's `poll_ready`

/// A service whose `poll_ready` panics the first time it is asked, then works.
#[derive(Clone)]
struct PanicsOnceWhenReady {
    panicked: Arc<AtomicBool>,
}

impl Service<axum::extract::Request> for PanicsOnceWhenReady {
    type Response = Response<axum::body::Body>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if !self.panicked.swap(true, Ordering::SeqCst) {
            panic!("connection pool lock poisoned");
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: axum::extract::Request) -> Self::Future {
        std::future::ready(Ok(Response::new(axum::body::Body::from("ok"))))
    }
}

/// The layer turns every panic of the inner service into a 500, not only those in `call` and
/// its future: a panic in `poll_ready` used to unwind through the server's connection task,
/// which dropped the connection with no answer.
#[tokio::test]
async fn a_panic_in_the_inner_poll_ready_is_answered_500_and_the_service_stays_usable() {
    let (_logs, _guard) = capture_logs();
    let svc = WebhookErrorLayer::new().layer(PanicsOnceWhenReady {
        panicked: Arc::new(AtomicBool::new(false)),
    });
    let (addr, server) = serve(svc).await;

    let (status, body) = get(addr, "/hook").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["status"], 500);
    assert_eq!(doc["type"], types::PANIC);
    assert!(
        !String::from_utf8_lossy(&body).contains("poisoned"),
        "the panic message stays out of the answer"
    );

    // The next request reaches the service.
    let (status, body) = get(addr, "/hook").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"ok");
    server.abort();
}

/// The same through `Service` directly: answered once, logged once with its message, then the
/// service is ready again.
#[tokio::test(flavor = "current_thread")]
async fn a_poll_ready_panic_is_logged_and_answered_to_the_next_request_only() {
    let (logs, _guard) = capture_logs();
    let mut svc = WebhookErrorLayer::new().layer(PanicsOnceWhenReady {
        panicked: Arc::new(AtomicBool::new(false)),
    });

    let req = Request::builder()
        .header("x-request-id", "req-ready")
        .body(axum::body::Body::empty())
        .unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(res.headers()["x-request-id"], "req-ready");

    let res = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(axum::body::Body::empty()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    let text = logs.text();
    assert_eq!(
        text.matches("connection pool lock poisoned").count(),
        1,
        "{text}"
    );
    assert!(text.contains("ERROR"), "{text}");
    assert!(text.contains("req-ready"), "{text}");
    // Told for what it was: no handler ran.
    assert!(
        text.contains("the service panicked while it got ready for a request"),
        "{text}"
    );
    assert!(!text.contains("handler panicked"), "{text}");
}

/// A service whose `poll_ready` fails with an error (one whose URL carries a credential) or
/// panics, as `panics` says.
#[derive(Clone)]
struct NeverReady {
    panics: bool,
}

impl Service<Request<Full<Bytes>>> for NeverReady {
    type Response = Response<Full<Bytes>>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.panics {
            panic!("upstream pool torn down");
        }
        Poll::Ready(Err(
            "no connection to https://bot:hunter2@db.internal/pool: pool closed".into(),
        ))
    }

    fn call(&mut self, _req: Request<Full<Bytes>>) -> Self::Future {
        std::future::ready(Ok(Response::new(Full::default())))
    }
}

/// A `poll_ready` failure is held for the next request; when none comes (the caller went away
/// between `ready` and `call`), it is logged as the service is dropped, once, with its secret
/// redacted, instead of vanishing.
#[tokio::test(flavor = "current_thread")]
async fn a_poll_ready_failure_no_request_comes_for_is_logged_when_the_service_is_dropped() {
    for panics in [false, true] {
        let (logs, _guard) = capture_logs();
        let mut svc = WebhookErrorLayer::new().layer(NeverReady { panics });
        svc.ready().await.unwrap();
        assert_eq!(
            logs.text(),
            "",
            "nothing is logged while the failure can still be answered"
        );
        drop(svc);
        let text = logs.text();
        let message = if panics {
            "upstream pool torn down"
        } else {
            "pool closed"
        };
        assert_eq!(text.matches(message).count(), 1, "{text}");
        assert!(text.contains("ERROR"), "{text}");
        assert!(text.contains("no request came"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}

/// A failure the next request was given (a `poll_ready` failure, a panic in the inner service's
/// `call`) is logged when that request's future is dropped before it was polled (the client
/// went away first), with its secret redacted: it was dropped unseen.
#[tokio::test(flavor = "current_thread")]
async fn a_failure_whose_future_is_dropped_unpolled_is_logged() {
    for panics in [false, true] {
        let (logs, _guard) = capture_logs();
        let mut svc = WebhookErrorLayer::new().layer(NeverReady { panics });
        let future = svc
            .ready()
            .await
            .unwrap()
            .call(Request::new(Full::default()));
        assert_eq!(
            logs.text(),
            "",
            "nothing is logged while it can be answered"
        );
        drop(future);
        let text = logs.text();
        let message = if panics {
            "upstream pool torn down"
        } else {
            "pool closed"
        };
        assert_eq!(text.matches(message).count(), 1, "{text}");
        assert!(text.contains("ERROR"), "{text}");
        assert!(text.contains("gone before it was answered"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        drop(svc);
        assert_eq!(logs.text(), text, "logged once");
    }

    let (logs, _guard) = capture_logs();
    let mut svc = WebhookErrorLayer::new().layer(tower::service_fn(
        |_: Request<Full<Bytes>>| -> std::future::Ready<Result<Response<Full<Bytes>>, BoxError>> {
            panic!("the handler's call panicked")
        },
    ));
    let future = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(Full::default()));
    drop(future);
    let text = logs.text();
    assert_eq!(
        text.matches("the handler's call panicked").count(),
        1,
        "{text}"
    );
    assert!(text.contains("gone before it was answered"), "{text}");
}

/// One that a request answers is logged with that request only, not again when the service
/// is dropped.
#[tokio::test(flavor = "current_thread")]
async fn a_poll_ready_failure_that_is_answered_is_not_logged_again_on_drop() {
    let (logs, _guard) = capture_logs();
    let mut svc = WebhookErrorLayer::new().layer(NeverReady { panics: false });
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(Full::default()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    drop(svc);
    let text = logs.text();
    assert_eq!(text.matches("pool closed").count(), 1, "{text}");
    assert!(!text.contains("no request came"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// A panic in the error's own code

/// An error whose `Display` panics, as a buggy `format!` in an error type does.
#[derive(Debug)]
struct DisplayPanics;

impl std::fmt::Display for DisplayPanics {
    fn fmt(&self, _f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        panic!("index out of bounds in DisplayPanics")
    }
}

impl std::error::Error for DisplayPanics {}

/// The error is only logged (never sent), but logging it runs its `Display`: a panic there
/// used to escape the layer and drop the connection.
#[tokio::test]
async fn an_error_whose_display_panics_is_answered_500() {
    let (_logs, _guard) = capture_logs();
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(|req: axum::extract::Request| async move {
            if req.uri().path() == "/broken" {
                return Err::<Response<axum::body::Body>, BoxError>(DisplayPanics.into());
            }
            Ok(Response::new(axum::body::Body::from("ok")))
        });
    let (addr, server) = serve(svc).await;

    let (status, body) = get(addr, "/broken").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["status"], 500);

    let (status, _) = get(addr, "/fine").await;
    assert_eq!(status, StatusCode::OK);
    server.abort();
}

/// A recognised error whose `HttpError` method panics.
#[derive(Debug, thiserror::Error)]
#[error("quota exceeded")]
struct QuotaExceeded;

impl HttpError for QuotaExceeded {
    fn status(&self) -> StatusCode {
        StatusCode::TOO_MANY_REQUESTS
    }
    fn problem_type(&self) -> &str {
        "urn:example:quota"
    }
    fn detail(&self) -> Option<std::borrow::Cow<'_, str>> {
        panic!("detail of QuotaExceeded")
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_recognised_error_that_panics_while_classified_is_answered_500_and_logged() {
    let (logs, _guard) = capture_logs();
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new().recognize::<QuotaExceeded>())
        .service_fn(|_req: Request<Full<Bytes>>| async {
            Err::<Response<Full<Bytes>>, BoxError>(QuotaExceeded.into())
        });
    // Spawned, so a panic that escapes the layer fails the test with a clear message.
    let res = tokio::spawn(svc.oneshot(Request::new(Full::default())))
        .await
        .expect("the layer answers instead of panicking")
        .unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["status"], 500);
    let text = logs.text();
    assert!(text.contains("detail of QuotaExceeded"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// The wait a gRPC client is told

fn grpc_req() -> Request<Full<Bytes>> {
    Request::builder()
        .uri("/pkg.Svc/Method")
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .body(Full::default())
        .unwrap()
}

/// gRPC clients ignore `Retry-After`; gRPC's server pushback is `grpc-retry-pushback-ms`.
#[tokio::test]
async fn a_grpc_answer_carries_its_wait_as_retry_pushback() {
    let (_logs, _guard) = capture_logs();
    for (after, pushback, retry_after) in [
        (Duration::from_millis(1500), "1500", "2"),
        (Duration::from_micros(2_000_001), "2001", "3"),
        (Duration::from_secs(30), "30000", "30"),
        // gRPC clients read it as a 32-bit number: the longest wait they can take.
        (Duration::from_secs(40 * 86_400), "2147483647", "3456000"),
    ] {
        let svc = ServiceBuilder::new()
            .layer(WebhookErrorLayer::new())
            .service_fn(move |_req: Request<Full<Bytes>>| async move {
                Err::<Response<Full<Bytes>>, BoxError>(
                    WebhookProcessingError::retryable("queue full", after).into(),
                )
            });
        let res = svc.oneshot(grpc_req()).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["grpc-status"], "14");
        assert_eq!(
            res.headers()["grpc-retry-pushback-ms"],
            pushback,
            "{after:?}"
        );
        assert_eq!(res.headers()["retry-after"], retry_after, "{after:?}");
    }

    // No wait, no pushback (a missing one lets the client's policy decide).
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(|_req: Request<Full<Bytes>>| async {
            Err::<Response<Full<Bytes>>, BoxError>(WebhookProcessingError::new("boom").into())
        });
    let res = svc.oneshot(grpc_req()).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "13");
    assert!(res.headers().get("grpc-retry-pushback-ms").is_none());
}

use crate::echo;
use crate::incoming;

/// A real tonic client sees the pushback in the status of a call refused with a wait.
#[tokio::test]
async fn a_tonic_client_sees_the_pushback_of_a_refused_call() {
    let (_logs, _guard) = capture_logs();
    use echo::{Echo, EchoService};

    fn busy(_req: Request<tonic::body::Body>) -> Result<Request<tonic::body::Body>, BoxError> {
        Err(WebhookProcessingError::retryable("queue full", Duration::from_millis(2500)).into())
    }

    let (addr, incoming) = incoming::loopback().await;
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(WebhookErrorLayer::new())
            .layer(tower::filter::FilterLayer::new(busy))
            .add_service(EchoService)
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });

    let request = tonic::Request::new(Echo {
        message: "hello".to_owned(),
    });
    let status = echo::say(addr, request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(
        status.metadata().get("grpc-retry-pushback-ms").unwrap(),
        "2500"
    );
    server.abort();
}

// ---------------------------------------------------------------------------------------------
// HEAD

/// A service that fails every request with a problem.
fn conflict<B: Send + 'static>() -> impl Service<
    Request<B>,
    Response = Response<tower_webhook::error::ResponseBody<axum::body::Body>>,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
+ Send
+ Sync
+ 'static {
    ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(|_req: Request<B>| async {
            Err::<Response<axum::body::Body>, _>(
                Problem::new(StatusCode::CONFLICT).with_detail("delivery already processed"),
            )
        })
}

/// The answer to HEAD has the headers of the answer to GET (RFC 9110, section 9.3.2), its
/// `Content-Length` included, and no content, over HTTP/1.1 and HTTP/2.
#[tokio::test]
async fn a_head_answer_has_the_content_length_of_the_get_answer() {
    let (_logs, _guard) = capture_logs();
    let (addr, server) = serve(conflict::<axum::body::Body>()).await;
    let client = crate::client::new();
    let get = client
        .get(format!("http://{addr}/hook"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 409);
    let get_len = get.headers()["content-length"].clone();
    let get_type = get.headers()["content-type"].clone();
    let body = get.bytes().await.unwrap();
    assert_eq!(get_len.to_str().unwrap(), body.len().to_string());

    let head = client
        .head(format!("http://{addr}/hook"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 409);
    assert_eq!(head.headers().get("content-length"), Some(&get_len));
    assert_eq!(head.headers()["content-type"], get_type);
    assert!(head.bytes().await.unwrap().is_empty());

    // The same connection still works: no stray body bytes were sent after the HEAD answer.
    let again = client
        .get(format!("http://{addr}/hook"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.bytes().await.unwrap(), body);
    server.abort();

    // HTTP/2 (prior knowledge): the length travels, the stream ends with the headers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let svc = hyper_util::service::TowerToHyperService::new(conflict());
        hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
            .await
            .unwrap();
    });
    let mut sender = http2_sender(addr).await;
    let head = sender
        .send_request(
            Request::head(format!("http://{addr}/hook"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::CONFLICT);
    assert_eq!(head.headers().get("content-length"), Some(&get_len));
    assert!(
        head.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );
    let get = sender
        .send_request(
            Request::get(format!("http://{addr}/hook"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(get.into_body().collect().await.unwrap().to_bytes(), body);
    server.abort();
}

// ---------------------------------------------------------------------------------------------
// A panic whose payload panics when dropped

/// A panic payload (`std::panic::panic_any`) whose `Drop` panics.
struct Bomb;

impl Drop for Bomb {
    fn drop(&mut self) {
        panic!("the payload went off");
    }
}

/// A service that panics with a [`Bomb`] where `at` says: in `poll_ready`, in `call`, in its
/// future, or in its response body.
#[derive(Clone, Copy)]
struct PanicsWithABomb {
    at: &'static str,
}

/// A body that panics with a [`Bomb`] when polled.
struct BombBody;

impl http_body::Body for BombBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        std::panic::panic_any(Bomb)
    }
}

impl Service<Request<Full<Bytes>>> for PanicsWithABomb {
    type Response = Response<BombBody>;
    type Error = BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<BombBody>, BoxError>> + Send>,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.at == "poll_ready" {
            std::panic::panic_any(Bomb);
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<Full<Bytes>>) -> Self::Future {
        if self.at == "call" {
            std::panic::panic_any(Bomb);
        }
        let at = self.at;
        Box::pin(async move {
            if at == "future" {
                std::panic::panic_any(Bomb);
            }
            Ok(Response::new(BombBody))
        })
    }
}

/// A panic whose payload panics again when it is dropped (`panic_any` of such a type) is
/// answered like any panic: 500 from `call` or the future, the error answer after `poll_ready`,
/// a body cut short with an error; the payload's own panic never unwinds out of the layer into
/// the server's connection task.
#[tokio::test]
async fn a_panic_whose_payload_panics_when_dropped_is_still_answered() {
    let (logs, _guard) = capture_logs();
    for at in ["poll_ready", "call", "future", "body"] {
        let svc = WebhookErrorLayer::new().layer(PanicsWithABomb { at });
        let answered = tokio::spawn(async move {
            let res = svc.oneshot(Request::new(Full::default())).await.unwrap();
            let status = res.status();
            let body = res.into_body().collect().await.map(|_| ());
            (status, body.is_err())
        })
        .await;
        let (status, body_failed) = answered.unwrap_or_else(|err| panic!("{at}: {err}"));
        if at == "body" {
            assert_eq!(status, StatusCode::OK, "{at}");
            assert!(body_failed, "{at}");
        } else {
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{at}");
        }
    }
    assert!(
        logs.text().contains("the payload went off"),
        "{}",
        logs.text()
    );
}

/// A response body whose `size_hint` and `is_end_stream` panic, its frames fine.
struct HintPanics(Option<Bytes>);

impl http_body::Body for HintPanics {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.take().map(|data| Ok(http_body::Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        panic!("is_end_stream of a broken body");
    }

    fn size_hint(&self) -> http_body::SizeHint {
        panic!("size_hint of a broken body");
    }
}

/// hyper asks a response body its `size_hint` and `is_end_stream` in the connection's task: a
/// panic there went through the layer's body and ended the connection (over HTTP/2, every
/// stream on it) with no answer. It is caught and logged now; the body is then taken as of no
/// known size, not at its end, and its frames are sent.
#[tokio::test]
async fn a_panic_in_the_bodys_size_hint_or_end_of_stream_is_caught() {
    let (logs, _guard) = capture_logs();
    let svc =
        WebhookErrorLayer::new().layer(tower::service_fn(|_req: axum::extract::Request| async {
            Ok::<_, Infallible>(Response::new(HintPanics(Some(Bytes::from_static(b"sent")))))
        }));
    let (addr, server) = serve(svc).await;
    let (status, body) = get(addr, "/hook").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"sent");
    let text = logs.text();
    assert!(
        text.contains("the response body panicked in its size_hint"),
        "{text}"
    );
    server.abort();

    // Asked directly, through the layer's body.
    let svc =
        WebhookErrorLayer::new().layer(tower::service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(HintPanics(None)))
        }));
    let res = svc.oneshot(Request::new(Full::default())).await.unwrap();
    let body = res.into_body();
    assert!(http_body::Body::size_hint(&body).exact().is_none());
    assert!(!http_body::Body::is_end_stream(&body));
    assert!(
        logs.text()
            .contains("the response body panicked in its is_end_stream")
    );
}
