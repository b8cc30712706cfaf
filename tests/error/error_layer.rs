//! WebhookErrorLayer through its public API: every mapping, panics, axum, tonic.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::Value;
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_http::timeout::TimeoutBody;
use tower_webhook::error::ResponseBody;
use tower_webhook::error::{
    GrpcCode, HttpError, Problem, WebhookErrorLayer, WebhookProcessingError, types,
};

type Res = Response<Full<Bytes>>;

fn ok_response() -> Res {
    Response::new(Full::from("ok"))
}

/// Sends `req` through `WebhookErrorLayer` around a service that fails with `err`.
async fn answer_error(
    layer: WebhookErrorLayer,
    req: Request<Full<Bytes>>,
    err: BoxError,
) -> Response<ResponseBody<Full<Bytes>>> {
    let mut err = Some(err);
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |_req: Request<Full<Bytes>>| {
            let err = err.take().expect("called once");
            async move { Err::<Res, BoxError>(err) }
        });
    svc.oneshot(req).await.unwrap()
}

fn http_req() -> Request<Full<Bytes>> {
    Request::builder()
        .uri("/hook")
        .body(Full::default())
        .unwrap()
}

fn grpc_req() -> Request<Full<Bytes>> {
    Request::builder()
        .uri("/pkg.Svc/Method")
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc+proto")
        .body(Full::default())
        .unwrap()
}

/// Reads a problem+json response, checking the invariants every problem response must hold.
async fn problem_of<B>(res: Response<B>) -> (StatusCode, http::HeaderMap, Value)
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let status = res.status();
    assert_ne!(
        status,
        StatusCode::OK,
        "an error must never be answered 200"
    );
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let json: Value = serde_json::from_slice(&body).expect("problem body is JSON");
    assert_eq!(
        json["status"],
        status.as_u16(),
        "status member equals the HTTP status"
    );
    assert!(json["type"].is_string(), "type is present");
    assert!(json["title"].is_string(), "title is present");
    (status, headers, json)
}

#[tokio::test]
async fn success_passes_through_untouched() {
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, BoxError>(
                Response::builder()
                    .status(201)
                    .header("x-a", "1")
                    .body(Full::from("made"))
                    .unwrap(),
            )
        });
    let res = svc.oneshot(http_req()).await.unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(res.headers()["x-a"], "1");
    assert_eq!(
        &res.into_body().collect().await.unwrap().to_bytes()[..],
        b"made"
    );
}

#[tokio::test]
async fn unknown_error_is_500_without_internals() {
    let req = Request::builder()
        .header("x-request-id", "abc-123")
        .body(Full::default())
        .unwrap();
    let res = answer_error(
        WebhookErrorLayer::new(),
        req,
        "connection to db at 10.0.0.5 refused, password=hunter2".into(),
    )
    .await;
    assert_eq!(res.headers()["x-request-id"], "abc-123");
    let (status, _, json) = problem_of(res).await;
    assert_eq!(status, 500);
    assert_eq!(json["type"], "about:blank");
    assert_eq!(json["title"], "Internal Server Error");
    assert_eq!(json["instance"], "abc-123");
    assert!(json.get("detail").is_none());
    assert!(!json.to_string().contains("hunter2"));
    assert!(!json.to_string().contains("10.0.0.5"));
}

#[tokio::test]
async fn problem_error_keeps_every_member() {
    let problem = Problem::new(StatusCode::CONFLICT)
        .with_type("urn:example:busy")
        .with_title("Already Running")
        .with_detail("A review for this commit is already running.")
        .with_retry_after(Duration::from_millis(1500));
    let (status, headers, json) =
        problem_of(answer_error(WebhookErrorLayer::new(), http_req(), problem.into()).await).await;
    assert_eq!(status, 409);
    assert_eq!(headers["retry-after"], "2", "rounded up, never early");
    assert_eq!(json["type"], "urn:example:busy");
    assert_eq!(json["title"], "Already Running");
    assert_eq!(
        json["detail"],
        "A review for this commit is already running."
    );
    assert!(json.get("instance").is_none(), "no request id, no instance");

    // The longest delay there is: the header saturates instead of overflowing.
    let problem = Problem::new(StatusCode::SERVICE_UNAVAILABLE).with_retry_after(Duration::MAX);
    let (status, headers, _) =
        problem_of(answer_error(WebhookErrorLayer::new(), http_req(), problem.into()).await).await;
    assert_eq!(status, 503);
    assert_eq!(headers["retry-after"], u64::MAX.to_string().as_str());
}

#[tokio::test]
async fn processing_error_permanent_and_retryable() {
    let err = WebhookProcessingError::new("model API returned garbage: sk-live-123");
    let (status, headers, json) =
        problem_of(answer_error(WebhookErrorLayer::new(), http_req(), err.into()).await).await;
    assert_eq!(status, 500);
    assert_eq!(json["type"], types::PROCESSING_FAILED);
    assert!(headers.get("retry-after").is_none());
    assert!(!json.to_string().contains("sk-live"));

    let err = WebhookProcessingError::retryable("queue full", Duration::from_secs(7));
    let (status, headers, json) =
        problem_of(answer_error(WebhookErrorLayer::new(), http_req(), err.into()).await).await;
    assert_eq!(status, 503);
    assert_eq!(headers["retry-after"], "7");
    assert_eq!(json["type"], types::PROCESSING_FAILED);
}

#[tokio::test(start_paused = true)]
async fn timeout_is_504_by_default_and_408_when_configured() {
    for (layer, expected, title) in [
        (WebhookErrorLayer::new(), 504, "Gateway Timeout"),
        (
            WebhookErrorLayer::new().timeout_status(StatusCode::REQUEST_TIMEOUT),
            408,
            "Request Timeout",
        ),
    ] {
        let svc = ServiceBuilder::new()
            .layer(layer)
            .timeout(Duration::from_secs(1))
            .service_fn(|_req: Request<Full<Bytes>>| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok::<_, BoxError>(ok_response())
            });
        let (status, _, json) = problem_of(svc.oneshot(http_req()).await.unwrap()).await;
        assert_eq!(status, expected);
        assert_eq!(json["type"], types::TIMEOUT);
        assert_eq!(json["title"], title);
    }
}

#[tokio::test]
async fn load_shed_is_503() {
    // One permit, held by a slow request: the concurrent one is shed.
    let inner =
        tower::service_fn(|_req: Request<Full<Bytes>>| async { Ok::<_, BoxError>(ok_response()) });
    let mut limited = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .load_shed()
        .concurrency_limit(1)
        .service(service_fn(move |req: Request<Full<Bytes>>| {
            let mut svc = inner;
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                svc.call(req).await
            }
        }));
    // Occupy the only permit, then the next request is shed.
    let first = limited.ready().await.unwrap().call(http_req());
    let second = limited.ready().await.unwrap().call(http_req());
    let (first, second) = tokio::join!(first, second);
    assert_eq!(first.unwrap().status(), 200);
    let (status, _, json) = problem_of(second.unwrap()).await;
    assert_eq!(status, 503);
    assert_eq!(json["type"], types::OVERLOADED);
}

#[tokio::test]
async fn length_limit_is_413() {
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(|req: Request<Full<Bytes>>| async move {
            let body = Limited::new(req.into_body(), 8).collect().await?;
            Ok::<_, BoxError>(Response::new(Full::new(body.to_bytes())))
        });
    let req = Request::new(Full::from("this body is longer than eight bytes"));
    let (status, _, json) = problem_of(svc.oneshot(req).await.unwrap()).await;
    assert_eq!(status, 413);
    assert_eq!(json["type"], types::PAYLOAD_TOO_LARGE);
}

/// A body that never sends anything.
type Stalled = http_body_util::StreamBody<
    futures_util::stream::Pending<Result<http_body::Frame<Bytes>, std::convert::Infallible>>,
>;

fn stalled_body() -> Stalled {
    http_body_util::StreamBody::new(futures_util::stream::pending())
}

