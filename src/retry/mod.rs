//! Retry failed calls with exponential backoff: a [`tower::retry::Policy`].
//!
//! [`RetryPolicy`] retries a call when it failed in a way that may pass next time (an error of
//! the inner service, or a 408, 429, 502, 503 or 504 response), and only when that is safe:
//!
//! - **Idempotent requests**, whatever failed: `GET`, `HEAD`, `OPTIONS`, `TRACE`, `PUT`,
//!   `DELETE`, a request with a (non-empty) `Idempotency-Key` header, or one carrying the
//!   [`RetryAllowed`] extension; or every request after
//!   [`RetryPolicy::retry_non_idempotent`].
//! - **Other requests** (a `POST` that creates a comment) only when the failure shows the
//!   upstream did not act on them: a 429, a 408 (the server gave up waiting for the rest of the
//!   request, which RFC 9110 lets a client repeat), a 503 with `Retry-After` (which RFC 9110
//!   says a server answers while it is unable to handle the request), an error raised
//!   before the request was sent (a connect error of reqwest's, of hyper-util's legacy client
//!   or of tonic's channel, whatever its cause, a connect timeout or an unreachable host
//!   included; a refused connection; tower's `Overloaded`; anywhere in the error's source
//!   chain, but not an I/O error that hyper reports on a connection that was open, and not "no
//!   route to host" outside a connect error, as Linux reports it for a peer that went away
//!   while the answer was awaited too: see [`was_not_sent`]), or an HTTP/2 stream the server
//!   refused (`RST_STREAM` with `REFUSED_STREAM`, which RFC 9113 section 8.7 says was not
//!   processed; reqwest retries it a few times by itself, at once, and the policy after that,
//!   with its backoff). A timeout once connected, a 502 or 504, a reset connection, or a stream
//!   reset for another reason may come after the upstream acted, so sending again could act
//!   twice; so may a GOAWAY, whose error does not tell whether the request's stream was past
//!   the last one the server took. A refusal counts only as the answer to the request itself: a
//!   429, 408 or 503 that a reqwest client got after following a redirect (its URL is not the
//!   request's) answers another request, the `GET` of a `303 See Other` the upstream may have
//!   sent once it acted on a `POST` (one that redirects back to the request's own URL cannot be
//!   told). A layer between the policy and the client that rewrites the URL (adds an API key
//!   to the query) reads the same way: put such layers above the policy.
//!   So does one that follows redirects for a client of `http` types (tower-http's
//!   `FollowRedirectLayer`): the policy cannot tell its answers from the request's, but above
//!   the policy each hop is a request of its own, the `GET` of a `303` retried as a `GET`.
//!   An error hides which hop failed, though: a refused connection to the host a redirect
//!   points to is read as the request never sent, and the request is sent again. For such
//!   calls, build the client with redirects off (reqwest's `redirect::Policy::none()`) or send
//!   an `Idempotency-Key` the upstream honours.
//!
//!   An upstream may answer 408 or 503 after it began to act, though: tower-http's
//!   `TimeoutLayer` answers 408 when a handler runs too long, whatever the handler did by then,
//!   and so does this crate's `WebhookErrorLayer` with `timeout_status(408)` over a
//!   `tower::timeout`. A `POST` to such an upstream is sent again, and may act twice: send it
//!   with an `Idempotency-Key` the upstream honours, or leave that status out with
//!   [`RetryPolicy::no_retry_on_status`].
//! - **gRPC**: a "trailers-only" answer (HTTP 200 with `grpc-status` in the headers) and a
//!   `tonic::Status` error the upstream answered (one with no transport error as its source)
//!   are read by their code, as the HTTP status of the same meaning: `UNAVAILABLE` as 503,
//!   `DEADLINE_EXCEEDED` as 504, `RESOURCE_EXHAUSTED` as 429 are retried; `NOT_FOUND`,
//!   `PERMISSION_DENIED`, `INVALID_ARGUMENT`, `INTERNAL` and the other verdicts are not. A gRPC
//!   call is a `POST`, so it is retried only when marked safe to repeat ([`RetryAllowed`],
//!   `Idempotency-Key`) or when it was never sent (a refused connection, a connect timeout, a
//!   refused HTTP/2 stream: tonic's `UNAVAILABLE` keeps the transport error as its source). A
//!   `grpc-status` sent in the trailers, after a response body, is not seen by the policy. A
//!   server's `grpc-retry-pushback-ms` (gRPC's `Retry-After`) is honored like `Retry-After`,
//!   and a negative or unreadable one, which asks the client not to retry, stops the retries.
//! - **A reqwest error made from an answer** (`Response::error_for_status`) is read by its
//!   status, as the response would be: a 404 is not retried, a 429 or 408 is retried whatever
//!   the method. Its headers are gone, so a 503 counts as one without `Retry-After`.
//! - **Backoff**: exponential with full jitter (a random delay between 0 and
//!   `min(cap, base * 2^attempt)`), so clients that failed together do not retry together. A
//!   wait the upstream names (`Retry-After`, a rate limit's reset, `grpc-retry-pushback-ms`)
//!   is kept exactly, without jitter: clients told the same date retry in the same second.
//! - **`Retry-After`**: when the response carries one (seconds or an HTTP date), the policy
//!   waits exactly that long, and gives up if it is longer than
//!   [`max_retry_after`](RetryPolicy::max_retry_after). A date is the server's clock: it is
//!   read against the response's `Date` (RFC 9110 reads it relative to the message's
//!   origination), so a server whose clock is off ours still gets the wait it asked for; only
//!   without a valid `Date` is it read against the local clock. A wait of zero (`0`, or a date
//!   already past) keeps the backoff. [`retry_after`] reads the header the same way for your
//!   own code.
//! - **A spent rate limit**: a response that says its quota is spent (`X-RateLimit-Remaining:
//!   0`, as GitHub's primary rate limit answers a 429, or GitLab's `RateLimit-Remaining: 0`)
//!   and names no wait in `Retry-After` is waited out until its reset (`X-RateLimit-Reset`,
//!   `RateLimit-Reset`: UTC epoch seconds, read against the response's `Date` like an HTTP
//!   date), and given up at once when that is longer than `max_retry_after`: sent again within
//!   the backoff, it would only meet the same limit (GitHub asks clients not to, and may ban
//!   one that keeps trying). A reset that is unreadable or not after the response's `Date`
//!   keeps the backoff.
//! - **Budget**: a shared [`TpsBudget`] caps retries to a share of the traffic, so retries do
//!   not multiply the load on an upstream that is already struggling. A retry is charged when
//!   it is decided, before its backoff: one whose wait is cut short (the call dropped, an outer
//!   timeout) or that a circuit breaker inside then refuses still counts against the budget.
//! - **Never a circuit-open rejection**: an error carrying
//!   `CircuitOpen` (the circuit breaker's refusal, feature `circuit-breaker`) is returned at once,
//!   and so is the 503 a `WebhookErrorLayer` below the policy answers for it (recognised by the
//!   `circuit-open` problem in its extensions, not read as a 503 with `Retry-After`), and an
//!   error the same request meets again (a reqwest builder error such as a URL scheme reqwest
//!   does not send, or a redirect loop; hyper-util's legacy client refusing a URI that is not
//!   absolute, or `CONNECT` over HTTP/1.0).
//! - **Attempts, not time**: at most [`max_retries`](RetryPolicy::max_retries) retries per
//!   call, each wait at most `cap` or `max_retry_after`; the policy sets no deadline for the
//!   whole call. For one, put `tower::timeout::TimeoutLayer` outside the retry layer; give each
//!   attempt its own deadline too (the client's timeout, or a `TimeoutLayer` inside the retry
//!   layer and a circuit breaker): a call cut from outside is dropped, not counted as failed.
//!
//! # With a circuit breaker
//!
//! Both orders work; they mean different things:
//!
//! - `retry` outside `breaker` (`ServiceBuilder::new().layer(retry).layer(breaker)`): every
//!   attempt is an outcome for the breaker, and once it opens, the next attempt fails fast
//!   with `CircuitOpen`, which is not retried. This is the usual order for an outbound client.
//!   With a breaker in backpressure mode (`with_backpressure`), though, the next attempt does
//!   not fail: it waits in the breaker's `poll_ready` until the open period ends (30 s by
//!   default, longer with a backoff or an honoured `Retry-After`), then goes as the half-open
//!   probe. Bound the whole call with a timeout outside the policy, or keep backpressure for
//!   callers that mean to wait.
//! - `breaker` outside `retry`: the breaker sees one outcome per logical call, after retries;
//!   it opens only when calls keep failing despite retries.
//!
//! # Services it wraps
//!
//! The inner service's errors must be a [`RetryError`]: `BoxError`, `Infallible` (a service
//! under `WebhookErrorLayer`, whose 500 for an error it does not recognise is retried as that
//! error: see [`ErrorFacts`]), `tonic::Status` (feature `tonic`) or a reqwest error (features
//! `reqwest`, `reqwest-0-12`). Map the errors of another client into a `BoxError` first: for
//! hyper-util's legacy `Client` or a tonic `Channel`, `.map_err(BoxError::from)` (tower's
//! `MapErrLayer`) between the policy and the client keeps their source chains, which the
//! policy reads. The waits between attempts are tokio timers: run the policy on a tokio
//! runtime with its time driver enabled (`enable_time`, or `enable_all`), or the first retry
//! panics.
//!
//! The request body must be `Clone` (`Full<Bytes>`, `String`, ...) to be sent again; with
//! the `reqwest` feature `reqwest::Request` works too (through `try_clone`; reqwest 0.13, or 0.12
//! with the `reqwest-0-12` feature). A `reqwest::Request`
//! with a streaming body cannot be copied: it is sent once and never retried, whatever the
//! failure.
//!
//! # Example
//!
//! ```
//! use std::sync::{Arc, atomic::{AtomicU32, Ordering}};
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tower::{BoxError, ServiceBuilder, ServiceExt};
//! use tower_webhook::retry::RetryPolicy;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let calls = Arc::new(AtomicU32::new(0));
//! let seen = calls.clone();
//! let svc = ServiceBuilder::new()
//!     .layer(RetryPolicy::new().max_retries(3).backoff(Duration::from_millis(50), Duration::from_secs(1)).into_layer())
//!     .service_fn(move |_: Request<Full<Bytes>>| {
//!         let n = seen.fetch_add(1, Ordering::SeqCst);
//!         async move {
//!             let mut res = Response::new(Full::<Bytes>::default());
//!             if n < 2 { *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE; }
//!             Ok::<_, BoxError>(res)
//!         }
//!     });
//! let res = svc.oneshot(Request::get("/").body(Full::default()).unwrap()).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! assert_eq!(calls.load(Ordering::SeqCst), 3);
//! # }
//! ```

