//! Deciding whether a call succeeded, failed, or says nothing.

use crate::BoxError;
use crate::error::{Grpc, Problem};
use crate::grpc_web::{WebEnd, WebStatus};
use crate::retry_after::{Pushback, grpc_pushback};
use std::any::Any;
use std::error::Error;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use pin_project::pin_project;
use tower_http::classify::{
    ClassifiedResponse, ClassifyEos, ClassifyResponse, GrpcCode, GrpcEosErrorsAsFailures,
    GrpcErrorsAsFailures, GrpcFailureClass,
};

use super::error::CircuitOpen;
use super::state::{FailOnUnwind, Outcome, Recorder};

/// Turns the inner service's result into an [`Outcome`], recorded through the [`Recorder`].
///
/// A classifier may record at once, or later: [`DefaultClassifier`] wraps a gRPC response body
/// and records when the `grpc-status` trailer arrives. A closure
/// `Fn(&Result<Res, E>) -> Outcome` is a classifier too.
///
/// See the [module docs](super).
///
/// # Example
///
/// ```
/// use std::io::{Error, ErrorKind};
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_webhook::circuit_breaker::{CircuitBreakerLayer, CircuitBreakerConfig, Outcome};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // Only timeouts count against the upstream.
/// let (layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
/// let layer = layer.with_classifier(|result: &Result<u32, Error>| match result {
///     Err(e) if e.kind() == ErrorKind::TimedOut => Outcome::Failure,
///     Err(_) => Outcome::Neutral,
///     Ok(_) => Outcome::Success,
/// });
/// for kind in [ErrorKind::TimedOut, ErrorKind::NotFound] {
///     let svc = ServiceBuilder::new()
///         .layer(layer.clone())
///         .service_fn(move |_: ()| async move { Err::<u32, _>(Error::from(kind)) });
///     svc.oneshot(()).await.unwrap_err();
/// }
/// let snapshot = handle.snapshot();
/// assert_eq!(snapshot.failed_calls, 1); // the timeout; the other error counts for nothing
/// assert_eq!(snapshot.successful_calls, 0);
/// # }
/// ```
pub trait ClassifyOutcome<Res, E> {
    /// The response handed to the caller (the inner response, or a wrapper of it).
    type Response;

    /// Records the outcome of `result` and hands the result on.
    ///
    /// # Example
    ///
    /// ```
    /// use tower::{BoxError, ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitState, ClassifyOutcome, Outcome, Recorder};
    ///
    /// #[derive(Clone)]
    /// struct ErrorsAreFailures;
    ///
    /// impl<Res, E> ClassifyOutcome<Res, E> for ErrorsAreFailures {
    ///     type Response = Res;
    ///     fn classify(&self, result: Result<Res, E>, recorder: Recorder) -> Result<Res, E> {
    ///         recorder.record(if result.is_ok() { Outcome::Success } else { Outcome::Failure });
    ///         result
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let (layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default().consecutive_failures(1)).unwrap();
    /// let svc = ServiceBuilder::new()
    ///     .layer(layer.with_classifier(ErrorsAreFailures))
    ///     .service_fn(|_: ()| async { Err::<(), BoxError>("connection refused".into()) });
    /// svc.oneshot(()).await.unwrap_err();
    /// assert_eq!(handle.state(), CircuitState::Open);
    /// # }
    /// ```
    fn classify(&self, result: Result<Res, E>, recorder: Recorder) -> Result<Self::Response, E>;
}

impl<F, Res, E> ClassifyOutcome<Res, E> for F
where
    F: Fn(&Result<Res, E>) -> Outcome,
{
    type Response = Res;

    #[inline]
    fn classify(&self, result: Result<Res, E>, recorder: Recorder) -> Result<Res, E> {
        recorder.record(self(&result));
        result
    }
}

