//! RFC 9457 problem details and the [`HttpError`] trait.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use super::grpc::GrpcCode;

/// The media type of a problem document (RFC 9457, section 3).
///
/// # Example
///
/// ```
/// use http::{StatusCode, header};
/// use tower_webhook::error::{PROBLEM_JSON, Problem};
///
/// let res = Problem::new(StatusCode::NOT_FOUND).to_response::<bytes::Bytes>();
/// assert_eq!(res.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
/// ```
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Stable problem type URIs of the crate's own errors.
///
/// They are URNs: RFC 9457 allows a type URI that does not resolve, and these never change
/// meaning, so clients may match on them.
///
/// # Example
///
/// ```
/// use http::StatusCode;
/// use tower_webhook::error::{Problem, types};
/// use tower_webhook::signature::SignatureValidationError;
///
/// // A client tells the crate's errors apart by type, whatever the status.
/// let problem = Problem::from_error(&SignatureValidationError::Mismatch);
/// let retry_later = match problem.problem_type() {
///     types::CIRCUIT_OPEN | types::OVERLOADED | types::TIMEOUT => true,
///     types::INVALID_SIGNATURE => false,
///     other => panic!("unexpected problem type {other}"),
/// };
/// assert!(!retry_later);
/// assert_eq!(problem.status(), StatusCode::UNAUTHORIZED);
/// ```
pub mod types {
    /// The request carried no valid signature or credential (401).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::error::{Problem, types};
    /// use tower_webhook::signature::SignatureValidationError;
    ///
    /// let problem = Problem::from_error(&SignatureValidationError::Mismatch);
    /// assert_eq!(problem.problem_type(), types::INVALID_SIGNATURE);
    /// assert_eq!(problem.status(), 401);
    /// ```
    pub const INVALID_SIGNATURE: &str = "urn:tower-webhook:problem:invalid-signature";
    /// The body is larger than the configured limit (413).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::error::{Problem, types};
    /// use tower_webhook::signature::SignatureValidationError;
    ///
    /// let problem = Problem::from_error(&SignatureValidationError::PayloadTooLarge { limit: 1 << 20 });
    /// assert_eq!(problem.problem_type(), types::PAYLOAD_TOO_LARGE);
    /// assert_eq!(problem.status(), 413);
    /// ```
    pub const PAYLOAD_TOO_LARGE: &str = "urn:tower-webhook:problem:payload-too-large";
    /// The delivery id was already seen (409). A signed timestamp outside the window is not a
    /// replay but an [`INVALID_SIGNATURE`] (401): the signature is not accepted any more.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::error::{Problem, types};
    /// use tower_webhook::signature::SignatureValidationError;
    ///
    /// let err = SignatureValidationError::Replayed("72d3162e-cc78-11e3-81ab-4c9367dc0958".into());
    /// let problem = Problem::from_error(&err);
    /// assert_eq!(problem.problem_type(), types::REPLAYED_DELIVERY);
    /// assert_eq!(problem.status(), 409);
    ///
    /// let stale = SignatureValidationError::TimestampOutOfWindow {
    ///     timestamp: 1_700_000_000,
    ///     now: 1_700_000_301,
    ///     tolerance: Duration::from_secs(300),
    /// };
    /// let problem = Problem::from_error(&stale);
    /// assert_eq!(problem.problem_type(), types::INVALID_SIGNATURE);
    /// assert_eq!(problem.status(), 401);
    /// ```
    pub const REPLAYED_DELIVERY: &str = "urn:tower-webhook:problem:replayed-delivery";
    /// The request was authenticated but is not a well-formed delivery (400).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::error::{Problem, types};
    /// use tower_webhook::signature::SignatureValidationError;
    ///
    /// let err = SignatureValidationError::MalformedDelivery("body is not a JSON event with an `id`");
    /// let problem = Problem::from_error(&err);
    /// assert_eq!(problem.problem_type(), types::MALFORMED_DELIVERY);
    /// assert_eq!(problem.status(), 400);
    /// ```
    pub const MALFORMED_DELIVERY: &str = "urn:tower-webhook:problem:malformed-delivery";
    /// A circuit breaker rejected the call (503).
    ///
    /// # Example
    ///
    /// ```
    /// use http::{Request, Response};
    /// use http_body_util::BodyExt;
    /// use tower::{BoxError, ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::CircuitBreakerLayer;
    /// use tower_webhook::error::{WebhookErrorLayer, types};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let breaker = CircuitBreakerLayer::new_for_http();
    /// breaker.handle().transition_to_forced_open().unwrap();
    /// let svc = ServiceBuilder::new()
    ///     .layer(WebhookErrorLayer::new())
    ///     .layer(breaker)
    ///     .service_fn(|_: Request<String>| async { Ok::<_, BoxError>(Response::new(String::new())) });
    ///
    /// let res = svc.oneshot(Request::new(String::new())).await.unwrap();
    /// assert_eq!(res.status(), 503);
    /// let body = res.into_body().collect().await.unwrap().to_bytes();
    /// let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    /// assert_eq!(doc["type"], types::CIRCUIT_OPEN);
    /// # }
    /// ```
    pub const CIRCUIT_OPEN: &str = "urn:tower-webhook:problem:circuit-open";
    /// The delivery could not be processed (500, or 503 when retryable).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::error::{Problem, WebhookProcessingError, types};
    ///
    /// let err = WebhookProcessingError::new("could not reach the model API");
    /// assert_eq!(Problem::from_error(&err).problem_type(), types::PROCESSING_FAILED);
    /// ```
    pub const PROCESSING_FAILED: &str = "urn:tower-webhook:problem:processing-failed";
    /// The request took longer than its deadline (504, or 408 if so configured), or the client
    /// stopped sending its body (408, tower-http's `RequestBodyTimeoutLayer`).
    ///
    /// # Example
    ///
    /// ```
    /// use http::{Request, Response};
    /// use http_body_util::BodyExt;
    /// use std::time::Duration;
    /// use tower::{BoxError, ServiceBuilder, ServiceExt};
    /// use tower_webhook::error::{WebhookErrorLayer, types};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let svc = ServiceBuilder::new()
    ///     .layer(WebhookErrorLayer::new())
    ///     .timeout(Duration::from_secs(10))
    ///     .service_fn(|_: Request<String>| async {
    ///         tokio::time::sleep(Duration::from_secs(60)).await;
    ///         Ok::<_, BoxError>(Response::new(String::new()))
    ///     });
    ///
    /// let res = svc.oneshot(Request::new(String::new())).await.unwrap();
    /// assert_eq!(res.status(), 504);
    /// let body = res.into_body().collect().await.unwrap().to_bytes();
    /// let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    /// assert_eq!(doc["type"], types::TIMEOUT);
    /// # }
    /// ```
    pub const TIMEOUT: &str = "urn:tower-webhook:problem:timeout";
    /// The service shed load (503).
    ///
    /// # Example
    ///
    /// ```
    /// use http::{Request, Response};
    /// use http_body_util::BodyExt;
    /// use tower::load_shed::error::Overloaded;
    /// use tower::{ServiceBuilder, ServiceExt};
    /// use tower_webhook::error::{WebhookErrorLayer, types};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// // What `tower::load_shed` returns when the inner service is not ready.
    /// let svc = ServiceBuilder::new()
    ///     .layer(WebhookErrorLayer::new())
    ///     .service_fn(|_: Request<String>| async { Err::<Response<String>, _>(Overloaded::new()) });
    ///
    /// let res = svc.oneshot(Request::new(String::new())).await.unwrap();
    /// assert_eq!(res.status(), 503);
    /// let body = res.into_body().collect().await.unwrap().to_bytes();
    /// let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    /// assert_eq!(doc["type"], types::OVERLOADED);
    /// # }
    /// ```
    pub const OVERLOADED: &str = "urn:tower-webhook:problem:overloaded";
    /// The handler panicked (500).
    ///
    /// # Example
    ///
    /// ```
    /// use http::{Request, Response};
    /// use http_body_util::BodyExt;
    /// use std::convert::Infallible;
    /// use tower::{ServiceBuilder, ServiceExt};
    /// use tower_webhook::error::{WebhookErrorLayer, types};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let svc = ServiceBuilder::new()
    ///     .layer(WebhookErrorLayer::new())
    ///     .service_fn(|req: Request<String>| async move {
    ///         assert!(!req.body().is_empty(), "a delivery always has a body");
    ///         Ok::<_, Infallible>(Response::new(String::new()))
    ///     });
    ///
    /// let res = svc.oneshot(Request::new(String::new())).await.unwrap();
    /// assert_eq!(res.status(), 500);
    /// let body = res.into_body().collect().await.unwrap().to_bytes();
    /// let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    /// assert_eq!(doc["type"], types::PANIC);
    /// assert!(!String::from_utf8_lossy(&body).contains("always has a body"));
    /// # }
    /// ```
    pub const PANIC: &str = "urn:tower-webhook:problem:internal";
    /// A gRPC status returned by a tonic service, seen by an HTTP client.
    ///
    /// # Example
    ///
    /// ```
    /// use http::{Request, Response};
    /// use http_body_util::BodyExt;
    /// use tower::{ServiceBuilder, ServiceExt};
    /// use tower_webhook::error::{WebhookErrorLayer, types};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let svc = ServiceBuilder::new()
    ///     .layer(WebhookErrorLayer::new())
    ///     .service_fn(|_: Request<String>| async {
    ///         Err::<Response<String>, _>(tonic::Status::not_found("no such installation"))
    ///     });
    ///
    /// let res = svc.oneshot(Request::new(String::new())).await.unwrap();
    /// assert_eq!(res.status(), 404);
    /// let body = res.into_body().collect().await.unwrap().to_bytes();
    /// let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    /// assert_eq!(doc["type"], types::GRPC_STATUS);
    /// assert_eq!(doc["detail"], "no such installation");
    /// # }
    /// ```
    pub const GRPC_STATUS: &str = "urn:tower-webhook:problem:grpc-status";
}

