use std::any::Any;
use std::borrow::Cow;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use pin_project::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::body::ResponseBody;
use super::classify::{self, Recognizer};
use super::grpc::GrpcCode;
use super::problem::{HttpError, Problem};
use crate::BoxError;

/// Marks a problem response whose cause was already logged by the middleware that made it, so
/// [`WebhookErrorLayer`] does not log it a second time.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AlreadyLogged;

/// Renders a [`Problem`] for an HTTP (non-gRPC) client.
///
/// The default, [`ProblemJson`], writes `application/problem+json`. Any
/// `Fn(&Problem) -> Response<Bytes>` closure is a renderer too. gRPC callers always get a
/// trailers-only gRPC response, whatever the renderer.
///
/// A renderer builds the body and may set any header. The layer then fills in what the
/// response of an error needs: the problem's status if the renderer left one that is not 4xx
/// or 5xx, `Retry-After` ([`Problem::retry_after`]) and `WWW-Authenticate`
/// ([`Problem::challenge`]) if the renderer did not set them, the request id, and
/// `Connection: close` on a 408 or a 413 over HTTP/1.x (RFC 9110, sections 15.5.9 and
/// 15.5.14). A `WWW-Authenticate` that the inner stack set on a response carrying the problem
/// is kept in place of the renderer's. A renderer that panics is logged, and the problem
/// answered as [`ProblemJson`] renders it.
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use std::convert::Infallible;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_webhook::error::{Problem, WebhookErrorLayer};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let layer = WebhookErrorLayer::new().render_with(|problem: &Problem| {
///     let mut res = Response::new(Bytes::from(format!("error {}", problem.status().as_u16())));
///     *res.status_mut() = problem.status();
///     res
/// });
/// let svc = ServiceBuilder::new().layer(layer).service_fn(|_req: Request<String>| async {
///     Err::<Response<String>, _>(Problem::new(http::StatusCode::CONFLICT))
/// });
/// let res = svc.oneshot(Request::new(String::new())).await.unwrap();
/// assert_eq!(res.status(), 409);
/// # }
/// ```
pub trait RenderProblem {
    /// Builds the response for `problem`. Its status should be `problem.status()`; a
    /// response whose status is not 4xx or 5xx (one left at its default `200`) gets
    /// `problem.status()` instead.
    ///
    /// # Example
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::{Response, StatusCode};
    /// use tower_webhook::error::{Problem, RenderProblem};
    ///
    /// #[derive(Clone)]
    /// struct PlainText;
    ///
    /// impl RenderProblem for PlainText {
    ///     fn render(&self, problem: &Problem) -> Response<Bytes> {
    ///         Response::builder()
    ///             .status(problem.status())
    ///             .header("content-type", "text/plain")
    ///             .body(Bytes::from(problem.title().to_owned()))
    ///             .unwrap()
    ///     }
    /// }
    ///
    /// let res = PlainText.render(&Problem::new(StatusCode::CONFLICT));
    /// assert_eq!(res.status(), StatusCode::CONFLICT);
    /// assert_eq!(&res.body()[..], b"Conflict");
    /// // WebhookErrorLayer::new().render_with(PlainText) answers HTTP clients this way.
    /// ```
    fn render(&self, problem: &Problem) -> Response<Bytes>;
}

impl<F> RenderProblem for F
where
    F: Fn(&Problem) -> Response<Bytes>,
{
    fn render(&self, problem: &Problem) -> Response<Bytes> {
        self(problem)
    }
}

/// The default renderer: an RFC 9457 `application/problem+json` document.
///
/// # Example
///
/// ```
/// use http::StatusCode;
/// use tower_webhook::error::{Problem, ProblemJson, RenderProblem};
///
/// let res = ProblemJson.render(&Problem::new(StatusCode::UNAUTHORIZED));
/// assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
/// assert_eq!(res.headers()["content-type"], "application/problem+json");
/// let doc: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
/// assert_eq!(doc["status"], 401);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct ProblemJson;

impl RenderProblem for ProblemJson {
    fn render(&self, problem: &Problem) -> Response<Bytes> {
        problem.to_response()
    }
}

/// Settings shared by every clone of a layer and its services.
struct Config {
    timeout_status: StatusCode,
    request_id_header: HeaderName,
    recognizers: Vec<Recognizer>,
    /// The `WWW-Authenticate` challenge of a 401 whose problem names none.
    challenge: Option<Cow<'static, str>>,
}

static DEFAULT_CONFIG: Config = Config {
    timeout_status: StatusCode::GATEWAY_TIMEOUT,
    request_id_header: HeaderName::from_static("x-request-id"),
    recognizers: Vec::new(),
    challenge: None,
};

/// The configuration handle: the default one is a `&'static`, so the common case costs no
/// reference counting per request.
#[derive(Clone)]
enum Shared {
    Static(&'static Config),
    Owned(Arc<Config>),
}

impl Shared {
    fn get(&self) -> &Config {
        match self {
            Shared::Static(config) => config,
            Shared::Owned(config) => config,
        }
    }

    fn update(&mut self, f: impl FnOnce(&mut Config)) {
        let current = self.get();
        let mut config = Config {
            timeout_status: current.timeout_status,
            request_id_header: current.request_id_header.clone(),
            recognizers: current.recognizers.clone(),
            challenge: current.challenge.clone(),
        };
        f(&mut config);
        *self = Shared::Owned(Arc::new(config));
    }
}

/// Layer that turns every error and panic of the inner service into a correct response.
///
/// See the [module docs](super) for what it maps and how.
///
/// # Example
///
/// ```
/// use http::{Request, Response, StatusCode};
/// use std::time::Duration;
/// use tower::{BoxError, ServiceBuilder, ServiceExt};
/// use tower_webhook::error::WebhookErrorLayer;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let svc = ServiceBuilder::new()
///     .layer(WebhookErrorLayer::new())
///     .timeout(Duration::from_secs(10))
///     .service_fn(|_: Request<String>| async {
///         tokio::time::sleep(Duration::from_secs(60)).await; // a slow upstream
///         Ok::<_, BoxError>(Response::new(String::new()))
///     });
///
/// let res = svc.oneshot(Request::new(String::new())).await.unwrap();
/// assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
/// assert_eq!(res.headers()["content-type"], "application/problem+json");
/// # }
/// ```
#[derive(Clone)]
pub struct WebhookErrorLayer<R = ProblemJson> {
    shared: Shared,
    renderer: R,
}

impl WebhookErrorLayer {
    /// A layer with the default settings: timeouts answer 504, request ids are read from
    /// `x-request-id`, problems are rendered as `application/problem+json`.
    ///
    /// # Example
    ///
    /// ```
    /// use http::{Request, Response, StatusCode};
    /// use tower::{ServiceBuilder, ServiceExt};
    /// use tower_webhook::error::{Problem, WebhookErrorLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let svc = ServiceBuilder::new()
    ///     .layer(WebhookErrorLayer::new())
    ///     .service_fn(|_: Request<String>| async {
    ///         Err::<Response<String>, _>(Problem::new(StatusCode::FORBIDDEN))
    ///     });
    ///
    /// let req = Request::builder().header("x-request-id", "req-9").body(String::new()).unwrap();
    /// let res = svc.oneshot(req).await.unwrap();
    /// assert_eq!(res.status(), StatusCode::FORBIDDEN);
    /// assert_eq!(res.headers()["content-type"], "application/problem+json");
    /// # }
    /// ```
    pub fn new() -> Self {
        Self {
            shared: Shared::Static(&DEFAULT_CONFIG),
            renderer: ProblemJson,
        }
    }
}

impl Default for WebhookErrorLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<R> WebhookErrorLayer<R> {
    /// Answers `tower::timeout` expiries with this status instead of 504 Gateway Timeout.
    ///
    /// 504 fits when the deadline protects an upstream call; use 408 Request Timeout when the
    /// timeout measures the client's own request.
    ///
    /// # Example
    ///
    /// ```
    /// use http::{Request, Response, StatusCode};
    /// use tower::timeout::error::Elapsed;
    /// use tower::{ServiceBuilder, ServiceExt};
    /// use tower_webhook::error::WebhookErrorLayer;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// // The timeout bounds how long the client takes to send its request.
    /// let svc = ServiceBuilder::new()
    ///     .layer(WebhookErrorLayer::new().timeout_status(StatusCode::REQUEST_TIMEOUT))
    ///     .service_fn(|_: Request<String>| async { Err::<Response<String>, _>(Elapsed::new()) });
    ///
    /// let res = svc.oneshot(Request::new(String::new())).await.unwrap();
    /// assert_eq!(res.status(), StatusCode::REQUEST_TIMEOUT);
    /// # }
    /// ```
    pub fn timeout_status(mut self, status: StatusCode) -> Self {
        self.shared.update(|c| c.timeout_status = status);
        self
    }

    /// Reads the request id, used as the problem's `instance`, from this header
    /// (default `x-request-id`). Problem responses echo it in the same header.
    ///
    /// # Example
    ///
    /// ```
    /// use http::{HeaderName, Request, Response, StatusCode};
    /// use http_body_util::BodyExt;
    /// use tower::{ServiceBuilder, ServiceExt};
    /// use tower_webhook::error::{Problem, WebhookErrorLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let layer = WebhookErrorLayer::new().request_id_header(HeaderName::from_static("x-github-delivery"));
    /// let svc = ServiceBuilder::new().layer(layer).service_fn(|_: Request<String>| async {
    ///     Err::<Response<String>, _>(Problem::new(StatusCode::UNPROCESSABLE_ENTITY))
    /// });
    ///
    /// let req = Request::post("/hook")
    ///     .header("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
    ///     .body(String::new())
    ///     .unwrap();
    /// let body = svc.oneshot(req).await.unwrap().into_body().collect().await.unwrap().to_bytes();
    /// let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    /// assert_eq!(doc["instance"], "72d3162e-cc78-11e3-81ab-4c9367dc0958");
    /// # }
    /// ```
    pub fn request_id_header(mut self, name: HeaderName) -> Self {
        self.shared.update(|c| c.request_id_header = name);
        self
    }

    /// The `WWW-Authenticate` challenge sent with a 401 whose error names none (RFC 9110,
    /// section 15.5.2: a 401 carries at least one). An error's own
    /// [`challenge`](super::HttpError::challenge) comes first; without either, a 401 goes out
    /// without the header. A 401 the inner stack answered itself (a handler's bare
    /// `StatusCode::UNAUTHORIZED`) gets it too when it carries no `WWW-Authenticate`. One the
    /// inner stack set on its own response (a handler's, an inner layer's) is kept as it is,
    /// also on a response carrying a [`Problem`] that the layer renders again: the layer's is not
    /// added beside it.
    ///
    /// # Example
    ///
    /// ```
    /// use http::{Request, Response, StatusCode};
    /// use tower::{ServiceBuilder, ServiceExt};
    /// use tower_webhook::error::{Problem, WebhookErrorLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let layer = WebhookErrorLayer::new().challenge(r#"Bearer realm="webhooks""#);
    /// let svc = ServiceBuilder::new().layer(layer).service_fn(|_: Request<String>| async {
    ///     Err::<Response<String>, _>(Problem::new(StatusCode::UNAUTHORIZED))
    /// });
    ///
    /// let res = svc.oneshot(Request::new(String::new())).await.unwrap();
    /// assert_eq!(res.headers()["www-authenticate"], r#"Bearer realm="webhooks""#);
    /// # }
    /// ```
    pub fn challenge(mut self, challenge: impl Into<Cow<'static, str>>) -> Self {
        let challenge = challenge.into();
        self.shared.update(|c| c.challenge = Some(challenge));
        self
    }

    /// Recognises errors of type `E` anywhere in an error's `source()` chain and renders them
    /// through their [`HttpError`] implementation.
    ///
    /// # Example
    ///
    /// ```
    /// use http::{Request, Response, StatusCode};
    /// use tower::{BoxError, ServiceBuilder, ServiceExt};
    /// use tower_webhook::error::{HttpError, WebhookErrorLayer};
    ///
    /// #[derive(Debug, thiserror::Error)]
    /// #[error("repository {0} is not installed")]
    /// struct NotInstalled(String);
    ///
    /// impl HttpError for NotInstalled {
    ///     fn status(&self) -> StatusCode { StatusCode::UNPROCESSABLE_ENTITY }
    ///     fn problem_type(&self) -> &str { "urn:example:not-installed" }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let svc = ServiceBuilder::new()
    ///     .layer(WebhookErrorLayer::new().recognize::<NotInstalled>())
    ///     .service_fn(|_: Request<String>| async {
    ///         Err::<Response<String>, BoxError>(NotInstalled("octo/repo".into()).into())
    ///     });
    ///
    /// let res = svc.oneshot(Request::new(String::new())).await.unwrap();
    /// assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    /// # }
    /// ```
    pub fn recognize<E: HttpError>(mut self) -> Self {
        self.shared
            .update(|c| c.recognizers.push(classify::recognize_as::<E>));
        self
    }

    /// Renders problems for HTTP clients with `renderer` instead of `application/problem+json`.
    ///
    /// # Example
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::{Request, Response, StatusCode};
    /// use http_body_util::BodyExt;
    /// use tower::{ServiceBuilder, ServiceExt};
    /// use tower_webhook::error::{Problem, WebhookErrorLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let plain_text = |problem: &Problem| {
    ///     Response::builder()
    ///         .status(problem.status())
    ///         .header("content-type", "text/plain")
    ///         .body(Bytes::from(problem.title().to_owned()))
    ///         .unwrap()
    /// };
    /// let svc = ServiceBuilder::new()
    ///     .layer(WebhookErrorLayer::new().render_with(plain_text))
    ///     .service_fn(|_: Request<String>| async {
    ///         Err::<Response<String>, _>(Problem::new(StatusCode::CONFLICT))
    ///     });
    ///
    /// let res = svc.oneshot(Request::new(String::new())).await.unwrap();
    /// assert_eq!(res.headers()["content-type"], "text/plain");
    /// assert_eq!(&res.into_body().collect().await.unwrap().to_bytes()[..], b"Conflict");
    /// # }
    /// ```
    pub fn render_with<R2: RenderProblem>(self, renderer: R2) -> WebhookErrorLayer<R2> {
        WebhookErrorLayer {
            shared: self.shared,
            renderer,
        }
    }
}

impl<R> fmt::Debug for WebhookErrorLayer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let config = self.shared.get();
        f.debug_struct("WebhookErrorLayer")
            .field("timeout_status", &config.timeout_status)
            .field("request_id_header", &config.request_id_header)
            .field("recognizers", &config.recognizers.len())
            .field("challenge", &config.challenge)
            .finish_non_exhaustive()
    }
}

impl<S, R: Clone> Layer<S> for WebhookErrorLayer<R> {
    type Service = WebhookError<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        WebhookError {
            inner,
            shared: self.shared.clone(),
            renderer: self.renderer.clone(),
            ready_error: None,
        }
    }
}

