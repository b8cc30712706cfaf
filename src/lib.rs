//! Tower layers for webhook servers and the clients they call back.
//!
//! A bot that reviews pull requests receives webhooks from GitHub, GitLab, Bitbucket, Gitea,
//! Azure DevOps and others, and calls their APIs back. `tower-webhook` ships the fragile parts
//! of such a server once, as [`tower`] layers that fit any hyper, axum or tonic stack:
//!
//! - [`error`]: [`WebhookErrorLayer`](error::WebhookErrorLayer) turns every error and panic into
//!   a correct response: a real status and an RFC 9457 `application/problem+json` body for HTTP,
//!   `grpc-status` for gRPC.
//! - [`signature`]: [`SignatureLayer`](signature::SignatureLayer) lets only deliveries with a
//!   valid signature through (GitHub, GitLab, Bitbucket, Gitea/Forgejo, Azure DevOps, Stripe,
//!   Slack, Zoom, Twitch, Shopify, Standard Webhooks, custom HMAC), with size limits and replay
//!   protection.
//!
//! # Feature flags
//!
//! | feature | what it adds | default |
//! |---|---|---|
//! | `error` | [`error`]: `WebhookErrorLayer`, `Problem`, `HttpError` | yes |
//! | `signature` | `signature`: `SignatureLayer` | yes |
//! | `circuit-breaker` | `circuit_breaker`: `CircuitBreakerLayer` | yes |
//! | `retry` | `retry`: a `tower::retry` policy with backoff | yes |
//! | `tunnel` | `tunnel`: public URLs through localtunnel, bore, cloudflared | no |
//! | `axum` | `IntoResponse` for [`error::Problem`] | no |
//! | `tonic` | `tonic::Status` and `tonic::Code` support | no |
//! | `reqwest` | classifiers for `reqwest::Response` | no |
//! | `redis` | a Redis replay store shared by replicas | no |
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
#[cfg(feature = "retry")]
#[cfg_attr(docsrs, doc(cfg(feature = "retry")))]
pub mod retry;
#[cfg(feature = "signature")]
#[cfg_attr(docsrs, doc(cfg(feature = "signature")))]
pub mod signature;
#[cfg(feature = "tunnel")]
#[cfg_attr(docsrs, doc(cfg(feature = "tunnel")))]
pub mod tunnel;

/// The boxed error type tower middleware passes around.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[cfg(feature = "error")]
pub use error::{Problem, WebhookErrorLayer};