use crate::retry_after::{Pushback, grpc_pushback, or_rate_limit_reset};
use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};
use tokio::time::Sleep;
use tower::retry::Policy;
use tower::retry::budget::{Budget, TpsBudget};

use crate::BoxError;

/// A budget of retries for [`RetryPolicy::budget`]: tower's `TpsBudget`, which lets retries be
/// at most a share of the calls made, over a window, plus a few a second.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tower::retry::budget::Budget;
/// use tower_webhook::retry::RetryBudget;
///
/// // Over 10 s, one retry for every five calls, and none besides.
/// let budget = Arc::new(RetryBudget::new(Duration::from_secs(10), 0, 0.2));
/// for _ in 0..5 {
///     budget.deposit(); // a call made
/// }
/// assert!(budget.withdraw()); // a retry
/// assert!(!budget.withdraw()); // the budget is spent
/// ```
pub use tower::retry::budget::TpsBudget as RetryBudget;

/// The wait a response's `Retry-After` header asks for, as the policy reads it: delta-seconds
/// or an HTTP date (RFC 9110, section 10.2.3). A date is on the server's clock, so it is read
/// against the same headers' `Date` (the first one) when that is a valid HTTP date from 1970
/// on, and against the local clock ([`SystemTime::now`](std::time::SystemTime::now)) only
/// without one. A date in the past is no wait; delta-seconds too large for a `u64` are
/// [`Duration::MAX`]. `None` when the header is missing or unreadable.
///
/// Use it to honour a `Retry-After` the policy gave up on or was not asked to retry (a 403
/// rate limit, a wait longer than [`RetryPolicy::max_retry_after`]).
///
/// # Example
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use http::HeaderMap;
/// use tower_webhook::retry::retry_after;
///
/// let mut headers = HeaderMap::new();
/// assert_eq!(retry_after(&headers), None);
/// headers.insert("retry-after", "120".parse().unwrap());
/// assert_eq!(retry_after(&headers), Some(Duration::from_secs(120)));
///
/// let at = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(90));
/// headers.insert("retry-after", at.parse().unwrap());
/// let wait = retry_after(&headers).unwrap();
/// assert!(wait > Duration::from_secs(85) && wait <= Duration::from_secs(90));
///
/// headers.insert("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
/// assert_eq!(retry_after(&headers), Some(Duration::ZERO)); // in the past
///
/// // With the server's `Date`, a date is read on the server's clock, whatever ours says.
/// headers.insert("date", "Wed, 21 Oct 2015 07:27:30 GMT".parse().unwrap());
/// assert_eq!(retry_after(&headers), Some(Duration::from_secs(30)));
///
/// headers.insert("retry-after", "soon".parse().unwrap());
/// assert_eq!(retry_after(&headers), None);
/// ```
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    crate::retry_after::parse(headers)
}

/// Marks a request as safe to retry even though its method is not idempotent. Put it in the
/// request's extensions.
///
/// Only `http::Request` can carry it: `reqwest::Request` keeps its extensions private. For
/// those, send an `Idempotency-Key` header the upstream honours, or use
/// [`RetryPolicy::retry_non_idempotent`].
///
/// # Example
///
/// ```
/// use tower_webhook::retry::{RetryAllowed, RetryRequest};
///
/// let mut req = http::Request::post("/comments").body(String::new()).unwrap();
/// assert!(!req.is_idempotent());
/// req.extensions_mut().insert(RetryAllowed);
/// assert!(req.is_idempotent());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryAllowed;

/// A request the policy can inspect and send again.
///
/// # Example
///
/// ```
/// use tower_webhook::retry::RetryRequest;
///
/// let get = http::Request::get("/repos/octo/repo/pulls/1").body(String::new()).unwrap();
/// assert!(get.is_idempotent());
///
/// let mut post = http::Request::post("/repos/octo/repo/issues/1/comments")
///     .body(String::from(r#"{"body":"LGTM"}"#))
///     .unwrap();
/// assert!(!post.is_idempotent());
/// post.headers_mut().insert("idempotency-key", "comment-42".parse().unwrap());
/// assert!(post.is_idempotent());
/// assert_eq!(post.try_clone().unwrap().body(), r#"{"body":"LGTM"}"#);
/// ```
pub trait RetryRequest: Sized {
    /// Whether sending it twice has the effect of sending it once.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::retry::RetryRequest;
    ///
    /// let put = http::Request::put("/repos/octo/repo/topics").body(String::new()).unwrap();
    /// assert!(put.is_idempotent());
    /// let post = http::Request::post("/repos/octo/repo/issues/1/comments").body(String::new()).unwrap();
    /// assert!(!post.is_idempotent());
    /// ```
    fn is_idempotent(&self) -> bool;
    /// A copy to send again, if the body can be copied.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::retry::RetryRequest;
    ///
    /// let req = http::Request::post("/repos/octo/repo/issues/1/comments")
    ///     .header("idempotency-key", "comment-42")
    ///     .body(String::from(r#"{"body":"LGTM"}"#))
    ///     .unwrap();
    /// let copy = req.try_clone().unwrap();
    /// assert_eq!((copy.method(), copy.uri()), (req.method(), req.uri()));
    /// assert_eq!(copy.headers()["idempotency-key"], "comment-42");
    /// assert_eq!(copy.body(), req.body());
    /// ```
    fn try_clone(&self) -> Option<Self>;
    /// The URL it is sent to, when the request knows it (`reqwest::Request` does): told apart
    /// from [`RetryResponse::url`], it shows an answer a client gave after following a
    /// redirect. `None` (the default) when unknown.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::retry::RetryRequest;
    ///
    /// let req = http::Request::get("/repos/octo/repo").body(String::new()).unwrap();
    /// assert_eq!(RetryRequest::url(&req), None);
    /// ```
    fn url(&self) -> Option<&str> {
        None
    }
}