#[tokio::test(start_paused = true)]
async fn body_timeout_is_408() {
    // tower-http's `RequestBodyTimeoutLayer` stops a body the client stopped sending; a handler
    // that reads it with `?` surfaces that error.
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            Duration::from_secs(10),
        ))
        .service_fn(|req: Request<TimeoutBody<Stalled>>| async move {
            let body = req.into_body().collect().await?;
            Ok::<_, BoxError>(Response::new(Full::new(body.to_bytes())))
        });
    let res = svc
        .clone()
        .oneshot(Request::new(stalled_body()))
        .await
        .unwrap();
    let (status, _, json) = problem_of(res).await;
    assert_eq!(status, 408);
    assert_eq!(json["type"], types::TIMEOUT);
    assert_eq!(json["title"], "Request Timeout");

    // gRPC callers get DEADLINE_EXCEEDED.
    let req = Request::builder()
        .header("content-type", "application/grpc")
        .body(stalled_body())
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["grpc-status"],
        (GrpcCode::DeadlineExceeded as i32).to_string().as_str()
    );
}

#[tokio::test]
async fn tonic_status_maps_for_http_callers() {
    let cases = [
        (tonic::Status::unauthenticated("who are you"), 401),
        (tonic::Status::permission_denied("no"), 403),
        (tonic::Status::not_found("gone"), 404),
        (tonic::Status::resource_exhausted("slow down"), 429),
        (tonic::Status::unavailable("later"), 503),
        (tonic::Status::deadline_exceeded("late"), 504),
        (tonic::Status::internal("oops"), 500),
        (
            tonic::Status::unknown("error trying to connect: dns error: 10.0.0.7"),
            500,
        ),
        (tonic::Status::invalid_argument("bad"), 400),
    ];
    for (status, expected) in cases {
        let message = status.message().to_owned();
        let (got, _, json) =
            problem_of(answer_error(WebhookErrorLayer::new(), http_req(), status.into()).await)
                .await;
        assert_eq!(got, expected, "{message}");
        assert_eq!(json["type"], types::GRPC_STATUS);
        if expected < 500 {
            assert_eq!(json["detail"], message);
        } else {
            // A server error's message describes internals: it stays out of the body.
            assert!(json.get("detail").is_none(), "{json}");
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("installation {0} has no access to the repository")]
struct NotInstalled(u64);

impl HttpError for NotInstalled {
    fn status(&self) -> StatusCode {
        StatusCode::FORBIDDEN
    }
    fn problem_type(&self) -> &str {
        "urn:example:not-installed"
    }
    fn title(&self) -> &str {
        "App Not Installed"
    }
}

#[derive(Debug, thiserror::Error)]
#[error("while handling the delivery")]
struct Wrapper(#[source] NotInstalled);

#[tokio::test]
async fn user_error_types_are_recognised_along_the_source_chain() {
    let layer = WebhookErrorLayer::new().recognize::<NotInstalled>();
    let (status, _, json) = problem_of(
        answer_error(
            layer.clone(),
            http_req(),
            Box::new(Wrapper(NotInstalled(7))),
        )
        .await,
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(json["type"], "urn:example:not-installed");
    assert_eq!(json["title"], "App Not Installed");
    assert!(
        !json.to_string().contains("installation 7"),
        "Display text is for the log only"
    );

    // Without registration the same error is an unknown 500.
    let (status, _, _) = problem_of(
        answer_error(
            WebhookErrorLayer::new(),
            http_req(),
            Box::new(NotInstalled(7)),
        )
        .await,
    )
    .await;
    assert_eq!(status, 500);
}

#[tokio::test]
async fn grpc_callers_get_trailers_only_status() {
    let cases: Vec<(BoxError, GrpcCode)> = vec![
        (
            Problem::new(StatusCode::UNAUTHORIZED).into(),
            GrpcCode::Unauthenticated,
        ),
        (
            Problem::new(StatusCode::FORBIDDEN).into(),
            GrpcCode::PermissionDenied,
        ),
        (
            Problem::new(StatusCode::PAYLOAD_TOO_LARGE).into(),
            GrpcCode::OutOfRange,
        ),
        (
            Problem::new(StatusCode::TOO_MANY_REQUESTS).into(),
            GrpcCode::ResourceExhausted,
        ),
        (
            Problem::new(StatusCode::SERVICE_UNAVAILABLE).into(),
            GrpcCode::Unavailable,
        ),
        (
            Problem::new(StatusCode::GATEWAY_TIMEOUT).into(),
            GrpcCode::DeadlineExceeded,
        ),
        (
            Problem::new(StatusCode::BAD_REQUEST).into(),
            GrpcCode::InvalidArgument,
        ),
        ("boom".into(), GrpcCode::Internal),
        (
            WebhookProcessingError::retryable("x", Duration::from_secs(1)).into(),
            GrpcCode::Unavailable,
        ),
        (tonic::Status::aborted("race").into(), GrpcCode::Aborted),
    ];
    for (err, code) in cases {
        let res = answer_error(WebhookErrorLayer::new(), grpc_req(), err).await;
        assert_eq!(res.status(), 200, "gRPC errors travel in grpc-status");
        // The request's own media type, codec included.
        assert_eq!(res.headers()["content-type"], "application/grpc+proto");
        assert_eq!(
            res.headers()["grpc-status"],
            (code as u16).to_string().as_str()
        );
        assert!(res.headers().contains_key("grpc-message"));
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert!(body.is_empty(), "trailers-only response has no body");
    }
}

#[tokio::test]
async fn grpc_web_callers_get_trailers_only_status_under_their_content_type() {
    let with_type = |content_type: &str| {
        Request::builder()
            .uri("/pkg.Svc/Method")
            .header("content-type", content_type)
            .body(Full::default())
            .unwrap()
    };
    for (sent, answered) in [
        ("application/grpc", "application/grpc"),
        ("application/grpc; charset=utf-8", "application/grpc"),
        ("application/grpc-web", "application/grpc-web"),
        // The codec too (the gRPC and gRPC-web protocols type the answer with it).
        ("application/grpc-web+proto", "application/grpc-web+proto"),
        (
            "application/grpc-web-text+proto",
            "application/grpc-web-text+proto",
        ),
    ] {
        let err = Problem::new(StatusCode::UNAUTHORIZED).into();
        let res = answer_error(WebhookErrorLayer::new(), with_type(sent), err).await;
        assert_eq!(res.status(), 200, "{sent}");
        assert_eq!(res.headers()["content-type"], answered, "{sent}");
        assert_eq!(res.headers()["grpc-status"], "16", "{sent}");
    }
    // Types that only begin like gRPC's are plain HTTP.
    for sent in ["application/grpcx", "application/grpc-webby"] {
        let err = Problem::new(StatusCode::UNAUTHORIZED).into();
        let (status, _, json) =
            problem_of(answer_error(WebhookErrorLayer::new(), with_type(sent), err).await).await;
        assert_eq!(status, 401, "{sent}");
        assert_eq!(json["status"], 401);
    }
}

/// A request is typed by its first `Content-Type`, as `HeaderMap::get` and the signature layer
/// read it: a second one that says gRPC does not make it a gRPC call, with a few headers (read
/// in one pass) or many (read by lookups). With a few, it did.
#[tokio::test]
async fn only_the_first_content_type_makes_a_grpc_call() {
    for others in [0, 40] {
        let mut req = Request::builder()
            .uri("/pkg.Svc/Method")
            .header("content-type", "text/plain")
            .header("content-type", "application/grpc");
        for i in 0..others {
            req = req.header(format!("x-other-{i}"), "1");
        }
        let err = Problem::new(StatusCode::UNAUTHORIZED).into();
        let res = answer_error(
            WebhookErrorLayer::new(),
            req.body(Full::default()).unwrap(),
            err,
        )
        .await;
        assert!(res.headers().get("grpc-status").is_none(), "{others}");
        let (status, _, json) = problem_of(res).await;
        assert_eq!(
            (status.as_u16(), &json["status"]),
            (401, &401.into()),
            "{others}"
        );
    }
}

#[tokio::test]
async fn grpc_message_is_percent_encoded() {
    let problem = Problem::new(StatusCode::UNAUTHORIZED).with_detail("firma inválida: 100%\nretry");
    let res = answer_error(WebhookErrorLayer::new(), grpc_req(), problem.into()).await;
    assert_eq!(
        res.headers()["grpc-message"],
        "firma inv%C3%A1lida: 100%25%0Aretry"
    );
}

/// RFC 9113 §8.2.1: an HTTP/2 field value must not start or end with a space or a tab, and a
/// response carrying one is malformed (nghttp2, under curl and many proxies, resets the
/// stream). Such a space in the message is percent-encoded, and decodes back to the message.
#[tokio::test]
async fn a_grpc_message_never_starts_or_ends_with_a_space() {
    let long = format!(" {}", "a".repeat(2000));
    for message in [" leading", "trailing ", "  both  ", " ", &long] {
        let problem = Problem::new(StatusCode::BAD_REQUEST).with_detail(message.to_owned());
        let res = answer_error(WebhookErrorLayer::new(), grpc_req(), problem.into()).await;
        let header = res.headers()["grpc-message"].to_str().unwrap().to_owned();
        assert!(
            !header.starts_with([' ', '\t']) && !header.ends_with([' ', '\t']),
            "{message:?} sent as {header:?}"
        );
        let decoded = percent_encoding::percent_decode_str(&header)
            .decode_utf8()
            .unwrap();
        if message.len() < 1024 {
            assert_eq!(decoded, message);
        } else {
            assert!(decoded.ends_with("...") && message.starts_with(decoded.trim_end_matches('.')));
        }
    }
    let res = answer_error(
        WebhookErrorLayer::new(),
        grpc_req(),
        Problem::new(StatusCode::BAD_REQUEST)
            .with_detail("inner space stays")
            .into(),
    )
    .await;
    assert_eq!(res.headers()["grpc-message"], "inner space stays");
}

/// A long message is cut (at a character boundary) before it can outgrow what gRPC clients
/// take in headers; it decodes to the start of the message and `...`.
#[tokio::test]
async fn a_long_grpc_message_is_cut_to_fit_in_a_header() {
    let detail = "é".repeat(5_000);
    let problem = Problem::new(StatusCode::BAD_REQUEST).with_detail(detail.clone());
    let res = answer_error(WebhookErrorLayer::new(), grpc_req(), problem.into()).await;
    let header = res.headers()["grpc-message"].to_str().unwrap().to_owned();
    assert!(header.len() <= 3 * 1024, "{} bytes", header.len());
    let decoded = percent_encoding::percent_decode_str(&header)
        .decode_utf8()
        .unwrap()
        .into_owned();
    let kept = decoded.strip_suffix("...").expect("marked as cut");
    assert!(
        kept.len() > 900 && detail.starts_with(kept),
        "{}",
        kept.len()
    );
}

#[tokio::test]
async fn panic_in_call_becomes_500() {
    #[derive(Clone)]
    struct PanicsInCall;
    impl Service<Request<Full<Bytes>>> for PanicsInCall {
        type Response = Res;
        type Error = BoxError;
        type Future = std::future::Ready<Result<Res, BoxError>>;
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), BoxError>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
            panic!("secret token abc in a panic message")
        }
    }
    let svc = WebhookErrorLayer::new().layer_service(PanicsInCall);
    let (status, _, json) = problem_of(svc.clone().oneshot(http_req()).await.unwrap()).await;
    assert_eq!(status, 500);
    assert_eq!(json["type"], types::PANIC);
    assert!(!json.to_string().contains("secret"));

    let res = svc.oneshot(grpc_req()).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "13");
}

trait LayerExt {
    fn layer_service<S: Clone>(&self, s: S) -> tower_webhook::error::WebhookError<S>;
}
impl LayerExt for WebhookErrorLayer {
    fn layer_service<S: Clone>(&self, s: S) -> tower_webhook::error::WebhookError<S> {
        tower::Layer::layer(self, s)
    }
}

#[tokio::test]
async fn panic_in_future_becomes_500() {
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(|_req: Request<Full<Bytes>>| async {
            tokio::task::yield_now().await;
            if true {
                panic!("index out of bounds in the handler");
            }
            Ok::<Res, BoxError>(ok_response())
        });
    let req = Request::builder()
        .header("x-request-id", "r-9")
        .body(Full::default())
        .unwrap();
    let (status, _, json) = problem_of(svc.oneshot(req).await.unwrap()).await;
    assert_eq!(status, 500);
    assert_eq!(json["instance"], "r-9");
    assert!(!json.to_string().contains("index out of bounds"));
}

#[tokio::test]
async fn poll_ready_error_answers_the_next_request() {
    #[derive(Clone)]
    struct Broken;
    impl Service<Request<Full<Bytes>>> for Broken {
        type Response = Res;
        type Error = BoxError;
        type Future = std::future::Ready<Result<Res, BoxError>>;
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), BoxError>> {
            std::task::Poll::Ready(Err(Problem::new(StatusCode::SERVICE_UNAVAILABLE).into()))
        }
        fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
            unreachable!("never ready")
        }
    }
    let mut svc = WebhookErrorLayer::new().layer_service(Broken);
    let res = svc
        .ready()
        .await
        .expect("poll_ready never fails")
        .call(http_req())
        .await
        .unwrap();
    let (status, _, _) = problem_of(res).await;
    assert_eq!(status, 503);
}