/// An error that knows how it should be answered over HTTP.
///
/// Implement it for your own error types and they are rendered by
/// [`WebhookErrorLayer`](super::WebhookErrorLayer) like the crate's own: register them with
/// [`WebhookErrorLayer::recognize`](super::WebhookErrorLayer::recognize), or turn them into a
/// [`Problem`] with [`Problem::from_error`] in a handler that returns `Result<_, Problem>`
/// (an axum handler, feature `axum`): `.map_err(|err| Problem::from_error(&err))?`. A bare `?`
/// does not convert them, as `Problem` has no `From` for every `HttpError` (it is one itself).
///
/// Only [`status`](HttpError::status) and [`problem_type`](HttpError::problem_type) are required.
/// Whatever [`detail`](HttpError::detail) returns is shown to the client, so it must not carry
/// internals; the [`Display`](std::fmt::Display) text only goes to the log.
///
/// # Example
///
/// ```
/// use http::StatusCode;
/// use tower_webhook::error::{HttpError, Problem};
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("repository {0} is not installed")]
/// struct NotInstalled(String);
///
/// impl HttpError for NotInstalled {
///     fn status(&self) -> StatusCode { StatusCode::UNPROCESSABLE_ENTITY }
///     fn problem_type(&self) -> &str { "urn:example:not-installed" }
///     fn title(&self) -> &str { "Repository not installed" }
/// }
///
/// let problem = Problem::from_error(&NotInstalled("octo/repo".into()));
/// assert_eq!(problem.status(), StatusCode::UNPROCESSABLE_ENTITY);
/// assert_eq!(problem.title(), "Repository not installed");
/// assert_eq!(problem.detail(), None); // the Display text is not for clients
///
/// // In a handler that returns `Result<_, Problem>`:
/// fn installation(repo: &str) -> Result<u64, NotInstalled> {
///     Err(NotInstalled(repo.to_owned()))
/// }
/// fn handler(repo: &str) -> Result<String, Problem> {
///     let id = installation(repo).map_err(|err| Problem::from_error(&err))?;
///     Ok(format!("installation {id}"))
/// }
/// assert_eq!(handler("octo/repo").unwrap_err().status(), StatusCode::UNPROCESSABLE_ENTITY);
/// ```
pub trait HttpError: std::error::Error + Send + Sync + 'static {
    /// The HTTP status of the response: a client error (4xx) or a server error (5xx).
    ///
    /// An error is never answered with another status: [`WebhookErrorLayer`] answers an error
    /// that reports `200`, `202` or `304` with a plain 500, and logs the mistake.
    ///
    /// [`WebhookErrorLayer`]: crate::error::WebhookErrorLayer
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_webhook::error::{HttpError, Problem};
    ///
    /// #[derive(Debug, thiserror::Error)]
    /// #[error("unknown repository {0}")]
    /// struct UnknownRepository(String);
    ///
    /// impl HttpError for UnknownRepository {
    ///     fn status(&self) -> StatusCode { StatusCode::NOT_FOUND }
    ///     fn problem_type(&self) -> &str { "urn:example:unknown-repository" }
    /// }
    ///
    /// let err = UnknownRepository("octo/repo".into());
    /// assert_eq!(err.status(), StatusCode::NOT_FOUND);
    /// assert_eq!(Problem::from_error(&err).status(), StatusCode::NOT_FOUND);
    /// ```
    fn status(&self) -> StatusCode;

    /// A stable URI naming the kind of problem (RFC 9457 `type`).
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_webhook::error::{HttpError, Problem};
    ///
    /// #[derive(Debug, thiserror::Error)]
    /// #[error("unknown repository {0}")]
    /// struct UnknownRepository(String);
    ///
    /// impl HttpError for UnknownRepository {
    ///     fn status(&self) -> StatusCode { StatusCode::NOT_FOUND }
    ///     fn problem_type(&self) -> &str { "urn:example:unknown-repository" }
    /// }
    ///
    /// let problem = Problem::from_error(&UnknownRepository("octo/repo".into()));
    /// assert_eq!(problem.problem_type(), "urn:example:unknown-repository");
    /// ```
    fn problem_type(&self) -> &str;

    /// A short summary that does not change between occurrences (RFC 9457 `title`).
    ///
    /// Defaults to the status code's canonical reason.
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_webhook::error::{HttpError, Problem};
    ///
    /// #[derive(Debug, thiserror::Error)]
    /// #[error("unknown repository {0}")]
    /// struct UnknownRepository(String);
    ///
    /// impl HttpError for UnknownRepository {
    ///     fn status(&self) -> StatusCode { StatusCode::NOT_FOUND }
    ///     fn problem_type(&self) -> &str { "urn:example:unknown-repository" }
    /// }
    ///
    /// let err = UnknownRepository("octo/repo".into());
    /// assert_eq!(err.title(), "Not Found"); // the default
    /// assert_eq!(Problem::from_error(&err).title(), "Not Found");
    /// ```
    fn title(&self) -> &str {
        self.status().canonical_reason().unwrap_or("Error")
    }

    /// An explanation of this occurrence that is safe to show to the client.
    ///
    /// # Example
    ///
    /// ```
    /// use std::borrow::Cow;
    /// use http::StatusCode;
    /// use tower_webhook::error::{HttpError, Problem};
    ///
    /// #[derive(Debug, thiserror::Error)]
    /// #[error("lookup of {0} failed: connection refused by 10.0.0.7")]
    /// struct UnknownRepository(String);
    ///
    /// impl HttpError for UnknownRepository {
    ///     fn status(&self) -> StatusCode { StatusCode::NOT_FOUND }
    ///     fn problem_type(&self) -> &str { "urn:example:unknown-repository" }
    ///     fn detail(&self) -> Option<Cow<'_, str>> {
    ///         Some(format!("{} is not installed", self.0).into())
    ///     }
    /// }
    ///
    /// // The client reads the detail, never the Display text.
    /// let problem = Problem::from_error(&UnknownRepository("octo/repo".into()));
    /// assert_eq!(problem.detail(), Some("octo/repo is not installed"));
    /// ```
    fn detail(&self) -> Option<Cow<'_, str>> {
        None
    }

    /// How long the client should wait before trying again (`Retry-After`).
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use http::StatusCode;
    /// use tower_webhook::error::{HttpError, Problem};
    ///
    /// #[derive(Debug, thiserror::Error)]
    /// #[error("the review queue is full")]
    /// struct QueueFull;
    ///
    /// impl HttpError for QueueFull {
    ///     fn status(&self) -> StatusCode { StatusCode::SERVICE_UNAVAILABLE }
    ///     fn problem_type(&self) -> &str { "urn:example:queue-full" }
    ///     fn retry_after(&self) -> Option<Duration> { Some(Duration::from_secs(30)) }
    /// }
    ///
    /// let res = Problem::from_error(&QueueFull).to_response::<bytes::Bytes>();
    /// assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    /// assert_eq!(res.headers()["retry-after"], "30");
    /// ```
    fn retry_after(&self) -> Option<Duration> {
        None
    }

    /// The `WWW-Authenticate` challenge to send with this error, such as `Bearer realm="api"`.
    ///
    /// A 401 must carry one (RFC 9110, section 15.5.2): return it for errors answered 401. The
    /// crate's own signature errors answer `Signature`.
    ///
    /// # Example
    ///
    /// ```
    /// use std::borrow::Cow;
    /// use http::StatusCode;
    /// use tower_webhook::error::{HttpError, Problem};
    ///
    /// #[derive(Debug, thiserror::Error)]
    /// #[error("the API token is missing")]
    /// struct MissingToken;
    ///
    /// impl HttpError for MissingToken {
    ///     fn status(&self) -> StatusCode { StatusCode::UNAUTHORIZED }
    ///     fn problem_type(&self) -> &str { "urn:example:missing-token" }
    ///     fn challenge(&self) -> Option<Cow<'_, str>> { Some(r#"Bearer realm="api""#.into()) }
    /// }
    ///
    /// let res = Problem::from_error(&MissingToken).to_response::<bytes::Bytes>();
    /// assert_eq!(res.headers()["www-authenticate"], r#"Bearer realm="api""#);
    /// ```
    fn challenge(&self) -> Option<Cow<'_, str>> {
        None
    }

    /// The gRPC code used when the request was a gRPC call.
    ///
    /// Defaults to [`GrpcCode::from_http_status`].
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_webhook::error::{GrpcCode, HttpError, Problem};
    ///
    /// #[derive(Debug, thiserror::Error)]
    /// #[error("the pull request was merged meanwhile")]
    /// struct AlreadyMerged;
    ///
    /// impl HttpError for AlreadyMerged {
    ///     fn status(&self) -> StatusCode { StatusCode::CONFLICT }
    ///     fn problem_type(&self) -> &str { "urn:example:already-merged" }
    ///     // The default would be ALREADY_EXISTS, the code of a 409.
    ///     fn grpc_code(&self) -> GrpcCode { GrpcCode::Aborted }
    /// }
    ///
    /// assert_eq!(Problem::from_error(&AlreadyMerged).grpc_code(), GrpcCode::Aborted);
    /// ```
    fn grpc_code(&self) -> GrpcCode {
        GrpcCode::from_http_status(self.status())
    }
}