fn idempotent(method: &Method, headers: &HeaderMap) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    ) || headers
        .get_all("idempotency-key")
        .iter()
        .any(|key| !key.as_bytes().trim_ascii().is_empty())
}

impl<B: Clone> RetryRequest for http::Request<B> {
    fn is_idempotent(&self) -> bool {
        idempotent(self.method(), self.headers())
            || self.extensions().get::<RetryAllowed>().is_some()
    }

    fn try_clone(&self) -> Option<Self> {
        let mut req = http::Request::new(self.body().clone());
        *req.method_mut() = self.method().clone();
        *req.uri_mut() = self.uri().clone();
        *req.version_mut() = self.version();
        *req.headers_mut() = self.headers().clone();
        *req.extensions_mut() = self.extensions().clone();
        Some(req)
    }
}

/// A response the policy can inspect.
///
/// # Example
///
/// ```
/// use http::StatusCode;
/// use tower_webhook::retry::RetryResponse;
///
/// fn retry_after<R: RetryResponse>(res: &R) -> Option<&str> {
///     match res.status() {
///         StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
///             res.headers().get("retry-after")?.to_str().ok()
///         }
///         _ => None,
///     }
/// }
///
/// let res = http::Response::builder().status(429).header("retry-after", "10").body(()).unwrap();
/// assert_eq!(retry_after(&res), Some("10"));
/// assert_eq!(retry_after(&http::Response::new(())), None);
/// ```
pub trait RetryResponse {
    /// The status.
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_webhook::retry::RetryResponse;
    ///
    /// let res = http::Response::builder().status(503).body(()).unwrap();
    /// assert_eq!(RetryResponse::status(&res), StatusCode::SERVICE_UNAVAILABLE);
    /// ```
    fn status(&self) -> StatusCode;
    /// The headers (for `Retry-After`).
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::retry::{RetryResponse, retry_after};
    ///
    /// let res = http::Response::builder().status(429).header("retry-after", "10").body(()).unwrap();
    /// assert_eq!(retry_after(RetryResponse::headers(&res)), Some(Duration::from_secs(10)));
    /// ```
    fn headers(&self) -> &HeaderMap;
    /// The URL of the request it answers, when the response knows it (`reqwest::Response`
    /// does: after a redirect, the last one's). An answer to another URL than the request's
    /// is never read as a refusal of the request. `None` (the default) when unknown.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::retry::RetryResponse;
    ///
    /// assert_eq!(RetryResponse::url(&http::Response::new(())), None);
    /// ```
    fn url(&self) -> Option<&str> {
        None
    }
    /// Whether the response is a circuit breaker's refusal, answered by a layer below the
    /// policy (`WebhookErrorLayer` turns a `CircuitOpen` into a 503 carrying the
    /// `circuit-open` `Problem` in its extensions, feature `error`).
    /// Such a response is never retried, as the rejection itself is not. `false` (the
    /// default) when unknown.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::retry::RetryResponse;
    ///
    /// let res = http::Response::builder().status(503).header("retry-after", "30").body(()).unwrap();
    /// assert!(!RetryResponse::is_circuit_open(&res));
    /// ```
    fn is_circuit_open(&self) -> bool {
        false
    }
    /// What a layer below the policy that answers its errors (`WebhookErrorLayer`, feature
    /// `error`) kept of the error this response answers, if it kept anything: the policy then
    /// decides as it would for the error, not by the response's status (a refused connection
    /// answered as a 500 is retried as the refused connection would be). `None` (the default)
    /// when unknown.
    ///
    /// # Example
    ///
    /// ```
    /// use std::io;
    /// use tower_webhook::retry::{ErrorFacts, RetryResponse};
    ///
    /// let mut res = http::Response::builder().status(500).body(()).unwrap();
    /// assert!(RetryResponse::answered_error(&res).is_none());
    /// let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
    /// res.extensions_mut().insert(ErrorFacts::new(&refused));
    /// assert!(RetryResponse::answered_error(&res).is_some_and(ErrorFacts::was_not_sent));
    /// ```
    fn answered_error(&self) -> Option<&ErrorFacts> {
        None
    }
}

/// What the policy reads of an error that a layer below it answered, kept in the answer's
/// extensions, for the answers whose status says less than the error did.
///
/// `WebhookErrorLayer` (with feature `retry`) keeps one for each error it does not recognise
/// (answered 500: a refused connection, a reset one) and each that shows the request was never
/// sent (a load shedder's `Overloaded`, answered 503 without `Retry-After`), so that a
/// [`RetryPolicy`] above it retries those as the errors they were. An error the layer answers
/// with a status of its own (a `Problem`, an `HttpError`, a timeout's 504) keeps none: its
/// answer is read by its status and `Retry-After`, as the error's type asked. A layer of your
/// own that answers errors can keep one the same way.
///
/// Its `Debug` shows what the policy reads, not the error (whose text may name a URL with
/// credentials).
///
/// # Example
///
/// ```
/// use std::io;
/// use tower_webhook::retry::ErrorFacts;
///
/// let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
/// assert!(ErrorFacts::new(&refused).was_not_sent());
/// let reset = io::Error::from(io::ErrorKind::ConnectionReset);
/// assert!(!ErrorFacts::new(&reset).was_not_sent());
/// ```
#[derive(Clone)]
pub struct ErrorFacts(Facts);

/// What the policy reads of an error.
#[derive(Clone)]
enum Facts {
    /// Never retried: a circuit-open rejection, or an error the same request meets again.
    Final,
    /// A reqwest error made from an answer: its status, and the URL that answered.
    Answered(StatusCode, Option<Box<str>>),
    /// Another failure: the gRPC status the upstream answered, if it is one, and whether the
    /// request was never sent.
    Failed(Option<(u16, Pushback)>, bool),
}

impl ErrorFacts {
    /// What the policy reads of `err`, kept.
    ///
    /// # Example
    ///
    /// ```
    /// use tower::load_shed::error::Overloaded;
    /// use tower_webhook::retry::ErrorFacts;
    ///
    /// // A load shedder turns a request away before it is sent.
    /// assert!(ErrorFacts::new(&Overloaded::new()).was_not_sent());
    /// ```
    pub fn new(err: &(dyn Error + 'static)) -> Self {
        if is_circuit_open(err) || fails_again(err) {
            return Self(Facts::Final);
        }
        if let Some((status, answered)) = chain(err).find_map(reqwest_status) {
            return Self(Facts::Answered(status, answered.map(Box::from)));
        }
        Self(Facts::Failed(answered_grpc_status(err), was_not_sent(err)))
    }

    /// Whether the error showed that the request was never sent (see [`was_not_sent`]).
    ///
    /// # Example
    ///
    /// ```
    /// use std::io;
    /// use tower_webhook::retry::ErrorFacts;
    ///
    /// let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
    /// assert!(ErrorFacts::new(&refused).was_not_sent());
    /// ```
    pub fn was_not_sent(&self) -> bool {
        matches!(self.0, Facts::Failed(_, true))
    }
}

impl fmt::Debug for ErrorFacts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("ErrorFacts");
        match &self.0 {
            Facts::Final => debug.field("retried", &false),
            Facts::Answered(status, _) => debug.field("answered", &status.as_u16()),
            Facts::Failed(grpc, not_sent) => debug
                .field("grpc_status", &grpc.map(|(code, _)| code))
                .field("was_not_sent", not_sent),
        }
        .finish()
    }
}

