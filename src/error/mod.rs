//! Turn every error and panic into a correct response.
//!
//! [`WebhookErrorLayer`] is the one place where errors become responses. Its service's error type
//! is [`Infallible`](std::convert::Infallible), so it can be the outermost layer of an axum
//! `Router`, a hyper `service_fn` stack or a tonic server.
//!
//! # What it answers
//!
//! | inner outcome | HTTP caller | gRPC caller (`content-type: application/grpc`, `-web`, `-web-text`, each with an optional `+codec`, in any case) |
//! |---|---|---|
//! | `Ok(response)` | the response, untouched (but a 408 or a 413 over HTTP/1.x gets `Connection: close`, see below, and a 401 without `WWW-Authenticate` gets the layer's [`challenge`](WebhookErrorLayer::challenge), if it has one) | the same |
//! | `Ok(response)` with a [`Problem`] in its extensions (a handler returned one) | the problem, rendered | trailers-only, code of the problem |
//! | `Err(`[`Problem`]`)` or any [`HttpError`] registered with [`WebhookErrorLayer::recognize`] | its status | its [`HttpError::grpc_code`] |
//! | signature rejected | 401 / 413 / 408 / 400 / 409, or 503 + `Retry-After` when the replay store cannot be reached | `Unauthenticated` / `OutOfRange` / `DeadlineExceeded` / `InvalidArgument` / `AlreadyExists` / `Unavailable` |
//! | circuit open | 503, with `Retry-After` when the breaker knows the wait (not in FORCED_OPEN) | `Unavailable`, with `grpc-retry-pushback-ms` when the wait is known |
//! | [`WebhookProcessingError`] | 500, or 503 + `Retry-After` when retryable | `Internal` / `Unavailable` + `grpc-retry-pushback-ms` |
//! | `tower::timeout::error::Elapsed` | 504 (or 408, see [`WebhookErrorLayer::timeout_status`]) | `DeadlineExceeded` |
//! | `tower::load_shed::error::Overloaded` | 503 | `Unavailable` |
//! | `http_body_util::LengthLimitError` | 413 | `OutOfRange` |
//! | `tower_http::timeout::TimeoutError` (a body timeout: tower-http's `RequestBodyTimeoutLayer` or `RequestBodyDeadlineLayer`, 0.6 or 0.7) | 408 | `DeadlineExceeded` |
//! | `tonic::Status` (feature `tonic`) | the [`GrpcCode::to_http_status`] of its code (a status whose source the layer recognises, such as a `CircuitOpen` converted with `From`, is answered as that source), with `Retry-After` when it has a `grpc-retry-pushback-ms` | its own code, and its `grpc-retry-pushback-ms` (one that is negative or no whole number, gRPC's "do not retry", as `-1`); its message (URL credentials redacted), details (`grpc-status-details-bin`) and custom metadata only for client errors (4xx), less an upstream's response headers (`Set-Cookie`, `Alt-Svc`, `Date`, `Server`, caching headers...) |
//! | anything else | 500, no detail | `Internal` |
//! | a panic in `poll_ready`, `call` or the response future (or in the error's own `Display` / [`HttpError`] code) | 500, no detail | `Internal` |
//! | an error answered as above, whose `Drop` (or that of the future that failed with it) panics | the error's answer; the panic is logged | the error's answer |
//! | the response body fails or panics after the head was sent (see [`ResponseBody`]) | the response cut short: HTTP/2 resets the stream, HTTP/1.1 closes the connection before the last chunk or the declared length (an HTTP/1.0 answer without `Content-Length` ends at the close, as a complete one would) | a gRPC stream (a `200` typed as the call, without `grpc-status` or `Content-Length` in its head) ends with `grpc-status` trailers: the error's code, `Internal` for a panic or an error that says success (gRPC-web: its trailer frame, when the body failed between two messages; one cut inside a message, after its own trailer frame, or in base64 the layer cannot follow is cut short); any other answer is cut short like HTTP's |
//!
//! `LengthLimitError` and `TimeoutError` say the request's body was too large or too slow. A
//! handler that meets them reading an upstream's answer (`Limited` around a provider's body,
//! a body timeout on an outbound client) returns another error for it, such as a [`Problem`]
//! with status 502: the layer would answer 413 or 408, blaming the caller.
//!
//! Every error is looked for along its whole `source()` chain, so wrapped errors are still
//! recognised, also one carried by an `io::Error` (`io::Error::other(e)`, whose `source()`
//! skips `e`). The walk ends at an error already seen and after 32 errors, so a chain that a
//! broken `Error` impl made cyclic is answered (500, unless a known error comes first) and
//! logged (ending in `: ...`) instead of walked forever.
//!
//! HTTP callers get an RFC 9457 `application/problem+json` body: `type`, `title`, `status`
//! (always equal to the response status), `detail` (only text meant for clients) and `instance`
//! (the request id from `x-request-id`, when there is one that a URI can carry as it is, up to
//! 256 bytes, that sends no reader to a host nor runs: not `https:host`, `//host` or
//! `javascript:...`), then the problem's extension members ([`Problem::with_extension`]). A 408 or a
//! 413 over HTTP/1.x also says `Connection: close` (RFC 9110, sections
//! 15.5.9 and 15.5.14): after a 413 the rest of the refused body is still on the connection,
//! unread (cut by a length limit, or refused from `Content-Length`), so the connection is not
//! kept, and the client is told so rather than losing its next request on it. So does a
//! gRPC-web answer over HTTP/1.x to a call refused for the same reasons, and a 408 or a 413
//! that the inner stack answered itself (axum's `DefaultBodyLimit`, tower-http's `TimeoutLayer`,
//! a handler's own status), passed through: a `close` option it set is kept as it is,
//! `keep-alive` is dropped, other options are kept after `close`.
//! gRPC callers get HTTP 200 with `grpc-status` and a percent-encoded `grpc-message` in the
//! headers and no body (a "trailers-only" response), as the gRPC protocol requires, typed with
//! the request's own media type, codec included (`application/grpc-web+json` for a `+json`
//! call; lower-cased, parameters left out), as the gRPC and gRPC-web protocols type a response.
//! See [`GrpcCode::from_http_status`] for the HTTP to gRPC mapping.
//!
//! Each error is logged once with `tracing`: 5xx at `error`, 404 and 405 at `debug`, other 4xx at
//! `warn`, with the status, problem type, request id and the error chain as fields. A panic's
//! message goes to the log, never to the client. The credentials of URLs in an error chain or a
//! panic message are logged as `<redacted>`: a URL's user info (`user:password@`), and the
//! values of its query parameters whose names contain `token`, `secret`, `key`, `pass`, `pwd`,
//! `sig`, `auth`, `credential`, `jwt`, `code`, `hmac`, `session` or `sid` (in any case), and the
//! token in the path of a Slack, Discord, Microsoft Teams or Telegram hook URL; outside URLs, a
//! `Bearer` or `Basic` credential, a token known by its prefix (`ghp_`, `glpat-`, `xoxb-`,
//! `sk_live_`, `whsec_`...), a JSON Web Token and a PEM private key's body. Rust's panic hook runs before the layer catches a
//! panic: the default hook prints the message, unredacted, to stderr; a server whose panic
//! messages may hold credentials installs its own (`std::panic::set_hook`). A response body's
//! failure is logged once too, at `error` (`warn` for an error a gRPC caller is answered with a
//! client error's code), with the error chain or the panic message.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use tower::{BoxError, ServiceBuilder, ServiceExt};
//! use tower_webhook::error::WebhookErrorLayer;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(WebhookErrorLayer::new())
//!     .service_fn(|_req: Request<Full<Bytes>>| async {
//!         Err::<Response<Full<Bytes>>, BoxError>("database password is hunter2".into())
//!     });
//!
//! let req = Request::builder().header("x-request-id", "req-42").body(Full::default()).unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
//! assert_eq!(res.headers()["content-type"], "application/problem+json");
//!
//! let body = res.into_body().collect().await.unwrap().to_bytes();
//! let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
//! assert_eq!(problem["status"], 500);
//! assert_eq!(problem["instance"], "req-42");
//! assert!(!String::from_utf8_lossy(&body).contains("hunter2"));
//! # }
//! ```

mod body;
pub(crate) mod classify;
mod grpc;
mod layer;
mod problem;
mod processing;

pub use body::ResponseBody;
pub use grpc::GrpcCode;
#[cfg(feature = "signature")]
pub(crate) use layer::AlreadyLogged;
#[cfg(any(feature = "signature", feature = "circuit-breaker"))]
pub(crate) use layer::Grpc;
pub use layer::{ProblemJson, RenderProblem, ResponseFuture, WebhookError, WebhookErrorLayer};
#[cfg(all(feature = "circuit-breaker", feature = "tonic"))]
pub(crate) use problem::pushback_value;
pub use problem::{HttpError, PROBLEM_JSON, Problem, types};
pub use processing::WebhookProcessingError;