/// A problem details object (RFC 9457): what the client is told about an error.
///
/// It is both an error (return it from a handler or a service) and the value renderers receive.
/// With the `axum` feature it implements `IntoResponse`.
///
/// # Example
///
/// ```
/// use http::StatusCode;
/// use std::time::Duration;
/// use tower_webhook::error::Problem;
///
/// let problem = Problem::new(StatusCode::SERVICE_UNAVAILABLE)
///     .with_type("urn:example:maintenance")
///     .with_detail("The bot is being upgraded.")
///     .with_retry_after(Duration::from_secs(30));
/// let response = problem.to_response::<bytes::Bytes>();
/// assert_eq!(response.status(), 503);
/// assert_eq!(response.headers()["retry-after"], "30");
/// assert_eq!(response.headers()["content-type"], "application/problem+json");
/// let json: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
/// assert_eq!(json["status"], 503);
/// assert_eq!(json["type"], "urn:example:maintenance");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Problem {
    status: StatusCode,
    problem_type: Cow<'static, str>,
    title: Cow<'static, str>,
    detail: Option<Cow<'static, str>>,
    instance: Option<String>,
    retry_after: Option<Duration>,
    challenge: Option<Cow<'static, str>>,
    grpc_code: GrpcCode,
    grpc_message: Option<Cow<'static, str>>,
    /// Headers a gRPC caller also gets (a client error `tonic::Status`'s details and custom
    /// metadata), none of them one the answer sets itself.
    grpc_metadata: Option<Box<http::HeaderMap>>,
    /// A gRPC caller is asked not to retry (a negative `grpc-retry-pushback-ms`, gRPC A6),
    /// unless the problem has a `retry_after`.
    grpc_no_retry: bool,
    /// Extension members (RFC 9457, section 3.2), none named like a standard member.
    extensions: Option<Box<serde_json::Map<String, serde_json::Value>>>,
}