impl<B> RetryResponse for http::Response<B> {
    fn status(&self) -> StatusCode {
        http::Response::status(self)
    }
    fn headers(&self) -> &HeaderMap {
        http::Response::headers(self)
    }
    fn is_circuit_open(&self) -> bool {
        #[cfg(feature = "error")]
        if let Some(problem) = self.extensions().get::<crate::error::Problem>() {
            return problem.problem_type() == crate::error::types::CIRCUIT_OPEN;
        }
        false
    }
    fn answered_error(&self) -> Option<&ErrorFacts> {
        self.extensions().get()
    }
}

/// An error the policy can inspect: a circuit-open rejection, an error raised before the request
/// was sent, an HTTP/2 stream the server refused, a gRPC status the upstream answered, a reqwest
/// error made from an answer.
///
/// # Example
///
/// ```
/// use std::io;
/// use tower::BoxError;
/// use tower_webhook::retry::RetryError;
///
/// let err: BoxError = io::Error::from(io::ErrorKind::ConnectionRefused).into();
/// let io_err = err.as_error().downcast_ref::<io::Error>().unwrap();
/// assert_eq!(io_err.kind(), io::ErrorKind::ConnectionRefused);
/// ```
pub trait RetryError {
    /// The error, as a standard error.
    ///
    /// # Example
    ///
    /// ```
    /// use tower::BoxError;
    /// use tower_webhook::retry::RetryError;
    ///
    /// let err: BoxError = "upstream reset the stream".into();
    /// assert_eq!(err.as_error().to_string(), "upstream reset the stream");
    /// assert!(err.as_error().source().is_none());
    /// ```
    fn as_error(&self) -> &(dyn Error + 'static);
}

impl RetryError for BoxError {
    fn as_error(&self) -> &(dyn Error + 'static) {
        &**self
    }
}

/// The error of a service that never fails, such as one under `WebhookErrorLayer`, which
/// answers its errors: the policy reads its responses, and an error the layer did not recognise
/// as that error (see [`ErrorFacts`]).
impl RetryError for std::convert::Infallible {
    fn as_error(&self) -> &(dyn Error + 'static) {
        match *self {}
    }
}

/// The policy's traits for one reqwest version's request, response and error.
#[cfg(any(feature = "reqwest", feature = "reqwest-0-12"))]
macro_rules! reqwest_impls {
    ($reqwest:ident) => {
        impl RetryRequest for $reqwest::Request {
            fn is_idempotent(&self) -> bool {
                idempotent(self.method(), self.headers())
            }

            fn try_clone(&self) -> Option<Self> {
                $reqwest::Request::try_clone(self)
            }

            fn url(&self) -> Option<&str> {
                Some($reqwest::Request::url(self).as_str())
            }
        }

        impl RetryResponse for $reqwest::Response {
            fn status(&self) -> StatusCode {
                $reqwest::Response::status(self)
            }
            fn headers(&self) -> &HeaderMap {
                $reqwest::Response::headers(self)
            }
            fn url(&self) -> Option<&str> {
                Some($reqwest::Response::url(self).as_str())
            }
        }

        impl RetryError for $reqwest::Error {
            fn as_error(&self) -> &(dyn Error + 'static) {
                self
            }
        }
    };
}

#[cfg(feature = "reqwest")]
reqwest_impls!(reqwest);
#[cfg(feature = "reqwest-0-12")]
reqwest_impls!(reqwest_0_12);

/// Whether `err` is a reqwest error (of either supported version) for which `test` holds.
#[allow(unused_variables)]
fn reqwest_error(err: &(dyn Error + 'static), test: ReqwestTest) -> bool {
    #[allow(unused_macros)]
    macro_rules! check {
        ($reqwest:ident) => {
            if let Some(err) = err.downcast_ref::<$reqwest::Error>() {
                return match test {
                    ReqwestTest::Connect => err.is_connect(),
                    ReqwestTest::FailsAgain => err.is_builder() || err.is_redirect(),
                };
            }
        };
    }
    #[cfg(feature = "reqwest")]
    check!(reqwest);
    #[cfg(feature = "reqwest-0-12")]
    check!(reqwest_0_12);
    false
}

/// The status of the answer `err` was made from, and the URL that answer came from, when it is
/// a reqwest error (of either supported version) from `Response::error_for_status`.
#[allow(unused_variables)]
fn reqwest_status<'a>(err: &'a (dyn Error + 'static)) -> Option<(StatusCode, Option<&'a str>)> {
    #[allow(unused_macros)]
    macro_rules! check {
        ($reqwest:ident) => {
            if let Some(err) = err.downcast_ref::<$reqwest::Error>() {
                return err
                    .status()
                    .map(|status| (status, err.url().map(|url| url.as_str())));
            }
        };
    }
    #[cfg(feature = "reqwest")]
    check!(reqwest);
    #[cfg(feature = "reqwest-0-12")]
    check!(reqwest_0_12);
    None
}

/// Whether an answer from `answered` is one to another request than the one sent to `sent`:
/// the client followed a redirect. Unknown URLs are the request's. A fragment is never sent
/// (reqwest's answers have none): URLs that differ only by theirs name the same request.
fn redirected(sent: Option<&str>, answered: Option<&str>) -> bool {
    matches!((sent, answered), (Some(sent), Some(answered)) if target(sent) != target(answered))
}

/// `url` without its fragment.
fn target(url: &str) -> &str {
    url.split_once('#').map_or(url, |(target, _)| target)
}

/// What [`reqwest_error`] looks for.
#[derive(Clone, Copy)]
#[cfg_attr(
    not(any(feature = "reqwest", feature = "reqwest-0-12")),
    allow(dead_code)
)]
enum ReqwestTest {
    /// A connect error: nothing was sent.
    Connect,
    /// A builder error or a redirect loop: the same request fails the same way again.
    FailsAgain,
}

#[cfg(feature = "tonic")]
impl RetryError for tonic::Status {
    fn as_error(&self) -> &(dyn Error + 'static) {
        self
    }
}

/// `err` and the errors it is made of, outermost first, each once and not past a bound (a
/// broken `Error` impl can make the chain a cycle), an `io::Error` made from another error
/// (`io::Error::other`) followed by that error, whose type its `source()` would hide.
fn chain<'a>(err: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    crate::error_chain::links(err)
}

