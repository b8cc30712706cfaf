//! RFC 9457 problem details and the [`HttpError`] trait.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use super::grpc::GrpcCode;

/// The media type of a problem document (RFC 9457, section 3).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Stable problem type URIs of the crate's own errors.
///
/// They are URNs: RFC 9457 allows a type URI that does not resolve, and these never change
/// meaning, so clients may match on them.
pub mod types {
    /// The request carried no valid signature or credential (401).
    pub const INVALID_SIGNATURE: &str = "urn:tower-webhook:problem:invalid-signature";
    /// The body is larger than the configured limit (413).
    pub const PAYLOAD_TOO_LARGE: &str = "urn:tower-webhook:problem:payload-too-large";
    /// The delivery was already seen, or its signed timestamp is outside the window.
    pub const REPLAYED_DELIVERY: &str = "urn:tower-webhook:problem:replayed-delivery";
    /// The request was authenticated but is not a well-formed delivery (400).
    pub const MALFORMED_DELIVERY: &str = "urn:tower-webhook:problem:malformed-delivery";
    /// A circuit breaker rejected the call (503).
    pub const CIRCUIT_OPEN: &str = "urn:tower-webhook:problem:circuit-open";
    /// The delivery could not be processed (500, or 503 when retryable).
    pub const PROCESSING_FAILED: &str = "urn:tower-webhook:problem:processing-failed";
    /// The request took longer than its deadline (504, or 408 if so configured).
    pub const TIMEOUT: &str = "urn:tower-webhook:problem:timeout";
    /// The service shed load (503).
    pub const OVERLOADED: &str = "urn:tower-webhook:problem:overloaded";
    /// The handler panicked (500).
    pub const PANIC: &str = "urn:tower-webhook:problem:internal";
    /// A gRPC status returned by a tonic service, seen by an HTTP client.
    pub const GRPC_STATUS: &str = "urn:tower-webhook:problem:grpc-status";
}

/// An error that knows how it should be answered over HTTP.
///
/// Implement it for your own error types and they are rendered by
/// [`WebhookErrorLayer`](super::WebhookErrorLayer) like the crate's own: register them with
/// [`WebhookErrorLayer::recognize`](super::WebhookErrorLayer::recognize), or turn them into a
/// [`Problem`] with `?` in an axum handler that returns `Result<_, Problem>`.
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
/// ```
pub trait HttpError: std::error::Error + Send + Sync + 'static {
    /// The HTTP status of the response.
    fn status(&self) -> StatusCode;

    /// A stable URI naming the kind of problem (RFC 9457 `type`).
    fn problem_type(&self) -> &str;

    /// A short summary that does not change between occurrences (RFC 9457 `title`).
    ///
    /// Defaults to the status code's canonical reason.
    fn title(&self) -> &str {
        self.status().canonical_reason().unwrap_or("Error")
    }

    /// An explanation of this occurrence that is safe to show to the client.
    fn detail(&self) -> Option<Cow<'_, str>> {
        None
    }

    /// How long the client should wait before trying again (`Retry-After`).
    fn retry_after(&self) -> Option<Duration> {
        None
    }

    /// The gRPC code used when the request was a gRPC call.
    ///
    /// Defaults to [`GrpcCode::from_http_status`].
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
    grpc_code: GrpcCode,
    grpc_message: Option<Cow<'static, str>>,
}

impl Problem {
    /// A problem with this status, type `about:blank` and the status' reason as title.
    pub fn new(status: StatusCode) -> Self {
        Self {
            status,
            problem_type: Cow::Borrowed("about:blank"),
            title: Cow::Borrowed(status.canonical_reason().unwrap_or("Error")),
            detail: None,
            instance: None,
            retry_after: None,
            grpc_code: GrpcCode::from_http_status(status),
            grpc_message: None,
        }
    }

    /// The problem an [`HttpError`] describes.
    pub fn from_error<E: HttpError + ?Sized>(error: &E) -> Self {
        Self {
            status: error.status(),
            problem_type: Cow::Owned(error.problem_type().to_owned()),
            title: Cow::Owned(error.title().to_owned()),
            detail: error.detail().map(|d| Cow::Owned(d.into_owned())),
            instance: None,
            retry_after: error.retry_after(),
            grpc_code: error.grpc_code(),
            grpc_message: None,
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
    pub fn with_type(mut self, uri: impl Into<Cow<'static, str>>) -> Self {
        self.problem_type = uri.into();
        self
    }

    /// Sets the title.
    pub fn with_title(mut self, title: impl Into<Cow<'static, str>>) -> Self {
        self.title = title.into();
        self
    }

    /// Sets the detail shown to the client. Never put internals here.
    pub fn with_detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Sets the instance: the identifier of this occurrence, usually a request id.
    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into());
        self
    }

    /// Sets `Retry-After`, sent in whole seconds, rounded up.
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// Sets the gRPC code used for gRPC requests.
    pub fn with_grpc_code(mut self, code: GrpcCode) -> Self {
        self.grpc_code = code;
        self
    }

    /// Sets the `grpc-message` used for gRPC requests (default: the detail, else the title).
    pub fn with_grpc_message(mut self, message: impl Into<Cow<'static, str>>) -> Self {
        self.grpc_message = Some(message.into());
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The problem type URI.
    pub fn problem_type(&self) -> &str {
        &self.problem_type
    }

    /// The title.
    pub fn title(&self) -> &str {
        &self.title
    }

    /// The client-safe detail, if any.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// The instance (request id), if any.
    pub fn instance(&self) -> Option<&str> {
        self.instance.as_deref()
    }

    /// The `Retry-After` delay, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The gRPC code.
    pub fn grpc_code(&self) -> GrpcCode {
        self.grpc_code
    }

    /// The `grpc-message`: the one set, else the detail, else the title.
    pub fn grpc_message(&self) -> &str {
        self.grpc_message
            .as_deref()
            .or(self.detail.as_deref())
            .unwrap_or(&self.title)
    }

    /// The problem document as JSON bytes (`type`, `title`, `status`, and `detail`, `instance`
    /// when present).
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
        }
        let doc = Doc {
            problem_type: &self.problem_type,
            title: &self.title,
            status: self.status.as_u16(),
            detail: self.detail.as_deref(),
            instance: self.instance.as_deref(),
        };
        // Serializing plain strings and an integer cannot fail.
        serde_json::to_vec(&doc)
            .map(Bytes::from)
            .unwrap_or_default()
    }

    /// An `application/problem+json` response with the problem's status and `Retry-After`.
    pub fn to_response<B: From<Bytes>>(&self) -> Response<B> {
        let mut response = Response::new(B::from(self.to_json()));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(after) = self.retry_after {
            headers.insert(header::RETRY_AFTER, retry_after_value(after));
        }
        response
    }

    /// A trailers-only gRPC response: HTTP 200, `content-type: application/grpc`, and
    /// `grpc-status` / percent-encoded `grpc-message` in the headers.
    pub fn to_grpc_response<B: Default>(&self) -> Response<B> {
        let mut response = Response::new(B::default());
        let headers = response.headers_mut();
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
        }
        response
    }
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
            .field("grpc_code", &self.grpc_code)
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