#[tokio::test]
async fn custom_renderer_is_used_for_http_but_not_grpc() {
    let layer = WebhookErrorLayer::new().render_with(|p: &Problem| {
        let mut res = Response::new(Bytes::from(format!("<h1>{}</h1>", p.title())));
        *res.status_mut() = p.status();
        res.headers_mut()
            .insert("content-type", "text/html".parse().unwrap());
        res
    });
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_req: Request<Full<Bytes>>| async {
            Err::<Res, BoxError>(Problem::new(StatusCode::UNAUTHORIZED).into())
        });
    let res = svc.clone().oneshot(http_req()).await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["content-type"], "text/html");
    assert_eq!(
        &res.into_body().collect().await.unwrap().to_bytes()[..],
        b"<h1>Unauthorized</h1>"
    );

    let res = svc.oneshot(grpc_req()).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "16");
}

#[tokio::test]
async fn request_id_header_is_configurable() {
    let layer = WebhookErrorLayer::new()
        .request_id_header(http::HeaderName::from_static("x-github-delivery"));
    let req = Request::builder()
        .header("x-github-delivery", "72d3162e")
        .body(Full::default())
        .unwrap();
    let (_, _, json) = problem_of(answer_error(layer, req, "x".into()).await).await;
    assert_eq!(json["instance"], "72d3162e");
}