/// Middleware that turns every error and panic of the inner service into a response.
///
/// See the [module docs](super) for more details.
///
/// # Example
///
/// ```
/// use http::{Request, Response, StatusCode};
/// use tower::{BoxError, Layer, ServiceExt};
/// use tower_webhook::error::{WebhookError, WebhookErrorLayer};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let handler = tower::service_fn(|_: Request<String>| async {
///     Err::<Response<String>, BoxError>("connection reset by the database".into())
/// });
/// let svc: WebhookError<_> = WebhookErrorLayer::new().layer(handler);
///
/// // Its error type is `Infallible`: every failure is already a response.
/// let res = svc.oneshot(Request::new(String::new())).await.unwrap();
/// assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
/// # }
/// ```
pub struct WebhookError<S, R = ProblemJson> {
    inner: S,
    shared: Shared,
    renderer: R,
    ready_error: Option<Unanswered>,
}

impl<S: Clone, R: Clone> Clone for WebhookError<S, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            renderer: self.renderer.clone(),
            ready_error: None,
        }
    }
}

impl<S: fmt::Debug, R> fmt::Debug for WebhookError<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookError")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> WebhookError<S> {
    /// Wraps `inner` with the default settings.
    ///
    /// # Example
    ///
    /// ```
    /// use http::{Request, Response, StatusCode};
    /// use tower::ServiceExt;
    /// use tower_webhook::error::{Problem, WebhookError};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let svc = WebhookError::new(tower::service_fn(|_: Request<String>| async {
    ///     Err::<Response<String>, _>(Problem::new(StatusCode::NOT_FOUND))
    /// }));
    /// let res = svc.oneshot(Request::new(String::new())).await.unwrap();
    /// assert_eq!(res.status(), StatusCode::NOT_FOUND);
    /// # }
    /// ```
    pub fn new(inner: S) -> Self {
        WebhookErrorLayer::new().layer(inner)
    }
}