/// Whether `err`, an outbound call's error, says that the request never left: nothing reached
/// the upstream, so sending it again, a `POST` included, cannot make it act twice.
///
/// This is the test [`RetryPolicy`] applies to a request it may not repeat otherwise, for code
/// that keeps its own queue of calls to make again later (a bot's comment, scheduled again when
/// the provider's API cannot be reached). Anywhere in the error's source chain:
///
/// - a connect error: reqwest's (`is_connect`), hyper-util's legacy client's, tonic's
///   `ConnectError` (with the `tonic` feature), whatever its cause (a connect timeout, a failed
///   TLS handshake, a name that does not resolve);
/// - an I/O error only a connection attempt fails with (refused, no local address), unless an
///   error of hyper's wraps it: hyper never opens connections, so such an error came on one
///   that was open, where the request may have been written. "No route to the host or network"
///   counts only under a connect error: Linux also fails the read of a connection whose host
///   went away with it, and a wrapper whose `source()` skips the error it wraps (anyhow's,
///   thiserror's `transparent`) can hide the hyper error that would tell. Linux reports
///   "refused" for an open connection in one case: one that timed out in the kernel (no
///   answer to its retransmissions, for minutes) after an ICMP port-unreachable, a host that
///   restarted behind a firewall that rejects. Under such a wrapper, and with no timeout of
///   the client's own to end the call first, that call counts as not sent;
/// - tower's `Overloaded`, and an HTTP/2 stream the server refused (`REFUSED_STREAM`, which
///   RFC 9113, section 8.7, says was not processed).
///
/// A timeout once connected, a reset connection or stream, or an answer may come after the
/// upstream acted: `false`.
///
/// # Example
///
/// ```
/// use std::io;
/// use tower_webhook::retry::was_not_sent;
///
/// #[derive(Debug)]
/// struct ApiError(io::Error);
/// impl std::fmt::Display for ApiError {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str("could not post the comment")
///     }
/// }
/// impl std::error::Error for ApiError {
///     fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
///         Some(&self.0)
///     }
/// }
///
/// // Nothing listened: the comment can be posted again later.
/// assert!(was_not_sent(&ApiError(io::ErrorKind::ConnectionRefused.into())));
/// // The connection was lost once open: the provider may have posted it.
/// assert!(!was_not_sent(&ApiError(io::ErrorKind::ConnectionReset.into())));
/// ```
pub fn was_not_sent(err: &(dyn Error + 'static)) -> bool {
    // Set at an error of hyper's: hyper never opens a connection, so an I/O error it wraps came
    // on one that was open, where the request may have been written already.
    let mut on_open_connection = false;
    chain(err).any(|e| {
        if reqwest_error(e, ReqwestTest::Connect) || is_connect_error(e) {
            return true;
        }
        on_open_connection |= e.is::<hyper::Error>();
        // Kinds only a connection attempt fails with, before anything is written: a refused
        // connection (a reset is "refused" only in answer to a SYN), no local address to
        // connect from. Not "no route to the host or network": Linux fails the read of a
        // connection whose host went away with those too, and a wrapper whose `source()` skips
        // the error it wraps (anyhow's, thiserror's `transparent`) can hide the hyper error
        // that would tell. Under a connect error, above, they count.
        let refused = !on_open_connection
            && e.downcast_ref::<std::io::Error>().is_some_and(|err| {
                matches!(
                    err.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
                )
            });
        refused || e.is::<tower::load_shed::error::Overloaded>() || is_refused_stream(e)
    })
}

/// What an error of hyper-util's legacy client says when it is of the `Connect` kind (its
/// `Display`: "client error", then the kind's `Debug`).
const CLIENT_CONNECT_ERROR: &str = "client error (Connect)";

/// Whether `e` says that no connection was had for the request, whatever the cause below it (a
/// refused connection, a connect timeout, a failed TLS handshake, a DNS failure): hyper-util's
/// legacy client's `Connect` error (its connector failed, or the pooled connection it waited
/// for was closed before the request was written to it), or, with the `tonic` feature, tonic's
/// `ConnectError`, which wraps its channel's connector's failures. hyper-util's is told by its
/// message, so that no hyper-util dependency is needed; a message worded otherwise is not read
/// as one, and the request is then judged by what lies below it.
fn is_connect_error(e: &(dyn Error + 'static)) -> bool {
    #[cfg(feature = "tonic")]
    if e.is::<tonic::ConnectError>() {
        return true;
    }
    // The legacy client's connect errors always carry their cause.
    e.source().is_some() && displays_as(e, CLIENT_CONNECT_ERROR)
}

/// What the `h2` crate's error says of a stream the peer reset with `REFUSED_STREAM` (its
/// `Display`: "received" is a reset the peer sent, unlike one h2 detected or the user sent,
/// then the reason's description).
const REFUSED_STREAM: &str =
    "stream error received: refused stream before processing any application logic";

/// Whether `e` is the HTTP/2 error of a stream the server reset with `REFUSED_STREAM`, which
/// RFC 9113 (section 8.7) says was not processed: the `h2` crate's error, found in the source
/// chain of reqwest's, hyper's and tonic's errors. It is told by its message, which no other
/// error has, so that no `h2` dependency is needed; a message h2 would word otherwise is not
/// read as a refusal, and the request is not sent again. A GOAWAY is not read as one: hyper
/// can give the connection's GOAWAY error to a request whose stream the server had taken.
fn is_refused_stream(e: &(dyn Error + 'static)) -> bool {
    // h2's stream errors have no source; one with a source is another error.
    e.source().is_none() && displays_as(e, REFUSED_STREAM)
}

/// Whether the `Display` of `e` is exactly `expected`, checked without allocating.
fn displays_as(e: &(dyn Error + 'static), expected: &str) -> bool {
    let mut matcher = Matches::new(expected);
    fmt::write(&mut matcher, format_args!("{e}")).is_ok() && matcher.rest == Some("")
}

/// A `fmt::Write` that checks, without allocating, that what is written is `expected`:
/// `rest` is what is still expected, `None` once the output differs.
struct Matches<'a> {
    rest: Option<&'a str>,
}

impl<'a> Matches<'a> {
    fn new(expected: &'a str) -> Self {
        Self {
            rest: Some(expected),
        }
    }
}

impl fmt::Write for Matches<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        match self.rest.and_then(|rest| rest.strip_prefix(s)) {
            Some(rest) => {
                self.rest = Some(rest);
                Ok(())
            }
            None => {
                self.rest = None;
                // Stop formatting: the message is not the one looked for.
                Err(fmt::Error)
            }
        }
    }
}

/// The `grpc-status` of a gRPC "trailers-only" answer (HTTP 200, the status in the headers).
fn trailers_only_grpc_status(status: StatusCode, headers: &HeaderMap) -> Option<u16> {
    if status != StatusCode::OK {
        return None;
    }
    let value = headers.get("grpc-status")?;
    // An unreadable code is `Unknown`, as gRPC clients read it.
    Some(
        value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(2),
    )
}

/// The gRPC code and pushback of a status the upstream answered, when `err` carries one: a
/// `tonic::Status` with no source. One with a source was made from a transport error, which
/// says more.
#[cfg(feature = "tonic")]
fn answered_grpc_status(err: &(dyn Error + 'static)) -> Option<(u16, Pushback)> {
    chain(err)
        .filter_map(|e| e.downcast_ref::<tonic::Status>())
        .find(|status| status.source().is_none())
        .map(|status| {
            (
                status.code() as u16,
                grpc_pushback(status.metadata().as_ref()),
            )
        })
}

#[cfg(not(feature = "tonic"))]
fn answered_grpc_status(_: &(dyn Error + 'static)) -> Option<(u16, Pushback)> {
    None
}

/// Whether `status` says, whatever the headers, that the request it answers was not acted on:
/// 429 (a rate limit turns a request away before it is processed) and 408 (the server gave up
/// before it had the whole request; RFC 9110, section 15.5.9, lets the client repeat it).
fn refuses(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::REQUEST_TIMEOUT
}

/// Whether `err` is one the same request meets again whatever the wait: reqwest refusing to
/// build or send it (a bad URL scheme), a redirect loop, or hyper-util's legacy client refusing
/// to send it (see [`CLIENT_REFUSALS`]).
fn fails_again(err: &(dyn Error + 'static)) -> bool {
    chain(err).any(|e| {
        reqwest_error(e, ReqwestTest::FailsAgain)
            || (e.source().is_none() && CLIENT_REFUSALS.iter().any(|m| displays_as(e, m)))
    })
}

/// What hyper-util's legacy client's errors say (and hyper-util has no other with these words)
/// when it refuses a request as it is, before any connection: a URI that is not absolute (a
/// path alone), or `CONNECT` over HTTP/1.0. They are told by message, as its connect error is
/// ([`CLIENT_CONNECT_ERROR`]).
const CLIENT_REFUSALS: [&str; 2] = [
    "client error (UserAbsoluteUriRequired)",
    "client error (UserUnsupportedRequestMethod)",
];

fn is_circuit_open(err: &(dyn Error + 'static)) -> bool {
    chain(err).any(|e| {
        #[cfg(feature = "circuit-breaker")]
        if e.is::<crate::circuit_breaker::CircuitOpen>() {
            return true;
        }
        #[cfg(feature = "error")]
        if e.downcast_ref::<crate::error::Problem>()
            .is_some_and(|problem| problem.problem_type() == crate::error::types::CIRCUIT_OPEN)
        {
            return true;
        }
        let _ = e; // with neither feature, nothing to look for
        false
    })
}

/// A [`tower::retry::Policy`] with exponential backoff, full jitter, a cap, a retry budget and
/// `Retry-After`. Non-idempotent requests are sent again only when the upstream did not act on
/// them. See the [module docs](self).
///
/// Tower clones the policy for every request; the budget is shared by all clones.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_webhook::retry::RetryPolicy;
///
/// let policy = RetryPolicy::new()
///     .max_retries(4)
///     .backoff(Duration::from_millis(100), Duration::from_secs(5))
///     .max_retry_after(Duration::from_secs(30));
/// assert_eq!(policy.max_delay(2), Duration::from_millis(400));
/// let layer = policy.into_layer();
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct RetryPolicy {
    max_retries: u32,
    base: Duration,
    cap: Duration,
    max_retry_after: Duration,
    statuses: [u64; 4],
    any_method: bool,
    budget: Option<Arc<TpsBudget>>,
    attempt: u32,
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_retries", &self.max_retries)
            .field("base", &self.base)
            .field("cap", &self.cap)
            .field("max_retry_after", &self.max_retry_after)
            .field("any_method", &self.any_method)
            .field("budget", &self.budget.is_some())
            .field("attempt", &self.attempt)
            .finish()
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryPolicy {
    /// 3 retries, backoff from 100 ms capped at 10 s, `Retry-After` up to 60 s, statuses 408,
    /// 429, 502, 503, 504, a budget of 10 retries a second plus 20 % of the calls (tower's
    /// `TpsBudget` over 10 s: a reserve of 100 retries, which a burst of failures may spend at
    /// once).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::retry::RetryPolicy;
    ///
    /// # use std::sync::atomic::{AtomicU32, Ordering};
    /// # use http::{Request, Response};
    /// # use tower::{BoxError, ServiceBuilder, ServiceExt};
    /// # /// Sends one `method` request to an upstream that always answers `status`; returns the calls.
    /// # async fn attempts(policy: RetryPolicy, method: &str, status: u16) -> u32 {
    /// #     let calls = std::sync::Arc::new(AtomicU32::new(0));
    /// #     let seen = calls.clone();
    /// #     let svc = ServiceBuilder::new().layer(policy.into_layer()).service_fn(move |_: Request<String>| {
    /// #         seen.fetch_add(1, Ordering::SeqCst);
    /// #         async move { Ok::<_, BoxError>(Response::builder().status(status).body(()).unwrap()) }
    /// #     });
    /// #     let req = Request::builder().method(method).uri("/repos/octo/repo").body(String::new()).unwrap();
    /// #     svc.oneshot(req).await.unwrap();
    /// #     calls.load(Ordering::SeqCst)
    /// # }
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let policy = RetryPolicy::new();
    /// assert_eq!(attempts(policy.clone(), "GET", 503).await, 4); // 3 retries
    /// assert_eq!(attempts(policy.clone(), "GET", 500).await, 1); // not a transient status
    /// assert_eq!(attempts(policy, "POST", 502).await, 1); // the upstream may have acted
    /// # }
    /// ```
    pub fn new() -> Self {
        let mut policy = Self {
            max_retries: 3,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
            statuses: [0; 4],
            any_method: false,
            budget: Some(Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2))),
            attempt: 0,
        };
        for status in [408, 429, 502, 503, 504] {
            policy = policy.retry_on_status(StatusCode::from_u16(status).unwrap_or_default());
        }
        policy
    }

    /// At most `n` retries per call (so `n + 1` attempts).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::retry::RetryPolicy;
    ///
    /// # use std::sync::atomic::{AtomicU32, Ordering};
    /// # use http::{Request, Response};
    /// # use tower::{BoxError, ServiceBuilder, ServiceExt};
    /// # /// Sends one `method` request to an upstream that always answers `status`; returns the calls.
    /// # async fn attempts(policy: RetryPolicy, method: &str, status: u16) -> u32 {
    /// #     let calls = std::sync::Arc::new(AtomicU32::new(0));
    /// #     let seen = calls.clone();
    /// #     let svc = ServiceBuilder::new().layer(policy.into_layer()).service_fn(move |_: Request<String>| {
    /// #         seen.fetch_add(1, Ordering::SeqCst);
    /// #         async move { Ok::<_, BoxError>(Response::builder().status(status).body(()).unwrap()) }
    /// #     });
    /// #     let req = Request::builder().method(method).uri("/repos/octo/repo").body(String::new()).unwrap();
    /// #     svc.oneshot(req).await.unwrap();
    /// #     calls.load(Ordering::SeqCst)
    /// # }
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let policy = RetryPolicy::new().max_retries(1);
    /// assert_eq!(attempts(policy, "GET", 502).await, 2);
    /// # }
    /// ```
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// The delay before retry `k` (0-based) is random between 0 and `min(cap, base * 2^k)`.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::retry::RetryPolicy;
    ///
    /// let policy = RetryPolicy::new().backoff(Duration::from_millis(200), Duration::from_secs(1));
    /// assert_eq!(policy.max_delay(0), Duration::from_millis(200));
    /// assert_eq!(policy.max_delay(1), Duration::from_millis(400));
    /// assert_eq!(policy.max_delay(5), Duration::from_secs(1)); // capped
    /// ```
    pub fn backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.base = base;
        self.cap = cap;
        self
    }

    /// The longest upstream `Retry-After` (or rate-limit reset, see the [module docs](self))
    /// the policy waits for; longer ones end the retries.
    ///
    /// # Example
    ///
    /// ```
    /// use std::sync::{Arc, atomic::{AtomicU32, Ordering}};
    /// use std::time::Duration;
    /// use http::{Request, Response};
    /// use tower::{BoxError, ServiceBuilder, ServiceExt};
    /// use tower_webhook::retry::RetryPolicy;
    ///
    /// # /// Calls an upstream that answers 503 with `Retry-After: 120`; returns the calls.
    /// # async fn attempts(policy: RetryPolicy) -> u32 {
    /// #     let calls = Arc::new(AtomicU32::new(0));
    /// #     let seen = calls.clone();
    /// #     let svc = ServiceBuilder::new().layer(policy.into_layer()).service_fn(move |_: Request<String>| {
    /// #         seen.fetch_add(1, Ordering::SeqCst);
    /// #         let res = Response::builder().status(503).header("retry-after", "120").body(()).unwrap();
    /// #         async move { Ok::<_, BoxError>(res) }
    /// #     });
    /// #     svc.oneshot(Request::get("/").body(String::new()).unwrap()).await.unwrap();
    /// #     calls.load(Ordering::SeqCst)
    /// # }
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// // The upstream asks for 120 s.
    /// let patient = RetryPolicy::new().max_retries(1).max_retry_after(Duration::from_secs(300));
    /// assert_eq!(attempts(patient).await, 2); // waited 120 s, then tried again
    /// let impatient = RetryPolicy::new().max_retries(1).max_retry_after(Duration::from_secs(30));
    /// assert_eq!(attempts(impatient).await, 1); // gave up at once
    /// # }
    /// ```
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.max_retry_after = max;
        self
    }

    /// Also retries responses with `status` (only 400..=599 can be added).
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_webhook::retry::RetryPolicy;
    ///
    /// # use std::sync::atomic::{AtomicU32, Ordering};
    /// # use http::{Request, Response};
    /// # use tower::{BoxError, ServiceBuilder, ServiceExt};
    /// # /// Sends one `method` request to an upstream that always answers `status`; returns the calls.
    /// # async fn attempts(policy: RetryPolicy, method: &str, status: u16) -> u32 {
    /// #     let calls = std::sync::Arc::new(AtomicU32::new(0));
    /// #     let seen = calls.clone();
    /// #     let svc = ServiceBuilder::new().layer(policy.into_layer()).service_fn(move |_: Request<String>| {
    /// #         seen.fetch_add(1, Ordering::SeqCst);
    /// #         async move { Ok::<_, BoxError>(Response::builder().status(status).body(()).unwrap()) }
    /// #     });
    /// #     let req = Request::builder().method(method).uri("/repos/octo/repo").body(String::new()).unwrap();
    /// #     svc.oneshot(req).await.unwrap();
    /// #     calls.load(Ordering::SeqCst)
    /// # }
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// // An upstream that answers 409 while a previous write is still being applied.
    /// let policy = RetryPolicy::new().max_retries(2).retry_on_status(StatusCode::CONFLICT);
    /// assert_eq!(attempts(policy, "GET", 409).await, 3);
    /// assert_eq!(attempts(RetryPolicy::new(), "GET", 409).await, 1);
    /// # }
    /// ```
    pub fn retry_on_status(mut self, status: StatusCode) -> Self {
        if let Some(bit) = status.as_u16().checked_sub(400).filter(|b| *b < 200) {
            self.statuses[usize::from(bit / 64)] |= 1 << (bit % 64);
        }
        self
    }

    /// Does not retry responses with `status`.
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_webhook::retry::RetryPolicy;
    ///
    /// # use std::sync::atomic::{AtomicU32, Ordering};
    /// # use http::{Request, Response};
    /// # use tower::{BoxError, ServiceBuilder, ServiceExt};
    /// # /// Sends one `method` request to an upstream that always answers `status`; returns the calls.
    /// # async fn attempts(policy: RetryPolicy, method: &str, status: u16) -> u32 {
    /// #     let calls = std::sync::Arc::new(AtomicU32::new(0));
    /// #     let seen = calls.clone();
    /// #     let svc = ServiceBuilder::new().layer(policy.into_layer()).service_fn(move |_: Request<String>| {
    /// #         seen.fetch_add(1, Ordering::SeqCst);
    /// #         async move { Ok::<_, BoxError>(Response::builder().status(status).body(()).unwrap()) }
    /// #     });
    /// #     let req = Request::builder().method(method).uri("/repos/octo/repo").body(String::new()).unwrap();
    /// #     svc.oneshot(req).await.unwrap();
    /// #     calls.load(Ordering::SeqCst)
    /// # }
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let policy = RetryPolicy::new().no_retry_on_status(StatusCode::GATEWAY_TIMEOUT);
    /// assert_eq!(attempts(policy, "GET", 504).await, 1);
    /// # }
    /// ```
    pub fn no_retry_on_status(mut self, status: StatusCode) -> Self {
        if let Some(bit) = status.as_u16().checked_sub(400).filter(|b| *b < 200) {
            self.statuses[usize::from(bit / 64)] &= !(1 << (bit % 64));
        }
        self
    }

    /// Retries requests whatever their method (only when every request you send is safe to
    /// repeat).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::retry::RetryPolicy;
    ///
    /// # use std::sync::atomic::{AtomicU32, Ordering};
    /// # use http::{Request, Response};
    /// # use tower::{BoxError, ServiceBuilder, ServiceExt};
    /// # /// Sends one `method` request to an upstream that always answers `status`; returns the calls.
    /// # async fn attempts(policy: RetryPolicy, method: &str, status: u16) -> u32 {
    /// #     let calls = std::sync::Arc::new(AtomicU32::new(0));
    /// #     let seen = calls.clone();
    /// #     let svc = ServiceBuilder::new().layer(policy.into_layer()).service_fn(move |_: Request<String>| {
    /// #         seen.fetch_add(1, Ordering::SeqCst);
    /// #         async move { Ok::<_, BoxError>(Response::builder().status(status).body(()).unwrap()) }
    /// #     });
    /// #     let req = Request::builder().method(method).uri("/repos/octo/repo").body(String::new()).unwrap();
    /// #     svc.oneshot(req).await.unwrap();
    /// #     calls.load(Ordering::SeqCst)
    /// # }
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// assert_eq!(attempts(RetryPolicy::new().max_retries(2), "POST", 502).await, 1);
    /// let policy = RetryPolicy::new().max_retries(2).retry_non_idempotent();
    /// assert_eq!(attempts(policy, "POST", 502).await, 3);
    /// # }
    /// ```
    pub fn retry_non_idempotent(mut self) -> Self {
        self.any_method = true;
        self
    }

    /// Uses `budget`, which may be shared with other policies.
    ///
    /// # Example
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use tower_webhook::retry::{RetryBudget, RetryPolicy};
    ///
    /// # use std::sync::atomic::{AtomicU32, Ordering};
    /// # use http::{Request, Response};
    /// # use tower::{BoxError, ServiceBuilder, ServiceExt};
    /// # /// Sends one `method` request to an upstream that always answers `status`; returns the calls.
    /// # async fn attempts(policy: RetryPolicy, method: &str, status: u16) -> u32 {
    /// #     let calls = std::sync::Arc::new(AtomicU32::new(0));
    /// #     let seen = calls.clone();
    /// #     let svc = ServiceBuilder::new().layer(policy.into_layer()).service_fn(move |_: Request<String>| {
    /// #         seen.fetch_add(1, Ordering::SeqCst);
    /// #         async move { Ok::<_, BoxError>(Response::builder().status(status).body(()).unwrap()) }
    /// #     });
    /// #     let req = Request::builder().method(method).uri("/repos/octo/repo").body(String::new()).unwrap();
    /// #     svc.oneshot(req).await.unwrap();
    /// #     calls.load(Ordering::SeqCst)
    /// # }
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// // One budget for every client of the same upstream: 10 retries per 10 s in all.
    /// let budget = Arc::new(RetryBudget::new(Duration::from_secs(10), 1, 0.0));
    /// let fast = |p: RetryPolicy| p.max_retries(20).backoff(Duration::from_millis(1), Duration::from_millis(10));
    /// let issues = fast(RetryPolicy::new()).budget(budget.clone());
    /// let comments = fast(RetryPolicy::new()).budget(budget);
    /// assert_eq!(attempts(issues, "GET", 503).await, 11);
    /// assert_eq!(attempts(comments, "GET", 503).await, 1); // the budget is spent
    /// # }
    /// ```
    pub fn budget(mut self, budget: Arc<TpsBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Retries without a budget (only the per-call maximum applies).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::retry::RetryPolicy;
    ///
    /// # use std::sync::atomic::{AtomicU32, Ordering};
    /// # use http::{Request, Response};
    /// # use tower::{BoxError, ServiceBuilder, ServiceExt};
    /// # /// Sends one `method` request to an upstream that always answers `status`; returns the calls.
    /// # async fn attempts(policy: RetryPolicy, method: &str, status: u16) -> u32 {
    /// #     let calls = std::sync::Arc::new(AtomicU32::new(0));
    /// #     let seen = calls.clone();
    /// #     let svc = ServiceBuilder::new().layer(policy.into_layer()).service_fn(move |_: Request<String>| {
    /// #         seen.fetch_add(1, Ordering::SeqCst);
    /// #         async move { Ok::<_, BoxError>(Response::builder().status(status).body(()).unwrap()) }
    /// #     });
    /// #     let req = Request::builder().method(method).uri("/repos/octo/repo").body(String::new()).unwrap();
    /// #     svc.oneshot(req).await.unwrap();
    /// #     calls.load(Ordering::SeqCst)
    /// # }
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let policy = RetryPolicy::new().max_retries(5).without_budget();
    /// assert!(format!("{policy:?}").contains("budget: false"));
    /// assert_eq!(attempts(policy, "GET", 503).await, 6);
    /// # }
    /// ```
    pub fn without_budget(mut self) -> Self {
        self.budget = None;
        self
    }

    /// The largest delay before retry `attempt` (0-based): `min(cap, base * 2^attempt)`.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::retry::RetryPolicy;
    ///
    /// let policy = RetryPolicy::new(); // 100 ms, doubling, capped at 10 s
    /// assert_eq!(policy.max_delay(0), Duration::from_millis(100));
    /// assert_eq!(policy.max_delay(3), Duration::from_millis(800));
    /// assert_eq!(policy.max_delay(40), Duration::from_secs(10));
    /// ```
    pub fn max_delay(&self, attempt: u32) -> Duration {
        const NANOS_PER_SEC: u128 = 1_000_000_000;
        // In nanoseconds, saturating: `2^attempt` past `u128` is more than any base needs.
        let factor = 1u128.checked_shl(attempt).unwrap_or(u128::MAX);
        let nanos = (self.base.as_nanos().saturating_mul(factor)).min(self.cap.as_nanos());
        // At most `cap`, so the seconds fit.
        Duration::new(
            u64::try_from(nanos / NANOS_PER_SEC).unwrap_or(u64::MAX),
            u32::try_from(nanos % NANOS_PER_SEC).unwrap_or(0),
        )
    }

    /// `tower::retry::RetryLayer` with this policy.
    ///
    /// # Example
    ///
    /// ```
    /// use std::sync::{Arc, atomic::{AtomicU32, Ordering}};
    /// use http::{Request, Response, StatusCode};
    /// use tower::{BoxError, ServiceBuilder, ServiceExt};
    /// use tower_webhook::retry::RetryPolicy;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let calls = Arc::new(AtomicU32::new(0));
    /// let seen = calls.clone();
    /// let svc = ServiceBuilder::new()
    ///     .layer(RetryPolicy::new().into_layer())
    ///     .service_fn(move |_: Request<String>| {
    ///         let status = if seen.fetch_add(1, Ordering::SeqCst) == 0 { 429 } else { 201 };
    ///         async move { Ok::<_, BoxError>(Response::builder().status(status).body(()).unwrap()) }
    ///     });
    ///
    /// let req = Request::post("/repos/octo/repo/issues/1/comments").body(String::from("{}")).unwrap();
    /// assert_eq!(svc.oneshot(req).await.unwrap().status(), StatusCode::CREATED);
    /// assert_eq!(calls.load(Ordering::SeqCst), 2); // a 429 is retried, even for a POST
    /// # }
    /// ```
    pub fn into_layer(self) -> tower::retry::RetryLayer<Self> {
        tower::retry::RetryLayer::new(self)
    }

    fn is_retryable_status(&self, status: StatusCode) -> bool {
        status
            .as_u16()
            .checked_sub(400)
            .filter(|b| *b < 200)
            .is_some_and(|bit| self.statuses[usize::from(bit / 64)] & (1 << (bit % 64)) != 0)
    }

    /// Whether `res` asks for another attempt: its wait, if it names one, and whether it shows
    /// the upstream did not act on the request; `None` when it is not retried.
    fn read_response<Req: RetryRequest, Res: RetryResponse>(
        &self,
        req: &Req,
        res: &Res,
    ) -> Option<(Option<Duration>, bool)> {
        let status = res.status();
        if RetryResponse::is_circuit_open(res) {
            return None;
        }
        if let Some(code) = trailers_only_grpc_status(status, res.headers()) {
            // A gRPC answer: retried when its HTTP equivalent would be, but never taken as a
            // refusal (gRPC has no code that says the call was not acted on;
            // RESOURCE_EXHAUSTED is also a message too large).
            if !self.is_retryable_status(crate::grpc_http::status_of(code)) {
                return None;
            }
            let after = match grpc_pushback(res.headers()) {
                Pushback::Wait(after) => Some(after),
                Pushback::DoNotRetry => return None,
                Pushback::None => retry_after(res.headers()),
            };
            return Some((after, false));
        }
        if !self.is_retryable_status(status) {
            return None;
        }
        let after = retry_after(res.headers());
        // A refusal of the request it answers: after a redirect the client followed, another
        // request (the `GET` of a `303 See Other` the upstream sent once it acted on a `POST`).
        let refused = !redirected(RetryRequest::url(req), RetryResponse::url(res))
            && (refuses(status) || (status == StatusCode::SERVICE_UNAVAILABLE && after.is_some()));
        // A spent rate-limit quota without a wait in `Retry-After`: trying again before it is
        // renewed meets the same limit.
        Some((or_rate_limit_reset(after, res.headers()), refused))
    }

    /// Whether an error (what `facts` says of it) asks for another attempt, as
    /// [`read_response`](Self::read_response) tells of a response.
    fn read_error<Req: RetryRequest>(
        &self,
        req: &Req,
        facts: &ErrorFacts,
    ) -> Option<(Option<Duration>, bool)> {
        match facts.0 {
            Facts::Final => None,
            // A reqwest error made from an answer is that answer, read as the response would
            // be: a 404 is a verdict, a 429 a refusal. Its headers are gone, so a 503 is not
            // known to carry `Retry-After`.
            Facts::Answered(status, ref answered) => {
                if !self.is_retryable_status(status) {
                    return None;
                }
                let refused =
                    refuses(status) && !redirected(RetryRequest::url(req), answered.as_deref());
                Some((None, refused))
            }
            Facts::Failed(grpc, not_sent) => {
                let after = match grpc {
                    // An error that is the upstream's answer (`PERMISSION_DENIED`,
                    // `NOT_FOUND`) is a verdict, not a failure that may pass next time.
                    Some((code, _))
                        if !self.is_retryable_status(crate::grpc_http::status_of(code)) =>
                    {
                        return None;
                    }
                    Some((_, Pushback::DoNotRetry)) => return None,
                    Some((_, Pushback::Wait(after))) => Some(after),
                    Some((_, Pushback::None)) | None => None,
                };
                Some((after, not_sent))
            }
        }
    }

    fn may_retry<Req: RetryRequest>(&self, req: &Req) -> bool {
        self.any_method || req.is_idempotent()
    }
}

impl<Req, Res, E> Policy<Req, Res, E> for RetryPolicy
where
    Req: RetryRequest,
    Res: RetryResponse,
    E: RetryError,
{
    type Future = Sleep;

    fn retry(&mut self, req: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        // `unprocessed`: the failure shows the upstream did not act on the request.
        let (retry_after, unprocessed) = match result {
            // An error a layer below answered is read as the error.
            Ok(res) => match RetryResponse::answered_error(res) {
                Some(answered) => self.read_error(req, answered)?,
                None => self.read_response(req, res)?,
            },
            Err(err) => self.read_error(req, &ErrorFacts::new(err.as_error()))?,
        };
        if self.attempt >= self.max_retries || !(unprocessed || self.may_retry(req)) {
            return None;
        }
        let delay = match retry_after {
            Some(after) if after > self.max_retry_after => {
                tracing::debug!(
                    retry_after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
                    "upstream Retry-After is longer than the policy waits; not retrying"
                );
                return None;
            }
            // `Retry-After: 0`, or a date already past (not after the response's `Date`, or,
            // without one, a local clock ahead of the upstream's), asks for no wait: keep the
            // backoff instead of retrying at once.
            Some(after) if !after.is_zero() => after,
            _ => {
                let max = self.max_delay(self.attempt);
                let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
                Duration::from_nanos(fastrand::u64(0..=nanos))
            }
        };
        if let Some(budget) = &self.budget
            && !budget.withdraw()
        {
            tracing::debug!("retry budget exhausted; not retrying");
            return None;
        }
        self.attempt += 1;
        tracing::debug!(
            attempt = self.attempt,
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "retrying"
        );
        Some(tokio::time::sleep(delay))
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        if self.attempt == 0
            && let Some(budget) = &self.budget
        {
            budget.deposit();
        }
        // The last attempt allowed is sent without a copy: nothing could send it again. (A
        // payload of megabytes would otherwise be copied for nothing, as for `max_retries(0)`.)
        if self.attempt >= self.max_retries {
            return None;
        }
        // Every other request is kept: even one that is not idempotent is sent again when the
        // upstream refused it.
        req.try_clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with `message` and, when `with_source`, a source.
    #[derive(Debug)]
    struct Message(&'static str, Option<std::io::Error>);

    impl fmt::Display for Message {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            // Written in pieces, as `Display` impls do.
            for word in self.0.split_inclusive(' ') {
                f.write_str(word)?;
            }
            Ok(())
        }
    }

    impl Error for Message {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_ref().map(|e| e as _)
        }
    }

    #[test]
    fn only_h2s_own_refused_stream_message_is_a_refused_stream() {
        assert!(is_refused_stream(&Message(REFUSED_STREAM, None)));
        for other in [
            "stream error received: refused stream before processing any application",
            "stream error received: refused stream before processing any application logic!",
            "stream error detected: refused stream before processing any application logic",
            "stream error sent by user: refused stream before processing any application logic",
            "stream error received: unexpected internal error encountered",
            "connection error received: refused stream before processing any application logic",
            "",
        ] {
            assert!(!is_refused_stream(&Message(other, None)), "{other}");
        }
        let with_source = Message(REFUSED_STREAM, Some(std::io::Error::other("io")));
        assert!(!is_refused_stream(&with_source));
    }
}