/// RFC 9110 §9.3.2: a response to HEAD has no content. Over HTTP/2 the server sends what the
/// body holds, and the client resets the stream on DATA after a HEAD.
#[tokio::test]
async fn head_requests_get_the_problem_without_a_body() {
    let problem_svc = || {
        ServiceBuilder::new()
            .layer(WebhookErrorLayer::new())
            .service_fn(|_req: Request<hyper::body::Incoming>| async {
                Err::<Res, BoxError>(Problem::new(StatusCode::NOT_FOUND).into())
            })
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = async move {
        let (stream, _) = listener.accept().await.unwrap();
        let svc = hyper_util::service::TowerToHyperService::new(problem_svc());
        hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
            .await
    };
    let client = async move {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut client, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let req = Request::head(format!("http://{addr}/hook"))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let res = client.send_request(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        let body = res
            .into_body()
            .collect()
            .await
            .expect("no DATA after a HEAD");
        assert!(body.to_bytes().is_empty());
    };
    tokio::select! {
        _ = server => panic!("the server stopped first"),
        () = client => {}
    }

    // Same through the service itself.
    let req = Request::head("/hook").body(Full::default()).unwrap();
    let res = answer_error(WebhookErrorLayer::new(), req, "x".into()).await;
    assert_eq!(res.status(), 500);
    assert!(http_body::Body::is_end_stream(res.body()));
}

/// RFC 9457: `instance` is a URI reference. A request id that cannot be one (spaces, a tab,
/// quotes) or that is huge is not copied into the problem.
#[tokio::test]
async fn instance_is_only_a_request_id_fit_for_a_uri() {
    let huge = "a".repeat(10_000);
    for id in ["req 42", "req\t42", "\"quoted\"", "<script>", huge.as_str()] {
        let (_, json) = problem_with_request_id(id).await;
        assert!(
            json.get("instance").is_none(),
            "{id:?} became {}",
            json["instance"]
        );
    }
    for id in [
        "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1",
        "01HZX3J5Q2W8K7Y6T5R4E3W2Q1",
    ] {
        assert_eq!(problem_with_request_id(id).await.1["instance"], id);
    }
}

/// The 500 problem answered to a request with `x-request-id: id`: its headers and document.
async fn problem_with_request_id(id: &str) -> (http::HeaderMap, Value) {
    let req = Request::builder()
        .header("x-request-id", id)
        .body(Full::default())
        .unwrap();
    let (status, headers, json) =
        problem_of(answer_error(WebhookErrorLayer::new(), req, "x".into()).await).await;
    assert_eq!(status, 500);
    (headers, json)
}

/// With the request id read from another header, the layer must not answer that id as
/// `x-request-id`, over the `x-request-id` an inner layer set.
#[tokio::test]
async fn another_request_id_header_does_not_replace_x_request_id() {
    use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
    let delivery = http::HeaderName::from_static("x-github-delivery");
    let x_request_id = http::HeaderName::from_static("x-request-id");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen_in_handler = seen.clone();
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new().request_id_header(delivery.clone()))
        .layer(SetRequestIdLayer::new(
            x_request_id.clone(),
            MakeRequestUuid,
        ))
        .layer(PropagateRequestIdLayer::new(x_request_id))
        .service_fn(move |req: Request<Full<Bytes>>| {
            *seen_in_handler.lock().unwrap() = req.headers().get("x-request-id").cloned();
            async move {
                let problem = Problem::new(StatusCode::UNPROCESSABLE_ENTITY);
                let mut res = problem.to_response::<Full<Bytes>>();
                res.extensions_mut().insert(problem);
                Ok::<_, BoxError>(res)
            }
        });
    let req = Request::builder()
        .header(&delivery, "72d3162e")
        .body(Full::default())
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    let id = seen.lock().unwrap().clone().expect("an id was set");
    assert_eq!(
        res.headers()
            .get_all("x-request-id")
            .iter()
            .collect::<Vec<_>>(),
        [&id],
        "the id the inner layer set and logged"
    );
    let (_, _, json) = problem_of(res).await;
    assert_eq!(json["instance"], "72d3162e");

    // Without an inner layer, the client is not told its request id is the delivery id.
    let layer = WebhookErrorLayer::new().request_id_header(delivery.clone());
    let req = Request::builder()
        .header(&delivery, "72d3162e")
        .body(Full::default())
        .unwrap();
    let res = answer_error(layer, req, "x".into()).await;
    assert!(res.headers().get("x-request-id").is_none());
    assert_eq!(res.headers()[&delivery], "72d3162e");
}

// ---------------------------------------------------------------------------------------------
// axum

mod axum_router {
    use super::*;
    use axum::Router;
    use axum::routing::{get, post};

    #[derive(Debug, thiserror::Error)]
    enum HandlerError {
        #[error("unknown repository {0}")]
        UnknownRepo(String),
        #[error("rate limited by provider")]
        RateLimited,
    }

    impl HttpError for HandlerError {
        fn status(&self) -> StatusCode {
            match self {
                Self::UnknownRepo(_) => StatusCode::NOT_FOUND,
                Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            }
        }
        fn problem_type(&self) -> &str {
            match self {
                Self::UnknownRepo(_) => "urn:example:unknown-repo",
                Self::RateLimited => "urn:example:rate-limited",
            }
        }
        fn retry_after(&self) -> Option<Duration> {
            matches!(self, Self::RateLimited).then(|| Duration::from_secs(60))
        }
    }

    async fn review(
        axum::extract::Path(repo): axum::extract::Path<String>,
    ) -> Result<&'static str, Problem> {
        match repo.as_str() {
            "known" => Ok("queued"),
            "busy" => Err(HandlerError::RateLimited)?,
            other => Err(HandlerError::UnknownRepo(other.to_owned()))?,
        }
    }

    fn router() -> Router {
        Router::new()
            .route("/review/{repo}", post(review))
            .route(
                "/panic",
                get(|| async {
                    if true {
                        panic!("handler bug");
                    }
                    "unreachable"
                }),
            )
            .layer(WebhookErrorLayer::new())
    }

    impl From<HandlerError> for Problem {
        fn from(err: HandlerError) -> Self {
            tracing::debug!(error = %err, "handler error");
            Problem::from_error(&err)
        }
    }

    fn post_to(uri: &str) -> Request<axum::body::Body> {
        Request::post(uri)
            .header("x-request-id", "ax-1")
            .body(axum::body::Body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn handler_error_types_become_problems() {
        let res = router().oneshot(post_to("/review/known")).await.unwrap();
        assert_eq!(res.status(), 200);

        let (status, _, json) =
            problem_of(router().oneshot(post_to("/review/nope")).await.unwrap()).await;
        assert_eq!(status, 404);
        assert_eq!(json["type"], "urn:example:unknown-repo");
        assert_eq!(
            json["instance"], "ax-1",
            "the outer layer adds the request id"
        );

        let (status, headers, json) =
            problem_of(router().oneshot(post_to("/review/busy")).await.unwrap()).await;
        assert_eq!(status, 429);
        assert_eq!(headers["retry-after"], "60");
        assert_eq!(json["type"], "urn:example:rate-limited");
    }

    /// Under `route_layer` the layer wraps the matched routes only: their problems are rendered
    /// (with the request id, in gRPC terms for gRPC callers), while axum's own 404 for an
    /// unknown path passes by it untouched, as it does under `Router::layer`.
    #[tokio::test]
    async fn route_layer_renders_the_routes_problems() {
        let app = Router::new()
            .route("/review/{repo}", post(review))
            .route_layer(WebhookErrorLayer::new());
        let (status, _, json) =
            problem_of(app.clone().oneshot(post_to("/review/nope")).await.unwrap()).await;
        assert_eq!(
            (status.as_u16(), &json["instance"]),
            (404, &Value::from("ax-1"))
        );

        let mut req = post_to("/review/nope");
        req.headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        let res = app.clone().oneshot(req).await.unwrap();
        assert_eq!(
            (res.status(), &res.headers()["grpc-status"]),
            (StatusCode::OK, &"5".parse::<http::HeaderValue>().unwrap())
        );

        for app in [app, router()] {
            let res = app.oneshot(post_to("/elsewhere")).await.unwrap();
            assert_eq!(res.status(), 404);
            assert!(res.headers().get("content-type").is_none());
        }
    }

    #[tokio::test]
    async fn handler_panic_becomes_500() {
        let req = Request::get("/panic")
            .body(axum::body::Body::empty())
            .unwrap();
        let (status, _, json) = problem_of(router().oneshot(req).await.unwrap()).await;
        assert_eq!(status, 500);
        assert_eq!(json["type"], types::PANIC);
    }

    #[tokio::test]
    async fn problems_render_over_a_real_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, router()).await });

        let client = crate::client::new();
        let res = client
            .post(format!("http://{addr}/review/nope"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404);
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        let json: Value = res.json().await.unwrap();
        assert_eq!(json["status"], 404);

        // A panicking handler does not take the connection down: the client gets a 500.
        let res = client
            .get(format!("http://{addr}/panic"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 500);
        let json: Value = res.json().await.unwrap();
        assert_eq!(json["status"], 500);
        server.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// tonic

use crate::echo;
use crate::incoming;

mod tonic_server {
    use super::echo::{Echo, EchoService};
    use super::*;
    use tonic::{Code, Status};

    /// Rejects requests carrying `x-deny` with a problem, as an authentication middleware would.
    fn deny(req: Request<tonic::body::Body>) -> Result<Request<tonic::body::Body>, BoxError> {
        if req.headers().contains_key("x-deny") {
            Err(Problem::new(StatusCode::UNAUTHORIZED)
                .with_detail("signature 100% wrong")
                .into())
        } else {
            Ok(req)
        }
    }

    async fn start() -> std::net::SocketAddr {
        let (addr, incoming) = super::incoming::loopback().await;
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .layer(WebhookErrorLayer::new())
                .layer(tower::timeout::TimeoutLayer::new(Duration::from_millis(
                    300,
                )))
                .layer(tower::filter::FilterLayer::new(deny))
                .add_service(EchoService)
                .serve_with_incoming(incoming)
                .await
                .unwrap();
        });
        addr
    }

    async fn say(addr: std::net::SocketAddr, message: &str, deny: bool) -> Result<String, Status> {
        let mut request = tonic::Request::new(Echo {
            message: message.to_owned(),
        });
        if deny {
            request
                .metadata_mut()
                .insert("x-deny", "1".parse().unwrap());
        }
        echo::say(addr, request)
            .await
            .map(|res| res.into_inner().message)
    }

    #[tokio::test]
    async fn real_tonic_client_sees_mapped_codes() {
        let addr = start().await;
        assert_eq!(say(addr, "hello", false).await.unwrap(), "hello");

        let status = say(addr, "hello", true).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(status.message(), "signature 100% wrong");

        let status = say(addr, "panic", false).await.unwrap_err();
        assert_eq!(status.code(), Code::Internal);
        assert!(
            !status.message().contains("echo handler"),
            "{}",
            status.message()
        );

        let status = say(addr, "slow", false).await.unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded);

        // The server is still healthy after a panic.
        assert_eq!(say(addr, "again", false).await.unwrap(), "again");
    }
}