/// What the response future needs to know about the request, captured before it is moved.
struct RequestInfo {
    grpc: Option<Grpc>,
    /// The `content-type` of a gRPC request that names a codec (`+proto`, `+json`) or
    /// parameters: its answer is typed with the same codec.
    grpc_type: Option<HeaderValue>,
    /// A HEAD request: its answer has no content (RFC 9110, section 9.3.2).
    head: bool,
    /// An HTTP/1.x request: its connection can be closed with `Connection: close`.
    http1: bool,
    request_id: Option<HeaderValue>,
}

/// Up to this many headers, they are scanned once instead of looked up twice.
const LINEAR_SCAN_MAX: usize = 24;

/// The gRPC protocol a request speaks, from its `content-type`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grpc {
    /// `application/grpc[+codec]`.
    Native,
    /// `application/grpc-web[+codec]`: trailers-only answers work the same, under this type.
    Web,
    /// `application/grpc-web-text[+codec]`.
    WebText,
}

impl Grpc {
    /// Media types are case-insensitive (RFC 9110, section 8.3.1).
    #[inline]
    pub(crate) fn of(content_type: &HeaderValue) -> Option<Self> {
        fn strip<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
            let (head, rest) = s.split_at_checked(prefix.len())?;
            head.eq_ignore_ascii_case(prefix).then_some(rest)
        }
        let bytes = content_type.as_bytes();
        // Most requests are not gRPC: the `g` of `grpc` (or its absence) tells at once.
        if bytes.get(12).map(u8::to_ascii_lowercase) != Some(b'g') {
            return None;
        }
        let rest = strip(bytes, b"application/grpc")?;
        let (kind, rest) = if let Some(rest) = strip(rest, b"-web-text") {
            (Self::WebText, rest)
        } else if let Some(rest) = strip(rest, b"-web") {
            (Self::Web, rest)
        } else {
            (Self::Native, rest)
        };
        // The type ends here, or a codec (`+proto`) or parameters follow.
        matches!(rest.first(), None | Some(b'+' | b';' | b' ' | b'\t')).then_some(kind)
    }

    /// The gRPC protocol of a request with this `content-type`, and the value itself when it
    /// says more than the bare type (a codec, parameters).
    #[inline]
    fn of_request(content_type: &HeaderValue) -> (Option<Self>, Option<HeaderValue>) {
        match Self::of(content_type) {
            Some(kind) => {
                let more = content_type.len() > kind.bare().len();
                (Some(kind), more.then(|| content_type.clone()))
            }
            None => (None, None),
        }
    }

    /// `self`, if `response` (to a request of `self`) is a gRPC stream of that protocol, whose
    /// body a failure can end with `grpc-status` trailers: a `200` typed as the request, whose
    /// head does not carry the call's status already (a trailers-only answer) nor a
    /// `Content-Length` (a proxy passing an upstream's on), which leaves no room for an ending
    /// the body did not count. Anything else (a router's `404` page, a proxy's `503`) is cut
    /// short like any HTTP answer: a trailer frame would corrupt it and end it as if complete.
    /// So is native gRPC over HTTP/1.x (`http1`), where trailers are dropped unless the client
    /// asked for them and the head announced them: the last chunk would then end the stream as
    /// if complete.
    fn streamed_by<B>(self, response: &Response<B>, http1: bool) -> Option<Self> {
        let headers = response.headers();
        let grpc = response.status() == StatusCode::OK
            && !(http1 && self == Self::Native)
            && headers.get(header::CONTENT_TYPE).and_then(Self::of) == Some(self)
            && !headers.contains_key("grpc-status")
            && !headers.contains_key(header::CONTENT_LENGTH);
        grpc.then_some(self)
    }

    /// The media type without a codec.
    fn bare(self) -> &'static str {
        match self {
            Self::Native => "application/grpc",
            Self::Web => "application/grpc-web",
            Self::WebText => "application/grpc-web-text",
        }
    }

    /// The content type of a trailers-only answer to a request typed `sent`: the request's own
    /// media type, codec included (`application/grpc-web+json`), lower-cased and without
    /// parameters, as the gRPC and gRPC-web protocols type a response (and as tonic-web
    /// answers); clients such as connect-es refuse an answer whose codec is not theirs. A
    /// codec that is not a token is left out.
    pub(crate) fn content_type(self, sent: Option<&HeaderValue>) -> HeaderValue {
        let bare = self.bare();
        let codec = sent.and_then(|sent| {
            let bytes = sent.as_bytes();
            let end = bytes
                .iter()
                .position(|b| matches!(b, b';' | b' ' | b'\t'))
                .unwrap_or(bytes.len());
            // `of` checked the bare type, in any case, and that a `+` follows it if anything.
            let codec = bytes.get(bare.len()..end)?.strip_prefix(b"+")?;
            let token = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
            (!codec.is_empty() && codec.iter().all(token)).then_some(codec)
        });
        let Some(codec) = codec else {
            return HeaderValue::from_static(bare);
        };
        let mut value = Vec::with_capacity(bare.len() + 1 + codec.len());
        value.extend_from_slice(bare.as_bytes());
        value.push(b'+');
        value.extend(codec.iter().map(u8::to_ascii_lowercase));
        HeaderValue::from_bytes(&value).unwrap_or(HeaderValue::from_static(bare))
    }
}

