//! Verify webhook signatures before anything else sees the request.
//!
//! [`SignatureLayer`] lets only authentic deliveries reach the inner service. It checks the
//! exact bytes on the wire (any bytes, not only UTF-8), in constant time, against one or several
//! secrets, then hands the body on unchanged so axum's `Json` / `Form` extractors still work, with
//! a [`VerifiedWebhook`] in the request extensions.
//!
//! # Providers
//!
//! | constructor | header | signed message | timestamp | delivery id |
//! |---|---|---|---|---|
//! | [`github`](SignatureLayer::github) | `X-Hub-Signature-256: sha256=<hex>` | body | - | `X-GitHub-Delivery` |
//! | [`gitlab`](SignatureLayer::gitlab) | `X-Gitlab-Token: <token>` | - | - | `Idempotency-Key` |
//! | [`bitbucket_cloud`](SignatureLayer::bitbucket_cloud) / [`bitbucket_data_center`](SignatureLayer::bitbucket_data_center) | `X-Hub-Signature: sha256=<hex>` | body | - | `X-Request-UUID` / `X-Request-Id` |
//! | [`gitea`](SignatureLayer::gitea) / [`forgejo`](SignatureLayer::forgejo) | `X-Gitea-Signature` / `X-Forgejo-Signature: <hex>` | JSON payload (form: decoded `payload`) | - | `X-Gitea-Delivery` / `X-Forgejo-Delivery` |
//! | [`azure_devops`](SignatureLayer::azure_devops) | `Authorization: Basic` | - | - | body `id` |
//! | [`stripe`](SignatureLayer::stripe) | `Stripe-Signature: t=..,v1=<hex>[,v1=..]` | `<t>.<body>` | 300 s | body `id` |
//! | [`slack`](SignatureLayer::slack) | `X-Slack-Signature: v0=<hex>` | `v0:<ts>:<body>` | 300 s | body `event_id` |
//! | [`zoom`](SignatureLayer::zoom) | `x-zm-signature: v0=<hex>` | `v0:<ts>:<body>` | 300 s | - |
//! | [`twitch`](SignatureLayer::twitch) | `Twitch-Eventsub-Message-Signature: sha256=<hex>` | `<id><RFC 3339 ts><body>` | 600 s | `Twitch-Eventsub-Message-Id` |
//! | [`shopify`](SignatureLayer::shopify) | `X-Shopify-Hmac-Sha256: <base64>` (or `Shopify-*`) | body | - | `X-Shopify-Webhook-Id` |
//! | [`standard_webhooks`](SignatureLayer::standard_webhooks) | `webhook-signature: v1,<base64> ..` (or `svix-*`) | `<id>.<ts>.<body>` | 300 s | `webhook-id` |
//! | [`custom`](SignatureLayer::custom) | any, see [`CustomScheme`] | body or `<ts>.<body>` | optional | optional |
//!
//! Secrets are [`Secret`]s: redacted in `Debug`, wiped on drop. An empty secret, or one of
//! only whitespace (which any sender could sign with), is a construction error
//! ([`SignatureConfigError`]): the layer never fails open. Several secrets
//! ([`SignatureLayer::github_with_secrets`], [`SignatureLayer::secret`],
//! [`Secrets::from_env_list`]) are all tried, without early exit; several signatures in one
//! header (Stripe `v1`, Standard Webhooks) are all compared, up to 8.
//!
//! Handshakes are answered by the layer once the request is verified: Slack `url_verification`
//! (the challenge, as text), Zoom `endpoint.url_validation` (the plain token and its HMAC, as
//! JSON) and Twitch `webhook_callback_verification` (the challenge, as text). Turn that off with [`answer_handshakes(false)`](SignatureLayer::answer_handshakes).
//!
//! # Order of checks
//!
//! 1. From headers alone, before the body is read: `Content-Length` over the limit (413);
//!    missing, duplicated or malformed signature headers, too many signatures, a signed
//!    timestamp outside the window, a signed delivery id (Standard Webhooks, Twitch) that is
//!    empty, longer than 256 bytes or not visible ASCII (401). Tokens (GitLab, Azure DevOps)
//!    are fully checked here.
//! 2. The body is read through a hard cap ([`SignatureLayer::max_body_size`], default 25 MiB,
//!    GitHub's largest payload): 413 as soon as the cap is passed, never buffering more. A body
//!    that ends short of, or runs past, its `Content-Length` (without `Transfer-Encoding`) is
//!    not the announced message: 400.
//! 3. The MAC is computed once per secret (keys are prepared when the layer is built) and
//!    compared with every signature in constant time (401 on mismatch). Hex is accepted in
//!    either case.
//! 4. Authentic but unusable deliveries (a Stripe or Azure DevOps body without an event `id`,
//!    an invalid delivery id the signature does not cover, a Gitea/Forgejo webhook set to the
//!    HTTP method `GET`, whose payload is in the query string) get 400.
//! 5. Replay protection (below), then the inner service.
//!
//! Every rejection is an RFC 9457 `application/problem+json` response with a stable `type`
//! ([`crate::error::types`]) and no reason; the reason goes to `tracing` (once, without secrets
//! or body). The [`Problem`](crate::error::Problem) is left in the response extensions, so an
//! outer [`WebhookErrorLayer`](crate::error::WebhookErrorLayer) adds the request id and answers
//! gRPC callers in gRPC terms without logging it again.
//!
//! # Replay protection
//!
//! Signed timestamps (Stripe, Slack, Zoom, Twitch, Standard Webhooks, custom) must be within
//! [`timestamp_tolerance`](SignatureLayer::timestamp_tolerance) (default 300 s, 600 s for Twitch) of the
//! [`Clock`]: strict digits (strict RFC 3339 for Twitch), compared without overflow.
//!
//! Delivery ids are recorded in a [`ReplayStore`]: a bounded [`MemoryReplayStore`] by default,
//! `RedisReplayStore` (feature `redis`) to share it between replicas. An id is remembered for
//! [`replay_ttl`](SignatureLayer::replay_ttl) (default 24 h) and, where a timestamp is signed,
//! at least until that timestamp has left the window, and a minute more (for replicas whose
//! clocks lag the one that recorded it): a copy is refused as a replay or as stale, never let
//! through in between. A delivery without an id whose timestamp is signed (Zoom, a Slack
//! command, a custom scheme without an id header) is recorded by its MAC until the timestamp
//! leaves the window, and a minute more, so a copy sent again as it was is a replay too; so is a
//! delivery of a custom scheme whose id header the MAC does not cover, beside its id, so a copy
//! sent again under another id, or none, is a replay. A second delivery with the same id gets, by
//! [`on_replay`](SignatureLayer::on_replay):
//!
//! - [`OnReplay::Reject`] (default): 409 with a `replayed-delivery` problem;
//! - [`OnReplay::Acknowledge`]`(StatusCode::OK)` (or 202): an empty 2xx, and the inner service is
//!   not called. Providers treat it as delivered, and nothing is processed twice. A gRPC call
//!   (`application/grpc*`) gets what gRPC calls success: 200 with `grpc-status: 0`, and no
//!   message, which a unary call's client reports as a failure (use `Reject` for those: it
//!   answers `ALREADY_EXISTS`).
//!
//! [`record_delivery`](SignatureLayer::record_delivery) says when an id counts as seen:
//! [`RecordDelivery::AfterSuccess`] (default) claims it while the inner service runs and releases
//! it again unless that answered 2xx (and, to a gRPC call, `grpc-status: 0`: a trailers-only
//! answer's in its headers, a streamed answer's in the trailers that end its body, where the id
//! is settled before the trailers are handed on; a gRPC-web answer's in the trailer frame that
//! ends its body, settled before that frame is handed on), so a provider's retry or redelivery
//! of a failed delivery (GitHub reuses the delivery id) is processed. A claim lasts at most
//! [`claim_ttl`](SignatureLayer::claim_ttl) (default 5 minutes), so one left by a process that
//! died is not held for the whole `replay_ttl`. A claim the store answers with an error (the
//! delivery gets 503) is released again, in case the store took it all the same, so the retry
//! is processed (stores that [track claims](ReplayStore::tracks_claims)). A `replay_ttl` or
//! `claim_ttl` under a millisecond is refused (a panic when set, as a non-2xx
//! [`OnReplay::Acknowledge`]). [`RecordDelivery::AfterVerification`] records the id
//! for good as soon as the signature is valid (at most once, even if the handler fails). Ids are
//! namespaced by provider. A delivery whose id is a header it left out (GitHub without
//! `X-GitHub-Delivery`) is verified and handed on, but not deduplicated; so is a test from
//! Azure DevOps' "Test" dialog (nil `subscriptionId`), whose sample `id` is the same each time.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_webhook::signature::SignatureLayer;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(SignatureLayer::github("It's a Secret to Everybody").unwrap())
//!     .service_fn(|req: Request<Full<Bytes>>| async move {
//!         // The body arrives unchanged.
//!         let body = req.into_body().collect().await.unwrap().to_bytes();
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::new(body)))
//!     });
//!
//! let signed = Request::post("/webhook")
//!     .header("x-hub-signature-256", "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")
//!     .body(Full::new(Bytes::from_static(b"Hello, World!")))
//!     .unwrap();
//! let res = svc.clone().oneshot(signed).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//!
//! let forged = Request::post("/webhook")
//!     .header("x-hub-signature-256", "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e18")
//!     .body(Full::new(Bytes::from_static(b"Hello, World!")))
//!     .unwrap();
//! let res = svc.oneshot(forged).await.unwrap();
//! assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
//! assert_eq!(res.headers()["content-type"], "application/problem+json");
//! # }
//! ```
//!
//! # With axum and hyper
//!
//! Apply it to the route's `POST` handler with `route_layer`: other routes are not affected, and
//! another method on the path gets axum's `405` with `Allow: POST` rather than a 401. The
//! [`VerifiedWebhook`] extractor needs the `axum` feature; without it, take
//! `Extension<VerifiedWebhook>`:
//!
//! ```no_run
//! use axum::{Json, Router, extract::DefaultBodyLimit, routing::post};
//! use tower_webhook::signature::{SignatureLayer, VerifiedWebhook};
//!
//! async fn on_github(hook: VerifiedWebhook, Json(event): Json<serde_json::Value>) -> &'static str {
//!     let _ = (hook.event(), event);
//!     "ok"
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let app: Router = Router::new()
//!     .route(
//!         "/webhooks/github",
//!         post(on_github).route_layer(SignatureLayer::github(std::env::var("GITHUB_WEBHOOK_SECRET")?)?),
//!     )
//!     // The layer admits up to 25 MiB (GitHub's largest payload); axum's extractors stop at
//!     // 2 MB unless told otherwise.
//!     .layer(DefaultBodyLimit::max(25 * 1024 * 1024));
//! # let _ = app; Ok(()) }
//! ```
//!
//! The inner service receives the same body type as the outer one (any `B: From<Bytes>`, such
//! as `axum::body::Body` or `http_body_util::Full<Bytes>`). On plain hyper, whose request body
//! `hyper::body::Incoming` cannot be built from bytes, map the body to one that can first
//! (`axum_core::body::Body::new` wraps any body, without buffering it):
//!
//! ```no_run
//! use http::Request;
//! use hyper::body::Incoming;
//! use tower::ServiceBuilder;
//! use tower_webhook::signature::SignatureLayer;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let svc = ServiceBuilder::new()
//!     .map_request(|req: Request<Incoming>| req.map(axum::body::Body::new))
//!     .layer(SignatureLayer::github("secret")?)
//!     .service_fn(|req: Request<axum::body::Body>| async move {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(req.into_body()))
//!     });
//! // Serve `svc` with `hyper_util::service::TowerToHyperService`.
//! # let _ = svc; Ok(()) }
//! ```
//!
//! [`SignatureLayer::verify`] checks a delivery held in memory, outside tower.

mod clock;
mod error;
mod layer;
mod replay;
mod scheme;
mod secret;

pub use clock::Clock;
pub use error::{SignatureConfigError, SignatureValidationError};
pub(crate) use layer::SettleAtEnd;
pub use layer::{
    DEFAULT_CLAIM_TTL, DEFAULT_MAX_BODY_SIZE, DEFAULT_REPLAY_TTL, DEFAULT_TIMESTAMP_TOLERANCE,
    ResponseFuture, Signature, SignatureLayer, VerifiedWebhook,
};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use replay::RedisReplayStore;
pub use replay::{
    ClaimToken, DEFAULT_REPLAY_CAPACITY, MemoryReplayStore, OnReplay, RecordDelivery, ReplayFuture,
    ReplayStore,
};
pub use scheme::{Algorithm, CustomScheme, Encoding, Provider};
pub use secret::{Secret, Secrets};

/// Recognises this module's errors for [`WebhookErrorLayer`](crate::error::WebhookErrorLayer).
pub(crate) fn recognize(err: &(dyn std::error::Error + 'static)) -> Option<crate::error::Problem> {
    err.downcast_ref::<SignatureValidationError>()
        .map(crate::error::Problem::from_error)
}