// ---------------------------------------------------------------------------------------------
// logging

/// A future that panics when polled, and again when dropped.
struct PanicsTwice;

impl std::future::Future for PanicsTwice {
    type Output = Result<Res, BoxError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        panic!("in poll")
    }
}

impl Drop for PanicsTwice {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("in drop");
        }
    }
}

#[tokio::test]
async fn a_future_that_panics_again_when_dropped_is_still_answered_500() {
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(|_req: Request<Full<Bytes>>| PanicsTwice);
    let res = svc.oneshot(http_req()).await.unwrap();
    let (status, _, json) = problem_of(res).await;
    assert_eq!(status, 500);
    assert_eq!(json["type"], types::PANIC);
}

mod logging {
    use super::*;
    use crate::logs::Logs;

    /// Whether a line captured so far contains `text`.
    fn logs_contain(logs: &Logs, text: &str) -> bool {
        logs.text().lines().any(|line| line.contains(text))
    }

    /// Checks the lines captured so far.
    fn logs_assert(logs: &Logs, check: impl FnOnce(&[&str]) -> Result<(), String>) {
        let text = logs.text();
        let lines: Vec<&str> = text.lines().collect();
        if let Err(why) = check(&lines) {
            panic!("{why}");
        }
    }

    /// A challenge that cannot be a header (a line break in it) is left out, never injected,
    /// and the mistake is logged; so is an error that reports a status below 400.
    #[tokio::test]
    async fn mistakes_of_the_server_itself_are_logged() {
        let (logs, _guard) = Logs::capture();
        let problem =
            Problem::new(StatusCode::UNAUTHORIZED).with_challenge("Bearer\r\nSet-Cookie: x=1");
        let res = answer_error(WebhookErrorLayer::new(), http_req(), problem.into()).await;
        assert_eq!(res.status(), 401);
        assert!(res.headers().get("www-authenticate").is_none());
        assert!(res.headers().get("set-cookie").is_none());
        assert!(logs_contain(
            &logs,
            "challenge is empty or not a valid header value"
        ));

        let res = answer_error(
            WebhookErrorLayer::new(),
            http_req(),
            Problem::new(StatusCode::ACCEPTED).into(),
        )
        .await;
        assert_eq!(res.status(), 500);
        assert!(logs_contain(&logs, "not an error status"));
    }

    /// A challenge that cannot be a header is logged once per response: not once by the
    /// renderer and again by the layer, nor again by an outer layer.
    #[tokio::test]
    async fn a_bad_challenge_is_logged_once_per_response() {
        let (logs, _guard) = Logs::capture();
        let problem =
            || Problem::new(StatusCode::UNAUTHORIZED).with_challenge("Bearer\r\nSet-Cookie: x=1");
        let res = answer_error(WebhookErrorLayer::new(), http_req(), problem().into()).await;
        assert_eq!(res.status(), 401);
        let svc = ServiceBuilder::new()
            .layer(WebhookErrorLayer::new())
            .layer(WebhookErrorLayer::new())
            .service_fn(move |_req: Request<Full<Bytes>>| async move {
                Err::<Res, BoxError>(problem().into())
            });
        let res = svc.oneshot(http_req()).await.unwrap();
        assert_eq!(res.status(), 401);
        assert!(res.headers().get("set-cookie").is_none());
        // The layer's own challenge takes the place of the one left out.
        let layer = WebhookErrorLayer::new().challenge("Basic realm=\"hooks\"");
        let res = answer_error(layer, http_req(), problem().into()).await;
        assert_eq!(res.headers()["www-authenticate"], "Basic realm=\"hooks\"");
        // A layer's own bad challenge is logged once too.
        let layer = WebhookErrorLayer::new().challenge("Basic\nrealm");
        let unauthorized = Problem::new(StatusCode::UNAUTHORIZED).into();
        let res = answer_error(layer, http_req(), unauthorized).await;
        assert!(res.headers().get("www-authenticate").is_none());
        logs_assert(&logs, |lines: &[&str]| {
            match lines
                .iter()
                .filter(|l| l.contains("challenge is empty or not a valid header value"))
                .count()
            {
                4 => Ok(()),
                n => Err(format!("{n} warnings for 4 bad challenges: {lines:?}")),
            }
        });
    }

    #[tokio::test]
    async fn panic_message_goes_to_the_log_not_the_client() {
        let (logs, _guard) = Logs::capture();
        let svc = ServiceBuilder::new()
            .layer(WebhookErrorLayer::new())
            .service_fn(|_req: Request<Full<Bytes>>| async {
                if true {
                    panic!("widget 42 exploded");
                }
                Ok::<Res, BoxError>(ok_response())
            });
        let res = svc.oneshot(http_req()).await.unwrap();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert!(!String::from_utf8_lossy(&body).contains("widget"));
        assert!(logs_contain(&logs, "widget 42 exploded"));
        assert!(logs_contain(&logs, "ERROR"));
    }