impl RequestInfo {
    #[inline]
    fn of<B>(req: &Request<B>, config: &Config) -> Self {
        let headers = req.headers();
        let head = req.method() == Method::HEAD;
        let http1 = req.version() < Version::HTTP_2;
        if headers.is_empty() {
            return Self {
                grpc: None,
                grpc_type: None,
                head,
                http1,
                request_id: None,
            };
        }
        if headers.len() <= LINEAR_SCAN_MAX {
            // One pass over a small map is cheaper than two hashed lookups.
            let mut info = Self {
                grpc: None,
                grpc_type: None,
                head,
                http1,
                request_id: None,
            };
            // The first `Content-Type` only, as `get` reads it below (and the signature layer
            // does): a request does not turn gRPC by a second one.
            let mut content_type_seen = false;
            for (name, value) in headers {
                if name == header::CONTENT_TYPE {
                    if !content_type_seen {
                        content_type_seen = true;
                        (info.grpc, info.grpc_type) = Grpc::of_request(value);
                    }
                } else if info.request_id.is_none() && *name == config.request_id_header {
                    info.request_id = Some(value.clone());
                }
            }
            return info;
        }
        let (grpc, grpc_type) = headers
            .get(header::CONTENT_TYPE)
            .map_or((None, None), Grpc::of_request);
        Self {
            grpc,
            grpc_type,
            head,
            http1,
            request_id: headers.get(&config.request_id_header).cloned(),
        }
    }
}

impl<S, R, ReqBody, ResBody> Service<Request<ReqBody>> for WebhookError<S, R>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    R: RenderProblem + Clone,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.ready_error.is_none() {
            // A failure is answered to the next request instead of closing the connection; a
            // panic too, which would otherwise unwind through the server's connection task.
            let inner = &mut self.inner;
            match catch_unwind(AssertUnwindSafe(|| inner.poll_ready(cx))) {
                Ok(Poll::Pending) => return Poll::Pending,
                Ok(Poll::Ready(Ok(()))) => {}
                Ok(Poll::Ready(Err(err))) => {
                    self.ready_error = Some(Unanswered::new(NotReady::Error(err.into())));
                }
                // Only the message is kept: the payload is not `Sync`, and the service must be.
                Err(payload) => {
                    let message = panic_message(&*payload).into_owned();
                    crate::panic::dispose(payload);
                    self.ready_error = Some(Unanswered::new(NotReady::Panic(message)));
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let info = RequestInfo::of(&req, self.shared.get());
        let shared = self.shared.clone();
        let renderer = self.renderer.clone();
        if let Some(failure) = self.ready_error.take() {
            let outcome = match failure.answer() {
                NotReady::Error(err) => Outcome::Error(err),
                NotReady::Panic(message) => Outcome::ReadyPanic(Box::new(message)),
            };
            return ResponseFuture {
                kind: Kind::Ready(Held(Some(outcome))),
                info,
                shared,
                renderer,
            };
        }
        // The variant is built inside the closure, so the inner future is written once.
        let inner = &mut self.inner;
        let kind = match catch_unwind(AssertUnwindSafe(move || Kind::Inner {
            future: inner.call(req),
        })) {
            Ok(kind) => kind,
            // Kept by its message: a payload whose `Drop` panics is let go here, under a guard,
            // not wherever this future is dropped unpolled.
            Err(payload) => {
                let message = panic_message(&*payload).into_owned();
                crate::panic::dispose(payload);
                Kind::Ready(Held(Some(Outcome::Panic(Box::new(message)))))
            }
        };
        ResponseFuture {
            kind,
            info,
            shared,
            renderer,
        }
    }
}

enum Outcome {
    Error(BoxError),
    Panic(Box<dyn Any + Send>),
    /// A panic in the inner service's `poll_ready` (its message, boxed as a payload is: the
    /// future stays as small), answered to this request.
    ReadyPanic(Box<dyn Any + Send>),
}

/// Why the inner service could not take the next request: answered to that request.
enum NotReady {
    Error(BoxError),
    /// A panic in the inner service's `poll_ready`, by its message.
    Panic(String),
}

/// A failure of the inner service's `poll_ready`, held for the request that comes next. One
/// that no request comes for (the caller went away between `ready` and `call`: a client that
/// disconnected, a dropped `oneshot`) is logged when the service is dropped, so that it is
/// never lost unseen.
struct Unanswered(Option<NotReady>);

impl Unanswered {
    fn new(failure: NotReady) -> Self {
        Self(Some(failure))
    }