/// The default classifier: HTTP and gRPC through tower-http's
/// [`classify`](tower_http::classify) module, and `reqwest::Response` (feature `reqwest` for
/// reqwest 0.13, `reqwest-0-12` for reqwest 0.12).
///
/// | result | outcome |
/// |---|---|
/// | `Err` from the inner service | failure |
/// | `Err` that is a [`Problem`](crate::error::Problem) (as is or boxed, anywhere in its source chain) | as the HTTP status it stands for: a 4xx is the caller's mistake, not the upstream failing |
/// | `Err` that is a [`CircuitOpen`](super::CircuitOpen) of another breaker, or a `Problem` made of one (type [`CIRCUIT_OPEN`](crate::error::types::CIRCUIT_OPEN)), boxed, anywhere in its source chain | neutral: the call was not made |
/// | `Err` that is a reqwest builder error (`is_builder()`: a URL scheme reqwest does not send), as is or boxed, anywhere in its source chain | neutral: the request was not sent |
/// | `Err` that is a reqwest status error (`error_for_status()`), as is or boxed, anywhere in its source chain | as its HTTP status, like the response it was |
/// | HTTP 5xx | failure |
/// | HTTP 408, 429 | success, or failure if configured |
/// | other HTTP statuses | success |
/// | gRPC `Unknown`, `DeadlineExceeded`, `Internal`, `Unavailable`, `DataLoss` | failure |
/// | gRPC `ResourceExhausted` | like HTTP 429 |
/// | gRPC `Cancelled` | neutral |
/// | other gRPC codes | success |
///
/// Errors are read the same whatever the response type: the error of a service of
/// `http::Response`s wrapping a reqwest client is classified as the reqwest service's.
/// Where several links of an error's source chain say something, the outermost one decides.
///
/// gRPC responses (`content-type: application/grpc`, with any codec) are classified from `grpc-status` in
/// the headers (trailers-only responses) or, when it is not there, from the trailers at the end
/// of the body: the outcome is recorded when the caller has read the body to its end, and the
/// call is timed (for the slow-call rule) to the stream's head, so a long-lived stream is not
/// slow for lasting. A body dropped before its end is neutral. An answer whose body ends with
/// no `grpc-status`, or whose `grpc-status` is not a number, is `Unknown`, as gRPC clients read
/// it: a failure. gRPC-Web answers (`application/grpc-web`, base64 `application/grpc-web-text`)
/// carry their trailers in a trailer frame at the end of the body, read as the body streams
/// and classified the same way; a body that is not gRPC-Web is a failure, and a compressed
/// trailer frame, not read, is not held against the upstream.
///
/// On 429 and 503 the upstream's `Retry-After` (seconds, or an HTTP date read against the
/// response's `Date`, the server's clock, and against the local clock only without a valid
/// `Date`; without one, or with `0`, the reset of a spent rate-limit quota:
/// `X-RateLimit-Remaining: 0` with `X-RateLimit-Reset`, or `RateLimit-Remaining: 0` with
/// `RateLimit-Reset`, UTC epoch seconds read against `Date` too), and on gRPC's
/// `RESOURCE_EXHAUSTED` and `UNAVAILABLE` its `grpc-retry-pushback-ms` (in the headers of a
/// trailers-only answer, or in the trailers), is passed to the breaker, which uses it if
/// [`honor_retry_after`](super::CircuitBreakerConfig::honor_retry_after) is set.
///
/// # Example
///
/// ```
/// use http::{Request, Response, StatusCode};
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, DefaultClassifier};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let (layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
/// let layer = layer.with_classifier(DefaultClassifier::new().too_many_requests_is_failure(true));
/// for status in [StatusCode::SERVICE_UNAVAILABLE, StatusCode::TOO_MANY_REQUESTS, StatusCode::NOT_FOUND] {
///     let svc = ServiceBuilder::new().layer(layer.clone()).service_fn(move |_: Request<()>| async move {
///         let res = Response::builder().status(status).body(String::new()).unwrap();
///         Ok::<_, std::convert::Infallible>(res)
///     });
///     assert_eq!(svc.oneshot(Request::new(())).await.unwrap().status(), status);
/// }
/// let snapshot = handle.snapshot();
/// assert_eq!(snapshot.failed_calls, 2); // the 503, and the 429 as asked
/// assert_eq!(snapshot.successful_calls, 1); // a 404 is not the upstream failing
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct DefaultClassifier {
    timeout_is_failure: bool,
    too_many_is_failure: bool,
    grpc: GrpcErrorsAsFailures,
}

impl Default for DefaultClassifier {
    fn default() -> Self {
        Self::new()
    }
}

impl DefaultClassifier {
    /// The default classification (see the table above).
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_webhook::circuit_breaker::{DefaultClassifier, Outcome};
    ///
    /// let classifier = DefaultClassifier::new();
    /// assert_eq!(classifier.http_outcome(StatusCode::BAD_GATEWAY), Outcome::Failure);
    /// assert_eq!(classifier.http_outcome(StatusCode::NOT_FOUND), Outcome::Success);
    /// assert_eq!(classifier.http_outcome(StatusCode::TOO_MANY_REQUESTS), Outcome::Success);
    /// ```
    pub fn new() -> Self {
        Self {
            timeout_is_failure: false,
            too_many_is_failure: false,
            grpc: Self::grpc(false),
        }
    }

    fn grpc(too_many_is_failure: bool) -> GrpcErrorsAsFailures {
        let mut grpc = GrpcErrorsAsFailures::new();
        for code in [
            GrpcCode::InvalidArgument,
            GrpcCode::NotFound,
            GrpcCode::AlreadyExists,
            GrpcCode::PermissionDenied,
            GrpcCode::FailedPrecondition,
            GrpcCode::Aborted,
            GrpcCode::OutOfRange,
            GrpcCode::Unimplemented,
            GrpcCode::Unauthenticated,
        ] {
            grpc = grpc.with_success(code);
        }
        if !too_many_is_failure {
            grpc = grpc.with_success(GrpcCode::ResourceExhausted);
        }
        grpc
    }

    /// Whether HTTP 408 Request Timeout counts as a failure (default: no).
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_webhook::circuit_breaker::{DefaultClassifier, Outcome};
    ///
    /// let classifier = DefaultClassifier::new().timeout_is_failure(true);
    /// assert_eq!(classifier.http_outcome(StatusCode::REQUEST_TIMEOUT), Outcome::Failure);
    /// ```
    pub fn timeout_is_failure(mut self, yes: bool) -> Self {
        self.timeout_is_failure = yes;
        self
    }

    /// Whether HTTP 429 Too Many Requests and gRPC `ResourceExhausted` count as failures
    /// (default: no).
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_webhook::circuit_breaker::{DefaultClassifier, Outcome};
    ///
    /// // An upstream that rate-limits this client is, for this client, down.
    /// let classifier = DefaultClassifier::new().too_many_requests_is_failure(true);
    /// assert_eq!(classifier.http_outcome(StatusCode::TOO_MANY_REQUESTS), Outcome::Failure);
    /// ```
    pub fn too_many_requests_is_failure(mut self, yes: bool) -> Self {
        self.too_many_is_failure = yes;
        self.grpc = Self::grpc(yes);
        self
    }

    /// Classifies errors of the inner service with `f` instead of the default (failures, a
    /// `Problem` by its status, another breaker's `CircuitOpen` neutral); return [`Outcome::Neutral`] for errors that say nothing about
    /// the upstream.
    ///
    /// # Example
    ///
    /// ```
    /// use http::Response;
    /// use tower::{BoxError, ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitState, DefaultClassifier, Outcome};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let config = CircuitBreakerConfig::default().consecutive_failures(1);
    /// let (layer, handle) = CircuitBreakerLayer::pair(config).unwrap();
    /// // Errors raised before the upstream was reached say nothing about it.
    /// let classifier = DefaultClassifier::new().with_error_outcome(|_: &BoxError| Outcome::Neutral);
    /// let svc = ServiceBuilder::new().layer(layer.with_classifier(classifier)).service_fn(|_: ()| async {
    ///     Err::<Response<()>, BoxError>("invalid request, not sent".into())
    /// });
    /// svc.oneshot(()).await.unwrap_err();
    /// assert_eq!(handle.state(), CircuitState::Closed);
    /// # }
    /// ```
    pub fn with_error_outcome<F>(self, f: F) -> ErrorOutcome<Self, F> {
        ErrorOutcome { inner: self, f }
    }

    /// The outcome of an HTTP status.
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_webhook::circuit_breaker::{DefaultClassifier, Outcome};
    ///
    /// let classifier = DefaultClassifier::new();
    /// assert_eq!(classifier.http_outcome(StatusCode::OK), Outcome::Success);
    /// assert_eq!(classifier.http_outcome(StatusCode::UNPROCESSABLE_ENTITY), Outcome::Success);
    /// assert_eq!(classifier.http_outcome(StatusCode::SERVICE_UNAVAILABLE), Outcome::Failure);
    /// ```
    pub fn http_outcome(&self, status: StatusCode) -> Outcome {
        match status.as_u16() {
            408 if self.timeout_is_failure => Outcome::Failure,
            429 if self.too_many_is_failure => Outcome::Failure,
            500..=599 => Outcome::Failure,
            _ => Outcome::Success,
        }
    }
}

impl DefaultClassifier {
    /// The outcome of an error of the inner service: a failure, unless a link of its source
    /// chain (the error as is, or boxed in a `BoxError`) says otherwise, the first one that does:
    ///
    /// - a [`Problem`] stands for the response it becomes and is classified by its status, as
    ///   that response would be (a client error is not the upstream failing), with the wait
    ///   that response asks for: a 429 or 503 problem's `Retry-After`;
    /// - a [`CircuitOpen`] of a breaker nearer the upstream (a keyed breaker under a global one,
    ///   or the other way round), or a problem made of one, is neutral: that call was not made,
    ///   so it says nothing of the upstream; so is tower's `Overloaded`, the refusal of a load
    ///   shedder beneath the breaker (`.load_shed().concurrency_limit(n)`): a burst of local
    ///   calls is no upstream failing;
    /// - a reqwest builder error is neutral (the request never left), and a reqwest error made by
    ///   `error_for_status()` is classified by its status, as the response it was.
    fn error_outcome<E: 'static>(&self, err: &E) -> (Outcome, Option<Duration>) {
        let Some(err) = as_error(err) else {
            return (Outcome::Failure, None);
        };
        crate::error_chain::links(err)
            .find_map(|e| self.link_outcome(e))
            .unwrap_or((Outcome::Failure, None))
    }

    /// What one link of an error's source chain says, if anything.
    fn link_outcome(&self, e: &(dyn Error + 'static)) -> Option<(Outcome, Option<Duration>)> {
        if e.is::<CircuitOpen>() || e.is::<tower::load_shed::error::Overloaded>() {
            return Some((Outcome::Neutral, None));
        }
        #[cfg(any(feature = "reqwest", feature = "reqwest-0-12"))]
        if let Some(outcome) = self.reqwest_outcome(e) {
            return Some((outcome, None));
        }
        let problem = e.downcast_ref::<Problem>()?;
        if problem.problem_type() == crate::error::types::CIRCUIT_OPEN {
            return Some((Outcome::Neutral, None));
        }
        let status = problem.status();
        let after = matches!(status.as_u16(), 429 | 503)
            .then(|| problem.retry_after())
            .flatten();
        Some((self.http_outcome(status), after))
    }

    /// What a reqwest error says: a builder error (a URL scheme reqwest does not send, a URL
    /// that is no URI) is neutral, the request never left; a status error
    /// (`error_for_status()`) is the answer, classified by its status as the response would be
    /// (a 404 is not the upstream failing). Any other says nothing here.
    #[cfg(any(feature = "reqwest", feature = "reqwest-0-12"))]
    fn reqwest_outcome(&self, e: &(dyn Error + 'static)) -> Option<Outcome> {
        fn of<R: ReqwestError>(
            classifier: &DefaultClassifier,
            e: &(dyn Error + 'static),
        ) -> Option<Outcome> {
            let e = e.downcast_ref::<R>()?;
            if e.is_builder() {
                return Some(Outcome::Neutral);
            }
            e.status().map(|status| classifier.http_outcome(status))
        }
        #[cfg(feature = "reqwest")]
        if let Some(outcome) = of::<reqwest::Error>(self, e) {
            return Some(outcome);
        }
        #[cfg(feature = "reqwest-0-12")]
        if let Some(outcome) = of::<reqwest_0_12::Error>(self, e) {
            return Some(outcome);
        }
        None
    }
}

/// The error `err` is, as the start of a source chain: a [`Problem`], a `BoxError`'s content,
/// or a reqwest error; `None` for any other type, which the classifier cannot look into.
fn as_error<E: 'static>(err: &E) -> Option<&(dyn Error + 'static)> {
    let any: &dyn Any = err;
    if let Some(problem) = any.downcast_ref::<Problem>() {
        return Some(problem);
    }
    if let Some(boxed) = any.downcast_ref::<BoxError>() {
        return Some(&**boxed);
    }
    #[cfg(feature = "reqwest")]
    if let Some(err) = any.downcast_ref::<reqwest::Error>() {
        return Some(err);
    }
    #[cfg(feature = "reqwest-0-12")]
    if let Some(err) = any.downcast_ref::<reqwest_0_12::Error>() {
        return Some(err);
    }
    None
}

fn grpc_outcome(class: &GrpcFailureClass) -> Outcome {
    match class {
        GrpcFailureClass::Code(code) if code.get() == 1 => Outcome::Neutral,
        _ => Outcome::Failure,
    }
}

const GRPC_STATUS: &str = "grpc-status";

/// The `grpc-status` in `map`, when there is one that reads as a number.
fn grpc_status(map: &HeaderMap) -> Option<i32> {
    let value = map.get(GRPC_STATUS)?.to_str().ok()?;
    value
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| value.parse().ok())
        .flatten()
}

/// How a gRPC answer whose status comes at the end of the stream is classified then.
struct Eos {
    classify: GrpcEosErrorsAsFailures,
    /// gRPC-Web: the reader of the trailer frame at the end of the body.
    web: Option<WebStatus>,
}

/// The outcome of a gRPC answer whose status comes at the end of the stream. gRPC requires
/// a `grpc-status` there: an answer that ends without a readable one (no trailers, as when a
/// proxy cuts the stream short, or trailers without the status) is `Unknown` to gRPC clients
/// (tonic, grpc-go), a failure. gRPC-Web sends its trailers in a trailer frame at the end of
/// the body, read the same way; a body that is not gRPC-Web is a failure too, and a trailer
/// frame that is not read here (compressed) is not held against the upstream.
///
/// With the outcome comes the server's `grpc-retry-pushback-ms` from the trailers, on the
/// codes of an overloaded server, as for a trailers-only answer.
fn eos_outcome(eos: Eos, trailers: Option<&HeaderMap>) -> (Outcome, Option<Duration>) {
    let from_body;
    let trailers = match (trailers, &eos.web) {
        (Some(trailers), _) if grpc_status(trailers).is_some() => Some(trailers),
        (_, Some(web)) => match web.end() {
            Some(WebEnd::Trailers(map)) => {
                from_body = map;
                Some(&from_body)
            }
            Some(WebEnd::Unreadable) => return (Outcome::Success, None),
            Some(WebEnd::Broken) | None => None,
        },
        (trailers, None) => trailers,
    };
    match trailers {
        Some(trailers) if grpc_status(trailers).is_some() => {
            match eos.classify.classify_eos(Some(trailers)) {
                Ok(()) => (Outcome::Success, success_hint(trailers)),
                Err(class) => (grpc_outcome(&class), grpc_hint(&class, trailers)),
            }
        }
        _ => (Outcome::Failure, None),
    }
}

/// The gRPC protocol `headers` type a response as (`application/grpc`, `application/grpc-web`,
/// base64 `application/grpc-web-text`, with any codec), read as the error layer reads it: a
/// type that merely starts with `application/grpc` (`application/grpcx`) is not gRPC.
fn grpc_kind(headers: &HeaderMap) -> Option<Grpc> {
    headers.get(header::CONTENT_TYPE).and_then(Grpc::of)
}

/// The reader of the body's trailer frame for a gRPC-Web answer.
fn grpc_web(kind: Grpc) -> Option<WebStatus> {
    match kind {
        Grpc::Native => None,
        Grpc::Web => Some(WebStatus::new(false)),
        Grpc::WebText => Some(WebStatus::new(true)),
    }
}

fn hint(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    if !matches!(status.as_u16(), 429 | 503) {
        return None;
    }
    crate::retry_after::or_rate_limit_reset(crate::retry_after::parse(headers), headers)
}

/// gRPC's `Retry-After`: the `grpc-retry-pushback-ms` of an overloaded server
/// (`RESOURCE_EXHAUSTED`, `UNAVAILABLE`, the codes of 429 and 503).
fn grpc_hint(class: &GrpcFailureClass, headers: &HeaderMap) -> Option<Duration> {
    match (class, grpc_pushback(headers)) {
        (GrpcFailureClass::Code(code), Pushback::Wait(after)) if matches!(code.get(), 8 | 14) => {
            Some(after)
        }
        _ => None,
    }
}

/// The wait a gRPC status classified as a success asks for: `RESOURCE_EXHAUSTED` (a 429) with
/// its `grpc-retry-pushback-ms`, unless it is held against the upstream.
fn success_hint(headers: &HeaderMap) -> Option<Duration> {
    if grpc_status(headers) != Some(8) {
        return None;
    }
    match grpc_pushback(headers) {
        Pushback::Wait(after) => Some(after),
        _ => None,
    }
}

impl<B, E: 'static> ClassifyOutcome<Response<B>, E> for DefaultClassifier {
    type Response = Response<ResponseBody<B>>;

    #[inline]
    fn classify(
        &self,
        result: Result<Response<B>, E>,
        recorder: Recorder,
    ) -> Result<Self::Response, E> {
        let response = match result {
            Ok(response) => response,
            Err(err) => {
                let (outcome, after) = self.error_outcome(&err);
                recorder.record_with_retry_after(outcome, after);
                return Err(err);
            }
        };
        let status = response.status();
        if status == StatusCode::OK
            && let Some(kind) = grpc_kind(response.headers())
        {
            if response.headers().contains_key(GRPC_STATUS)
                && grpc_status(response.headers()).is_none()
            {
                // Unreadable: `Unknown` to gRPC clients, a failure.
                recorder.record(Outcome::Failure);
                return Ok(response.map(|body| ResponseBody {
                    inner: body,
                    eos: None,
                }));
            }
            match self.grpc.clone().classify_response(&response) {
                ClassifiedResponse::Ready(Ok(())) => recorder
                    .record_with_retry_after(Outcome::Success, success_hint(response.headers())),
                ClassifiedResponse::Ready(Err(class)) => {
                    let outcome = grpc_outcome(&class);
                    recorder
                        .record_with_retry_after(outcome, grpc_hint(&class, response.headers()));
                }
                ClassifiedResponse::RequiresEos(classify) => {
                    // The answer has come: reading the stream to its end is the caller's
                    // time, not the upstream's.
                    let mut recorder = recorder;
                    recorder.stop_clock();
                    let eos = Eos {
                        classify,
                        web: grpc_web(kind),
                    };
                    return Ok(response.map(|body| ResponseBody {
                        inner: body,
                        eos: Some((recorder, eos)),
                    }));
                }
            }
        } else {
            // A success that asks for a wait (a 429 not held against the upstream) keeps the
            // wait asked for before, as it does through the reqwest classifier.
            let outcome = self.http_outcome(status);
            recorder.record_with_retry_after(outcome, hint(status, response.headers()));
        }
        Ok(response.map(|body| ResponseBody {
            inner: body,
            eos: None,
        }))
    }
}