    #[tokio::test]
    async fn each_error_is_logged_once_at_its_level() {
        let (logs, _guard) = Logs::capture();
        let rejected = answer_error(
            WebhookErrorLayer::new(),
            http_req(),
            Problem::new(StatusCode::UNAUTHORIZED).into(),
        )
        .await;
        assert_eq!(rejected.status(), StatusCode::UNAUTHORIZED);
        let failed =
            answer_error(WebhookErrorLayer::new(), http_req(), "storage down".into()).await;
        assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);
        logs_assert(&logs, |lines: &[&str]| {
            let rejected: Vec<_> = lines
                .iter()
                .filter(|l| l.contains("request rejected"))
                .collect();
            let failed: Vec<_> = lines
                .iter()
                .filter(|l| l.contains("request failed"))
                .collect();
            match (rejected.as_slice(), failed.as_slice()) {
                ([r], [f])
                    if r.contains("WARN")
                        && r.contains("status=401")
                        && f.contains("ERROR")
                        && f.contains("storage down") =>
                {
                    Ok(())
                }
                _ => Err(format!("unexpected log lines: {lines:?}")),
            }
        });
    }

    /// A handler's problem has no error chain: its detail (meant for the client) is the reason
    /// the log gives.
    #[tokio::test]
    async fn a_handlers_problem_is_logged_with_its_detail() {
        let (logs, _guard) = Logs::capture();
        let svc = ServiceBuilder::new()
            .layer(WebhookErrorLayer::new())
            .service_fn(|_req: Request<Full<Bytes>>| async {
                let problem = Problem::new(StatusCode::SERVICE_UNAVAILABLE)
                    .with_detail("the work queue is full");
                let mut res = Response::new(Full::default());
                res.extensions_mut().insert(problem);
                Ok::<Res, BoxError>(res)
            });
        let res = svc.oneshot(http_req()).await.unwrap();
        assert_eq!(res.status(), 503);
        logs_assert(&logs, |lines: &[&str]| {
            match lines
                .iter()
                .filter(|l| l.contains("request failed"))
                .collect::<Vec<_>>()
                .as_slice()
            {
                [line] if line.contains("the work queue is full") => Ok(()),
                _ => Err(format!("unexpected log lines: {lines:?}")),
            }
        });
    }

    /// A layer per route and one for the whole app: the outer layer sees the problem the inner
    /// one rendered and must not log it again.
    #[tokio::test]
    async fn nested_layers_log_each_error_once() {
        let (logs, _guard) = Logs::capture();
        let svc = ServiceBuilder::new()
            .layer(WebhookErrorLayer::new())
            .layer(WebhookErrorLayer::new())
            .service_fn(|req: Request<Full<Bytes>>| async move {
                if req.uri().path() == "/panic" {
                    panic!("widget 7 exploded");
                }
                Err::<Res, BoxError>("storage down".into())
            });
        let res = svc.clone().oneshot(http_req()).await.unwrap();
        let (status, _, _) = problem_of(res).await;
        assert_eq!(status, 500);
        let req = Request::builder()
            .uri("/panic")
            .body(Full::default())
            .unwrap();
        let (status, _, json) = problem_of(svc.oneshot(req).await.unwrap()).await;
        assert_eq!(status, 500);
        assert_eq!(json["type"], types::PANIC);
        logs_assert(&logs, |lines: &[&str]| {
            let failed = lines
                .iter()
                .filter(|l| l.contains("request failed"))
                .count();
            let panicked = lines
                .iter()
                .filter(|l| l.contains("handler panicked"))
                .count();
            match (failed, panicked) {
                (1, 1) => Ok(()),
                _ => Err(format!("unexpected log lines: {lines:?}")),
            }
        });
    }
}

#[tokio::test]
async fn problem_responses_keep_what_inner_layers_added() {
    use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
    let x_request_id = http::HeaderName::from_static("x-request-id");
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .layer(SetRequestIdLayer::new(
            x_request_id.clone(),
            MakeRequestUuid,
        ))
        .layer(PropagateRequestIdLayer::new(x_request_id))
        .service_fn(|_req: Request<Full<Bytes>>| async {
            let mut res = Problem::new(StatusCode::UNAUTHORIZED).to_response::<Full<Bytes>>();
            res.headers_mut().insert("x-extra", "kept".parse().unwrap());
            // Metadata of the body being replaced, as a compression layer would add.
            for (name, value) in [
                ("content-encoding", "gzip"),
                ("etag", "\"abc\""),
                ("content-range", "bytes 0-9/10"),
                ("last-modified", "Sat, 28 Nov 2026 10:00:00 GMT"),
                ("content-disposition", "attachment; filename=report.bin"),
                ("accept-ranges", "bytes"),
            ] {
                res.headers_mut().insert(name, value.parse().unwrap());
            }
            res.extensions_mut()
                .insert(Problem::new(StatusCode::UNAUTHORIZED));
            res.extensions_mut().insert(42u32);
            Ok::<_, BoxError>(res)
        });
    let res = svc.oneshot(http_req()).await.unwrap();
    assert_eq!(
        res.extensions().get::<u32>(),
        Some(&42),
        "inner extensions kept"
    );
    assert!(
        res.extensions().get::<Problem>().is_some(),
        "the problem stays for outer layers"
    );
    assert_eq!(res.headers()["x-extra"], "kept");
    for name in [
        "content-encoding",
        "etag",
        "content-range",
        "last-modified",
        "content-disposition",
        "accept-ranges",
    ] {
        assert!(
            !res.headers().contains_key(name),
            "{name} described the old body"
        );
    }
    let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(res.headers().get_all("content-type").iter().count(), 1);
    let (status, _, json) = problem_of(res).await;
    assert_eq!(status, 401);
    assert_eq!(
        json["instance"],
        id.as_str(),
        "the id set inside becomes the instance"
    );
}

/// A bearer-token error of the user's, answered 401 with its own challenge.
#[derive(Debug, thiserror::Error)]
#[error("token expired")]
struct TokenExpired;

impl HttpError for TokenExpired {
    fn status(&self) -> StatusCode {
        StatusCode::UNAUTHORIZED
    }
    fn problem_type(&self) -> &str {
        "urn:example:token-expired"
    }
    fn challenge(&self) -> Option<std::borrow::Cow<'_, str>> {
        Some(r#"Bearer realm="api", error="invalid_token""#.into())
    }
}

/// RFC 9110 §15.5.2: a 401 carries `WWW-Authenticate`, from the error's challenge.
#[tokio::test]
async fn a_401_carries_the_errors_challenge() {
    let layer = WebhookErrorLayer::new().recognize::<TokenExpired>();
    let cases: Vec<(BoxError, &str)> = vec![
        (
            Box::new(tower_webhook::signature::SignatureValidationError::Mismatch),
            "Signature",
        ),
        (
            Box::new(TokenExpired),
            r#"Bearer realm="api", error="invalid_token""#,
        ),
        (
            Box::new(
                Problem::new(StatusCode::UNAUTHORIZED).with_challenge("Basic realm=\"hooks\""),
            ),
            "Basic realm=\"hooks\"",
        ),
    ];
    for (err, challenge) in cases {
        let (status, headers, _) =
            problem_of(answer_error(layer.clone(), http_req(), err).await).await;
        assert_eq!(status, 401);
        assert_eq!(headers["www-authenticate"], challenge);
    }
    // Other statuses and gRPC callers get none.
    let (status, headers, _) = problem_of(
        answer_error(
            layer.clone(),
            http_req(),
            Box::new(
                tower_webhook::signature::SignatureValidationError::PayloadTooLarge { limit: 10 },
            ),
        )
        .await,
    )
    .await;
    assert_eq!(status, 413);
    assert!(headers.get("www-authenticate").is_none());
    let res = answer_error(layer, grpc_req(), Box::new(TokenExpired)).await;
    assert_eq!(res.headers()["grpc-status"], "16");
    assert!(res.headers().get("www-authenticate").is_none());
}