/// The members RFC 9457 defines (section 3.1): an extension member cannot take their names.
const STANDARD_MEMBERS: [&str; 5] = ["type", "title", "status", "detail", "instance"];

impl Problem {
    /// A problem with this status, type `about:blank` and the status' reason as title.
    ///
    /// The status is meant to be 4xx or 5xx: [`WebhookErrorLayer`] answers a problem with any
    /// other status as a plain 500, and logs the mistake.
    ///
    /// [`WebhookErrorLayer`]: crate::error::WebhookErrorLayer
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_webhook::error::{GrpcCode, Problem};
    ///
    /// let problem = Problem::new(StatusCode::TOO_MANY_REQUESTS);
    /// assert_eq!(problem.problem_type(), "about:blank");
    /// assert_eq!(problem.title(), "Too Many Requests");
    /// assert_eq!(problem.grpc_code(), GrpcCode::ResourceExhausted);
    /// ```
    pub fn new(status: StatusCode) -> Self {
        Self {
            status,
            problem_type: Cow::Borrowed("about:blank"),
            title: Cow::Borrowed(status.canonical_reason().unwrap_or("Error")),
            detail: None,
            instance: None,
            retry_after: None,
            challenge: None,
            grpc_code: GrpcCode::from_http_status(status),
            grpc_message: None,
            grpc_metadata: None,
            grpc_no_retry: false,
            extensions: None,
        }
    }

    /// The problem an [`HttpError`] describes.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::error::{Problem, WebhookProcessingError, types};
    ///
    /// let err = WebhookProcessingError::retryable("queue is full", Duration::from_secs(10));
    /// let problem = Problem::from_error(&err);
    /// assert_eq!(problem.status(), 503);
    /// assert_eq!(problem.problem_type(), types::PROCESSING_FAILED);
    /// assert_eq!(problem.retry_after(), Some(Duration::from_secs(10)));
    /// assert_eq!(problem.detail(), None); // "queue is full" stays in the log
    /// ```
    pub fn from_error<E: HttpError + ?Sized>(error: &E) -> Self {
        Self {
            status: error.status(),
            problem_type: Cow::Owned(error.problem_type().to_owned()),
            title: Cow::Owned(error.title().to_owned()),
            detail: error.detail().map(|d| Cow::Owned(d.into_owned())),
            instance: None,
            retry_after: error.retry_after(),
            challenge: error
                .challenge()
                .map(|c| trim_challenge(Cow::Owned(c.into_owned()))),
            grpc_code: error.grpc_code(),
            grpc_message: None,
            grpc_metadata: None,
            grpc_no_retry: false,
            extensions: None,
        }
    }

    /// A problem with a static type and title, allocation free.
    pub(crate) fn from_static(
        status: StatusCode,
        problem_type: &'static str,
        title: &'static str,
    ) -> Self {
        Self {
            problem_type: Cow::Borrowed(problem_type),
            title: Cow::Borrowed(title),
            ..Self::new(status)
        }
    }

    /// Sets the problem type URI.
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_webhook::error::Problem;
    ///
    /// let problem = Problem::new(StatusCode::UNPROCESSABLE_ENTITY)
    ///     .with_type("https://bot.example/problems/unknown-repository");
    /// assert_eq!(problem.problem_type(), "https://bot.example/problems/unknown-repository");
    /// let doc: serde_json::Value = serde_json::from_slice(&problem.to_json()).unwrap();
    /// assert_eq!(doc["type"], "https://bot.example/problems/unknown-repository");
    /// ```
    pub fn with_type(mut self, uri: impl Into<Cow<'static, str>>) -> Self {
        self.problem_type = uri.into();
        self
    }