    /// The failure, to be answered (and logged) as the next request's.
    fn answer(mut self) -> NotReady {
        self.0
            .take()
            .expect("a failure is held until it is answered")
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(failure) = self.0.take() {
            log_unanswered(failure);
        }
    }
}

/// Logs a `poll_ready` failure no request was answered with. The error's own code (its
/// `Display`, its `Drop`) runs under a guard: a panic in it is logged, not let out of a `Drop`.
#[cold]
#[inline(never)]
fn log_unanswered(failure: NotReady) {
    const WHAT: &str =
        "the inner service failed while it was polled ready, and no request came to be answered";
    let logged = catch_unwind(AssertUnwindSafe(|| match failure {
        NotReady::Error(err) => {
            let error = crate::redact::redacted(ErrorChain(&*err).to_string());
            tracing::error!(error, "{WHAT}");
            drop(err);
        }
        NotReady::Panic(message) => tracing::error!(panic = message, "{WHAT}"),
    }));
    if let Err(payload) = logged {
        tracing::error!(
            panic = &*panic_message(&*payload),
            "{WHAT}; its error panicked while it was logged or dropped"
        );
        crate::panic::dispose(payload);
    }
}

/// Response future of [`WebhookError`].
///
/// # Example
///
/// ```
/// use http::{Request, Response, StatusCode};
/// use std::convert::Infallible;
/// use tower::{Service, ServiceExt};
/// use tower_webhook::error::{ProblemJson, ResponseFuture, WebhookError};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let mut svc = WebhookError::new(tower::service_fn(|_: Request<String>| async {
///     Ok::<_, Infallible>(Response::new(String::from("ok")))
/// }));
/// let future: ResponseFuture<_, ProblemJson> =
///     svc.ready().await.unwrap().call(Request::new(String::new()));
/// assert_eq!(future.await.unwrap().status(), StatusCode::OK);
/// # }
/// ```
#[pin_project]
pub struct ResponseFuture<F, R> {
    #[pin]
    kind: Kind<F>,
    info: RequestInfo,
    shared: Shared,
    renderer: R,
}

#[pin_project(project = KindProj)]
enum Kind<F> {
    Inner {
        #[pin]
        future: F,
    },
    Ready(Held),
}

/// The outcome of a call answered without an inner future (a failure of the inner service's
/// `poll_ready`, a panic in its `call`), held until the response future is polled. One whose
/// future is dropped unpolled (the client went away first) is logged then, so that it is never
/// lost unseen.
struct Held(Option<Outcome>);

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(outcome) = self.0.take() {
            log_unpolled(outcome);
        }
    }
}

/// Logs the outcome of a call whose response future was dropped unpolled. The error's own code
/// (its `Display`, its `Drop`) and a panic payload's drop run under a guard: a panic in them is
/// logged, not let out of a `Drop`.
#[cold]
#[inline(never)]
fn log_unpolled(outcome: Outcome) {
    const WHAT: &str = "the inner service failed, and the request was gone before it was answered";
    let logged = catch_unwind(AssertUnwindSafe(|| match outcome {
        Outcome::Error(err) => {
            let error = crate::redact::redacted(ErrorChain(&*err).to_string());
            tracing::error!(error, "{WHAT}");
            drop(err);
        }
        Outcome::Panic(payload) | Outcome::ReadyPanic(payload) => {
            tracing::error!(panic = &*panic_message(&*payload), "{WHAT}");
            crate::panic::dispose(payload);
        }
    }));
    if let Err(payload) = logged {
        tracing::error!(
            panic = &*panic_message(&*payload),
            "{WHAT}; its error panicked while it was logged or dropped"
        );
        crate::panic::dispose(payload);
    }
}

impl<F, R> fmt::Debug for ResponseFuture<F, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, E, ResBody, R> Future for ResponseFuture<F, R>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: Into<BoxError>,
    R: RenderProblem,
{
    type Output = Result<Response<ResponseBody<ResBody>>, Infallible>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let outcome = match this.kind.as_mut().project() {
            KindProj::Inner { future } => {
                let (info, config, renderer) = (&*this.info, this.shared.get(), &*this.renderer);
                // The response is mapped inside the closure, so it is written once, in place.
                match catch_unwind(AssertUnwindSafe(|| match future.poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Ok(response)) => {
                        Poll::Ready(Ok(on_response(response, info, config, renderer)))
                    }
                    Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
                })) {
                    Ok(Poll::Pending) => return Poll::Pending,
                    Ok(Poll::Ready(Ok(response))) => return Poll::Ready(Ok(response)),
                    Ok(Poll::Ready(Err(err))) => {
                        // Dropped here, under the guard, rather than by the server after the
                        // answer: a panic in its `Drop` would unwind through the connection
                        // task, and the client get no answer.
                        let kind = this.kind.as_mut();
                        drop_logged(this.info, "the handler's future", || {
                            let mut kind = kind;
                            kind.set(Kind::Ready(Held(None)));
                        });
                        Outcome::Error(err.into())
                    }
                    Err(payload) => {
                        // The inner future may not be polled again after a panic. Dropping it
                        // may panic as well: that panic is caught too (the slot is still
                        // replaced), and the first one is answered.
                        if let Err(again) = catch_unwind(AssertUnwindSafe(|| {
                            this.kind.set(Kind::Ready(Held(None)));
                        })) {
                            tracing::error!(
                                panic = &*panic_message(&*again),
                                "handler panicked again while its future was dropped"
                            );
                            crate::panic::dispose(again);
                        }
                        Outcome::Panic(payload)
                    }
                }
            }
            KindProj::Ready(held) => match held.0.take() {
                Some(outcome) => outcome,
                None => panic!("ResponseFuture polled after completion"),
            },
        };
        Poll::Ready(Ok(on_error(
            outcome,
            this.info,
            this.shared.get(),
            this.renderer,
        )))
    }
}

/// Runs `drop` (the drop of `what`, from a failed call), catching and logging a panic in it, so
/// the call is still answered.
#[cold]
#[inline(never)]
fn drop_logged(info: &RequestInfo, what: &str, drop: impl FnOnce()) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(drop)) {
        tracing::error!(
            request_id = &*request_id_str(info),
            panic = &*panic_message(&*payload),
            "{what} panicked while it was dropped"
        );
        crate::panic::dispose(payload);
    }
}

/// The error path: classify, log once, render. Kept out of line so the success path stays small.
#[cold]
#[inline(never)]
fn on_error<B, R: RenderProblem>(
    outcome: Outcome,
    info: &RequestInfo,
    config: &Config,
    renderer: &R,
) -> Response<ResponseBody<B>> {
    let mut kept = None;
    let problem = match outcome {
        Outcome::Error(err) => {
            // The error's own code runs here (its `Display`, an `HttpError`'s methods, a
            // recognizer): a panic in it is answered like a handler's, not let out into the
            // server's connection task.
            let classified = catch_unwind(AssertUnwindSafe(|| {
                let recognised =
                    classify::classify(&*err, config.timeout_status, &config.recognizers);
                let unknown = recognised.is_none();
                let problem = error_status(recognised.unwrap_or_else(classify::unknown), info);
                log_problem(&problem, info, Some(&*err));
                (problem, kept_for_retry(&*err, unknown))
            }));
            // Its `Drop` too: a panic there is logged, and the error still answered.
            drop_logged(info, "the service's error", move || drop(err));
            match classified {
                Ok((problem, for_retry)) => {
                    kept = for_retry;
                    problem
                }
                Err(payload) => panicked(
                    info,
                    payload,
                    "the service's error panicked while it was classified or logged",
                ),
            }
        }
        Outcome::Panic(payload) => panicked(info, payload, "handler panicked"),
        // Not the handler: the service was getting ready for a request, and this one is
        // answered for it.
        Outcome::ReadyPanic(payload) => panicked(
            info,
            payload,
            "the service panicked while it got ready for a request",
        ),
    };
    let mut response = render(problem, info, config, renderer, true);
    if let Some(kept) = kept {
        response.extensions_mut().insert(kept);
    }
    response
}

