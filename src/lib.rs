//! Tower layers for webhook servers and the clients they call back.
//!
//! A bot that reviews pull requests receives webhooks from GitHub, GitLab, Bitbucket, Gitea,
//! Azure DevOps and others, and calls their APIs back. `tower-webhook` ships the fragile parts
//! of such a server once, as [`tower`] layers that fit any hyper, axum or tonic stack:
//!
//! - `error`: `WebhookErrorLayer` turns every error and panic into a correct response: a
//!   real status and an RFC 9457 `application/problem+json` body for HTTP, `grpc-status` for gRPC.
//! - `signature`: `SignatureLayer` lets only deliveries with a valid signature through (GitHub,
//!   GitLab, Bitbucket, Gitea/Forgejo, Azure DevOps, Stripe, Slack, Shopify, Standard Webhooks,
//!   Zoom, Twitch, custom HMAC), with size limits and replay protection.
//! - `circuit_breaker`: `CircuitBreakerLayer` stops calling an upstream that keeps failing (HTTP,
//!   gRPC, `reqwest`), lock-free, with resilience4j's states and rules, per-key breakers and a
//!   `/status`-ready snapshot.
//! - `retry`: `RetryPolicy`, a `tower::retry` policy with exponential backoff, full jitter, a
//!   retry budget and `Retry-After`; it sends a non-idempotent request again only when the
//!   upstream did not act on it (a 429, a 503 with `Retry-After`, a refused connection).
//! - `tunnel` (feature `tunnel`): a public URL for a local webhook server through ngrok
//!   (feature `ngrok`), cloudflared, localtunnel or bore, first working provider wins, with a
//!   round-trip probe, status events and reconnects.
//!
//! # Example
//!
//! A GitHub webhook route: verified, answered 202, every failure a problem document.
//!
//! ```
//! # #[cfg(all(feature = "signature", feature = "error"))]
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_webhook::{WebhookErrorLayer, signature::{SignatureLayer, VerifiedWebhook}};
//!
//! let svc = ServiceBuilder::new()
//!     .layer(WebhookErrorLayer::new())
//!     .layer(SignatureLayer::github("It's a Secret to Everybody").unwrap())
//!     .service_fn(|req: Request<Full<Bytes>>| async move {
//!         let hook = req.extensions().get::<VerifiedWebhook>().unwrap();
//!         assert_eq!(hook.delivery_id(), Some("72d3162e-cc78-11e3-81ab-4c9367dc0958"));
//!         let mut res = Response::new(Full::<Bytes>::default());
//!         *res.status_mut() = StatusCode::ACCEPTED;
//!         Ok::<_, std::convert::Infallible>(res)
//!     });
//!
//! let delivery = |signature: &str| {
//!     Request::post("/api/v1/github_webhooks")
//!         .header("x-github-event", "ping")
//!         .header("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
//!         .header("x-hub-signature-256", signature)
//!         .body(Full::new(Bytes::from_static(b"Hello, World!")))
//!         .unwrap()
//! };
//! let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
//! let res = svc.clone().oneshot(delivery(good)).await.unwrap();
//! assert_eq!(res.status(), StatusCode::ACCEPTED);
//!
//! let forged = "sha256=0000000000000000000000000000000000000000000000000000000000000000";
//! let res = svc.oneshot(delivery(forged)).await.unwrap();
//! assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
//! assert_eq!(res.headers()["content-type"], "application/problem+json");
//! # }
//! # #[cfg(not(all(feature = "signature", feature = "error")))] fn main() {}
//! ```
//!
//! The `pr_agent_server` example is a complete server; the guide in the repository's `docs/`
//! explains where each layer goes.
//!
//! # Feature flags
//!
//! | feature | what it adds | default |
//! |---|---|---|
//! | `error` | `error`: `WebhookErrorLayer`, `Problem`, `HttpError` | yes |
//! | `signature` | `signature`: `SignatureLayer`, replay stores | yes |
//! | `circuit-breaker` | `circuit_breaker`: `CircuitBreakerLayer`, keyed breakers | yes |
//! | `retry` | `retry`: a `tower::retry` policy with backoff | yes |
//! | `tunnel` | `tunnel`: public URLs through localtunnel, bore, cloudflared | no |
//! | `axum` | `IntoResponse` for `Problem`, the `VerifiedWebhook` extractor (axum 0.8) | no |
//! | `tonic` | `tonic::Status` and `tonic::Code` support (tonic 0.14) | no |
//! | `reqwest` | classifiers and retries for `reqwest::Client` (reqwest 0.13) | no |
//! | `reqwest-0-12` | the same for reqwest 0.12 | no |
//! | `redis` | a Redis replay store shared by replicas (redis 1) | no |
//! | `ngrok` | the ngrok tunnel provider | no |
//! | `full` | all of the above | no |
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod body;
#[cfg(feature = "circuit-breaker")]
#[cfg_attr(docsrs, doc(cfg(feature = "circuit-breaker")))]
pub mod circuit_breaker;
#[cfg(feature = "error")]
#[cfg_attr(docsrs, doc(cfg(feature = "error")))]
pub mod error;
#[cfg(any(feature = "error", feature = "retry", feature = "tunnel"))]
mod error_chain;
#[cfg(any(feature = "error", feature = "retry"))]
mod grpc_http;
#[cfg(any(feature = "signature", feature = "circuit-breaker"))]
mod grpc_web;
#[cfg(any(feature = "error", feature = "circuit-breaker", feature = "tunnel"))]
mod panic;
#[cfg(any(feature = "error", feature = "tunnel"))]
mod redact;
#[cfg(feature = "retry")]
#[cfg_attr(docsrs, doc(cfg(feature = "retry")))]
pub mod retry;
#[cfg(any(feature = "circuit-breaker", feature = "retry"))]
mod retry_after;
#[cfg(feature = "signature")]
#[cfg_attr(docsrs, doc(cfg(feature = "signature")))]
pub mod signature;
#[cfg(feature = "tunnel")]
#[cfg_attr(docsrs, doc(cfg(feature = "tunnel")))]
pub mod tunnel;

/// The boxed error type tower middleware passes around.
///
/// # Example
///
/// ```
/// use tower_webhook::BoxError;
///
/// fn parse_port(value: &str) -> Result<u16, BoxError> {
///     Ok(value.parse::<u16>()?)
/// }
///
/// assert_eq!(parse_port("8080").unwrap(), 8080);
/// let err: BoxError = parse_port("http").unwrap_err();
/// assert!(err.is::<std::num::ParseIntError>());
/// ```
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[cfg(feature = "error")]
pub use error::{Problem, WebhookErrorLayer};

/// The Rust examples of the README and of the guides in `docs/`, compiled and run as doctests
/// so that what they show stays true.
#[cfg(all(doctest, feature = "full"))]
mod documentation {
    #[doc = include_str!("../README.md")]
    mod readme {}
    #[doc = include_str!("../docs/circuit-breaker.md")]
    mod circuit_breaker {}
    #[doc = include_str!("../docs/errors.md")]
    mod errors {}
    #[doc = include_str!("../docs/guide.md")]
    mod guide {}
    #[doc = include_str!("../docs/benchmarks.md")]
    mod benchmarks {}
    #[doc = include_str!("../docs/signature.md")]
    mod signature {}
    #[doc = include_str!("../docs/tunnel.md")]
    mod tunnel {}
}