/// A 401 whose error names no challenge gets the layer's, if it has one; an error's own comes
/// first, and other statuses and gRPC callers get none.
#[tokio::test]
async fn a_401_without_a_challenge_gets_the_layers() {
    let plain_401 = || -> BoxError { Box::new(Problem::new(StatusCode::UNAUTHORIZED)) };
    let (status, headers, _) =
        problem_of(answer_error(WebhookErrorLayer::new(), http_req(), plain_401()).await).await;
    assert_eq!(status, 401);
    assert!(headers.get("www-authenticate").is_none(), "none configured");

    let layer = WebhookErrorLayer::new()
        .recognize::<TokenExpired>()
        .challenge(r#"Bearer realm="hooks""#);
    assert!(format!("{layer:?}").contains("realm"));
    let (_, headers, _) =
        problem_of(answer_error(layer.clone(), http_req(), plain_401()).await).await;
    assert_eq!(headers["www-authenticate"], r#"Bearer realm="hooks""#);
    // A handler's 401 response that carries a problem is rendered the same way.
    let svc =
        ServiceBuilder::new()
            .layer(layer.clone())
            .service_fn(|_: Request<Full<Bytes>>| async {
                let mut res = Response::new(Full::new(Bytes::new()));
                *res.status_mut() = StatusCode::UNAUTHORIZED;
                res.extensions_mut()
                    .insert(Problem::new(StatusCode::UNAUTHORIZED));
                Ok::<_, std::convert::Infallible>(res)
            });
    let res = svc.oneshot(http_req()).await.unwrap();
    assert_eq!(res.headers()["www-authenticate"], r#"Bearer realm="hooks""#);
    // The error's own challenge wins.
    let (_, headers, _) =
        problem_of(answer_error(layer.clone(), http_req(), Box::new(TokenExpired)).await).await;
    assert_eq!(
        headers["www-authenticate"],
        r#"Bearer realm="api", error="invalid_token""#
    );
    let forbidden: BoxError = Box::new(Problem::new(StatusCode::FORBIDDEN));
    let (_, headers, _) =
        problem_of(answer_error(layer.clone(), http_req(), forbidden).await).await;
    assert!(headers.get("www-authenticate").is_none());
    let res = answer_error(layer, grpc_req(), plain_401()).await;
    assert_eq!(res.headers()["grpc-status"], "16");
    assert!(res.headers().get("www-authenticate").is_none());
}

/// An error that says its status is not an error status (a mistake in a user's `HttpError`).
#[derive(Debug)]
struct SaysOk(StatusCode);

impl std::fmt::Display for SaysOk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an error whose status is wrong")
    }
}

impl std::error::Error for SaysOk {}

impl HttpError for SaysOk {
    fn status(&self) -> StatusCode {
        self.0
    }
    fn problem_type(&self) -> &str {
        "urn:example:says-ok"
    }
}

#[tokio::test]
async fn an_error_with_a_status_below_400_is_never_answered_with_it() {
    for status in [
        StatusCode::OK,
        StatusCode::ACCEPTED,
        StatusCode::NO_CONTENT,
        StatusCode::FOUND,
        StatusCode::NOT_MODIFIED,
    ] {
        // A `Problem` returned as an error, one carried by a response, and a user's error type.
        let errors: [BoxError; 2] = [Problem::new(status).into(), Box::new(SaysOk(status))];
        for err in errors {
            let res = answer_error(WebhookErrorLayer::new(), http_req(), err).await;
            let (code, _, json) = problem_of(res).await;
            assert_eq!(code, 500, "{status}");
            assert_eq!(json["type"], "about:blank", "{status}");
        }
        let errors: [BoxError; 2] = [Problem::new(status).into(), Box::new(SaysOk(status))];
        for err in errors {
            let res = answer_error(WebhookErrorLayer::new(), grpc_req(), err).await;
            assert_eq!(res.headers()["grpc-status"], "13", "{status}");
        }
        // A handler's `Problem` answered through axum's `IntoResponse`.
        let svc = ServiceBuilder::new()
            .layer(WebhookErrorLayer::new())
            .service_fn(move |_req: Request<Full<Bytes>>| async move {
                Ok::<_, BoxError>(axum::response::IntoResponse::into_response(Problem::new(
                    status,
                )))
            });
        let res = svc.oneshot(http_req()).await.unwrap();
        let (code, _, _) = problem_of(res).await;
        assert_eq!(code, 500, "{status}");
    }
}

#[tokio::test]
async fn a_grpc_code_of_ok_on_an_error_is_not_sent() {
    let err: BoxError = Problem::new(StatusCode::CONFLICT)
        .with_grpc_code(GrpcCode::Ok)
        .into();
    let res = answer_error(WebhookErrorLayer::new(), grpc_req(), err).await;
    assert_eq!(res.headers()["grpc-status"], "6", "AlreadyExists, from 409");
}

#[tokio::test]
async fn a_renderer_cannot_answer_an_error_with_a_success_status() {
    let layer = WebhookErrorLayer::new()
        .render_with(|p: &Problem| Response::new(Bytes::from(format!("<h1>{}</h1>", p.title()))));
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_req: Request<Full<Bytes>>| async {
            Err::<Res, BoxError>(Problem::new(StatusCode::FORBIDDEN).into())
        });
    let res = svc.oneshot(http_req()).await.unwrap();
    assert_eq!(res.status(), 403);
}

/// The inner body goes through untouched: its frames, its trailers (gRPC's `grpc-status`), its
/// size hint, its end, and an error it fails with.
#[tokio::test]
async fn the_inner_body_passes_through_with_trailers_hints_and_errors() {
    use http_body::{Body as _, Frame};
    use http_body_util::StreamBody;

    #[derive(Debug)]
    struct Broken;
    impl std::fmt::Display for Broken {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("upstream closed")
        }
    }
    impl std::error::Error for Broken {}

    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(|_: Request<Full<Bytes>>| async {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            let frames: Vec<Result<Frame<Bytes>, Broken>> = vec![
                Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x02hi"))),
                Ok(Frame::trailers(trailers)),
            ];
            let body = StreamBody::new(futures_util::stream::iter(frames));
            Ok::<_, BoxError>(Response::new(body))
        });
    let res = svc.clone().oneshot(grpc_req()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let collected = res.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x02hi");

    // An error of the inner body is logged, and the caller gets one that says the body failed.
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(|_: Request<Full<Bytes>>| async {
            let frames: Vec<Result<Frame<Bytes>, Broken>> =
                vec![Ok(Frame::data(Bytes::from_static(b"part"))), Err(Broken)];
            Ok::<_, BoxError>(Response::new(StreamBody::new(futures_util::stream::iter(
                frames,
            ))))
        });
    let err = svc
        .oneshot(http_req())
        .await
        .unwrap()
        .into_body()
        .collect()
        .await;
    assert_eq!(err.unwrap_err().to_string(), "the response body failed");

    // Hints: exact for a full body, ended for an empty one, and those of the problem document.
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(|req: Request<Full<Bytes>>| async move {
            match req.uri().path() {
                "/full" => Ok(Response::new(Full::from("12345"))),
                "/empty" => Ok(Response::new(Full::default())),
                _ => Err::<Res, BoxError>(Problem::new(StatusCode::CONFLICT).into()),
            }
        });
    let get = |path: &str| Request::get(path).body(Full::default()).unwrap();
    let full = svc.clone().oneshot(get("/full")).await.unwrap().into_body();
    assert_eq!(
        (full.size_hint().exact(), full.is_end_stream()),
        (Some(5), false)
    );
    let empty = svc
        .clone()
        .oneshot(get("/empty"))
        .await
        .unwrap()
        .into_body();
    assert_eq!(
        (empty.size_hint().exact(), empty.is_end_stream()),
        (Some(0), true)
    );
    let mut problem = svc.oneshot(get("/problem")).await.unwrap().into_body();
    let len = problem.size_hint().exact().unwrap();
    assert!(len > 0 && !problem.is_end_stream());
    let frame = problem.frame().await.unwrap().unwrap();
    assert_eq!(frame.data_ref().unwrap().len() as u64, len);
    assert!(problem.is_end_stream());
    assert_eq!(problem.size_hint().exact(), Some(0));
    assert!(problem.frame().await.is_none());
}