/// What a retry policy above the layer reads of an error it answered (with feature `retry`),
/// where the answer says less than the error did: an error the layer does not recognise
/// (`unknown`: its 500 is not retried, the error is) or one that shows the request was never
/// sent (a load shedder's 503). An answer with a status the error chose is read by it.
#[cfg(feature = "retry")]
fn kept_for_retry(
    err: &(dyn std::error::Error + 'static),
    unknown: bool,
) -> Option<crate::retry::ErrorFacts> {
    let facts = crate::retry::ErrorFacts::new(err);
    (unknown || facts.was_not_sent()).then_some(facts)
}

#[cfg(not(feature = "retry"))]
fn kept_for_retry(_: &(dyn std::error::Error + 'static), _: bool) -> Option<Infallible> {
    None
}

/// The problem that answers a panic, logged once with the panic's message and `what` panicked.
fn panicked(info: &RequestInfo, payload: Box<dyn Any + Send>, what: &str) -> Problem {
    let problem = classify::panicked();
    tracing::error!(
        status = problem.status().as_u16(),
        request_id = &*request_id_str(info),
        panic = &*panic_message(&*payload),
        "{what}"
    );
    crate::panic::dispose(payload);
    problem
}

/// The success path: pass the response through, unless it carries a [`Problem`] made by a
/// handler or an inner middleware, which is rendered here like any other error.
///
/// A 408 or a 413 passed through (axum's `DefaultBodyLimit` answer, tower-http's
/// `TimeoutLayer` answer, a handler's own status) leaves the connection in the same state as
/// the layer's own: over HTTP/1.x it says `Connection: close` too. A 401 passed through without
/// a `WWW-Authenticate` gets the layer's challenge, if it has one, as the layer's own 401 does.
#[inline]
fn on_response<B, R: RenderProblem>(
    mut response: Response<B>,
    info: &RequestInfo,
    config: &Config,
    renderer: &R,
) -> Response<ResponseBody<B>> {
    let status = response.status();
    if closes(status) && info.http1 {
        close_passed_through(response.headers_mut());
    } else if status == StatusCode::UNAUTHORIZED
        && let Some(challenge) = &config.challenge
        && response.extensions().get::<Problem>().is_none()
    {
        // A response that carries a problem gets its challenge when the problem is rendered:
        // the problem's own first, the layer's only when it names none.
        challenge_passed_through(response.headers_mut(), challenge);
    }
    // Only a gRPC request's answer can be a gRPC stream; an HTTP request's costs nothing more.
    let grpc = match info.grpc {
        None => None,
        Some(grpc) => grpc.streamed_by(&response, info.http1),
    };
    if response.extensions().is_empty() {
        return response.map(|body| ResponseBody::inner(body, grpc));
    }
    match response.extensions_mut().remove::<Problem>() {
        None => response.map(|body| ResponseBody::inner(body, grpc)),
        Some(problem) => rerender(problem, response, info, config, renderer),
    }
}

/// A response that carries a [`Problem`]: render it like an error (request id, gRPC, renderer).
///
/// What the inner stack added to the response is kept: its headers (a request id set by an
/// inner `SetRequestId` / `PropagateRequestId`, CORS, ...) except those that describe the body
/// being replaced (`content-type`, `content-length`, `content-encoding`, `etag`, ...), and its
/// extensions.
#[cold]
#[inline(never)]
fn rerender<B, R: RenderProblem>(
    problem: Problem,
    response: Response<B>,
    info: &RequestInfo,
    config: &Config,
    renderer: &R,
) -> Response<ResponseBody<B>> {
    let (parts, _body) = response.into_parts();
    let info = RequestInfo {
        grpc: info.grpc,
        grpc_type: info.grpc_type.clone(),
        head: info.head,
        http1: info.http1,
        request_id: info
            .request_id
            .clone()
            .or_else(|| parts.headers.get(&config.request_id_header).cloned()),
    };
    let problem = error_status(problem, &info);
    if parts.extensions.get::<AlreadyLogged>().is_none() {
        log_problem(&problem, &info, None);
    }
    // A challenge the inner stack sent (a handler's own, an inner layer's) is the one its
    // service accepts: kept as it is, and the layer's not added beside it.
    let challenged = parts.headers.contains_key(header::WWW_AUTHENTICATE);
    let mut rendered = render(problem, &info, config, renderer, !challenged);
    if challenged {
        rendered.headers_mut().remove(header::WWW_AUTHENTICATE);
    }
    let own: Vec<HeaderName> = rendered.headers().keys().cloned().collect();
    for (name, value) in &parts.headers {
        if !describes_body(name) && !own.contains(name) {
            rendered.headers_mut().append(name.clone(), value.clone());
        }
    }
    let problem = rendered.extensions_mut().remove::<Problem>();
    *rendered.extensions_mut() = parts.extensions;
    if let Some(problem) = problem {
        rendered.extensions_mut().insert(problem);
    }
    rendered.extensions_mut().insert(AlreadyLogged);
    rendered
}

/// Headers that describe a response's body (its representation or its framing): they do not
/// carry over to the problem body that replaces it.
fn describes_body(name: &HeaderName) -> bool {
    const REPRESENTATION: [&str; 8] = [
        "accept-ranges",
        "content-digest",
        "content-language",
        "content-location",
        "content-md5",
        "digest",
        "repr-digest",
        "trailer",
    ];
    [
        header::CONTENT_TYPE,
        header::CONTENT_LENGTH,
        header::CONTENT_ENCODING,
        header::CONTENT_RANGE,
        // An attachment's name: a browser would save the problem document as that file.
        header::CONTENT_DISPOSITION,
        header::TRANSFER_ENCODING,
        header::ETAG,
        header::LAST_MODIFIED,
    ]
    .contains(name)
        || REPRESENTATION.contains(&name.as_str())
}

/// `problem` if its status is an error status (4xx or 5xx); otherwise the error that made it
/// is a mistake (an [`HttpError`] saying `200`, a `Problem::new(StatusCode::ACCEPTED)`): an
/// error is never answered with a success, a redirect or an informational status, so it becomes
/// a plain 500, and the mistake is logged.
fn error_status(problem: Problem, info: &RequestInfo) -> Problem {
    let status = problem.status();
    if status.is_client_error() || status.is_server_error() {
        return problem;
    }
    tracing::error!(
        status = status.as_u16(),
        problem_type = problem.problem_type(),
        request_id = &*request_id_str(info),
        "an error reported a status that is not an error status; answering 500"
    );
    let unknown = classify::unknown();
    match problem.instance() {
        Some(instance) => unknown.with_instance(instance.to_owned()),
        None => unknown,
    }
}

/// Renders `problem`; `challenge`: whether a 401 whose problem names no challenge gets the
/// layer's (not when the inner stack's response already carries one).
fn render<B, R: RenderProblem>(
    mut problem: Problem,
    info: &RequestInfo,
    config: &Config,
    renderer: &R,
    challenge: bool,
) -> Response<ResponseBody<B>> {
    if problem.instance().is_none()
        && let Some(id) = info.request_id.as_ref().and_then(as_instance)
    {
        problem = problem.with_instance(id);
    }
    // A challenge that cannot be a header is logged once, here, and left out: the layer's
    // own then takes its place on a 401 (gRPC answers carry none).
    let http = info.grpc.is_none();
    if http {
        problem = problem.without_bad_challenge();
    }
    if challenge
        && problem.status() == StatusCode::UNAUTHORIZED
        && problem.challenge().is_none()
        && let Some(challenge) = &config.challenge
    {
        problem = problem.with_challenge(challenge.clone());
        if http {
            problem = problem.without_bad_challenge();
        }
    }
    let mut response = if let Some(grpc) = info.grpc {
        // `grpc-status: 0` would tell the client the call succeeded, with no message.
        if problem.grpc_code() == GrpcCode::Ok {
            let code = GrpcCode::from_http_status(problem.status());
            problem = problem.with_grpc_code(code);
        }
        let mut response = problem.to_grpc_response::<ResponseBody<B>>();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            grpc.content_type(info.grpc_type.as_ref()),
        );
        response
    } else {
        // A renderer that panics is a bug, but the client still gets an answer: the problem in
        // the default form.
        let mut rendered = catch_unwind(AssertUnwindSafe(|| renderer.render(&problem)))
            .unwrap_or_else(|payload| {
                tracing::error!(
                    status = problem.status().as_u16(),
                    request_id = &*request_id_str(info),
                    panic = &*panic_message(&*payload),
                    "the problem renderer panicked; answering application/problem+json"
                );
                crate::panic::dispose(payload);
                problem.to_response()
            });
        if info.head {
            // The answer to HEAD has the headers of the answer to GET (RFC 9110, section
            // 9.3.2), its length included: the content left out below is not what it measures.
            let len = HeaderValue::from(rendered.body().len());
            rendered
                .headers_mut()
                .entry(header::CONTENT_LENGTH)
                .or_insert(len);
        }
        let mut response = rendered.map(ResponseBody::full);
        // A renderer that leaves the status at its default would answer an error `200 OK`.
        let status = response.status();
        if !status.is_client_error() && !status.is_server_error() {
            *response.status_mut() = problem.status();
        }
        // A client told to wait or to authenticate is told so whatever the body's format.
        problem.add_headers(response.headers_mut());
        if closes(response.status()) {
            close_connection(&mut response, info);
        }
        response
    };
    // gRPC-web also runs over HTTP/1.x: its call refused for the same reason leaves the
    // connection in the same state, whatever the answer's own status (200).
    if closes(problem.status()) {
        close_connection(&mut response, info);
    }
    // No content in an answer to HEAD (RFC 9110, section 9.3.2): HTTP/2 would send it, and the
    // client reset the stream.
    if info.head {
        *response.body_mut() = ResponseBody::empty();
    }
    // Echoed under the header it was read from: another header's value is not an
    // `x-request-id`, and must not replace the one an inner layer set. A gRPC answer has no
    // renderer: a value already there came from a `tonic::Status`'s metadata (an upstream's
    // answer, with the upstream's own request id), and is replaced.
    if let Some(id) = &info.request_id {
        let headers = response.headers_mut();
        if info.grpc.is_some() {
            headers.insert(&config.request_id_header, id.clone());
        } else {
            headers
                .entry(&config.request_id_header)
                .or_insert_with(|| id.clone());
        }
    }
    response.extensions_mut().insert(problem);
    // Logged by the caller: an outer `WebhookErrorLayer` that sees this problem does not log it
    // again.
    response.extensions_mut().insert(AlreadyLogged);
    response
}

/// Whether an answer with `status` ends its HTTP/1.x connection. A 408 says the server closes
/// the connection rather than wait (RFC 9110, section 15.5.9). A 413 refuses content whose rest
/// is still on the connection, unread (a length limit cut the read, or the size was refused
/// from `Content-Length` before reading): the connection cannot carry another request, and
/// hyper does not keep it (RFC 9110, section 15.5.14). The layer cannot tell a 413 decided
/// after the whole body was read, so every 413 closes; a client then only opens a new
/// connection.
fn closes(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::REQUEST_TIMEOUT | StatusCode::PAYLOAD_TOO_LARGE
    )
}