/// [`DefaultClassifier`] for one reqwest version's response.
#[cfg(any(feature = "reqwest", feature = "reqwest-0-12"))]
macro_rules! reqwest_classifier {
    ($reqwest:ident) => {
        impl<E: 'static> ClassifyOutcome<$reqwest::Response, E> for DefaultClassifier {
            type Response = $reqwest::Response;

            fn classify(
                &self,
                result: Result<$reqwest::Response, E>,
                recorder: Recorder,
            ) -> Result<$reqwest::Response, E> {
                match &result {
                    Ok(response) => {
                        let status = response.status();
                        let outcome = self.http_outcome(status);
                        recorder.record_with_retry_after(outcome, hint(status, response.headers()));
                    }
                    Err(err) => {
                        let (outcome, after) = self.error_outcome(err);
                        recorder.record_with_retry_after(outcome, after);
                    }
                }
                result
            }
        }
    };
}

/// What the classifier asks of a reqwest version's error.
#[cfg(any(feature = "reqwest", feature = "reqwest-0-12"))]
trait ReqwestError: Error + 'static {
    /// Raised before the request was sent.
    fn is_builder(&self) -> bool;
    /// The status of the answer `error_for_status()` turned into this error.
    fn status(&self) -> Option<StatusCode>;
}

#[cfg(feature = "reqwest")]
impl ReqwestError for reqwest::Error {
    fn is_builder(&self) -> bool {
        reqwest::Error::is_builder(self)
    }