    /// Sets the title.
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_webhook::error::Problem;
    ///
    /// let problem = Problem::new(StatusCode::UNPROCESSABLE_ENTITY).with_title("Repository not installed");
    /// assert_eq!(problem.title(), "Repository not installed");
    /// assert_eq!(problem.to_string(), "422 Repository not installed");
    /// ```
    pub fn with_title(mut self, title: impl Into<Cow<'static, str>>) -> Self {
        self.title = title.into();
        self
    }

    /// Sets the detail shown to the client. Never put internals here.
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_webhook::error::Problem;
    ///
    /// let problem = Problem::new(StatusCode::BAD_REQUEST).with_detail("`action` must be `opened` or `synchronize`");
    /// assert_eq!(problem.detail(), Some("`action` must be `opened` or `synchronize`"));
    /// let doc: serde_json::Value = serde_json::from_slice(&problem.to_json()).unwrap();
    /// assert_eq!(doc["detail"], "`action` must be `opened` or `synchronize`");
    /// ```
    pub fn with_detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Sets the instance: the identifier of this occurrence, usually a request id.
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_webhook::error::Problem;
    ///
    /// let problem = Problem::new(StatusCode::CONFLICT).with_instance("req-7f3a");
    /// assert_eq!(problem.instance(), Some("req-7f3a"));
    /// let doc: serde_json::Value = serde_json::from_slice(&problem.to_json()).unwrap();
    /// assert_eq!(doc["instance"], "req-7f3a");
    /// ```
    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into());
        self
    }

    /// Sets `Retry-After`, sent in whole seconds, rounded up.
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use std::time::Duration;
    /// use tower_webhook::error::Problem;
    ///
    /// let problem = Problem::new(StatusCode::SERVICE_UNAVAILABLE).with_retry_after(Duration::from_millis(1500));
    /// assert_eq!(problem.retry_after(), Some(Duration::from_millis(1500)));
    /// let res = problem.to_response::<bytes::Bytes>();
    /// assert_eq!(res.headers()["retry-after"], "2"); // rounded up
    /// ```
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// Sets the `WWW-Authenticate` challenge sent with the HTTP response (a 401 must carry one,
    /// RFC 9110, section 15.5.2). Spaces and tabs at its ends are left out. A value that is
    /// empty then, or not a valid header value (a line break or another control character in
    /// it), is not sent, and a warning is logged: `WebhookErrorLayer` sends its own challenge
    /// in its place, if it has one.
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_webhook::error::Problem;
    ///
    /// let problem = Problem::new(StatusCode::UNAUTHORIZED).with_challenge(r#"Bearer realm="api""#);
    /// let res = problem.to_response::<bytes::Bytes>();
    /// assert_eq!(res.headers()["www-authenticate"], r#"Bearer realm="api""#);
    /// assert_eq!(problem.challenge(), Some(r#"Bearer realm="api""#));
    /// ```
    pub fn with_challenge(mut self, challenge: impl Into<Cow<'static, str>>) -> Self {
        self.challenge = Some(trim_challenge(challenge.into()));
        self
    }

    /// Sets the gRPC code used for gRPC requests.
    ///
    /// [`GrpcCode::Ok`] would tell a gRPC client its call succeeded: `WebhookErrorLayer`
    /// sends the code of the problem's HTTP status instead.
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_webhook::error::{GrpcCode, Problem};
    ///
    /// // An optimistic-locking conflict: gRPC clients should retry the whole transaction.
    /// let problem = Problem::new(StatusCode::CONFLICT).with_grpc_code(GrpcCode::Aborted);
    /// assert_eq!(problem.grpc_code(), GrpcCode::Aborted);
    /// let res = problem.to_grpc_response::<()>();
    /// assert_eq!(res.headers()["grpc-status"], "10");
    /// ```
    pub fn with_grpc_code(mut self, code: GrpcCode) -> Self {
        self.grpc_code = code;
        self
    }

    /// Sets the `grpc-message` used for gRPC requests (default: the detail, else the title).
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_webhook::error::Problem;
    ///
    /// let problem = Problem::new(StatusCode::TOO_MANY_REQUESTS).with_grpc_message("quota 100% used");
    /// assert_eq!(problem.grpc_message(), "quota 100% used");
    /// let res = problem.to_grpc_response::<()>();
    /// assert_eq!(res.headers()["grpc-message"], "quota 100%25 used");
    /// ```
    pub fn with_grpc_message(mut self, message: impl Into<Cow<'static, str>>) -> Self {
        self.grpc_message = Some(message.into());
        self
    }

    /// Adds an extension member (RFC 9457, section 3.2): a member of the problem document
    /// beside the standard ones, such as the `balance` of an "out of credit" problem or the
    /// `errors` of a validation problem. [`ProblemJson`](super::ProblemJson) (and
    /// [`to_json`](Self::to_json)) write it as a top-level member, after the standard ones; a
    /// second member of the same name replaces the first. Like the
    /// [`detail`](Self::with_detail), it is shown to the client: never put internals here.
    ///
    /// A name of a standard member (`type`, `title`, `status`, `detail`, `instance`; JSON
    /// names are case-sensitive, so `Status` is not one) cannot be an extension: such a member
    /// is left out, the standard member keeps its value, and a warning is logged. This never
    /// panics, so the name may come from data; [`extension`](Self::extension) tells whether
    /// the member was taken. RFC 9457 recommends names of at least three letters, digits or
    /// `_`, starting with a letter, for clients that map them to XML or code identifiers: this
    /// is not enforced.
    ///
    /// gRPC callers do not get extension members: a trailers-only answer has no document.
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use serde_json::json;
    /// use tower_webhook::error::Problem;
    ///
    /// let problem = Problem::new(StatusCode::FORBIDDEN)
    ///     .with_type("https://example.com/probs/out-of-credit")
    ///     .with_title("You do not have enough credit.")
    ///     .with_extension("balance", 30)
    ///     .with_extension("accounts", json!(["/account/12345", "/account/67890"]))
    ///     // A standard member's name: left out, `status` stays 403.
    ///     .with_extension("status", 200);
    /// assert_eq!(problem.extension("balance"), Some(&json!(30)));
    /// assert_eq!(problem.extension("status"), None);
    ///
    /// let doc: serde_json::Value = serde_json::from_slice(&problem.to_json()).unwrap();
    /// assert_eq!(
    ///     doc,
    ///     json!({
    ///         "type": "https://example.com/probs/out-of-credit",
    ///         "title": "You do not have enough credit.",
    ///         "status": 403,
    ///         "balance": 30,
    ///         "accounts": ["/account/12345", "/account/67890"],
    ///     })
    /// );
    /// ```
    pub fn with_extension(
        mut self,
        name: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> Self {
        let name = name.into();
        if STANDARD_MEMBERS.contains(&name.as_str()) {
            tracing::warn!(
                status = self.status.as_u16(),
                problem_type = &*self.problem_type,
                member = name.as_str(),
                "an extension member cannot take the name of a standard member; left out"
            );
            return self;
        }
        self.extensions
            .get_or_insert_with(Default::default)
            .insert(name, value.into());
        self
    }

    /// The extension member `name`, if the problem has one (see
    /// [`with_extension`](Self::with_extension)).
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_webhook::error::Problem;
    ///
    /// let problem = Problem::new(StatusCode::TOO_MANY_REQUESTS).with_extension("limit", 5000);
    /// assert_eq!(problem.extension("limit").and_then(|v| v.as_u64()), Some(5000));
    /// assert_eq!(problem.extension("remaining"), None);
    /// ```
    pub fn extension(&self, name: &str) -> Option<&serde_json::Value> {
        self.extensions.as_ref()?.get(name)
    }

    /// Every extension member, by name (in the order [`to_json`](Self::to_json) writes them).
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_webhook::error::Problem;
    ///
    /// let problem = Problem::new(StatusCode::UNPROCESSABLE_ENTITY)
    ///     .with_extension("field", "repository")
    ///     .with_extension("reason", "missing");
    /// let names: Vec<&str> = problem.extensions().map(|(name, _)| name).collect();
    /// assert_eq!(names, ["field", "reason"]);
    /// assert_eq!(Problem::new(StatusCode::NOT_FOUND).extensions().count(), 0);
    /// ```
    pub fn extensions(&self) -> impl Iterator<Item = (&str, &serde_json::Value)> + '_ {
        self.extensions
            .iter()
            .flat_map(|members| members.iter().map(|(name, value)| (name.as_str(), value)))
    }

    /// The HTTP status.
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_webhook::error::{Problem, WebhookProcessingError};
    ///
    /// let problem = Problem::from_error(&WebhookProcessingError::new("disk full"));
    /// assert_eq!(problem.status(), StatusCode::INTERNAL_SERVER_ERROR);
    /// assert!(problem.status().is_server_error());
    /// ```
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The problem type URI.
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_webhook::error::{Problem, types};
    /// use tower_webhook::signature::SignatureValidationError;
    ///
    /// let problem = Problem::from_error(&SignatureValidationError::Replayed("evt_1".into()));
    /// assert_eq!(problem.problem_type(), types::REPLAYED_DELIVERY);
    /// assert_eq!(Problem::new(StatusCode::NOT_FOUND).problem_type(), "about:blank");
    /// ```
    pub fn problem_type(&self) -> &str {
        &self.problem_type
    }

    /// The title.
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_webhook::error::Problem;
    ///
    /// assert_eq!(Problem::new(StatusCode::GATEWAY_TIMEOUT).title(), "Gateway Timeout");
    /// let custom = Problem::new(StatusCode::FORBIDDEN).with_title("App not installed");
    /// assert_eq!(custom.title(), "App not installed");
    /// ```
    pub fn title(&self) -> &str {
        &self.title
    }

    /// The client-safe detail, if any.
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_webhook::error::Problem;
    ///
    /// assert_eq!(Problem::new(StatusCode::BAD_REQUEST).detail(), None);
    /// let problem = Problem::new(StatusCode::BAD_REQUEST).with_detail("unknown event `star`");
    /// assert_eq!(problem.detail(), Some("unknown event `star`"));
    /// ```
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// The instance (request id), if any.
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_webhook::error::Problem;
    ///
    /// assert_eq!(Problem::new(StatusCode::CONFLICT).instance(), None);
    /// let problem = Problem::new(StatusCode::CONFLICT).with_instance("req-42");
    /// assert_eq!(problem.instance(), Some("req-42"));
    /// ```
    pub fn instance(&self) -> Option<&str> {
        self.instance.as_deref()
    }

    /// The `Retry-After` delay, if any.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::error::{Problem, WebhookProcessingError};
    ///
    /// let busy = WebhookProcessingError::retryable("worker pool saturated", Duration::from_secs(20));
    /// assert_eq!(Problem::from_error(&busy).retry_after(), Some(Duration::from_secs(20)));
    /// let broken = WebhookProcessingError::new("template missing");
    /// assert_eq!(Problem::from_error(&broken).retry_after(), None);
    /// ```
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The `WWW-Authenticate` challenge, if any.
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_webhook::error::Problem;
    /// use tower_webhook::signature::SignatureValidationError;
    ///
    /// // The crate's signature errors ask the client to sign.
    /// let problem = Problem::from_error(&SignatureValidationError::Mismatch);
    /// assert_eq!(problem.challenge(), Some("Signature"));
    /// assert_eq!(Problem::new(StatusCode::NOT_FOUND).challenge(), None);
    /// ```
    pub fn challenge(&self) -> Option<&str> {
        self.challenge.as_deref()
    }

    /// The gRPC code.
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_webhook::error::{GrpcCode, Problem};
    ///
    /// assert_eq!(Problem::new(StatusCode::UNAUTHORIZED).grpc_code(), GrpcCode::Unauthenticated);
    /// assert_eq!(Problem::new(StatusCode::BAD_GATEWAY).grpc_code(), GrpcCode::Unavailable);
    /// ```
    pub fn grpc_code(&self) -> GrpcCode {
        self.grpc_code
    }

    /// The `grpc-message`: the one set, else the detail, else the title.
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_webhook::error::Problem;
    ///
    /// let problem = Problem::new(StatusCode::NOT_FOUND);
    /// assert_eq!(problem.grpc_message(), "Not Found");
    /// let problem = problem.with_detail("no such repository");
    /// assert_eq!(problem.grpc_message(), "no such repository");
    /// let problem = problem.with_grpc_message("repository octo/repo not found");
    /// assert_eq!(problem.grpc_message(), "repository octo/repo not found");
    /// ```
    pub fn grpc_message(&self) -> &str {
        self.grpc_message
            .as_deref()
            .or(self.detail.as_deref())
            .unwrap_or(&self.title)
    }

    /// The problem document as JSON bytes (`type`, `title`, `status`, and `detail`, `instance`
    /// when present), then the [extension members](Self::with_extension).
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_webhook::error::Problem;
    ///
    /// let json = Problem::new(StatusCode::UNAUTHORIZED).with_instance("req-1").to_json();
    /// let doc: serde_json::Value = serde_json::from_slice(&json).unwrap();
    /// assert_eq!(doc["type"], "about:blank");
    /// assert_eq!(doc["title"], "Unauthorized");
    /// assert_eq!(doc["status"], 401);
    /// assert_eq!(doc["instance"], "req-1");
    /// assert!(doc.get("detail").is_none());
    /// ```
    pub fn to_json(&self) -> Bytes {
        #[derive(serde::Serialize)]
        struct Doc<'a> {
            #[serde(rename = "type")]
            problem_type: &'a str,
            title: &'a str,
            status: u16,
            #[serde(skip_serializing_if = "Option::is_none")]
            detail: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            instance: Option<&'a str>,
            // No extension takes a standard member's name (`with_extension`), so no member is
            // written twice.
            #[serde(flatten, skip_serializing_if = "Option::is_none")]
            extensions: Option<&'a serde_json::Map<String, serde_json::Value>>,
        }
        let doc = Doc {
            problem_type: &self.problem_type,
            title: &self.title,
            status: self.status.as_u16(),
            detail: self.detail.as_deref(),
            instance: self.instance.as_deref(),
            extensions: self.extensions.as_deref(),
        };
        // Serializing strings, an integer and JSON values (whose keys are strings) cannot fail.
        serde_json::to_vec(&doc)
            .map(Bytes::from)
            .unwrap_or_default()
    }

    /// An `application/problem+json` response with the problem's status, `Retry-After` and
    /// `WWW-Authenticate` challenge.
    ///
    /// # Example
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::StatusCode;
    /// use http_body_util::Full;
    /// use tower_webhook::error::Problem;
    ///
    /// let res = Problem::new(StatusCode::PAYLOAD_TOO_LARGE).to_response::<Full<Bytes>>();
    /// assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    /// assert_eq!(res.headers()["content-type"], "application/problem+json");
    /// assert!(res.headers().get("retry-after").is_none());
    /// ```
    pub fn to_response<B: From<Bytes>>(&self) -> Response<B> {
        let mut response = Response::new(B::from(self.to_json()));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        self.add_headers(headers);
        response
    }

    /// A trailers-only gRPC response: HTTP 200, `content-type: application/grpc`, and
    /// `grpc-status` / percent-encoded `grpc-message` in the headers. A problem with a
    /// [`retry_after`](Self::retry_after) also carries it as `grpc-retry-pushback-ms` (in
    /// milliseconds, rounded up), the server pushback gRPC clients honour, and as `Retry-After`.
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_webhook::error::Problem;
    ///
    /// let res = Problem::new(StatusCode::UNAUTHORIZED).to_grpc_response::<()>();
    /// assert_eq!(res.status(), StatusCode::OK);
    /// assert_eq!(res.headers()["content-type"], "application/grpc");
    /// assert_eq!(res.headers()["grpc-status"], "16");
    /// assert_eq!(res.headers()["grpc-message"], "Unauthorized");
    /// ```
    pub fn to_grpc_response<B: Default>(&self) -> Response<B> {
        let mut response = Response::new(B::default());
        let headers = response.headers_mut();
        if let Some(metadata) = &self.grpc_metadata {
            headers.extend(metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from(self.grpc_code as u16));
        let message = super::grpc::encode_message(self.grpc_message());
        if let Ok(value) = HeaderValue::from_str(&message) {
            headers.insert("grpc-message", value);
        }
        if let Some(after) = self.retry_after {
            headers.insert(header::RETRY_AFTER, retry_after_value(after));
            // What gRPC clients read (gRPC A6, server pushback): they ignore `Retry-After`.
            headers.insert("grpc-retry-pushback-ms", pushback_value(after));
        } else if self.grpc_no_retry {
            headers.insert("grpc-retry-pushback-ms", HeaderValue::from_static("-1"));
        }
        response
    }
}