/// Says `Connection: close` over HTTP/1.x, so the client does not send its next request on a
/// connection about to close. HTTP/2 has no `Connection` header (RFC 9113, section 8.2.2).
fn close_connection<B>(response: &mut Response<B>, info: &RequestInfo) {
    if info.http1 {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

/// Adds the layer's `challenge` to a 401 made by the inner stack that carries none (RFC 9110,
/// section 15.5.2: a 401 carries at least one). One the inner stack set is kept as it is.
#[cold]
#[inline(never)]
fn challenge_passed_through(headers: &mut http::HeaderMap, challenge: &str) {
    if headers.contains_key(header::WWW_AUTHENTICATE) {
        return;
    }
    // Without spaces at its ends, as a problem's challenge is sent: HTTP/2 forbids them.
    match super::problem::challenge_value(challenge.trim_matches([' ', '\t'])) {
        Some(value) => {
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
        None => tracing::warn!(
            status = StatusCode::UNAUTHORIZED.as_u16(),
            "the layer's challenge is empty or not a valid header value; WWW-Authenticate left out"
        ),
    }
}

/// Says `Connection: close` on an answer made by the inner stack, once: a `close` option it
/// already sent is kept as it is, `keep-alive` is dropped, and other options are kept after
/// `close`.
#[cold]
#[inline(never)]
fn close_passed_through(headers: &mut http::HeaderMap) {
    let mut close = false;
    let mut keep_alive = false;
    let mut others: Vec<&str> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        // Options are tokens (RFC 9110, section 7.6.1): a value that is not ASCII names none.
        let Ok(value) = value.to_str() else { continue };
        for option in value.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            if option.eq_ignore_ascii_case("close") {
                close = true;
            } else if option.eq_ignore_ascii_case("keep-alive") {
                keep_alive = true;
            } else {
                others.push(option);
            }
        }
    }
    if close && !keep_alive {
        return;
    }
    let mut value = String::from("close");
    for option in others {
        value.push_str(", ");
        value.push_str(option);
    }
    let value = HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("close"));
    headers.insert(header::CONNECTION, value);
}