    fn status(&self) -> Option<StatusCode> {
        reqwest::Error::status(self)
    }
}

#[cfg(feature = "reqwest-0-12")]
impl ReqwestError for reqwest_0_12::Error {
    fn is_builder(&self) -> bool {
        reqwest_0_12::Error::is_builder(self)
    }

    fn status(&self) -> Option<StatusCode> {
        reqwest_0_12::Error::status(self)
    }
}

#[cfg(feature = "reqwest")]
reqwest_classifier!(reqwest);
#[cfg(feature = "reqwest-0-12")]
reqwest_classifier!(reqwest_0_12);

/// A classifier whose errors are classified by a function. Made by
/// [`DefaultClassifier::with_error_outcome`].
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use http::{Request, Response};
/// use tower::{BoxError, ServiceBuilder, ServiceExt};
/// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, DefaultClassifier, Outcome};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// // A timeout counts against the upstream; any other error says nothing about it.
/// let classifier = DefaultClassifier::new().with_error_outcome(|err: &BoxError| {
///     if err.is::<tower::timeout::error::Elapsed>() { Outcome::Failure } else { Outcome::Neutral }
/// });
/// let (layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
/// let layer = layer.with_classifier(classifier);
/// let slow = ServiceBuilder::new()
///     .layer(layer.clone())
///     .timeout(Duration::from_secs(1))
///     .service_fn(|_: Request<()>| async {
///         tokio::time::sleep(Duration::from_secs(60)).await;
///         Ok::<_, BoxError>(Response::new(String::new()))
///     });
/// slow.oneshot(Request::new(())).await.unwrap_err();
/// let refused = ServiceBuilder::new()
///     .layer(layer)
///     .service_fn(|_: Request<()>| async {
///         Err::<Response<String>, BoxError>("invalid header value".into())
///     });
/// refused.oneshot(Request::new(())).await.unwrap_err();
/// assert_eq!(handle.snapshot().failed_calls, 1); // the timeout only
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct ErrorOutcome<C, F> {
    inner: C,
    f: F,
}