/// Media types are case-insensitive (RFC 9110, section 8.3.1): `Application/GRPC` is gRPC.
#[tokio::test]
async fn a_grpc_content_type_in_another_case_is_still_grpc() {
    for sent in ["Application/GRPC", "application/gRPC-Web+proto"] {
        let req = Request::post("/pkg.Svc/Method")
            .header("content-type", sent)
            .body(Full::default())
            .unwrap();
        let err = Problem::new(StatusCode::NOT_FOUND).into();
        let res = answer_error(WebhookErrorLayer::new(), req, err).await;
        assert_eq!(res.status(), StatusCode::OK, "{sent}");
        assert_eq!(res.headers()["grpc-status"], "5", "{sent}");
    }
}

/// A renderer that only builds a body and a status still answers with the problem's
/// `Retry-After` and `WWW-Authenticate`: a client told to wait, or to authenticate, is told so
/// whatever the body format. A renderer that sets them itself keeps its own values.
#[tokio::test]
async fn a_renderer_keeps_the_retry_after_and_challenge_of_the_problem() {
    let minimal = WebhookErrorLayer::new().render_with(|p: &Problem| {
        let mut res = Response::new(Bytes::from(p.title().to_owned()));
        *res.status_mut() = p.status();
        res
    });
    let problems = [
        Problem::new(StatusCode::SERVICE_UNAVAILABLE).with_retry_after(Duration::from_millis(1500)),
        Problem::new(StatusCode::UNAUTHORIZED).with_challenge(r#"Bearer realm="api""#),
    ];
    for problem in problems {
        let svc = ServiceBuilder::new().layer(minimal.clone()).service_fn(
            move |_req: Request<Full<Bytes>>| {
                let problem = problem.clone();
                async move { Err::<Res, BoxError>(problem.into()) }
            },
        );
        let res = svc.oneshot(http_req()).await.unwrap();
        match res.status().as_u16() {
            503 => assert_eq!(res.headers()["retry-after"], "2"),
            401 => assert_eq!(res.headers()["www-authenticate"], r#"Bearer realm="api""#),
            other => panic!("{other}"),
        }
    }

    let own = WebhookErrorLayer::new().render_with(|p: &Problem| {
        let mut res = Response::new(Bytes::new());
        *res.status_mut() = p.status();
        res.headers_mut()
            .insert("retry-after", "60".parse().unwrap());
        res
    });
    let svc = ServiceBuilder::new()
        .layer(own)
        .service_fn(|_req: Request<Full<Bytes>>| async {
            Err::<Res, BoxError>(
                Problem::new(StatusCode::SERVICE_UNAVAILABLE)
                    .with_retry_after(Duration::from_secs(5))
                    .into(),
            )
        });
    let res = svc.oneshot(http_req()).await.unwrap();
    assert_eq!(res.headers()["retry-after"], "60");
}

/// HTTP/2 forbids whitespace at either end of a field value (RFC 9113, section 8.2.1), and
/// peers that check it reset the stream: a challenge configured with such spaces is sent
/// without them, from a problem and from the layer's own setting alike.
#[tokio::test]
async fn a_challenge_is_sent_without_spaces_at_its_ends() {
    let problem = Problem::new(StatusCode::UNAUTHORIZED).with_challenge(" Bearer realm=\"api\"\t");
    assert_eq!(problem.challenge(), Some("Bearer realm=\"api\""));
    let res = problem.to_response::<Bytes>();
    assert_eq!(res.headers()["www-authenticate"], "Bearer realm=\"api\"");

    let svc = WebhookErrorLayer::new()
        .challenge("Basic realm=\"hooks\"  ")
        .layer(service_fn(|_: Request<Full<Bytes>>| async {
            Err::<Response<Full<Bytes>>, _>(Problem::new(StatusCode::UNAUTHORIZED))
        }));
    let res = svc.oneshot(Request::new(Full::default())).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["www-authenticate"], "Basic realm=\"hooks\"");
}

/// A renderer that panics is the user's bug, but the client still gets an answer: the problem
/// in the default `application/problem+json` form, with its own status, whether the error came
/// from the service or from a handler's response carrying a `Problem`.
#[tokio::test]
async fn a_renderer_that_panics_falls_back_to_problem_json() {
    let panicking = || {
        WebhookErrorLayer::new()
            .render_with(|_: &Problem| -> Response<Bytes> { panic!("renderer bug") })
    };
    let req = Request::builder()
        .header("x-request-id", "r-1")
        .body(Full::default())
        .unwrap();
    let svc =
        ServiceBuilder::new()
            .layer(panicking())
            .service_fn(|_req: Request<Full<Bytes>>| async {
                Err::<Res, BoxError>(Problem::new(StatusCode::FORBIDDEN).into())
            });
    let (status, _, json) = problem_of(svc.oneshot(req).await.unwrap()).await;
    assert_eq!(status, 403);
    assert_eq!(json["instance"], "r-1");

    // A handler's response that carries a problem is rendered inside the response future.
    let svc =
        ServiceBuilder::new()
            .layer(panicking())
            .service_fn(|_req: Request<Full<Bytes>>| async {
                let mut res = ok_response();
                res.extensions_mut()
                    .insert(Problem::new(StatusCode::CONFLICT));
                Ok::<_, BoxError>(res)
            });
    let (status, _, _) = problem_of(svc.oneshot(http_req()).await.unwrap()).await;
    assert_eq!(status, 409);
}

/// `instance` is a URI reference that a client may resolve against the request's URL: a
/// request id that names another host (`//host/...`, `https://host/...`) is not copied into it,
/// while a URN (`urn:uuid:...`, the form RFC 9457 suggests) is.
#[tokio::test]
async fn an_instance_never_points_at_another_host() {
    instance_of_request_ids(
        &[
            "//evil.example/x",
            "https://evil.example/x",
            "HTTP://evil.example",
        ],
        &[
            "urn:uuid:72d3162e-cc78-11e3-81ab-4c9367dc0958",
            "req/42",
            "a//b",
        ],
    )
    .await;
}

/// A colon in the first segment of a relative reference makes it no URI reference at all
/// (RFC 3986, section 4.2): `12:30:00` is neither a URI (a scheme starts with a letter) nor a
/// relative reference. Strict URI parsers reject such an `instance`.
#[tokio::test]
async fn an_instance_is_always_a_uri_reference() {
    instance_of_request_ids(
        &["12:30:00", ":42", "_trace:1", "1req:x/y", "-a:b", "a_b:c"],
        &[
            "req:42",
            "urn:uuid:72d3162e-cc78-11e3-81ab-4c9367dc0958",
            "a+b.c-d:x",
            "trace/12:30",
            "?at=12:30",
            "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        ],
    )
    .await;
}

/// Each request id of `left_out` is not the problem's `instance` (but still echoed in its
/// header); each of `kept` is.
async fn instance_of_request_ids(left_out: &[&str], kept: &[&str]) {
    for &id in left_out {
        let (headers, json) = problem_with_request_id(id).await;
        assert!(
            json.get("instance").is_none(),
            "{id:?} became {}",
            json["instance"]
        );
        assert_eq!(headers["x-request-id"], id, "still echoed in its header");
    }
    for &id in kept {
        assert_eq!(problem_with_request_id(id).await.1["instance"], id);
    }
}

/// `WebhookProcessingError` carries the upstream failure a handler met, a reqwest error whose
/// `Debug` prints the URL it called with its query: `{err:?}` in a handler's own log line, or an
/// error returned from `main`, printed the token. Its `Debug` shows the source redacted, as the
/// layer's log does.
#[test]
fn a_processing_error_debug_shows_its_source_redacted() {
    #[derive(Debug)]
    struct Upstream {
        url: &'static str,
    }
    impl std::fmt::Display for Upstream {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "error sending request for url ({})", self.url)
        }
    }
    impl std::error::Error for Upstream {}
    let err = WebhookProcessingError::new(Upstream {
        url: "https://api.example/v1?access_token=hunter2",
    });
    let debug = format!("{err:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(debug.contains("access_token=<redacted>"), "{debug}");
    let retryable = WebhookProcessingError::retryable("queue full", Duration::from_secs(3));
    assert!(format!("{retryable:?}").contains("3s"), "{retryable:?}");
}