/// Longest request id copied into a problem's `instance`.
const MAX_INSTANCE_LEN: usize = 256;

/// The request id as a problem's `instance`, which RFC 9457 makes a URI reference: only ids of
/// characters a URI carries as they are (RFC 3986 unreserved, sub-delims, `:`, `@`, `/`, `?`),
/// and not longer than [`MAX_INSTANCE_LEN`]. Anything else (spaces, a tab, quotes, a huge value)
/// is left out of the document; the id is still logged and echoed in its header. So is an id
/// with an authority (`//host/...`, `https://host/...`): a client resolving the `instance`
/// would be sent to a host the request named. So is one under a scheme that browsers resolve
/// to a host whatever its slashes (`https:evil.example`, see [`REFUSED_SCHEMES`]), or that runs
/// or embeds what the request sent (`javascript:...`, `data:...`). And so is an id that is not
/// a URI reference, with a colon in its first segment that ends no scheme (`12:30:00`).
fn as_instance(id: &HeaderValue) -> Option<&str> {
    const URI_SAFE: &[u8] = b"-._~!$&'()*+,;=:@/?";
    let bytes = id.as_bytes();
    let fits = !bytes.is_empty()
        && bytes.len() <= MAX_INSTANCE_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || URI_SAFE.contains(b))
        && is_uri_reference(bytes)
        && !names_a_host(bytes);
    if fits { id.to_str().ok() } else { None }
}

/// Whether `uri`, made of characters a URI carries as they are, is a URI reference (RFC 3986,
/// section 4.1): a colon in its first segment must end a scheme (a letter, then letters,
/// digits, `+`, `-` or `.`). `12:30:00`, `:x` or `_a:b` are neither a URI nor a relative
/// reference, whose first segment has no colon (section 4.2).
fn is_uri_reference(uri: &[u8]) -> bool {
    let first_segment = uri
        .split(|&b| b == b'/' || b == b'?')
        .next()
        .unwrap_or_default();
    match first_segment.iter().position(|&b| b == b':') {
        None => true,
        Some(end) => {
            let scheme = &first_segment[..end];
            scheme.first().is_some_and(u8::is_ascii_alphabetic)
                && scheme
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        }
    }
}

/// Schemes an `instance` may not have. The special schemes of the URL Standard: a WHATWG
/// parser (a browser, the `url` crate) resolves `https:evil.example` or `http:/evil.example` to
/// `https://evil.example/` when the base's scheme differs, or when there is no base, whatever
/// RFC 3986 reads in it. And the schemes whose URIs run or carry content of their own.
const REFUSED_SCHEMES: [&str; 9] = [
    "http",
    "https",
    "ws",
    "wss",
    "ftp",
    "file",
    "javascript",
    "data",
    "vbscript",
];

/// Whether the URI reference `uri` has an authority (RFC 3986, section 4.2): it starts with
/// `//`, or with a scheme followed by `://`; or a scheme of [`REFUSED_SCHEMES`] (in any case),
/// which a WHATWG parser may resolve to a host without the slashes.
fn names_a_host(uri: &[u8]) -> bool {
    let scheme_len = uri
        .iter()
        .position(|&b| !(b.is_ascii_alphanumeric() || b"+-.".contains(&b)))
        .filter(|&end| end > 0 && uri[end] == b':' && uri[0].is_ascii_alphabetic());
    let rest = match scheme_len {
        Some(end) => {
            let scheme = &uri[..end];
            if REFUSED_SCHEMES
                .iter()
                .any(|refused| scheme.eq_ignore_ascii_case(refused.as_bytes()))
            {
                return true;
            }
            &uri[end + 1..]
        }
        None => uri,
    };
    rest.starts_with(b"//")
}

/// The request id for the log: a UTF-8 id as it is (`to_str` refuses any byte past ASCII), other
/// bytes past ASCII as U+FFFD.
fn request_id_str(info: &RequestInfo) -> Cow<'_, str> {
    info.request_id
        .as_ref()
        .map_or(Cow::Borrowed(""), |v| String::from_utf8_lossy(v.as_bytes()))
}

/// Logs once, at a level that fits the class: 5xx are errors, 404/405 debug, other 4xx warnings.
fn log_problem(
    problem: &Problem,
    info: &RequestInfo,
    err: Option<&(dyn std::error::Error + Send + Sync + 'static)>,
) {
    let status = problem.status().as_u16();
    let error = err
        .map(|e| crate::redact::redacted(ErrorChain(e).to_string()))
        .unwrap_or_default();
    let request_id = request_id_str(info);
    let request_id = &*request_id;
    let problem_type = problem.problem_type();
    // Meant for the client: the reason a handler gave for its problem, or a tonic `Status`'s
    // message. Redacted all the same, as the error chain is: a `Status` the handler passed on from
    // a client of its own may name the URL that client called.
    let detail = crate::redact::redact(problem.detail().unwrap_or_default());
    let detail = &*detail;
    match status {
        500..=599 => tracing::error!(
            status,
            problem_type,
            request_id,
            grpc = info.grpc.is_some(),
            error,
            detail,
            "request failed"
        ),
        404 | 405 => tracing::debug!(
            status,
            problem_type,
            request_id,
            grpc = info.grpc.is_some(),
            error,
            detail,
            "request rejected"
        ),
        _ => tracing::warn!(
            status,
            problem_type,
            request_id,
            grpc = info.grpc.is_some(),
            error,
            detail,
            "request rejected"
        ),
    }
}

/// Displays an error and its sources, `a: b: c`.
pub(super) struct ErrorChain<'a>(pub(super) &'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Each error once, and not past a bound: a broken `Error` impl can make the chain a
        // cycle.
        let mut chain = crate::error_chain::sources(self.0);
        if let Some(first) = chain.next() {
            write!(f, "{first}")?;
        }
        for err in chain.by_ref() {
            write!(f, ": {err}")?;
        }
        if chain.truncated() {
            f.write_str(": ...")?;
        }
        Ok(())
    }
}

/// A panic's message for the log, with the credentials of the URLs in it redacted.
pub(super) fn panic_message(payload: &(dyn Any + Send)) -> Cow<'_, str> {
    crate::redact::redact(crate::panic::message(payload).unwrap_or("<non-string panic payload>"))
}