impl<C, F, Res, E> ClassifyOutcome<Res, E> for ErrorOutcome<C, F>
where
    C: ClassifyOutcome<Res, E>,
    F: Fn(&E) -> Outcome,
{
    type Response = C::Response;

    #[inline]
    fn classify(&self, result: Result<Res, E>, recorder: Recorder) -> Result<C::Response, E> {
        match result {
            Err(err) => {
                recorder.record((self.f)(&err));
                Err(err)
            }
            ok => self.inner.classify(ok, recorder),
        }
    }
}

/// Response body of [`CircuitBreaker`](super::CircuitBreaker) with the default classifier:
/// the inner body, untouched, which for a gRPC response records the outcome when the
/// trailers arrive.
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use http::{HeaderMap, Request, Response};
/// use http_body_util::{BodyExt, Full};
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_webhook::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, ResponseBody};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let (layer, handle) = CircuitBreakerLayer::pair(CircuitBreakerConfig::default()).unwrap();
/// let svc = ServiceBuilder::new().layer(layer).service_fn(|_: Request<()>| async {
///     // A gRPC stream: a message, then trailers that say UNAVAILABLE.
///     let mut trailers = HeaderMap::new();
///     trailers.insert("grpc-status", "14".parse().unwrap());
///     let body = Full::new(Bytes::from_static(b"\0\0\0\0\0"))
///         .with_trailers(async { Some(Ok(trailers)) });
///     let res = Response::builder().header("content-type", "application/grpc").body(body).unwrap();
///     Ok::<_, std::convert::Infallible>(res)
/// });
/// let request = Request::builder().header("content-type", "application/grpc").body(()).unwrap();
/// let body: ResponseBody<_> = svc.oneshot(request).await.unwrap().into_body();
/// assert_eq!(handle.snapshot().failed_calls, 0); // the head says nothing yet
/// let trailers = body.collect().await.unwrap().trailers().cloned().unwrap();
/// assert_eq!(trailers["grpc-status"], "14"); // handed on as they came
/// assert_eq!(handle.snapshot().failed_calls, 1);
/// # }
/// ```
#[pin_project]
pub struct ResponseBody<B> {
    #[pin]
    inner: B,
    eos: Option<(Recorder, Eos)>,
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("awaiting_trailers", &self.eos.is_some())
            .finish_non_exhaustive()
    }
}