/// `challenge` without spaces or tabs at its ends: HTTP/2 forbids them in a field value (RFC
/// 9113, section 8.2.1), and peers that check it reset the stream.
fn trim_challenge(challenge: Cow<'static, str>) -> Cow<'static, str> {
    let trimmed = challenge.trim_matches([' ', '\t']);
    if trimmed.len() == challenge.len() {
        challenge
    } else {
        Cow::Owned(trimmed.to_owned())
    }
}

impl Problem {
    /// Adds `metadata` to what a gRPC caller is answered, but none of the headers the answer
    /// sets itself or that gRPC or HTTP/2 reserve: `content-*`, `te`, any `grpc-*` other than
    /// `grpc-status-details-bin`, connection-specific and framing headers, `Retry-After` and
    /// `WWW-Authenticate`; nor the HTTP headers that describe a response or act on its origin
    /// rather than the call (`Set-Cookie`, `Alt-Svc`, `Strict-Transport-Security`, `Location`,
    /// `Date`, `Server`, `Via`, caching headers, `x-envoy-*`): a status that a tonic client made
    /// of an upstream's answer carries that upstream's response headers as its metadata, and
    /// they are not this server's to send.
    #[cfg(feature = "tonic")]
    pub(crate) fn with_grpc_metadata(mut self, metadata: http::HeaderMap) -> Self {
        const RESERVED: [&str; 35] = [
            "te",
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "upgrade",
            "trailer",
            "retry-after",
            "www-authenticate",
            // An upstream's response headers.
            "set-cookie",
            "alt-svc",
            "strict-transport-security",
            "location",
            "date",
            "server",
            "via",
            "age",
            "expires",
            "cache-control",
            "pragma",
            "vary",
            "etag",
            "last-modified",
            "accept-ranges",
            "x-powered-by",
            "report-to",
            "nel",
            "clear-site-data",
            "x-frame-options",
            "x-content-type-options",
            "x-xss-protection",
            "referrer-policy",
            "permissions-policy",
            "server-timing",
            "timing-allow-origin",
        ];
        /// Prefixes of reserved names: the body's description (`content-*`, which takes in
        /// `Content-Security-Policy`), gRPC's own, a browser's cross-origin rules, and a
        /// proxy's headers (Envoy adds `x-envoy-upstream-service-time`, say).
        const RESERVED_PREFIXES: [&str; 5] = [
            "content-",
            "grpc-",
            "access-control-",
            "cross-origin-",
            "x-envoy-",
        ];
        let mut kept = http::HeaderMap::new();
        let mut name = None;
        for (key, value) in metadata {
            // `into_iter` names each header once, before its first value.
            if let Some(key) = key {
                let key_name = key.as_str();
                let reserved = RESERVED.contains(&key_name)
                    || (RESERVED_PREFIXES.iter().any(|p| key_name.starts_with(p))
                        && key_name != "grpc-status-details-bin");
                name = (!reserved).then_some(key);
            }
            if let Some(key) = &name {
                kept.append(key.clone(), value);
            }
        }
        self.grpc_metadata = (!kept.is_empty()).then(|| Box::new(kept));
        self
    }

    /// Asks a gRPC caller not to retry (`grpc-retry-pushback-ms: -1`), as the `tonic::Status`
    /// the problem was made of did; an HTTP caller has no such header.
    #[cfg(feature = "tonic")]
    pub(crate) fn with_grpc_no_retry(mut self) -> Self {
        self.grpc_no_retry = true;
        self
    }

    /// Sets `Retry-After` and `WWW-Authenticate` from the problem, where `headers` has none.
    pub(crate) fn add_headers(&self, headers: &mut http::HeaderMap) {
        if let Some(after) = self.retry_after {
            headers
                .entry(header::RETRY_AFTER)
                .or_insert_with(|| retry_after_value(after));
        }
        if let Some(challenge) = self.challenge.as_deref() {
            match challenge_value(challenge) {
                Some(value) => {
                    headers.entry(header::WWW_AUTHENTICATE).or_insert(value);
                }
                None => self.warn_bad_challenge(),
            }
        }
    }

    /// The problem without its challenge if that cannot be a header value, the mistake logged
    /// here once: the renderer and the layer after it, or an outer layer rendering the problem
    /// again, then find nothing to leave out and log.
    pub(crate) fn without_bad_challenge(mut self) -> Self {
        if self
            .challenge
            .as_deref()
            .is_some_and(|challenge| challenge_value(challenge).is_none())
        {
            self.warn_bad_challenge();
            self.challenge = None;
        }
        self
    }

    /// Empty, or a line break or another control character: it cannot be a challenge, and the
    /// mistake is the server's own.
    fn warn_bad_challenge(&self) {
        tracing::warn!(
            status = self.status.as_u16(),
            problem_type = &*self.problem_type,
            "the problem's challenge is empty or not a valid header value; WWW-Authenticate left out"
        );
    }
}

/// `challenge` as a `WWW-Authenticate` value, if it can be one: not empty (a 401 must carry at
/// least one challenge, RFC 9110, section 15.5.2), and a valid header value.
pub(crate) fn challenge_value(challenge: &str) -> Option<HeaderValue> {
    if challenge.is_empty() {
        return None;
    }
    HeaderValue::from_str(challenge).ok()
}

/// `grpc-retry-pushback-ms`: whole milliseconds, rounded up. gRPC clients read it as a 32-bit
/// signed number (a larger one is "do not retry"), so a longer wait is sent as the longest.
pub(crate) fn pushback_value(after: Duration) -> HeaderValue {
    let millis = after
        .as_millis()
        .saturating_add(u128::from(!after.subsec_nanos().is_multiple_of(1_000_000)));
    const LONGEST: u128 = i32::MAX as u128;
    HeaderValue::from(u64::try_from(millis.min(LONGEST)).unwrap_or(i32::MAX as u64))
}

/// `Retry-After` in whole seconds, rounded up so a client never comes back early.
fn retry_after_value(after: Duration) -> HeaderValue {
    let secs = after
        .as_secs()
        .saturating_add(u64::from(after.subsec_nanos() > 0));
    HeaderValue::from(secs)
}

impl fmt::Debug for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Problem")
            .field("status", &self.status.as_u16())
            .field("type", &self.problem_type)
            .field("title", &self.title)
            .field("detail", &self.detail)
            .field("instance", &self.instance)
            .field("retry_after", &self.retry_after)
            .field("challenge", &self.challenge)
            .field("grpc_code", &self.grpc_code)
            .field("extensions", &self.extensions)
            .finish()
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.title)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problem {}

impl HttpError for Problem {
    fn status(&self) -> StatusCode {
        self.status
    }
    fn problem_type(&self) -> &str {
        &self.problem_type
    }
    fn title(&self) -> &str {
        &self.title
    }
    fn detail(&self) -> Option<Cow<'_, str>> {
        self.detail.as_deref().map(Cow::Borrowed)
    }
    fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
    fn challenge(&self) -> Option<Cow<'_, str>> {
        self.challenge.as_deref().map(Cow::Borrowed)
    }
    fn grpc_code(&self) -> GrpcCode {
        self.grpc_code
    }
}

#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for Problem {
    /// Renders the problem document and keeps the `Problem` in the response extensions, so an
    /// outer [`WebhookErrorLayer`](super::WebhookErrorLayer) can add the request id, answer gRPC
    /// callers in gRPC terms, apply a custom renderer and log it once.
    fn into_response(self) -> axum_core::response::Response {
        let mut response = self.to_response::<axum_core::body::Body>();
        response.extensions_mut().insert(self);
        response
    }
}