impl<B: Default> Default for ResponseBody<B> {
    fn default() -> Self {
        Self {
            inner: B::default(),
            eos: None,
        }
    }
}

impl<B> ResponseBody<B> {
    /// The inner body (the outcome, if still pending, is then never recorded: neutral).
    ///
    /// # Example
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::{Request, Response};
    /// use http_body_util::{BodyExt, Full};
    /// use tower::{BoxError, ServiceBuilder, ServiceExt};
    /// use tower_webhook::circuit_breaker::CircuitBreakerLayer;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let svc = ServiceBuilder::new().layer(CircuitBreakerLayer::new_for_http()).service_fn(
    ///     |_: Request<()>| async { Ok::<_, BoxError>(Response::new(Full::new(Bytes::from("pong")))) },
    /// );
    /// let res = svc.oneshot(Request::new(())).await.unwrap();
    /// let body: Full<Bytes> = res.into_body().into_inner();
    /// assert_eq!(body.collect().await.unwrap().to_bytes(), "pong");
    /// # }
    /// ```
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let unwinding = this
            .eos
            .as_mut()
            .map(|(recorder, _)| FailOnUnwind(recorder));
        let polled = this.inner.as_mut().poll_frame(cx);
        std::mem::forget(unwinding);
        let frame = std::task::ready!(polled);
        match &frame {
            Some(Ok(frame)) => {
                // gRPC-Web: the trailer frame read, the call is classified as it comes.
                if let Some((_, Eos { web: Some(web), .. })) = this.eos
                    && let Some(data) = frame.data_ref()
                {
                    web.feed_buf(data);
                    if web.ended()
                        && let Some((recorder, eos)) = this.eos.take()
                    {
                        let (outcome, after) = eos_outcome(eos, None);
                        recorder.record_with_retry_after(outcome, after);
                    }
                }
                if let Some(trailers) = frame.trailers_ref()
                    && let Some((recorder, eos)) = this.eos.take()
                {
                    let (outcome, after) = eos_outcome(eos, Some(trailers));
                    recorder.record_with_retry_after(outcome, after);
                } else if this.eos.is_some() && this.inner.is_end_stream() {
                    // The last frame, without trailers: a reader that trusts `is_end_stream`
                    // (hyper does) never polls for the end, so it is classified now.
                    if let Some((recorder, eos)) = this.eos.take() {
                        let (outcome, after) = eos_outcome(eos, None);
                        recorder.record_with_retry_after(outcome, after);
                    }
                }
            }
            Some(Err(_)) => {
                if let Some((recorder, _)) = this.eos.take() {
                    recorder.record(Outcome::Failure);
                }
            }
            None => {
                if let Some((recorder, eos)) = this.eos.take() {
                    let (outcome, after) = eos_outcome(eos, None);
                    recorder.record_with_retry_after(outcome, after);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        // Not while the answer still waits for its end to be classified: a reader that trusts
        // `is_end_stream` (hyper's server does) would never poll a body that is empty from the
        // start, and the call would go unrecorded. Polled, it ends at once and is classified.
        self.eos.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
