//! `SignatureLayer`, its service and response future.

use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body::Body;
use pin_project::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::clock::Clock;
use super::error::{SignatureConfigError, SignatureValidationError as E};
use super::replay::{
    ClaimToken, MemoryReplayStore, OnReplay, RecordDelivery, ReplayFuture, ReplayStore,
};
use super::scheme::{
    self, Algorithm, Checked, CustomScheme, Keys, Limits, MAX_SIGNATURES, Provider, Scheme, Text,
};
use super::secret::{Secret, Secrets};
use crate::BoxError;
use crate::body::ResponseBody;
use crate::error::{AlreadyLogged, Grpc, Problem};
use crate::grpc_web::WebStatus;
use crate::redact::redacted;

/// Default body limit: 25 MiB, the largest payload GitHub sends.
///
/// # Example
///
/// ```
/// use tower_webhook::signature::{DEFAULT_MAX_BODY_SIZE, SignatureLayer};
///
/// assert_eq!(DEFAULT_MAX_BODY_SIZE, 25 * 1024 * 1024);
/// let layer = SignatureLayer::github("secret").unwrap();
/// assert!(format!("{layer:?}").contains(&format!("max_body: {DEFAULT_MAX_BODY_SIZE}")));
/// ```
pub const DEFAULT_MAX_BODY_SIZE: u64 = 25 * 1024 * 1024;
/// Default window for signed timestamps: 5 minutes either side.
///
/// # Example
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use tower_webhook::signature::{Clock, DEFAULT_TIMESTAMP_TOLERANCE, SignatureLayer};
///
/// let signed_at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
/// let checked_after = |delay| {
///     SignatureLayer::stripe("whsec_test").unwrap().clock(Clock::fixed(signed_at + delay))
/// };
/// let req = http::Request::post("/stripe")
///     .header("stripe-signature", "t=1700000000,v1=4aa90aa69730f112c87accbf54203d1076675eae3b18a5cb82b5ab9e7f5cd5bc")
///     .body(r#"{"id":"evt_1","type":"invoice.paid"}"#)
///     .unwrap();
/// let (headers, body) = (req.headers(), req.body().as_bytes());
/// assert!(checked_after(DEFAULT_TIMESTAMP_TOLERANCE).verify(headers, body).is_ok());
/// let late = DEFAULT_TIMESTAMP_TOLERANCE + Duration::from_secs(1);
/// assert!(checked_after(late).verify(headers, body).is_err());
/// ```
pub const DEFAULT_TIMESTAMP_TOLERANCE: Duration = Duration::from_secs(300);
/// Twitch's window: its EventSub docs say to refuse a message older than 10 minutes.
const TWITCH_TIMESTAMP_TOLERANCE: Duration = Duration::from_secs(600);
/// Default time a delivery id is remembered: 24 hours.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_webhook::signature::{DEFAULT_REPLAY_TTL, SignatureLayer};
///
/// assert_eq!(DEFAULT_REPLAY_TTL, Duration::from_secs(86_400));
/// let layer = SignatureLayer::github("secret").unwrap();
/// assert!(format!("{layer:?}").contains("replay_ttl: 86400s"));
/// ```
pub const DEFAULT_REPLAY_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Default life of a claim on a delivery id while its handler runs: 5 minutes.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_webhook::signature::{DEFAULT_CLAIM_TTL, SignatureLayer};
///
/// assert_eq!(DEFAULT_CLAIM_TTL, Duration::from_secs(300));
/// let layer = SignatureLayer::github("secret").unwrap();
/// assert!(format!("{layer:?}").contains("claim_ttl: 300s"));
/// ```
pub const DEFAULT_CLAIM_TTL: Duration = Duration::from_secs(5 * 60);

/// What the layer learned about a delivery it let through, found in the request extensions.
///
/// With axum, extract it in a handler (`Extension<VerifiedWebhook>`, or the type itself with the
/// `axum` feature). See the [module docs](super) for replay handling: a handler only ever sees
/// a delivery id once (within the replay TTL), unless [`RecordDelivery::AfterSuccess`] released
/// it after a failure, its claim expired while the handler ran (see
/// [`claim_ttl`](SignatureLayer::claim_ttl)), the store failed to mark it handled after the
/// handler's 2xx (logged as an error: the claim then lapses after `claim_ttl`), or a full
/// [`MemoryReplayStore`] forgot it to make room for newer ids. A duplicate gets 409 by default;
/// with [`OnReplay::Acknowledge`]`(StatusCode::OK)` (or `ACCEPTED`) it gets an empty 2xx instead
/// (with `AfterSuccess`, once the first delivery was handled) and the handler is not called, so
/// providers stop redelivering and nothing is processed twice.
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_webhook::signature::{Provider, SignatureLayer, VerifiedWebhook};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let svc = ServiceBuilder::new()
///     .layer(SignatureLayer::github("It's a Secret to Everybody").unwrap())
///     .service_fn(|req: Request<Full<Bytes>>| async move {
///         let hook = req.extensions().get::<VerifiedWebhook>().unwrap();
///         assert_eq!(hook.provider(), Provider::GitHub);
///         assert_eq!(hook.event(), Some("push"));
///         assert_eq!(hook.delivery_id(), Some("72d3162e-cc78-11e3-81ab-4c9367dc0958"));
///         assert_eq!(hook.secret_index(), Some(0));
///         Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::default()))
///     });
/// let req = Request::post("/hook")
///     .header("x-github-event", "push")
///     .header("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
///     .header("x-hub-signature-256", "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")
///     .body(Full::new(Bytes::from_static(b"Hello, World!")))
///     .unwrap();
/// assert_eq!(svc.oneshot(req).await.unwrap().status(), 200);
/// # }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct VerifiedWebhook {
    provider: Provider,
    delivery_id: Option<Text>,
    event: Option<Text>,
    timestamp: Option<SystemTime>,
    secret_index: Option<usize>,
    /// The replay key of a delivery without a delivery id whose timestamp is signed: `sig-` and
    /// the start of its MAC.
    fingerprint: Option<Text>,
}

/// The fingerprint (a part of the MAC) is shown as whether there is one: a MAC is no secret,
/// but a `Debug` line has no use for it.
impl fmt::Debug for VerifiedWebhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedWebhook")
            .field("provider", &self.provider)
            .field("delivery_id", &self.delivery_id)
            .field("event", &self.event)
            .field("timestamp", &self.timestamp)
            .field("secret_index", &self.secret_index)
            .field(
                "fingerprint",
                &self.fingerprint.as_ref().map(|_| "sig-<MAC>"),
            )
            .finish()
    }
}

impl VerifiedWebhook {
    /// Who signed it.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::{Provider, SignatureLayer};
    ///
    /// let layer = SignatureLayer::gitlab("glpat-webhook-token").unwrap();
    /// let req = http::Request::post("/gitlab")
    ///     .header("x-gitlab-token", "glpat-webhook-token")
    ///     .body("{}")
    ///     .unwrap();
    /// let hook = layer.verify(req.headers(), req.body().as_bytes()).unwrap();
    /// assert_eq!(hook.provider(), Provider::GitLab);
    /// ```
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// The delivery id (e.g. `X-GitHub-Delivery`, `webhook-id`, a Stripe event id), if the
    /// provider sent one.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::SignatureLayer;
    ///
    /// let layer = SignatureLayer::github("It's a Secret to Everybody").unwrap();
    /// let req = http::Request::post("/github")
    ///     .header("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
    ///     .header("x-hub-signature-256", "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")
    ///     .body("Hello, World!")
    ///     .unwrap();
    /// let hook = layer.verify(req.headers(), req.body().as_bytes()).unwrap();
    /// assert_eq!(hook.delivery_id(), Some("72d3162e-cc78-11e3-81ab-4c9367dc0958"));
    /// ```
    pub fn delivery_id(&self) -> Option<&str> {
        self.delivery_id.as_ref().map(Text::as_str)
    }

    /// The event name (e.g. `X-GitHub-Event`, `X-Gitlab-Event`, Stripe's `type`), if known.
    ///
    /// Read from a header, it is not covered by the signature (GitHub, GitLab, Bitbucket,
    /// Gitea, Shopify and Twitch sign the body, and Twitch its message id and timestamp, not
    /// the event headers): a copy of a delivery can be resent under another name. Where acting
    /// on the wrong kind of payload matters, check the payload's own fields (Twitch:
    /// `subscription.type`).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::SignatureLayer;
    ///
    /// let layer = SignatureLayer::gitlab("glpat-webhook-token").unwrap();
    /// let req = http::Request::post("/gitlab")
    ///     .header("x-gitlab-token", "glpat-webhook-token")
    ///     .header("x-gitlab-event", "Merge Request Hook")
    ///     .body(r#"{"object_kind":"merge_request"}"#)
    ///     .unwrap();
    /// let hook = layer.verify(req.headers(), req.body().as_bytes()).unwrap();
    /// assert_eq!(hook.event(), Some("Merge Request Hook"));
    /// ```
    pub fn event(&self) -> Option<&str> {
        self.event.as_ref().map(Text::as_str)
    }

    /// The signed timestamp, for schemes that sign one.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use tower_webhook::signature::{Clock, SignatureLayer};
    ///
    /// let signed_at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    /// let layer = SignatureLayer::slack("slack-signing-secret").unwrap().clock(Clock::fixed(signed_at));
    /// let req = http::Request::post("/slack/events")
    ///     .header("x-slack-request-timestamp", "1700000000")
    ///     .header("x-slack-signature", "v0=b267c736bd224b65ec14717c3ea2721405c0c90c903a9dd3e66299c1e60472b8")
    ///     .body(r#"{"type":"event_callback","event_id":"Ev01"}"#)
    ///     .unwrap();
    /// let hook = layer.verify(req.headers(), req.body().as_bytes()).unwrap();
    /// assert_eq!(hook.timestamp(), Some(signed_at));
    /// ```
    pub fn timestamp(&self) -> Option<SystemTime> {
        self.timestamp
    }

    /// Which configured secret matched (0 = the first), for rotation bookkeeping; `None` when
    /// verification was skipped.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::SignatureLayer;
    ///
    /// // Rotation: the new secret first, the old one until every sender has switched.
    /// let layer = SignatureLayer::github_with_secrets(["new-secret", "old-secret"]).unwrap();
    /// let req = http::Request::post("/github")
    ///     .header("x-hub-signature-256", "sha256=e7f4750c1d0580871565739b45147585cd7f2622003135f604ae5d6aac8f9577")
    ///     .body("Hello, World!")
    ///     .unwrap();
    /// let hook = layer.verify(req.headers(), req.body().as_bytes()).unwrap();
    /// assert_eq!(hook.secret_index(), Some(1)); // still signed with the old secret
    /// ```
    pub fn secret_index(&self) -> Option<usize> {
        self.secret_index
    }

    /// What the replay store knows the delivery by: its delivery id, or, for a delivery without
    /// one whose timestamp is signed, the start of its MAC.
    fn replay_id(&self) -> Option<&str> {
        self.delivery_id()
            .or_else(|| self.fingerprint.as_ref().map(Text::as_str))
    }

    /// The start of the MAC of a delivery whose id the MAC does not cover (a custom scheme's id
    /// header) and whose timestamp is signed: recorded beside the id, so that a copy sent again
    /// under another id, or none, is a replay too.
    fn replay_also(&self) -> Option<&str> {
        self.delivery_id
            .as_ref()
            .and(self.fingerprint.as_ref())
            .map(Text::as_str)
    }
}

#[cfg(feature = "axum")]
impl<St: Send + Sync> axum_core::extract::FromRequestParts<St> for VerifiedWebhook {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &St,
    ) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<VerifiedWebhook>()
            .cloned()
            .ok_or_else(|| {
                tracing::error!("VerifiedWebhook extractor used on a route without SignatureLayer");
                Problem::new(StatusCode::INTERNAL_SERVER_ERROR)
            })
    }
}

#[derive(Clone)]
struct Shared {
    scheme: Scheme,
    algorithm: Algorithm,
    secrets: Vec<Secret>,
    keys: Keys,
    max_body: u64,
    tolerance: Duration,
    max_signatures: usize,
    clock: Clock,
    replay: Option<Arc<dyn ReplayStore>>,
    replay_ttl: Duration,
    claim_ttl: Duration,
    record: RecordDelivery,
    on_replay: OnReplay,
    handshakes: bool,
    /// `WWW-Authenticate` of a 401.
    challenge: String,
    /// Where a request's id is read from, for the log.
    request_id_header: HeaderName,
}

/// Layer that lets only deliveries with a valid signature reach the inner service.
///
/// Build it with the constructor named after the provider; every setting has a safe default.
/// See the [module docs](super) for the schemes, the order of checks and the responses.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_webhook::signature::{OnReplay, SignatureLayer};
///
/// let layer = SignatureLayer::stripe("whsec_test_secret")
///     .unwrap()
///     .secret("whsec_previous_secret")
///     .unwrap()
///     .max_body_size(1024 * 1024)
///     .timestamp_tolerance(Duration::from_secs(120))
///     .on_replay(OnReplay::Acknowledge(http::StatusCode::OK));
/// assert!(!format!("{layer:?}").contains("whsec_test_secret"));
/// ```
#[derive(Clone)]
pub struct SignatureLayer {
    shared: Arc<Shared>,
}

impl SignatureLayer {
    fn build(
        scheme: Scheme,
        algorithm: Algorithm,
        secrets: Vec<Secret>,
    ) -> Result<Self, SignatureConfigError> {
        let provider = scheme.provider;
        let mut prepared = Vec::with_capacity(secrets.len());
        for secret in secrets {
            prepared.push(prepare_secret(provider, secret)?);
        }
        if prepared.is_empty() && !scheme.is_unverified() {
            return Err(SignatureConfigError::EmptySecret);
        }
        let keys = scheme.keys(&prepared, algorithm);
        let challenge = scheme.challenge();
        Ok(Self {
            shared: Arc::new(Shared {
                scheme,
                algorithm,
                secrets: prepared,
                keys,
                max_body: DEFAULT_MAX_BODY_SIZE,
                tolerance: match provider {
                    Provider::Twitch => TWITCH_TIMESTAMP_TOLERANCE,
                    _ => DEFAULT_TIMESTAMP_TOLERANCE,
                },
                max_signatures: MAX_SIGNATURES,
                clock: Clock::system(),
                replay: Some(Arc::new(MemoryReplayStore::new())),
                replay_ttl: DEFAULT_REPLAY_TTL,
                claim_ttl: DEFAULT_CLAIM_TTL,
                record: RecordDelivery::AfterSuccess,
                on_replay: OnReplay::Reject,
                handshakes: true,
                challenge,
                request_id_header: HeaderName::from_static("x-request-id"),
            }),
        })
    }

    /// A layer for `provider`, accepting a signature made with any of `secrets`.
    ///
    /// For [`Provider::AzureDevOps`] each secret is `username:password` (refused without the
    /// colon, as it could never match, or with an empty or blank password); for
    /// [`Provider::StandardWebhooks`] it is the `whsec_...` string. Fails on an empty list or
    /// an empty (or blank) secret, and for [`Provider::Custom`] / [`Provider::Unverified`] (use
    /// [`custom`](Self::custom) / [`dangerously_skip_verification`](Self::dangerously_skip_verification)).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::{Provider, SignatureLayer};
    ///
    /// let layer = SignatureLayer::with_secrets(Provider::BitbucketCloud, ["new-secret", "old-secret"]).unwrap();
    /// let req = http::Request::post("/bitbucket")
    ///     .header("x-hub-signature", "sha256=e7f4750c1d0580871565739b45147585cd7f2622003135f604ae5d6aac8f9577")
    ///     .body("Hello, World!")
    ///     .unwrap();
    /// let hook = layer.verify(req.headers(), req.body().as_bytes()).unwrap();
    /// assert_eq!((hook.provider(), hook.secret_index()), (Provider::BitbucketCloud, Some(1)));
    ///
    /// assert!(SignatureLayer::with_secrets(Provider::Custom, ["secret"]).is_err());
    /// ```
    pub fn with_secrets(
        provider: Provider,
        secrets: impl Into<Secrets>,
    ) -> Result<Self, SignatureConfigError> {
        if matches!(provider, Provider::Custom | Provider::Unverified) {
            return Err(SignatureConfigError::InvalidSetting {
                name: "provider",
                reason: "use SignatureLayer::custom or SignatureLayer::dangerously_skip_verification",
            });
        }
        Self::build(
            Scheme::builtin(provider),
            Algorithm::Sha256,
            secrets.into().into_vec(),
        )
    }

    fn one(provider: Provider, secret: impl Into<Secret>) -> Result<Self, SignatureConfigError> {
        Self::with_secrets(provider, Secrets::new().with(secret))
    }

    /// GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`; delivery id
    /// `X-GitHub-Delivery`, event `X-GitHub-Event`.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::SignatureLayer;
    ///
    /// let layer = SignatureLayer::github("It's a Secret to Everybody").unwrap();
    /// let req = http::Request::post("/github")
    ///     .header("x-github-event", "ping")
    ///     .header("x-hub-signature-256", "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")
    ///     .body("Hello, World!")
    ///     .unwrap();
    /// let hook = layer.verify(req.headers(), req.body().as_bytes()).unwrap();
    /// assert_eq!(hook.event(), Some("ping"));
    /// ```
    pub fn github(secret: impl Into<Secret>) -> Result<Self, SignatureConfigError> {
        Self::one(Provider::GitHub, secret)
    }

    /// GitHub with several secrets at once (rotation).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::{Secrets, SignatureLayer};
    ///
    /// let layer = SignatureLayer::github_with_secrets(Secrets::from_list("new-secret,old-secret").unwrap()).unwrap();
    /// let req = http::Request::post("/github")
    ///     .header("x-hub-signature-256", "sha256=693585aa43518a80e267fbc0ace9296f035480e1a1b11cd09cf6a9b8a7ef0330")
    ///     .body("Hello, World!")
    ///     .unwrap();
    /// let hook = layer.verify(req.headers(), req.body().as_bytes()).unwrap();
    /// assert_eq!(hook.secret_index(), Some(0)); // signed with the new secret
    /// ```
    pub fn github_with_secrets(secrets: impl Into<Secrets>) -> Result<Self, SignatureConfigError> {
        Self::with_secrets(Provider::GitHub, secrets)
    }

    /// GitLab: `X-Gitlab-Token: <token>`, compared in constant time (as SHA-256 digests);
    /// delivery id `Idempotency-Key`, event `X-Gitlab-Event`.
    ///
    /// `Idempotency-Key` (GitLab 17.4 and later) is the one GitLab keeps on its retries. A
    /// delivery from an older GitLab has none and is not deduplicated. `X-Gitlab-Event-UUID` is
    /// not a delivery id: GitLab gives the deliveries of one request to one hook the same value,
    /// and a retry a new one.
    ///
    /// This is GitLab's secret token. A webhook with a signing token (`whsec_...`) is signed in
    /// the Standard Webhooks format instead: verify it with
    /// [`standard_webhooks`](Self::standard_webhooks).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::{SignatureLayer, SignatureValidationError};
    ///
    /// let layer = SignatureLayer::gitlab("glpat-webhook-token").unwrap();
    /// let req = http::Request::post("/gitlab")
    ///     .header("x-gitlab-token", "glpat-webhook-token")
    ///     .header("x-gitlab-event", "Push Hook")
    ///     .header("idempotency-key", "8a5f5b3e-1c4d-4a7e-9f0b-2d6c8e1a3b5f")
    ///     .body(r#"{"object_kind":"push"}"#)
    ///     .unwrap();
    /// let hook = layer.verify(req.headers(), req.body().as_bytes()).unwrap();
    /// assert_eq!(hook.delivery_id(), Some("8a5f5b3e-1c4d-4a7e-9f0b-2d6c8e1a3b5f"));
    ///
    /// let mut wrong = req.headers().clone();
    /// wrong.insert("x-gitlab-token", "guess".parse().unwrap());
    /// let err = layer.verify(&wrong, req.body().as_bytes()).unwrap_err();
    /// assert!(matches!(err, SignatureValidationError::Mismatch));
    /// ```
    pub fn gitlab(token: impl Into<Secret>) -> Result<Self, SignatureConfigError> {
        Self::one(Provider::GitLab, token)
    }

    /// Bitbucket Cloud: `X-Hub-Signature: sha256=<hex>`; delivery id `X-Request-UUID`, event
    /// `X-Event-Key`.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::SignatureLayer;
    ///
    /// let layer = SignatureLayer::bitbucket_cloud("bitbucket-secret").unwrap();
    /// let req = http::Request::post("/bitbucket")
    ///     .header("x-event-key", "repo:push")
    ///     .header("x-request-uuid", "4f1c2e3d-5b6a-4c7d-8e9f-0a1b2c3d4e5f")
    ///     .header("x-hub-signature", "sha256=f82ca9d512a3d2ceb725dbe3f11c0d8ff01a9a565e4ec7673fa5b0fc39254b90")
    ///     .body(r#"{"ref":"refs/heads/main"}"#)
    ///     .unwrap();
    /// let hook = layer.verify(req.headers(), req.body().as_bytes()).unwrap();
    /// assert_eq!(hook.event(), Some("repo:push"));
    /// assert_eq!(hook.delivery_id(), Some("4f1c2e3d-5b6a-4c7d-8e9f-0a1b2c3d4e5f"));
    /// ```
    pub fn bitbucket_cloud(secret: impl Into<Secret>) -> Result<Self, SignatureConfigError> {
        Self::one(Provider::BitbucketCloud, secret)
    }

    /// Bitbucket Data Center / Server: `X-Hub-Signature: sha256=<hex>`; delivery id
    /// `X-Request-Id`, event `X-Event-Key`.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::SignatureLayer;
    ///
    /// let layer = SignatureLayer::bitbucket_data_center("bitbucket-secret").unwrap();
    /// let req = http::Request::post("/bitbucket")
    ///     .header("x-event-key", "repo:refs_changed")
    ///     .header("x-request-id", "0e4b1c2a-7d3f-4e5a-9b8c-6d1e2f3a4b5c")
    ///     .header("x-hub-signature", "sha256=f82ca9d512a3d2ceb725dbe3f11c0d8ff01a9a565e4ec7673fa5b0fc39254b90")
    ///     .body(r#"{"ref":"refs/heads/main"}"#)
    ///     .unwrap();
    /// let hook = layer.verify(req.headers(), req.body().as_bytes()).unwrap();
    /// assert_eq!(hook.event(), Some("repo:refs_changed"));
    /// assert_eq!(hook.delivery_id(), Some("0e4b1c2a-7d3f-4e5a-9b8c-6d1e2f3a4b5c"));
    /// ```
    pub fn bitbucket_data_center(secret: impl Into<Secret>) -> Result<Self, SignatureConfigError> {
        Self::one(Provider::BitbucketDataCenter, secret)
    }

    /// Gitea: `X-Gitea-Signature: <hex>` over the JSON payload; delivery id `X-Gitea-Delivery`,
    /// event `X-Gitea-Event`. A form delivery must be exactly `payload=<urlencoded JSON>` (the
    /// decoded payload is what is signed; other fields would not be covered, so they are refused).
    /// A webhook set to the HTTP method `GET` (payload in the query string) gets 400, logged as
    /// such: set it to `POST`.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::SignatureLayer;
    ///
    /// let layer = SignatureLayer::gitea("gitea-secret").unwrap();
    /// let req = http::Request::post("/gitea")
    ///     .header("content-type", "application/json")
    ///     .header("x-gitea-event", "push")
    ///     .header("x-gitea-delivery", "2c0e1d8a-6f4b-4b1e-9c3d-7a5e8f9b0c1d")
    ///     .header("x-gitea-signature", "6aab54046b413afedbc6d4ff0d3b4fd694c1af82c19c0be7ee9b80438b90223d")
    ///     .body(r#"{"ref":"refs/heads/main"}"#)
    ///     .unwrap();
    /// let hook = layer.verify(req.headers(), req.body().as_bytes()).unwrap();
    /// assert_eq!(hook.event(), Some("push"));
    /// ```
    pub fn gitea(secret: impl Into<Secret>) -> Result<Self, SignatureConfigError> {
        Self::one(Provider::Gitea, secret)
    }

    /// Forgejo: as [`gitea`](Self::gitea) with the `X-Forgejo-*` headers (the `X-Gitea-*` ones
    /// are accepted too).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::{Provider, SignatureLayer};
    ///
    /// let layer = SignatureLayer::forgejo("forgejo-secret").unwrap();
    /// let req = http::Request::post("/forgejo")
    ///     .header("content-type", "application/json")
    ///     .header("x-forgejo-event", "push")
    ///     .header("x-forgejo-signature", "badfb80e59d69a5612424b1d45042317c24eb4fbc4862e437bd0ae086f8a6104")
    ///     .body(r#"{"ref":"refs/heads/main"}"#)
    ///     .unwrap();
    /// let hook = layer.verify(req.headers(), req.body().as_bytes()).unwrap();
    /// assert_eq!((hook.provider(), hook.event()), (Provider::Forgejo, Some("push")));
    /// ```
    pub fn forgejo(secret: impl Into<Secret>) -> Result<Self, SignatureConfigError> {
        Self::one(Provider::Forgejo, secret)
    }

    /// Azure DevOps service hooks with basic authentication: `Authorization: Basic`, compared in
    /// constant time; delivery id and event from the body's `id` and `eventType`. A test sent
    /// from the service hook's "Test" dialog (the nil `subscriptionId`, a sample `id` that is
    /// the same on every click) is handed on each time, not deduplicated.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::SignatureLayer;
    ///
    /// let layer = SignatureLayer::azure_devops("hooks", "p4ssw0rd").unwrap();
    /// let req = http::Request::post("/azure-devops")
    ///     .header("authorization", "Basic aG9va3M6cDRzc3cwcmQ=") // hooks:p4ssw0rd
    ///     .body(r#"{"id":"1b2a3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d","eventType":"git.push"}"#)
    ///     .unwrap();
    /// let hook = layer.verify(req.headers(), req.body().as_bytes()).unwrap();
    /// assert_eq!(hook.event(), Some("git.push"));
    /// assert_eq!(hook.delivery_id(), Some("1b2a3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"));
    /// ```
    pub fn azure_devops(
        username: &str,
        password: impl Into<Secret>,
    ) -> Result<Self, SignatureConfigError> {
        let password = password.into();
        if blank(password.expose()) {
            return Err(SignatureConfigError::EmptySecret);
        }
        let mut credential = Vec::with_capacity(username.len() + 1 + password.len());
        credential.extend_from_slice(username.as_bytes());
        credential.push(b':');
        credential.extend_from_slice(password.expose());
        Self::one(Provider::AzureDevOps, Secret::from_vec(credential))
    }

    /// Stripe: `Stripe-Signature: t=<ts>,v1=<hex>[,v1=...]` over `<ts>.<body>`, the `whsec_...`
    /// secret used as is; timestamp window applies; delivery id and event from the body's `id`
    /// and `type`.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use tower_webhook::signature::{Clock, SignatureLayer};
    ///
    /// let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000); // in production: the system clock
    /// let layer = SignatureLayer::stripe("whsec_test").unwrap().clock(Clock::fixed(now));
    /// let req = http::Request::post("/stripe")
    ///     .header("stripe-signature", "t=1700000000,v1=4aa90aa69730f112c87accbf54203d1076675eae3b18a5cb82b5ab9e7f5cd5bc")
    ///     .body(r#"{"id":"evt_1","type":"invoice.paid"}"#)
    ///     .unwrap();
    /// let hook = layer.verify(req.headers(), req.body().as_bytes()).unwrap();
    /// assert_eq!(hook.delivery_id(), Some("evt_1"));
    /// assert_eq!(hook.event(), Some("invoice.paid"));
    /// ```
    pub fn stripe(secret: impl Into<Secret>) -> Result<Self, SignatureConfigError> {
        Self::one(Provider::Stripe, secret)
    }

    /// Slack: `X-Slack-Signature: v0=<hex>` over `v0:<ts>:<body>` with
    /// `X-Slack-Request-Timestamp`; answers the `url_verification` challenge itself.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use tower_webhook::signature::{Clock, SignatureLayer};
    ///
    /// let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000); // in production: the system clock
    /// let layer = SignatureLayer::slack("slack-signing-secret").unwrap().clock(Clock::fixed(now));
    /// let req = http::Request::post("/slack/events")
    ///     .header("x-slack-request-timestamp", "1700000000")
    ///     .header("x-slack-signature", "v0=b267c736bd224b65ec14717c3ea2721405c0c90c903a9dd3e66299c1e60472b8")
    ///     .body(r#"{"type":"event_callback","event_id":"Ev01"}"#)
    ///     .unwrap();
    /// let hook = layer.verify(req.headers(), req.body().as_bytes()).unwrap();
    /// assert_eq!(hook.delivery_id(), Some("Ev01"));
    /// assert_eq!(hook.event(), Some("event_callback"));
    /// ```
    pub fn slack(signing_secret: impl Into<Secret>) -> Result<Self, SignatureConfigError> {
        Self::one(Provider::Slack, signing_secret)
    }

    /// Zoom: `x-zm-signature: v0=<hex>` over `v0:<ts>:<body>` with `x-zm-request-timestamp`
    /// (the app's secret token); event from the body's `event`. Answers the
    /// `endpoint.url_validation` check itself, after verification.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use tower_webhook::signature::{Clock, SignatureLayer};
    ///
    /// let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000); // in production: the system clock
    /// let layer = SignatureLayer::zoom("zoom-secret-token").unwrap().clock(Clock::fixed(now));
    /// let req = http::Request::post("/zoom")
    ///     .header("x-zm-request-timestamp", "1700000000")
    ///     .header("x-zm-signature", "v0=c79071935bf4fc1bf06006c9850279ce805d8e92fe5458af4ca91eb06e0174f5")
    ///     .body(r#"{"event":"meeting.started","payload":{}}"#)
    ///     .unwrap();
    /// let hook = layer.verify(req.headers(), req.body().as_bytes()).unwrap();
    /// assert_eq!(hook.event(), Some("meeting.started"));
    /// ```
    pub fn zoom(secret_token: impl Into<Secret>) -> Result<Self, SignatureConfigError> {
        Self::one(Provider::Zoom, secret_token)
    }

    /// Twitch EventSub: `Twitch-Eventsub-Message-Signature: sha256=<hex>` over
    /// `<message id><timestamp><body>` with `Twitch-Eventsub-Message-Id` and the RFC 3339
    /// `Twitch-Eventsub-Message-Timestamp` (window applies: 600 s by default, as Twitch says to
    /// refuse a message older than 10 minutes); delivery id the message id, event
    /// `Twitch-Eventsub-Subscription-Type`. Answers `webhook_callback_verification` itself.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use tower_webhook::signature::{Clock, SignatureLayer};
    ///
    /// let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000); // in production: the system clock
    /// let layer = SignatureLayer::twitch("twitch-secret").unwrap().clock(Clock::fixed(now));
    /// let req = http::Request::post("/twitch")
    ///     .header("twitch-eventsub-message-id", "e76c6bd4-55c9-4987-8304-da1588d8988b")
    ///     .header("twitch-eventsub-message-timestamp", "2023-11-14T22:13:20Z")
    ///     .header("twitch-eventsub-message-type", "notification")
    ///     .header("twitch-eventsub-subscription-type", "channel.follow")
    ///     .header("twitch-eventsub-message-signature", "sha256=7159c1acd21ccea02cf29946ac38786eec46bcf6178aac74fdde9e848af1161b")
    ///     .body(r#"{"subscription":{"type":"channel.follow"}}"#)
    ///     .unwrap();
    /// let hook = layer.verify(req.headers(), req.body().as_bytes()).unwrap();
    /// assert_eq!(hook.event(), Some("channel.follow"));
    /// assert_eq!(hook.delivery_id(), Some("e76c6bd4-55c9-4987-8304-da1588d8988b"));
    /// ```
    pub fn twitch(secret: impl Into<Secret>) -> Result<Self, SignatureConfigError> {
        Self::one(Provider::Twitch, secret)
    }

    /// Shopify: `X-Shopify-Hmac-Sha256: <base64>`; delivery id `X-Shopify-Webhook-Id`, event
    /// `X-Shopify-Topic`. Shopify's Events deliveries name the same headers without `X-`
    /// (`Shopify-Hmac-Sha256`, `Shopify-Webhook-Id`, `Shopify-Topic`): they are read too, the
    /// `X-` name first where a delivery has both.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::SignatureLayer;
    ///
    /// let layer = SignatureLayer::shopify("shopify-secret").unwrap();
    /// let req = http::Request::post("/shopify")
    ///     .header("x-shopify-topic", "orders/create")
    ///     .header("x-shopify-webhook-id", "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043")
    ///     .header("x-shopify-hmac-sha256", "GnHscbVjtjtA02SzM+6yb+4vvhJTO/18EJqccqOuIw0=")
    ///     .body(r#"{"id":1}"#)
    ///     .unwrap();
    /// let hook = layer.verify(req.headers(), req.body().as_bytes()).unwrap();
    /// assert_eq!(hook.event(), Some("orders/create"));
    /// ```
    pub fn shopify(secret: impl Into<Secret>) -> Result<Self, SignatureConfigError> {
        Self::one(Provider::Shopify, secret)
    }

    /// Standard Webhooks (Svix and the services built on it): `webhook-signature: v1,<base64>
    /// [v1,<base64> ...]` over `<webhook-id>.<webhook-timestamp>.<body>`, key = base64 of the
    /// `whsec_`-stripped secret. The `svix-*` header names are accepted too.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use tower_webhook::signature::{Clock, SignatureLayer};
    ///
    /// let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000); // in production: the system clock
    /// let layer = SignatureLayer::standard_webhooks("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    ///     .unwrap()
    ///     .clock(Clock::fixed(now));
    /// let req = http::Request::post("/webhooks")
    ///     .header("webhook-id", "msg_1")
    ///     .header("webhook-timestamp", "1700000000")
    ///     .header("webhook-signature", "v1,kOj2q0zEj64xJ4CFAG8P/pkBWowoZLHSfYwlNdsAFT8=")
    ///     .body(r#"{"type":"user.created"}"#)
    ///     .unwrap();
    /// let hook = layer.verify(req.headers(), req.body().as_bytes()).unwrap();
    /// assert_eq!((hook.delivery_id(), hook.event()), (Some("msg_1"), Some("user.created")));
    /// ```
    pub fn standard_webhooks(secret: impl Into<Secret>) -> Result<Self, SignatureConfigError> {
        Self::one(Provider::StandardWebhooks, secret)
    }

    /// Your own scheme, see [`CustomScheme`].
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::{Algorithm, CustomScheme, Provider, SignatureLayer};
    ///
    /// // GitHub's legacy header: `X-Hub-Signature: sha1=<hex>`.
    /// let scheme = CustomScheme::new("x-hub-signature").prefix("sha1=").algorithm(Algorithm::Sha1);
    /// let layer = SignatureLayer::custom(scheme, "It's a Secret to Everybody").unwrap();
    /// let req = http::Request::post("/hook")
    ///     .header("x-hub-signature", "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59")
    ///     .body("Hello, World!")
    ///     .unwrap();
    /// let hook = layer.verify(req.headers(), req.body().as_bytes()).unwrap();
    /// assert_eq!(hook.provider(), Provider::Custom);
    /// ```
    pub fn custom(
        scheme: CustomScheme,
        secret: impl Into<Secret>,
    ) -> Result<Self, SignatureConfigError> {
        let algorithm = scheme_algorithm(&scheme);
        Self::build(Scheme::custom(&scheme)?, algorithm, vec![secret.into()])
    }

    /// **Accepts every delivery without verifying anything.** Only for local experiments: any
    /// caller can then trigger the handler. Size limits still apply, and the
    /// [`VerifiedWebhook`] says [`Provider::Unverified`]. Logs an error when built.
    ///
    /// # Example
    ///
    /// ```
    /// use http::HeaderMap;
    /// use tower_webhook::signature::{Provider, SignatureLayer};
    ///
    /// let layer = SignatureLayer::dangerously_skip_verification();
    /// let hook = layer.verify(&HeaderMap::new(), b"{}").unwrap(); // no signature at all
    /// assert_eq!(hook.provider(), Provider::Unverified);
    /// assert_eq!(hook.secret_index(), None);
    /// ```
    pub fn dangerously_skip_verification() -> Self {
        tracing::error!(
            "SignatureLayer built with dangerously_skip_verification: webhook signatures are NOT checked"
        );
        let mut layer = Self::build(
            Scheme::builtin(Provider::Unverified),
            Algorithm::Sha256,
            Vec::new(),
        )
        .unwrap_or_else(|_| unreachable!("an unverified scheme needs no secret"));
        layer.update(|s| s.replay = None);
        layer
    }

    /// Adds one more accepted secret (rotation: add the new one, remove the old one later).
    ///
    /// For [`azure_devops`](Self::azure_devops) it is a whole credential, `username:password`;
    /// one without the colon is refused, as it could never match a delivery, and one with an
    /// empty or blank password (`hooks:`) is an empty secret. For
    /// [`standard_webhooks`](Self::standard_webhooks) it is the `whsec_...` string.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::SignatureLayer;
    ///
    /// let layer = SignatureLayer::github("new-secret").unwrap().secret("old-secret").unwrap();
    /// let req = http::Request::post("/github")
    ///     .header("x-hub-signature-256", "sha256=e7f4750c1d0580871565739b45147585cd7f2622003135f604ae5d6aac8f9577")
    ///     .body("Hello, World!")
    ///     .unwrap();
    /// let hook = layer.verify(req.headers(), req.body().as_bytes()).unwrap();
    /// assert_eq!(hook.secret_index(), Some(1)); // the old secret
    ///
    /// assert!(SignatureLayer::github("new-secret").unwrap().secret("").is_err());
    /// ```
    pub fn secret(mut self, secret: impl Into<Secret>) -> Result<Self, SignatureConfigError> {
        if self.shared.scheme.is_unverified() {
            return Err(SignatureConfigError::InvalidSetting {
                name: "secret",
                reason: "verification is disabled on this layer",
            });
        }
        let secret = prepare_secret(self.shared.scheme.provider, secret.into())?;
        self.update(|s| {
            s.secrets.push(secret);
            s.keys = s.scheme.keys(&s.secrets, s.algorithm);
        });
        Ok(self)
    }

    fn update(&mut self, f: impl FnOnce(&mut Shared)) {
        f(Arc::make_mut(&mut self.shared));
    }

    /// Largest accepted body in bytes (default [`DEFAULT_MAX_BODY_SIZE`], 25 MiB). Larger
    /// deliveries get 413: at once when `Content-Length` says so, else when the cap is reached,
    /// never buffering more.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::error::HttpError;
    /// use tower_webhook::signature::{SignatureLayer, SignatureValidationError};
    ///
    /// let layer = SignatureLayer::github("It's a Secret to Everybody").unwrap().max_body_size(8);
    /// let req = http::Request::post("/github")
    ///     .header("x-hub-signature-256", "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")
    ///     .body("Hello, World!") // 13 bytes
    ///     .unwrap();
    /// let err = layer.verify(req.headers(), req.body().as_bytes()).unwrap_err();
    /// assert!(matches!(err, SignatureValidationError::PayloadTooLarge { limit: 8 }));
    /// assert_eq!(err.status(), 413);
    /// ```
    pub fn max_body_size(mut self, bytes: u64) -> Self {
        self.update(|s| s.max_body = bytes);
        self
    }

    /// How far a signed timestamp may be from the clock, either way (default 300 s; 600 s for
    /// Twitch, whose docs give 10 minutes).
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use tower_webhook::signature::{Clock, SignatureLayer, SignatureValidationError};
    ///
    /// // Checked two minutes after it was signed.
    /// let clock = Clock::fixed(UNIX_EPOCH + Duration::from_secs(1_700_000_120));
    /// let layer = SignatureLayer::stripe("whsec_test").unwrap().clock(clock);
    /// let req = http::Request::post("/stripe")
    ///     .header("stripe-signature", "t=1700000000,v1=4aa90aa69730f112c87accbf54203d1076675eae3b18a5cb82b5ab9e7f5cd5bc")
    ///     .body(r#"{"id":"evt_1","type":"invoice.paid"}"#)
    ///     .unwrap();
    /// let (headers, body) = (req.headers(), req.body().as_bytes());
    /// assert!(layer.verify(headers, body).is_ok());
    /// let strict = layer.timestamp_tolerance(Duration::from_secs(60));
    /// let err = strict.verify(headers, body).unwrap_err();
    /// assert!(matches!(err, SignatureValidationError::TimestampOutOfWindow { .. }));
    /// ```
    pub fn timestamp_tolerance(mut self, tolerance: Duration) -> Self {
        self.update(|s| s.tolerance = tolerance);
        self
    }

    /// Most signatures accepted in one delivery (default and maximum 8; at least 1).
    ///
    /// Only signatures that could match count: a Stripe `v1` or a Standard Webhooks `v1,`
    /// entry of the right form. Other entries (`v0`, another version, one that is not hex or
    /// base64) are skipped, as the providers' libraries skip them.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use tower_webhook::signature::{Clock, SignatureLayer, SignatureValidationError};
    ///
    /// let clock = Clock::fixed(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    /// let layer = SignatureLayer::stripe("whsec_test").unwrap().clock(clock);
    /// // Stripe sends one `v1` per active secret while a secret is being rolled.
    /// let req = http::Request::post("/stripe")
    ///     .header("stripe-signature", "t=1700000000,\
    ///         v1=d13175aede5abd17f608014cc932a35d96e3c14e1ca5933a3a87aa37a60768fb,\
    ///         v1=4aa90aa69730f112c87accbf54203d1076675eae3b18a5cb82b5ab9e7f5cd5bc")
    ///     .body(r#"{"id":"evt_1","type":"invoice.paid"}"#)
    ///     .unwrap();
    /// let (headers, body) = (req.headers(), req.body().as_bytes());
    /// assert!(layer.verify(headers, body).is_ok());
    /// let err = layer.max_signatures(1).verify(headers, body).unwrap_err();
    /// assert!(matches!(err, SignatureValidationError::TooManySignatures(1)));
    /// ```
    pub fn max_signatures(mut self, max: usize) -> Self {
        self.update(|s| s.max_signatures = max.clamp(1, MAX_SIGNATURES));
        self
    }

    /// Reads the time from `clock` instead of the system clock (for tests).
    ///
    /// This is the time the signed timestamps are checked against. A replay store keeps its own
    /// clock: give the same one to [`MemoryReplayStore::clock`] to move both together.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use tower_webhook::signature::{Clock, SignatureLayer};
    ///
    /// // A recorded Slack request, replayed in a test at the moment it was signed.
    /// let signed_at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    /// let layer = SignatureLayer::slack("slack-signing-secret").unwrap();
    /// let req = http::Request::post("/slack/events")
    ///     .header("x-slack-request-timestamp", "1700000000")
    ///     .header("x-slack-signature", "v0=b267c736bd224b65ec14717c3ea2721405c0c90c903a9dd3e66299c1e60472b8")
    ///     .body(r#"{"type":"event_callback","event_id":"Ev01"}"#)
    ///     .unwrap();
    /// let (headers, body) = (req.headers(), req.body().as_bytes());
    /// assert!(layer.verify(headers, body).is_err()); // stale for the system clock
    /// assert!(layer.clock(Clock::fixed(signed_at)).verify(headers, body).is_ok());
    /// ```
    pub fn clock(mut self, clock: Clock) -> Self {
        self.update(|s| s.clock = clock);
        self
    }

    /// Records delivery ids in `store` instead of the default in-memory store.
    ///
    /// Ids are kept as `<provider>:<id>` (`github:72d3...`, `custom:42`): layers of one
    /// provider that share a store share its ids. Give routes of one provider whose senders
    /// differ (two custom schemes, each numbering its deliveries from 1) a store each, or, with
    /// Redis, a `RedisReplayStore::prefix` each (feature `redis`).
    ///
    /// # Example
    ///
    /// ```
    /// use std::sync::Arc;
    /// use bytes::Bytes;
    /// use http::{Request, Response};
    /// use http_body_util::Full;
    /// use tower::{ServiceBuilder, ServiceExt};
    /// use tower_webhook::signature::{MemoryReplayStore, SignatureLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// // One store for every route of the process (an `Arc` is a store too). Routes of one
    /// // provider that may receive the same event (two Stripe endpoints) each need their own:
    /// // a copy to the second would be refused as a replay of the first.
    /// let store = Arc::new(MemoryReplayStore::with_capacity(10_000));
    /// let github = SignatureLayer::github("It's a Secret to Everybody").unwrap().replay_store(store.clone());
    /// let svc = ServiceBuilder::new().layer(github).service_fn(|_: Request<Full<Bytes>>| async {
    ///     Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::default()))
    /// });
    ///
    /// let req = Request::post("/github")
    ///     .header("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
    ///     .header("x-hub-signature-256", "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")
    ///     .body(Full::new(Bytes::from_static(b"Hello, World!")))
    ///     .unwrap();
    /// assert_eq!(svc.oneshot(req).await.unwrap().status(), 200);
    /// assert_eq!(store.len(), 1);
    /// # }
    /// ```
    pub fn replay_store(mut self, store: impl ReplayStore) -> Self {
        let store: Arc<dyn ReplayStore> = Arc::new(store);
        self.update(|s| s.replay = Some(store));
        self
    }

    /// Turns delivery-id deduplication off (signed timestamps are still checked).
    ///
    /// # Example
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::{Request, Response};
    /// use http_body_util::Full;
    /// use tower::{ServiceBuilder, ServiceExt};
    /// use tower_webhook::signature::SignatureLayer;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let layer = SignatureLayer::github("It's a Secret to Everybody").unwrap().without_replay_store();
    /// let svc = ServiceBuilder::new().layer(layer).service_fn(|_: Request<Full<Bytes>>| async {
    ///     Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::default()))
    /// });
    /// let delivery = || {
    ///     Request::post("/github")
    ///         .header("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
    ///         .header("x-hub-signature-256", "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")
    ///         .body(Full::new(Bytes::from_static(b"Hello, World!")))
    ///         .unwrap()
    /// };
    /// assert_eq!(svc.clone().oneshot(delivery()).await.unwrap().status(), 200);
    /// assert_eq!(svc.oneshot(delivery()).await.unwrap().status(), 200); // the same id passes again
    /// # }
    /// ```
    pub fn without_replay_store(mut self) -> Self {
        self.update(|s| s.replay = None);
        self
    }

    /// How long a delivery id is remembered (default 24 h).
    ///
    /// Where the scheme signs a timestamp (Stripe, Slack, Zoom, Twitch, Standard Webhooks, a
    /// custom scheme with one), an id is remembered at least until its signed timestamp has left
    /// the [`timestamp_tolerance`](Self::timestamp_tolerance) window, and a minute more (for
    /// replicas sharing the store whose clocks lag this one's), however short the `replay_ttl`:
    /// a copy is then refused as a replay or as stale, never let through in between, as long as
    /// the store keeps it: a full [`MemoryReplayStore`](super::MemoryReplayStore) forgets its
    /// oldest ids, and anyone holding one delivery of a scheme whose ids are not signed (GitHub,
    /// Gitea, Bitbucket, Shopify, GitLab, Azure DevOps) can send it again under new ids. Give a route with a signed
    /// timestamp a store of its own, not one it shares with such a route (the default store is
    /// the layer's own). A delivery
    /// without an id whose timestamp is signed (Zoom, a Slack command) is recorded by its MAC
    /// only that long, whatever the `replay_ttl`: a copy is stale after.
    ///
    /// # Panics
    ///
    /// If `ttl` is shorter than a millisecond (the unit the stores count in): such an id would
    /// be forgotten at once. Use [`without_replay_store`](Self::without_replay_store) to turn
    /// deduplication off.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::signature::SignatureLayer;
    ///
    /// // Stripe retries for up to three days: remember its event ids that long.
    /// let layer = SignatureLayer::stripe("whsec_test").unwrap().replay_ttl(Duration::from_secs(3 * 24 * 3600));
    /// assert!(format!("{layer:?}").contains("replay_ttl: 259200s"));
    /// ```
    pub fn replay_ttl(mut self, ttl: Duration) -> Self {
        check_ttl("replay_ttl", ttl);
        self.update(|s| s.replay_ttl = ttl);
        self
    }

    /// How long a delivery id stays claimed while its handler runs, with
    /// [`RecordDelivery::AfterSuccess`] (default 5 minutes, and never longer than the
    /// [`replay_ttl`](Self::replay_ttl)). Copies that arrive meanwhile are replays; once the
    /// handler answers 2xx the id is remembered for the `replay_ttl`. A claim whose holder died
    /// (a crash, with a shared store such as Redis) expires after this, so the provider's
    /// redelivery is processed. Set it above the longest time a handler may take, counting the
    /// wait for the inner service's readiness (an inner concurrency limit's permit): a handler
    /// that outlives its claim may run alongside a redelivery's. When it finishes, it leaves the
    /// redelivery's claim alone (each claim has its own [`ClaimToken`]) and logs a warning.
    ///
    /// # Panics
    ///
    /// If `ttl` is shorter than a millisecond: a claim would expire as it is taken, and copies
    /// arriving while the handler runs would be handled too.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_webhook::signature::SignatureLayer;
    ///
    /// let layer = SignatureLayer::github("secret").unwrap().claim_ttl(Duration::from_secs(60));
    /// assert!(format!("{layer:?}").contains("claim_ttl: 60s"));
    /// ```
    pub fn claim_ttl(mut self, ttl: Duration) -> Self {
        check_ttl("claim_ttl", ttl);
        self.update(|s| s.claim_ttl = ttl);
        self
    }

    /// The header whose value identifies a request in the log lines of refused deliveries and
    /// acknowledged duplicates (default `x-request-id`). Use the same one as
    /// [`WebhookErrorLayer::request_id_header`](crate::error::WebhookErrorLayer::request_id_header),
    /// so that both layers' lines name a request alike.
    ///
    /// # Example
    ///
    /// ```
    /// use http::HeaderName;
    /// use tower_webhook::signature::SignatureLayer;
    ///
    /// let layer = SignatureLayer::github("secret")
    ///     .unwrap()
    ///     .request_id_header(HeaderName::from_static("x-correlation-id"));
    /// assert!(format!("{layer:?}").contains("x-correlation-id"));
    /// ```
    pub fn request_id_header(mut self, name: HeaderName) -> Self {
        self.update(|s| s.request_id_header = name);
        self
    }

    /// When a delivery id is recorded (default [`RecordDelivery::AfterSuccess`]).
    ///
    /// # Example
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::{Request, Response, StatusCode};
    /// use http_body_util::Full;
    /// use tower::{ServiceBuilder, ServiceExt};
    /// use tower_webhook::signature::{RecordDelivery, SignatureLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let layer = SignatureLayer::github("It's a Secret to Everybody")
    ///     .unwrap()
    ///     .record_delivery(RecordDelivery::AfterVerification);
    /// let svc = ServiceBuilder::new().layer(layer).service_fn(|_: Request<Full<Bytes>>| async {
    ///     let mut res = Response::new(Full::<Bytes>::default());
    ///     *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR; // the handler fails
    ///     Ok::<_, std::convert::Infallible>(res)
    /// });
    /// let delivery = || {
    ///     Request::post("/github")
    ///         .header("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
    ///         .header("x-hub-signature-256", "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")
    ///         .body(Full::new(Bytes::from_static(b"Hello, World!")))
    ///         .unwrap()
    /// };
    /// assert_eq!(svc.clone().oneshot(delivery()).await.unwrap().status(), 500);
    /// // GitHub's redelivery reuses the id: refused, although the first attempt failed.
    /// assert_eq!(svc.oneshot(delivery()).await.unwrap().status(), StatusCode::CONFLICT);
    /// # }
    /// ```
    pub fn record_delivery(mut self, when: RecordDelivery) -> Self {
        self.update(|s| s.record = when);
        self
    }

    /// What a replayed delivery gets (default [`OnReplay::Reject`], 409).
    ///
    /// # Panics
    ///
    /// If [`OnReplay::Acknowledge`] is given a status that is not 2xx.
    ///
    /// # Example
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use bytes::Bytes;
    /// use http::{Request, Response, StatusCode};
    /// use http_body_util::Full;
    /// use tower::{ServiceBuilder, ServiceExt};
    /// use tower_webhook::signature::{OnReplay, SignatureLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let handled = Arc::new(AtomicUsize::new(0));
    /// let count = handled.clone();
    /// let layer = SignatureLayer::github("It's a Secret to Everybody").unwrap().on_replay(OnReplay::Acknowledge(StatusCode::ACCEPTED));
    /// let svc = ServiceBuilder::new().layer(layer).service_fn(move |_: Request<Full<Bytes>>| {
    ///     count.fetch_add(1, Ordering::SeqCst);
    ///     async { Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::default())) }
    /// });
    /// let delivery = || {
    ///     Request::post("/github")
    ///         .header("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
    ///         .header("x-hub-signature-256", "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")
    ///         .body(Full::new(Bytes::from_static(b"Hello, World!")))
    ///         .unwrap()
    /// };
    /// assert_eq!(svc.clone().oneshot(delivery()).await.unwrap().status(), StatusCode::OK);
    /// assert_eq!(svc.oneshot(delivery()).await.unwrap().status(), StatusCode::ACCEPTED);
    /// assert_eq!(handled.load(Ordering::SeqCst), 1); // processed once
    /// # }
    /// ```
    pub fn on_replay(mut self, action: OnReplay) -> Self {
        if let OnReplay::Acknowledge(status) = action {
            assert!(
                status.is_success(),
                "OnReplay::Acknowledge needs a 2xx status, got {status}"
            );
        }
        self.update(|s| s.on_replay = action);
        self
    }

    /// Whether handshakes (Slack `url_verification`, Zoom `endpoint.url_validation`, Twitch
    /// `webhook_callback_verification`) are
    /// answered by the layer (default yes). When not, they reach the inner service.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use bytes::Bytes;
    /// use http::{Request, Response};
    /// use http_body_util::{BodyExt, Full};
    /// use tower::{ServiceBuilder, ServiceExt};
    /// use tower_webhook::signature::{Clock, SignatureLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let clock = Clock::fixed(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    /// let layer = SignatureLayer::slack("slack-signing-secret").unwrap().clock(clock).answer_handshakes(false);
    /// let svc = ServiceBuilder::new().layer(layer).service_fn(|_: Request<Full<Bytes>>| async {
    ///     Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"from the app"))))
    /// });
    ///
    /// let challenge = Request::post("/slack/events")
    ///     .header("x-slack-request-timestamp", "1700000000")
    ///     .header("x-slack-signature", "v0=bcf1c1af3fe5757cfa44054d192c935e0048fe2d034245a711b7be760da1d06b")
    ///     .body(Full::new(Bytes::from_static(br#"{"type":"url_verification","challenge":"3eZbrw1a"}"#)))
    ///     .unwrap();
    /// let body = svc.oneshot(challenge).await.unwrap().into_body().collect().await.unwrap().to_bytes();
    /// assert_eq!(&body[..], b"from the app"); // with the default, the layer answers "3eZbrw1a"
    /// # }
    /// ```
    pub fn answer_handshakes(mut self, answer: bool) -> Self {
        self.update(|s| s.handshakes = answer);
        self
    }

    /// The provider this layer verifies.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::{Provider, SignatureLayer};
    ///
    /// let layer = SignatureLayer::azure_devops("hooks", "p4ssw0rd").unwrap();
    /// assert_eq!(layer.provider(), Provider::AzureDevOps);
    /// assert_eq!(layer.provider().as_str(), "azure-devops");
    /// ```
    pub fn provider(&self) -> Provider {
        self.shared.scheme.provider
    }

    /// Verifies a delivery held in memory: headers, size limit, timestamp and signature, but not
    /// the replay store. Useful outside tower (a queue consumer) and for fuzzing.
    ///
    /// The error does not know the layer's scheme: rendered by a
    /// [`WebhookErrorLayer`](crate::error::WebhookErrorLayer), a 401 carries
    /// `WWW-Authenticate: Signature`, where the layer itself answers Azure DevOps with
    /// `Basic realm="azure-devops"`. To send that, return
    /// `Problem::from_error(&err).with_challenge(r#"Basic realm="azure-devops""#)` instead.
    ///
    /// ```
    /// use http::HeaderMap;
    /// use tower_webhook::signature::SignatureLayer;
    ///
    /// let layer = SignatureLayer::github("It's a Secret to Everybody").unwrap();
    /// let mut headers = HeaderMap::new();
    /// headers.insert("x-hub-signature-256",
    ///     "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17".parse().unwrap());
    /// assert!(layer.verify(&headers, b"Hello, World!").is_ok());
    /// assert!(layer.verify(&headers, b"Hello, World?").is_err());
    /// ```
    pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<VerifiedWebhook, E> {
        let shared = &*self.shared;
        if body.len() as u64 > shared.max_body {
            return Err(E::PayloadTooLarge {
                limit: shared.max_body,
            });
        }
        let checked = check_headers(shared, headers)?;
        let verified = shared
            .scheme
            .verify_body(&shared.keys, &checked, headers, body)?;
        Ok(to_verified(shared.scheme.provider, verified).0)
    }
}

/// Refuses a TTL under a millisecond, the unit the replay stores count in: an id recorded for
/// it would be forgotten at once, and deduplication would silently do nothing.
#[track_caller]
fn check_ttl(name: &str, ttl: Duration) {
    assert!(
        ttl >= Duration::from_millis(1),
        "SignatureLayer::{name} must be at least 1 ms, got {ttl:?}: an id would be forgotten at once (use without_replay_store() to turn deduplication off)"
    );
}

fn scheme_algorithm(scheme: &CustomScheme) -> Algorithm {
    // `CustomScheme` keeps its algorithm private; read it through Debug-free accessors.
    scheme.algorithm_value()
}

/// Nothing, or nothing but whitespace: what an unset secret often becomes on its way in (a
/// variable set to a space, a secret file holding a lone newline). Any sender could sign with it.
fn blank(secret: &[u8]) -> bool {
    secret.iter().all(u8::is_ascii_whitespace)
}

fn prepare_secret(provider: Provider, secret: Secret) -> Result<Secret, SignatureConfigError> {
    if blank(secret.expose()) {
        return Err(SignatureConfigError::EmptySecret);
    }
    match provider {
        Provider::StandardWebhooks => scheme::standard_webhooks_key(&secret),
        // Azure DevOps sends `Basic base64(username:password)`: a credential without the colon
        // (a bare password added for rotation) could never match a delivery, and one whose
        // password is empty or blank (`hooks:`, `:`, `hooks: `) is an empty secret, as
        // `azure_devops(user, "")` is.
        // The username cannot hold a colon (RFC 7617), so the password follows the first one.
        Provider::AzureDevOps => match secret.expose().iter().position(|b| *b == b':') {
            None => Err(SignatureConfigError::InvalidSetting {
                name: "secret",
                reason: "an Azure DevOps credential is `username:password` (the username may be empty: `:password`)",
            }),
            Some(colon) if blank(&secret.expose()[colon + 1..]) => {
                Err(SignatureConfigError::EmptySecret)
            }
            Some(_) => Ok(secret),
        },
        _ => Ok(secret),
    }
}

impl fmt::Debug for SignatureLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &*self.shared;
        f.debug_struct("SignatureLayer")
            .field("provider", &s.scheme.provider)
            .field("secrets", &format_args!("{} (redacted)", s.keys.count()))
            .field("max_body", &s.max_body)
            .field("tolerance", &s.tolerance)
            .field("max_signatures", &s.max_signatures)
            .field("replay_store", &s.replay.is_some())
            .field("replay_ttl", &s.replay_ttl)
            .field("claim_ttl", &s.claim_ttl)
            .field("request_id_header", &s.request_id_header)
            .field("record", &s.record)
            .field("on_replay", &s.on_replay)
            .field("clock", &s.clock)
            .finish()
    }
}

impl<S> Layer<S> for SignatureLayer {
    type Service = Signature<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Signature {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Middleware that verifies webhook signatures. See the [module docs](super).
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use tower::ServiceExt;
/// use tower_webhook::signature::{Signature, SignatureLayer};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let handler = tower::service_fn(|_req: Request<Full<Bytes>>| async {
///     Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::default()))
/// });
/// let svc = Signature::new(handler, &SignatureLayer::github("secret").unwrap());
/// let unsigned = Request::post("/").body(Full::new(Bytes::from_static(b"{}"))).unwrap();
/// assert_eq!(svc.oneshot(unsigned).await.unwrap().status(), 401);
/// # }
/// ```
#[derive(Clone)]
pub struct Signature<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for Signature<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signature")
            .field("inner", &self.inner)
            .field(
                "layer",
                &SignatureLayer {
                    shared: self.shared.clone(),
                },
            )
            .finish()
    }
}

impl<S> Signature<S> {
    /// Wraps `inner` with the settings of `layer`.
    ///
    /// # Example
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::{Request, Response};
    /// use http_body_util::Full;
    /// use tower::ServiceExt;
    /// use tower_webhook::signature::{Signature, SignatureLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let layer = SignatureLayer::github("It's a Secret to Everybody").unwrap();
    /// let handler = tower::service_fn(|_: Request<Full<Bytes>>| async {
    ///     Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::default()))
    /// });
    /// let svc = Signature::new(handler, &layer);
    /// let signed = Request::post("/github")
    ///     .header("x-hub-signature-256", "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")
    ///     .body(Full::new(Bytes::from_static(b"Hello, World!")))
    ///     .unwrap();
    /// assert_eq!(svc.oneshot(signed).await.unwrap().status(), 200);
    /// # }
    /// ```
    pub fn new(inner: S, layer: &SignatureLayer) -> Self {
        layer.layer(inner)
    }

    /// The inner service.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::{Signature, SignatureLayer};
    ///
    /// #[derive(Debug)]
    /// struct Dispatcher {
    ///     queue: &'static str,
    /// }
    ///
    /// let layer = SignatureLayer::github("secret").unwrap();
    /// let svc = Signature::new(Dispatcher { queue: "github-events" }, &layer);
    /// assert_eq!(svc.get_ref().queue, "github-events");
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

fn check_headers(shared: &Shared, headers: &HeaderMap) -> Result<Checked, E> {
    let limits = Limits {
        max_signatures: shared.max_signatures,
        tolerance: shared.tolerance,
        clock: &shared.clock,
    };
    shared.scheme.check_headers(&shared.keys, headers, &limits)
}

fn to_verified(
    provider: Provider,
    v: scheme::Verified,
) -> (VerifiedWebhook, Option<scheme::Handshake>) {
    (
        VerifiedWebhook {
            provider,
            delivery_id: v.delivery_id,
            event: v.event,
            timestamp: v
                .timestamp
                // A signed timestamp beyond what `SystemTime` holds (only with a window wide
                // enough to let it through) is reported as absent rather than panicking.
                .and_then(|t| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(t))),
            secret_index: v.secret_index,
            fingerprint: v.fingerprint,
        },
        v.challenge,
    )
}

/// The signed timestamp, read against the clock again once the body is in. The headers were
/// checked when they came; a body that came after the window closed (a sender writing a byte
/// at a time, which no per-frame body timeout notices) may have outlived the replay store's
/// record of the first copy, and would otherwise be handled a second time.
fn still_in_window(shared: &Shared, verified: scheme::Verified) -> Result<scheme::Verified, E> {
    if let Some(timestamp) = verified.timestamp {
        scheme::check_window(timestamp, shared.clock.now(), shared.tolerance)?;
    }
    Ok(verified)
}

/// How much longer than the timestamp window, as this replica's clock reads it, an id is
/// remembered: replicas sharing a store whose clocks lag this one's by up to this much still
/// refuse a copy as a replay, where they would still take its timestamp.
const REPLICA_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// How long the id of a delivery signed at `timestamp` (Unix seconds) is remembered: the
/// `replay_ttl`, and at least until the timestamp has left the window (with
/// [`REPLICA_CLOCK_SKEW`] to spare), so that a copy is refused either as a replay or as stale,
/// never let through in between. A delivery known by its MAC (`fingerprinted`: it has no
/// delivery id) is remembered only that long: no provider sends it again as it was, and a copy
/// is stale after that.
fn replay_ttl(shared: &Shared, timestamp: Option<u64>, fingerprinted: bool) -> Duration {
    let Some(timestamp) = timestamp else {
        return shared.replay_ttl;
    };
    // `check_window` compares whole seconds: the timestamp is accepted until `now` reaches
    // `timestamp + tolerance + 1` s.
    let last = Duration::from_secs(
        timestamp
            .saturating_add(shared.tolerance.as_secs())
            .saturating_add(1),
    );
    let now = shared
        .clock
        .now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let window = last
        .checked_sub(now)
        .unwrap_or_default()
        .saturating_add(REPLICA_CLOCK_SKEW);
    if fingerprinted {
        return window;
    }
    shared.replay_ttl.max(window)
}

/// `Content-Length` (its first value), if present and well formed, and whether
/// `Transfer-Encoding` is present: found by one pass over a small map (webhook requests carry
/// a few headers) rather than by two hashed lookups.
fn content_length(headers: &HeaderMap) -> (Option<u64>, bool) {
    let (length, chunked) = if headers.len() <= scheme::LINEAR_SCAN_MAX {
        let (mut length, mut chunked) = (None, false);
        for (name, value) in headers {
            if *name == header::CONTENT_LENGTH {
                length = length.or(Some(value));
            } else if *name == header::TRANSFER_ENCODING {
                chunked = true;
            }
        }
        (length, chunked)
    } else {
        (
            headers.get(header::CONTENT_LENGTH),
            headers.contains_key(header::TRANSFER_ENCODING),
        )
    };
    let length = length.and_then(|v| std::str::from_utf8(v.as_bytes()).ok()?.parse().ok());
    (length, chunked)
}

/// Logs a rejection once (no secrets, no body) and turns it into an early answer.
fn reject(shared: &Shared, err: E, headers: &HeaderMap) -> Early {
    let provider = shared.scheme.provider.as_str();
    let request_id = &*request_id(shared, headers);
    let problem = Problem::from_error(&err);
    let status = problem.status().as_u16();
    match &err {
        E::Replayed(_) => {
            tracing::info!(provider, status, request_id, reason = %err, "webhook replay refused")
        }
        // A store's error may name its server's URL, with credentials.
        E::ReplayStore(source) => {
            let error = &*redacted(source.to_string());
            tracing::error!(provider, status, request_id, reason = %err, error, "webhook rejected")
        }
        // The cause: a body that contradicts its `Content-Length`, a connection reset, an outer
        // limit or timeout; or the error of a body that streams from elsewhere (a proxied
        // client's), which may name its URL, with credentials.
        E::Body(source) => {
            let error = &*redacted(source.to_string());
            tracing::warn!(provider, status, request_id, reason = %err, error, "webhook rejected")
        }
        _ => tracing::warn!(provider, status, request_id, reason = %err, "webhook rejected"),
    }
    // RFC 9110 §15.5.2: a 401 carries a challenge, here with the provider as realm. It travels
    // with the problem, so an outer `WebhookErrorLayer` renders it again.
    let problem = match problem.challenge() {
        Some(_) => problem.with_challenge(shared.challenge.clone()),
        None => problem,
    };
    Early::Problem(problem, grpc_content_type(headers))
}

/// The request id, for the log: as it came, bytes that are not UTF-8 as U+FFFD (`to_str` would
/// refuse any byte past ASCII, which hyper takes in a header).
fn request_id<'a>(shared: &Shared, headers: &'a HeaderMap) -> std::borrow::Cow<'a, str> {
    headers
        .get(&shared.request_id_header)
        .map_or(std::borrow::Cow::Borrowed(""), |v| {
            String::from_utf8_lossy(v.as_bytes())
        })
}

/// Answers a duplicate delivery with `status`, without the inner service. A gRPC call is
/// answered as gRPC says a call succeeded: HTTP 200 and `grpc-status: 0`, under its own content
/// type; an empty 2xx without them is a broken call to a gRPC client, which would send it again.
/// (No message: a unary call's client reports that as a failure, see `OnReplay::Acknowledge`.)
fn acknowledge(shared: &Shared, status: StatusCode, key: &str, headers: &HeaderMap) -> Early {
    let grpc = grpc_content_type(headers);
    let status = if grpc.is_some() {
        StatusCode::OK
    } else {
        status
    };
    tracing::info!(
        provider = shared.scheme.provider.as_str(),
        status = status.as_u16(),
        request_id = &*request_id(shared, headers),
        delivery = key,
        "duplicate webhook delivery acknowledged without processing"
    );
    Early::Acknowledge(status, grpc)
}

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Whether an answer's headers carry a gRPC status other than `OK` (0): a trailers-only answer
/// to a gRPC call that failed.
fn grpc_failed(headers: &HeaderMap) -> bool {
    headers
        .get(&GRPC_STATUS)
        .is_some_and(|status| status.as_bytes() != b"0")
}

/// The protocol of an answer to a gRPC call that carries the call's status at the end of its
/// body: a `200` typed as gRPC without `grpc-status` in its head (a streamed answer, or a unary
/// one that is not trailers-only). Its status is in the trailers (`application/grpc[+codec]`)
/// or in the trailer frame that ends the body (gRPC-web). Anything else is settled by its head:
/// a trailers-only answer by its `grpc-status`, another status (a router's `404`, a proxy's
/// `503`) as an HTTP answer.
fn grpc_status_at_end<B>(response: &Response<B>) -> Option<Grpc> {
    let headers = response.headers();
    if response.status() != StatusCode::OK || headers.contains_key(&GRPC_STATUS) {
        return None;
    }
    headers.get(header::CONTENT_TYPE).and_then(Grpc::of)
}

/// The content type of an answer to a gRPC or gRPC-web call (`application/grpc`,
/// `application/grpc+proto`, `application/grpc-web-text`, ...): the call's, without parameters,
/// as the error layer types its answers.
fn grpc_content_type(headers: &HeaderMap) -> Option<HeaderValue> {
    let sent = headers.get(header::CONTENT_TYPE)?;
    Grpc::of(sent).map(|kind| kind.content_type(Some(sent)))
}

/// An answer the layer gives without the inner service.
enum Early {
    /// A rejection, and the content type of a gRPC call (answered trailers-only, its
    /// `grpc-status` the problem's).
    Problem(Problem, Option<HeaderValue>),
    Challenge(scheme::Handshake),
    /// A duplicate: the status, and the content type of a gRPC call (answered `grpc-status: 0`).
    Acknowledge(StatusCode, Option<HeaderValue>),
}

impl Early {
    /// The answer; to a `HEAD` request (`head`), without its content, which hyper would send
    /// over HTTP/2 (RFC 9110, section 9.3.2).
    fn into_response<B>(self, head: bool) -> Response<ResponseBody<B>> {
        // The headers of the answer to GET, its length included.
        let content = |mut response: Response<Bytes>| {
            if head {
                let len = HeaderValue::from(response.body().len());
                response
                    .headers_mut()
                    .entry(header::CONTENT_LENGTH)
                    .or_insert(len);
                response.map(|_| ResponseBody::empty())
            } else {
                response.map(ResponseBody::full)
            }
        };
        match self {
            Early::Problem(problem, grpc) => {
                // A gRPC client reads the call's status, not the HTTP one: answered as the error
                // layer answers it, so that a layer used without one still tells it.
                let mut response = match grpc {
                    Some(content_type) => {
                        let mut response = problem
                            .to_grpc_response::<()>()
                            .map(|()| ResponseBody::empty());
                        response
                            .headers_mut()
                            .insert(header::CONTENT_TYPE, content_type);
                        response
                    }
                    None => content(problem.to_response::<Bytes>()),
                };
                response.extensions_mut().insert(problem);
                response.extensions_mut().insert(AlreadyLogged);
                response
            }
            Early::Challenge(handshake) => {
                let mut response = Response::new(handshake.body);
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(handshake.content_type),
                );
                content(response)
            }
            Early::Acknowledge(status, grpc) => {
                let mut response = Response::new(ResponseBody::empty());
                *response.status_mut() = status;
                if let Some(content_type) = grpc {
                    let headers = response.headers_mut();
                    headers.insert(header::CONTENT_TYPE, content_type);
                    headers.insert("grpc-status", HeaderValue::from_static("0"));
                }
                response
            }
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Signature<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ReqBody: Body + From<Bytes>,
    ReqBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    /// Always ready: the inner service is asked for readiness by the request's future, once
    /// the delivery is verified (and claimed), so that a request nobody knows to be signed yet
    /// (its body still on its way) holds none of the inner service's capacity: no permit of a
    /// concurrency limit, no half-open probe of a circuit breaker.
    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let shared = &*self.shared;
        let (mut parts, body) = req.into_parts();
        let head = parts.method == http::Method::HEAD;
        let early = |err| ResponseFuture {
            state: State::Early {
                early: Some(reject(shared, err, &parts.headers)),
            },
            shared: self.shared.clone(),
            head,
        };
        let (announced, encoded) = content_length(&parts.headers);
        if announced.is_some_and(|len| len > shared.max_body) {
            return early(E::PayloadTooLarge {
                limit: shared.max_body,
            });
        }
        // The length the body must have once read. With `Transfer-Encoding` the framing is the
        // encoding's and `Content-Length` means nothing (RFC 9112 §6.3).
        let expected = announced.filter(|_| !encoded);
        // Within the limit: where buffering stops growing if the body comes in several chunks.
        let hint = announced
            .and_then(|len| usize::try_from(len).ok())
            .unwrap_or(0);
        let checked = match check_headers(shared, &parts.headers) {
            Ok(checked) => checked,
            Err(err) => return early(err),
        };
        // The token or credential is the secret itself: `Debug` of the request the inner
        // service gets (a handler's `?req`, tower-http's trace) shows `Sensitive` instead.
        if let Some(value) = shared
            .scheme
            .credential_header()
            .and_then(|name| parts.headers.get_mut(name))
        {
            value.set_sensitive(true);
        }
        // A clone, polled ready by the future once the delivery is verified.
        let inner = self.inner.clone();
        ResponseFuture {
            state: State::Collect {
                body,
                buf: Collected::Empty,
                hint,
                expected,
                parts: Some(parts),
                checked: Some(checked),
                inner: Some(inner),
            },
            shared: self.shared.clone(),
            head,
        }
    }
}

/// Why a Gitea/Forgejo delivery made with `GET` is refused, for the log.
const GET_DELIVERY: &str = "delivered with the HTTP method GET, its payload in the query string, which is not verified: set the webhook's HTTP method to POST";

/// Why a verified `GET` with a query string is refused.
const GET_WITH_QUERY: &str = "delivered with the HTTP method GET and a query string, which the signature does not cover and a form extractor would read instead of the verified body";

/// The first allocation for a body that arrives in several chunks.
const FIRST_RESERVE: usize = 64 * 1024;

/// The body read so far: one chunk is kept as is, several are copied together.
enum Collected {
    Empty,
    One(Bytes),
    Many(Vec<u8>),
}

impl Collected {
    fn len(&self) -> usize {
        match self {
            Collected::Empty => 0,
            Collected::One(b) => b.len(),
            Collected::Many(b) => b.len(),
        }
    }

    /// Appends `chunk`; the caller has checked that the total stays within `limit`.
    ///
    /// The buffer grows by doubling from 64 KiB, so it never holds more than about twice what
    /// actually arrived, whatever `Content-Length` claims; it stops at the announced length
    /// (`hint`, when the body has not outgrown it) and at `limit`.
    fn push(&mut self, chunk: Bytes, hint: usize, limit: usize) {
        if chunk.is_empty() {
            return;
        }
        fn grow(all: &mut Vec<u8>, needed: usize, hint: usize, limit: usize) {
            if all.capacity() >= needed {
                return;
            }
            let ceiling = if hint >= needed { hint } else { limit }.min(limit);
            let target = needed
                .max(all.capacity().saturating_mul(2))
                .max(FIRST_RESERVE)
                .min(ceiling)
                .max(needed);
            all.reserve_exact(target - all.len());
        }
        *self = match std::mem::replace(self, Collected::Empty) {
            Collected::Empty => Collected::One(chunk),
            Collected::One(first) => {
                let mut all = Vec::new();
                grow(&mut all, first.len() + chunk.len(), hint, limit);
                all.extend_from_slice(&first);
                all.extend_from_slice(&chunk);
                Collected::Many(all)
            }
            Collected::Many(mut all) => {
                let needed = all.len() + chunk.len();
                grow(&mut all, needed, hint, limit);
                all.extend_from_slice(&chunk);
                Collected::Many(all)
            }
        };
    }

    fn take(&mut self) -> Bytes {
        match std::mem::replace(self, Collected::Empty) {
            Collected::Empty => Bytes::new(),
            Collected::One(b) => b,
            Collected::Many(b) => Bytes::from(b),
        }
    }
}

/// Response future of [`Signature`].
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use tower::{Service, ServiceExt};
/// use tower_webhook::signature::{ResponseFuture, Signature, SignatureLayer};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let handler = tower::service_fn(|_: Request<Full<Bytes>>| async {
///     Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::default()))
/// });
/// let mut svc = Signature::new(handler, &SignatureLayer::github("secret").unwrap());
/// let unsigned = Request::post("/github").body(Full::new(Bytes::from_static(b"{}"))).unwrap();
/// let future: ResponseFuture<_, Full<Bytes>> = svc.ready().await.unwrap().call(unsigned);
/// assert_eq!(future.await.unwrap().status(), 401);
/// # }
/// ```
#[pin_project]
pub struct ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    #[pin]
    state: State<S, ReqBody>,
    shared: Arc<Shared>,
    /// The request is a `HEAD`: the layer's own answers go without their content.
    head: bool,
}

impl<S, ReqBody> fmt::Debug for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

#[pin_project(project = StateProj)]
enum State<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    Early {
        early: Option<Early>,
    },
    Collect {
        #[pin]
        body: ReqBody,
        buf: Collected,
        /// The announced `Content-Length` (within the limit), or 0.
        hint: usize,
        /// The `Content-Length` the body must match, without `Transfer-Encoding`.
        expected: Option<u64>,
        parts: Option<http::request::Parts>,
        checked: Option<Checked>,
        inner: Option<S>,
    },
    Replay {
        lookup: Lookup,
        req: Option<Request<ReqBody>>,
        inner: Option<S>,
    },
    /// A handshake whose id is being recorded before it is answered.
    Handshake {
        recorded: ReplayFuture,
        challenge: Option<scheme::Handshake>,
        headers: http::HeaderMap,
    },
    /// A copy of a claimed delivery: acknowledged if that one was handled, else refused.
    Duplicate {
        completed: ReplayFuture,
        status: StatusCode,
        key: String,
        req: Option<Request<ReqBody>>,
    },
    /// The inner service could not take the delivery: its error, answered as is.
    Failed {
        error: Option<S::Error>,
    },
    /// A verified (and claimed) delivery waits for the inner service to be ready.
    Readying {
        inner: Option<S>,
        req: Option<Request<ReqBody>>,
        claim: Option<Claim>,
    },
    Inner {
        #[pin]
        future: S::Future,
        claim: Option<Claim>,
        /// The request is a gRPC or gRPC-web call (looked at only when there is a claim).
        grpc: bool,
    },
    /// The claim of a finished delivery is settled (completed after 2xx, else released) before
    /// the provider sees the answer.
    Settled {
        update: Detached,
        result: Option<Result<S::Response, S::Error>>,
    },
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: Body + From<Bytes>,
    ReqBody::Error: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let shared = &**this.shared;
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::Early { early } => {
                    let early = early
                        .take()
                        .expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(early.into_response(*this.head)));
                }
                StateProj::Collect {
                    mut body,
                    buf,
                    hint,
                    expected,
                    parts,
                    checked,
                    inner,
                } => {
                    let limit = usize::try_from(shared.max_body).unwrap_or(usize::MAX);
                    let hint = *hint;
                    let done = loop {
                        match ready!(body.as_mut().poll_frame(cx)) {
                            // A body that ends short of, or runs past, its `Content-Length` is
                            // not the message that was announced (RFC 9112 §6.3): the handler
                            // would get a request whose header contradicts its body.
                            None => match *expected {
                                Some(len) if len != buf.len() as u64 => {
                                    break Err(E::Body(
                                        format!(
                                            "body of {} bytes, Content-Length announced {len}",
                                            buf.len()
                                        )
                                        .into(),
                                    ));
                                }
                                _ => break Ok(()),
                            },
                            Some(Err(err)) => break Err(E::Body(err.into())),
                            Some(Ok(frame)) => {
                                let Ok(mut data) = frame.into_data() else {
                                    continue; // trailers are not signed
                                };
                                let n = data.remaining();
                                if (buf.len() as u64).saturating_add(n as u64) > shared.max_body {
                                    break Err(E::PayloadTooLarge {
                                        limit: shared.max_body,
                                    });
                                }
                                buf.push(data.copy_to_bytes(n), hint, limit);
                            }
                        }
                    };
                    let parts = parts
                        .take()
                        .expect("ResponseFuture polled after completion");
                    if let Err(err) = done {
                        State::Early {
                            early: Some(reject(shared, err, &parts.headers)),
                        }
                    } else {
                        let bytes = buf.take();
                        let checked = checked.as_ref().expect("checked once");
                        match shared
                            .scheme
                            .verify_body(&shared.keys, checked, &parts.headers, &bytes)
                            .and_then(|verified| still_in_window(shared, verified))
                        {
                            // A Gitea/Forgejo webhook set to `GET`: authentic, but its payload
                            // is in the query string, which is neither verified nor handed on.
                            // Named as such, not as a wrong secret.
                            Err(E::Mismatch)
                                if parts.method == http::Method::GET
                                    && shared.scheme.signs_query_payload(
                                        &shared.keys,
                                        checked,
                                        parts.uri.query(),
                                    ) =>
                            {
                                State::Early {
                                    early: Some(reject(
                                        shared,
                                        E::MalformedDelivery(GET_DELIVERY),
                                        &parts.headers,
                                    )),
                                }
                            }
                            Err(err) => State::Early {
                                early: Some(reject(shared, err, &parts.headers)),
                            },
                            // No sender delivers a signed body with `GET`; a form extractor
                            // (axum's `Form`) reads a `GET`'s query string, not its body: a
                            // signed body replayed as a `GET` with a query of one's own would
                            // hand unverified fields to the handler.
                            Ok(_)
                                if parts.method == http::Method::GET
                                    && parts.uri.query().is_some_and(|query| !query.is_empty())
                                    && !shared.scheme.is_unverified() =>
                            {
                                State::Early {
                                    early: Some(reject(
                                        shared,
                                        E::MalformedDelivery(GET_WITH_QUERY),
                                        &parts.headers,
                                    )),
                                }
                            }
                            Ok(verified) => {
                                let ttl = replay_ttl(
                                    shared,
                                    verified.timestamp,
                                    verified.delivery_id.is_none(),
                                );
                                let timestamp = verified.timestamp;
                                let deduplicate = verified.deduplicate;
                                let (verified, challenge) =
                                    to_verified(shared.scheme.provider, verified);
                                let inner = inner.take().expect("inner once");
                                match (challenge, shared.handshakes) {
                                    (Some(challenge), true) => {
                                        match (&shared.replay, verified.delivery_id()) {
                                            // The handshake's id is recorded like a delivery's:
                                            // Twitch does not sign its message type, and a copy
                                            // sent again as a `notification` is then a replay.
                                            (Some(store), Some(id)) => State::Handshake {
                                                recorded: with_replay_key(
                                                    verified.provider(),
                                                    id,
                                                    |key| store.insert(key, ttl),
                                                ),
                                                challenge: Some(challenge),
                                                headers: parts.headers,
                                            },
                                            _ => State::Early {
                                                early: Some(Early::Challenge(challenge)),
                                            },
                                        }
                                    }
                                    _ => {
                                        let target = replay_target(shared, &verified)
                                            .filter(|_| deduplicate);
                                        let lookup = target.map(|(store, id)| {
                                            let provider = verified.provider();
                                            let plan = Plan {
                                                mode: shared.record,
                                                claim_ttl: shared.claim_ttl,
                                                ttl,
                                            };
                                            match verified.replay_also() {
                                                None => Lookup::new(
                                                    plan.start(store, provider, id, None),
                                                ),
                                                // An id the MAC does not cover: the MAC is
                                                // recorded first, the id once the MAC is new.
                                                Some(mac) => Lookup::after_mac(
                                                    store,
                                                    replay_key(provider, mac),
                                                    replay_ttl(shared, timestamp, true),
                                                    plan,
                                                    provider,
                                                    id,
                                                ),
                                            }
                                        });
                                        let mut req =
                                            Request::from_parts(parts, ReqBody::from(bytes));
                                        req.extensions_mut().insert(verified);
                                        match lookup {
                                            Some(mut lookup) => {
                                                // A store that answers at once (the in-memory
                                                // one) and a new id: straight to the inner
                                                // service. Any other answer is handled below.
                                                match Pin::new(&mut lookup).poll(cx) {
                                                    Poll::Ready(Ok(true)) => {
                                                        let claim = lookup.claim.take();
                                                        call_inner(inner, req, claim, cx)
                                                    }
                                                    Poll::Ready(outcome) => {
                                                        lookup.future =
                                                            Some(ReplayFuture::ready(outcome));
                                                        State::Replay {
                                                            lookup,
                                                            req: Some(req),
                                                            inner: Some(inner),
                                                        }
                                                    }
                                                    // Polled once: waits for its wake-up.
                                                    Poll::Pending => {
                                                        this.state.set(State::Replay {
                                                            lookup,
                                                            req: Some(req),
                                                            inner: Some(inner),
                                                        });
                                                        return Poll::Pending;
                                                    }
                                                }
                                            }
                                            None => call_inner(inner, req, None, cx),
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                StateProj::Replay { lookup, req, inner } => {
                    let outcome = ready!(Pin::new(&mut *lookup).poll(cx));
                    let req = req.take().expect("ResponseFuture polled after completion");
                    // The key found seen: the MAC's, when the MAC was; else the request's id,
                    // rebuilt from the request only where it is needed (not on the common path).
                    let seen = lookup.seen.take();
                    let key = || seen.clone().unwrap_or_else(|| replay_key_of(&req));
                    match outcome {
                        Ok(true) => {
                            // Won: in `AfterSuccess` mode the claim is now held until the answer.
                            let claim = lookup.claim.take();
                            call_inner(inner.take().expect("inner once"), req, claim, cx)
                        }
                        Ok(false) => match shared.on_replay {
                            // A copy of a delivery that may still be running: acknowledged only
                            // once that one was handled.
                            OnReplay::Acknowledge(status)
                                if shared.record == RecordDelivery::AfterSuccess =>
                            {
                                let key = key();
                                State::Duplicate {
                                    completed: shared
                                        .replay
                                        .as_ref()
                                        .expect("a lookup has a store")
                                        .completed(&key),
                                    status,
                                    key,
                                    req: Some(req),
                                }
                            }
                            OnReplay::Acknowledge(status) => State::Early {
                                early: Some(acknowledge(shared, status, &key(), req.headers())),
                            },
                            _ => State::Early {
                                early: Some(reject(shared, E::Replayed(key()), req.headers())),
                            },
                        },
                        Err(err) => State::Early {
                            early: Some(reject(shared, E::ReplayStore(err), req.headers())),
                        },
                    }
                }
                StateProj::Handshake {
                    recorded,
                    challenge,
                    headers,
                } => {
                    let outcome = ready!(Pin::new(&mut *recorded).poll(cx));
                    State::Early {
                        early: Some(match outcome {
                            // Answered even if the id was seen: a provider whose answer was
                            // lost asks again with the same message.
                            Ok(_) => Early::Challenge(
                                challenge
                                    .take()
                                    .expect("ResponseFuture polled after completion"),
                            ),
                            Err(err) => reject(shared, E::ReplayStore(err), headers),
                        }),
                    }
                }
                StateProj::Duplicate {
                    completed,
                    status,
                    key,
                    req,
                } => {
                    let outcome = ready!(Pin::new(&mut *completed).poll(cx));
                    let req = req.take().expect("ResponseFuture polled after completion");
                    let key = std::mem::take(key);
                    State::Early {
                        early: Some(match outcome {
                            Ok(true) => acknowledge(shared, *status, &key, req.headers()),
                            Ok(false) => reject(shared, E::Replayed(key), req.headers()),
                            Err(err) => reject(shared, E::ReplayStore(err), req.headers()),
                        }),
                    }
                }
                StateProj::Readying { inner, req, claim } => {
                    // Pending until the inner service has room; an error answers the request,
                    // and releases the claim.
                    let ready = inner
                        .as_mut()
                        .expect("ResponseFuture polled after completion")
                        .poll_ready(cx);
                    if let Err(err) = ready!(ready) {
                        not_taken(claim.take(), err)
                    } else {
                        let (inner, req) = (inner.take(), req.take());
                        call_ready(
                            inner.expect("inner once"),
                            req.expect("request once"),
                            claim.take(),
                        )
                    }
                }
                StateProj::Failed { error } => {
                    let error = error
                        .take()
                        .expect("ResponseFuture polled after completion");
                    return Poll::Ready(Err(error));
                }
                StateProj::Inner {
                    future,
                    claim,
                    grpc,
                } => {
                    let result = ready!(future.poll(cx));
                    let Some(claim) = claim.take() else {
                        return Poll::Ready(result.map(|r| r.map(ResponseBody::new)));
                    };
                    if *grpc
                        && let Ok(response) = &result
                        && let Some(kind) = grpc_status_at_end(response)
                    {
                        // The call's status comes at the end of the body: settled there.
                        let settle = SettleAtEnd::new(claim, Arc::clone(this.shared), kind);
                        return Poll::Ready(
                            result
                                .map(|r| r.map(|body| ResponseBody::settled_at_end(body, settle))),
                        );
                    }
                    let failed = match &result {
                        // A gRPC call that failed is answered 200, with its `grpc-status` in the
                        // headers (trailers-only): not handled either.
                        Ok(response) => {
                            !response.status().is_success() || grpc_failed(response.headers())
                        }
                        Err(_) => true,
                    };
                    let mut update = if failed {
                        claim.release()
                    } else {
                        claim.complete()
                    };
                    // A store that answers at once (the in-memory one) needs no extra state.
                    match Pin::new(&mut update).poll(cx) {
                        Poll::Ready(outcome) => {
                            update.log_failure(shared, outcome);
                            return Poll::Ready(result.map(|r| r.map(ResponseBody::new)));
                        }
                        Poll::Pending => State::Settled {
                            update,
                            result: Some(result),
                        },
                    }
                }
                StateProj::Settled { update, result } => {
                    let outcome = ready!(Pin::new(&mut *update).poll(cx));
                    update.log_failure(shared, outcome);
                    let result = result
                        .take()
                        .expect("ResponseFuture polled after completion");
                    return Poll::Ready(result.map(|r| r.map(ResponseBody::new)));
                }
            };
            this.state.set(next);
        }
    }
}

/// The replay store's answer for a delivery id. In [`RecordDelivery::AfterSuccess`] mode it
/// carries the claim, so that a lookup dropped before it resolves (the client went away) is
/// finished without its owner and a won claim released (as one the store answered with an error
/// is, see [`Claim::abandon`]).
struct Lookup {
    /// The MAC's record, for a delivery whose id the MAC does not cover: made first; the id is
    /// looked up only when the MAC is new.
    mac: Option<Box<MacStage>>,
    future: Option<ReplayFuture>,
    claim: Option<Claim>,
    /// The MAC's record this delivery made: forgotten unless the delivery is handled.
    record: Option<Box<MacRecord>>,
    /// The MAC's key, when it was the MAC that was seen: the key the copy is a replay of.
    seen: Option<String>,
}

/// How a delivery id is recorded: [`Plan::start`] makes the store's operation.
#[derive(Clone, Copy)]
struct Plan {
    mode: RecordDelivery,
    claim_ttl: Duration,
    /// How long a handled id is remembered.
    ttl: Duration,
}

impl Plan {
    /// Whether ids are claimed while the delivery is handled ([`RecordDelivery::AfterSuccess`]).
    fn claims(self) -> bool {
        self.mode == RecordDelivery::AfterSuccess
    }

    /// How long a claim on a key remembered for `ttl` lasts. A store that cannot tell claims
    /// from handled ids records them for good.
    fn claim_ttl(self, store: &dyn ReplayStore, ttl: Duration) -> Duration {
        if store.tracks_claims() {
            self.claim_ttl.min(ttl)
        } else {
            ttl
        }
    }

    /// Claims `id` (in [`RecordDelivery::AfterSuccess`] mode, with `token`, or a new one) or
    /// records it.
    fn start(
        self,
        store: &Arc<dyn ReplayStore>,
        provider: Provider,
        id: &str,
        token: Option<ClaimToken>,
    ) -> (ReplayFuture, Option<Claim>) {
        let ttl = self.ttl;
        match self.mode {
            RecordDelivery::AfterSuccess => {
                let key = replay_key(provider, id);
                let claim_ttl = self.claim_ttl(&**store, ttl);
                let token = token.unwrap_or_else(ClaimToken::unique);
                let future = store.claim(&key, token, claim_ttl);
                let claim = Claim {
                    store: Arc::clone(store),
                    key: Some(key),
                    token,
                    ttl,
                    mac: None,
                };
                (future, Some(claim))
            }
            _ => (
                with_replay_key(provider, id, |key| store.insert(key, ttl)),
                None,
            ),
        }
    }
}

/// The MAC's record being made, and what to look up once it is.
struct MacStage {
    future: ReplayFuture,
    /// What the record is, once made.
    record: MacRecord,
    plan: Plan,
    provider: Provider,
    id: String,
}

impl Lookup {
    fn new((future, claim): (ReplayFuture, Option<Claim>)) -> Self {
        Self {
            mac: None,
            future: Some(future),
            claim,
            record: None,
            seen: None,
        }
    }

    /// Records the MAC under `key` for `ttl` first, then `id`, as `plan` says: both claimed
    /// with one token in [`RecordDelivery::AfterSuccess`] mode (a copy of a delivery in
    /// progress is one under either key, and is handled once the delivery was), else both
    /// recorded.
    fn after_mac(
        store: &Arc<dyn ReplayStore>,
        key: String,
        ttl: Duration,
        plan: Plan,
        provider: Provider,
        id: &str,
    ) -> Self {
        let (future, token) = if plan.claims() {
            let token = ClaimToken::unique();
            let future = store.claim(&key, token, plan.claim_ttl(&**store, ttl));
            (future, Some(token))
        } else {
            (store.insert(&key, ttl), None)
        };
        Self {
            mac: Some(Box::new(MacStage {
                future,
                record: MacRecord {
                    store: Arc::clone(store),
                    key: Some(key),
                    token,
                    ttl,
                    made: false,
                },
                plan,
                provider,
                id: id.to_owned(),
            })),
            future: None,
            claim: None,
            record: None,
            seen: None,
        }
    }
}

impl Future for Lookup {
    type Output = Result<bool, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(stage) = self.mac.as_mut() {
            let outcome = ready!(poll_store(&mut stage.future, cx));
            let MacStage {
                record,
                plan,
                provider,
                id,
                ..
            } = *self.mac.take().expect("polled just above");
            let mut record = Box::new(record);
            record.made_by(&outcome);
            match outcome {
                Ok(true) => {}
                // A copy of a message seen (whatever its id): the id is not looked up, and
                // nothing was recorded.
                Ok(false) => {
                    self.seen = record.key.take();
                    return Poll::Ready(Ok(false));
                }
                // The store failed; what it may have made is forgotten (dropped).
                Err(err) => return Poll::Ready(Err(err)),
            }
            let (future, claim) = plan.start(&record.store, provider, &id, record.token);
            self.record = Some(record);
            self.future = Some(future);
            self.claim = claim;
        }
        let Some(future) = self.future.as_mut() else {
            return Poll::Ready(Err("replay lookup polled after completion".into()));
        };
        let outcome = ready!(poll_store(future, cx));
        self.future = None;
        // Not handled unless the id is new: the MAC's record is then forgotten (dropped).
        let record = self.record.take().filter(|_| matches!(outcome, Ok(true)));
        if let Some(mut claim) = self.claim.take() {
            match &outcome {
                // Ours: held until the answer, with the MAC's record.
                Ok(true) => {
                    claim.mac = record;
                    self.claim = Some(claim);
                }
                // Not ours: nothing to release.
                Ok(false) => claim.disown(),
                Err(_) => claim.abandon(),
            }
        } else if let Some(record) = record {
            // Recorded for good, like the id.
            drop(record.settle(true));
        }
        Poll::Ready(outcome)
    }
}

/// Polls a store's `future`. If it panics, a future that fails at once takes its place before
/// the panic goes on, so that the lookup's `Drop`, which finishes what it holds, never polls the
/// panicked one again (a custom store's future may not be fused, and could do its work twice).
fn poll_store(future: &mut ReplayFuture, cx: &mut Context<'_>) -> Poll<Result<bool, BoxError>> {
    match catch_unwind(AssertUnwindSafe(|| Pin::new(&mut *future).poll(cx))) {
        Ok(poll) => poll,
        Err(payload) => {
            *future = ReplayFuture::ready(Err(store_panicked(&*payload)));
            std::panic::resume_unwind(payload)
        }
    }
}

impl Drop for Lookup {
    fn drop(&mut self) {
        if let Some(stage) = self.mac.take() {
            // Dropped before the id was looked up: the MAC's record, if it was made, is
            // forgotten once it is.
            let MacStage {
                future, mut record, ..
            } = *stage;
            finish_detached(async move {
                record.made_by(&future.await);
                drop(record);
            });
            return;
        }
        let (claim, record) = (self.claim.take(), self.record.take());
        if let Some(future) = self.future.take()
            && (claim.is_some() || record.is_some())
        {
            finish_detached(async move {
                let outcome = future.await;
                if let Some(claim) = claim {
                    match outcome {
                        Ok(true) => drop(claim),
                        Ok(false) => claim.disown(),
                        Err(_) => claim.abandon(),
                    }
                }
                // The delivery was not handled: the MAC's record is forgotten.
                drop(record);
            });
        }
    }
}

/// The record of a delivery's MAC (see [`VerifiedWebhook::replay_also`]): a claim with the
/// id's token in [`RecordDelivery::AfterSuccess`] mode, else recorded at once. Settled like the
/// id: completed (or kept) when the delivery was handled, else released (or removed), so that a
/// delivery that was not handled can be sent again as it was; dropped unsettled, it is
/// forgotten.
struct MacRecord {
    store: Arc<dyn ReplayStore>,
    key: Option<String>,
    /// The claim's token (`None`: recorded for good at once).
    token: Option<ClaimToken>,
    /// How long the MAC is remembered once the delivery was handled.
    ttl: Duration,
    /// The store made the record (or may have): only then is there something to forget.
    made: bool,
}

impl MacRecord {
    /// Notes what the store's answer to the record says of it: made (`true`), or maybe made (an
    /// error) where it can be undone without touching another delivery's record (a claim, by
    /// its token, in a store that tracks claims; a removal could forget a record made before).
    fn made_by(&mut self, outcome: &Result<bool, BoxError>) {
        self.made = match outcome {
            Ok(made) => *made,
            Err(_) => self.token.is_some() && self.store.tracks_claims(),
        };
    }

    /// The store's operation that settles the record, `handled` or not (`None`: nothing to do),
    /// with what to log if it fails and the key.
    fn settle(mut self, handled: bool) -> Option<(ReplayFuture, &'static Settle, String)> {
        self.settle_now(handled)
    }

    fn settle_now(&mut self, handled: bool) -> Option<(ReplayFuture, &'static Settle, String)> {
        let key = self.key.take().filter(|_| self.made)?;
        let store = &self.store;
        let future = match (self.token, handled) {
            (Some(token), true) => guarded(|| store.complete(&key, token, self.ttl)),
            (None, true) => return None,
            (Some(token), false) => guarded(|| store.release(&key, token)),
            (None, false) => guarded(|| store.remove(&key)),
        };
        Some((future, &FORGET_FAILED, key))
    }
}

impl Drop for MacRecord {
    fn drop(&mut self) {
        // A custom store's panic is logged as its failure, not let out of this `Drop` (see
        // `Claim`'s).
        let key = self.key.clone();
        match catch_unwind(AssertUnwindSafe(|| self.settle_now(false))) {
            Ok(Some((future, settle, key))) => drop(Detached(Some(future), settle, key)),
            Ok(None) => {}
            Err(payload) => {
                FORGET_FAILED.log(
                    None,
                    key.as_deref().unwrap_or_default(),
                    Err(store_panicked(&*payload)),
                );
                crate::panic::dispose(payload);
            }
        }
    }
}

/// `first`, then the settling of a MAC's record (`also`), as one operation whose answer is
/// `first`'s, so that both are done before the provider sees the answer; a failure of `also` is
/// logged by itself.
fn and_mac(
    first: ReplayFuture,
    also: Option<(ReplayFuture, &'static Settle, String)>,
) -> ReplayFuture {
    match also {
        None => first,
        Some((also, settle, key)) => ReplayFuture::new(async move {
            let outcome = first.await;
            settle.log(None, &key, also.await);
            outcome
        }),
    }
}

/// A delivery id claimed in [`RecordDelivery::AfterSuccess`] mode: completed after a 2xx,
/// released after a failure, and released when dropped (the delivery panicked or was
/// abandoned).
struct Claim {
    store: Arc<dyn ReplayStore>,
    key: Option<String>,
    token: ClaimToken,
    /// How long a handled id is remembered (`replay_ttl`).
    ttl: Duration,
    /// The record of the delivery's MAC, when its id is not signed: kept if the delivery was
    /// handled, else forgotten.
    mac: Option<Box<MacRecord>>,
}

impl Claim {
    /// The store did not give us the id (another delivery holds it): nothing to release.
    fn disown(mut self) {
        self.key = None;
    }

    /// The store answered the claim with an error: it may have been carried out all the same
    /// (the answer was lost, the store timed out after writing), and the delivery is refused
    /// (503), so the provider delivers it again. A store that tracks claims is asked to release
    /// it by its token, which leaves any other delivery's claim alone; without that, a
    /// redelivery would be refused as a replay of itself until the claim expired. Another store
    /// only has [`ReplayStore::remove`], which could forget a copy's record, so nothing is done.
    fn abandon(mut self) {
        if !self.store.tracks_claims() {
            return self.disown();
        }
        if let Some(key) = self.key.take() {
            let (store, token) = (&self.store, self.token);
            drop(Detached(
                Some(guarded(|| store.release(&key, token))),
                &ABANDON_FAILED,
                key,
            ));
        }
    }

    /// The delivery was handled: marks the id completed, through a future the caller awaits.
    /// (The key is taken first: a store that panicked would otherwise have the handled id
    /// released by `Drop`.)
    fn complete(mut self) -> Detached {
        let key = self.key.take().unwrap_or_default();
        let mac = self.mac.take().and_then(|record| record.settle(true));
        let (store, token, ttl) = (&self.store, self.token, self.ttl);
        Detached(
            Some(and_mac(guarded(|| store.complete(&key, token, ttl)), mac)),
            &COMPLETE_FAILED,
            key,
        )
    }

    /// The delivery failed: releases the id, through a future the caller awaits.
    fn release(mut self) -> Detached {
        let key = self.key.take().unwrap_or_default();
        let mac = self.mac.take().and_then(|record| record.settle(false));
        let (store, token) = (&self.store, self.token);
        Detached(
            Some(and_mac(guarded(|| store.release(&key, token)), mac)),
            &RELEASE_FAILED,
            key,
        )
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            // A custom store's panic is logged as its failure, not let out of this `Drop`
            // (through the server's connection task, or into an abort during another unwind).
            let (store, token) = (&self.store, self.token);
            match catch_unwind(AssertUnwindSafe(|| store.release(&key, token))) {
                Ok(release) => drop(Detached(Some(release), &RELEASE_FAILED, key)),
                Err(payload) => {
                    RELEASE_FAILED.log(None, &key, Err(store_panicked(&*payload)));
                    crate::panic::dispose(payload);
                }
            }
        }
    }
}

/// The store's operation `op` makes, a panic in making it (a custom store's bug) turned into
/// the operation's failure, which is logged as any other.
fn guarded(op: impl FnOnce() -> ReplayFuture) -> ReplayFuture {
    match catch_unwind(AssertUnwindSafe(op)) {
        Ok(future) => future,
        Err(payload) => {
            let err = store_panicked(&*payload);
            crate::panic::dispose(payload);
            ReplayFuture::ready(Err(err))
        }
    }
}

/// A replay store's panic, as the error of the operation that panicked.
fn store_panicked(payload: &(dyn std::any::Any + Send)) -> BoxError {
    let message = crate::panic::message(payload).unwrap_or("<non-string panic payload>");
    format!("the replay store panicked: {message}").into()
}

/// The claim of a gRPC call whose answer carries its status at the end of its body (see
/// [`ResponseBody`]): settled when the status comes. Trailers with `grpc-status: 0` complete
/// it (gRPC-web: a trailer frame that says so, read from the body's data as it passes); any
/// other status, a body that ends without a status (or, gRPC-web, that is not made of frames),
/// or a body error release it, and so does a body dropped before its end (the client went away:
/// [`Claim`]'s `Drop`). The store's update is finished before the trailers (or the end, or the
/// data frame that completes a gRPC-web trailer frame) are handed on, so that a sender that
/// resends at once after seeing the status is not refused.
pub(crate) struct SettleAtEnd {
    phase: Phase,
    shared: Arc<Shared>,
    /// gRPC-web: the reader of the body's frames (`None`: gRPC, whose status is in trailers).
    web: Option<WebStatus>,
}

enum Phase {
    /// The body streams, with its claim held.
    Streaming(Claim),
    /// The status came: the store's update runs, then the frame that brought it (the trailers,
    /// the data that ends a gRPC-web trailer frame, or none: the end) goes on.
    Updating(Detached, Option<http_body::Frame<Bytes>>),
    /// Settled: what the body yields goes on as it is.
    Done,
}

impl SettleAtEnd {
    fn new(claim: Claim, shared: Arc<Shared>, kind: Grpc) -> Self {
        Self {
            phase: Phase::Streaming(claim),
            shared,
            web: match kind {
                Grpc::Native => None,
                Grpc::Web => Some(WebStatus::new(false)),
                Grpc::WebText => Some(WebStatus::new(true)),
            },
        }
    }

    /// Whether the frame that settled the claim was handed on.
    pub(crate) fn ended(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// Polls `body` for its next frame, settling the claim at its ending.
    pub(crate) fn poll_frame<B>(
        &mut self,
        mut body: Pin<&mut B>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>>
    where
        B: Body<Data = Bytes>,
    {
        loop {
            match &mut self.phase {
                Phase::Done => return body.poll_frame(cx),
                Phase::Updating(update, _) => {
                    let outcome = ready!(Pin::new(&mut *update).poll(cx));
                    update.log_failure(&self.shared, outcome);
                    let Phase::Updating(_, ending) =
                        std::mem::replace(&mut self.phase, Phase::Done)
                    else {
                        unreachable!("in the updating phase")
                    };
                    return Poll::Ready(ending.map(Ok));
                }
                Phase::Streaming(_) => {
                    let (handled, ending) = match ready!(body.as_mut().poll_frame(cx)) {
                        Some(Ok(frame)) if frame.is_data() => {
                            let Some(web) = &mut self.web else {
                                return Poll::Ready(Some(Ok(frame)));
                            };
                            if let Some(data) = frame.data_ref() {
                                web.feed(data);
                            }
                            match web.verdict() {
                                None => return Poll::Ready(Some(Ok(frame))),
                                // The trailer frame is complete (or the body is no gRPC-web):
                                // settled before the data that says so is handed on.
                                Some(handled) => (handled, Some(frame)),
                            }
                        }
                        // gRPC-web: the status is in the body, not in trailers.
                        Some(Ok(frame)) => (
                            self.web.is_none()
                                && frame
                                    .trailers_ref()
                                    .and_then(|trailers| trailers.get(&GRPC_STATUS))
                                    .is_some_and(|status| status.as_bytes() == b"0"),
                            Some(frame),
                        ),
                        None => (false, None),
                        Some(Err(err)) => {
                            // The error cannot be held while the store answers (its type is the
                            // inner body's): the release is started (an in-memory store's is
                            // done at once) and finished without an owner.
                            self.phase = Phase::Done;
                            return Poll::Ready(Some(Err(err)));
                        }
                    };
                    let Phase::Streaming(claim) = std::mem::replace(&mut self.phase, Phase::Done)
                    else {
                        unreachable!("in the streaming phase")
                    };
                    let update = if handled {
                        claim.complete()
                    } else {
                        claim.release()
                    };
                    self.phase = Phase::Updating(update, ending);
                }
            }
        }
    }
}

impl fmt::Debug for SettleAtEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = match self.phase {
            Phase::Streaming(_) => "streaming",
            Phase::Updating(..) => "updating",
            Phase::Done => "done",
        };
        f.debug_struct("SettleAtEnd")
            .field("phase", &phase)
            .finish_non_exhaustive()
    }
}

/// A replay-store operation that is finished even if its owner is dropped first, what to log if
/// it did not go as planned, and the replay key (`<provider>:<delivery id>`) it is about, so
/// that the line names the delivery.
struct Detached(Option<ReplayFuture>, &'static Settle, String);

/// Log lines for settling a claim.
struct Settle {
    /// The store failed.
    failed: &'static str,
    /// The store answered `false`: the claim was no longer this delivery's (`None`: nothing to
    /// say, the claim may never have been taken).
    lost: Option<&'static str>,
}

const COMPLETE_FAILED: Settle = Settle {
    failed: "could not mark a delivery id as handled: it may stay claimed until its claim_ttl runs out; copies are refused until then, and one that arrives after is processed again",
    lost: Some(
        "the claim on a delivery id was gone when its handler finished (it expired: is claim_ttl shorter than the handler?), and another delivery of the id holds a claim or was handled: it may have been processed more than once",
    ),
};

const RELEASE_FAILED: Settle = Settle {
    failed: "could not release a delivery id after a failed or abandoned delivery: it may stay claimed until its claim_ttl runs out (a store that does not track claims keeps it for the replay_ttl), and a redelivery is refused as a replay until then",
    lost: Some(
        "the claim on a delivery id was gone when its delivery failed (it expired: is claim_ttl shorter than the handler?, or the store evicted it); another delivery of the id may hold it now, and is left alone",
    ),
};

const FORGET_FAILED: Settle = Settle {
    failed: "could not settle the record of a delivery's MAC: if the delivery was not handled, the same message sent again is refused as a replay until its claim_ttl or its timestamp's window runs out; if it was, a copy may be refused instead of acknowledged",
    lost: None,
};

const ABANDON_FAILED: Settle = Settle {
    failed: "could not release a delivery id whose claim the replay store answered with an error; if the store recorded the claim, a redelivery is refused as a replay until its claim_ttl runs out",
    lost: None,
};

impl Future for Detached {
    type Output = Result<bool, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(future) = self.0.as_mut() else {
            return Poll::Ready(Err("replay operation polled after completion".into()));
        };
        let outcome = ready!(Pin::new(future).poll(cx));
        self.0 = None;
        Poll::Ready(outcome)
    }
}

impl Detached {
    /// Logs the operation's failure, if it failed, once it has finished.
    fn log_failure(&self, shared: &Shared, outcome: Result<bool, BoxError>) {
        self.1
            .log(Some(shared.scheme.provider.as_str()), &self.2, outcome);
    }
}

impl Settle {
    fn log(&self, provider: Option<&str>, delivery: &str, outcome: Result<bool, BoxError>) {
        match outcome {
            Ok(true) => {}
            Ok(false) => {
                if let Some(lost) = self.lost {
                    tracing::warn!(provider, delivery, "{}", lost)
                }
            }
            Err(err) => {
                let error = &*redacted(err.to_string());
                tracing::error!(provider, delivery, error, "{}", self.failed)
            }
        }
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        if let Some(future) = self.0.take() {
            let settle = self.1;
            let key = std::mem::take(&mut self.2);
            finish_detached(async move { settle.log(None, &key, future.await) });
        }
    }
}

/// Runs `future` to its end without an owner: at once when it is ready (the in-memory store
/// works synchronously), else as a task on the current tokio runtime.
///
/// It runs from a `Drop`: a panic of the store's future is logged, not let out.
fn finish_detached(future: impl Future<Output = ()> + Send + 'static) {
    let mut future = Box::pin(future);
    let polled = catch_unwind(AssertUnwindSafe(|| {
        future
            .as_mut()
            .poll(&mut Context::from_waker(std::task::Waker::noop()))
            .is_ready()
    }));
    match polled {
        Ok(true) => return,
        Ok(false) => {}
        Err(payload) => {
            let error = &*redacted(store_panicked(&*payload).to_string());
            tracing::error!(
                error,
                "a replay store operation left to finish on its own panicked; the delivery id it settled may stay claimed until its claim_ttl runs out"
            );
            crate::panic::dispose(payload);
            // Not polled again; a panic of its `Drop` is logged too.
            if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(future))) {
                tracing::error!("a replay store operation panicked again while it was dropped");
                crate::panic::dispose(again);
            }
            return;
        }
    }
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => drop(handle.spawn(future)),
        Err(_) => tracing::error!(
            "a delivery id could not be released: no tokio runtime to finish the store's operation on; a redelivery will be treated as a replay until it expires"
        ),
    }
}

/// `<provider>:<delivery id>`.
fn replay_key(provider: Provider, id: &str) -> String {
    let provider = provider.as_str();
    let mut key = String::with_capacity(provider.len() + 1 + id.len());
    key.push_str(provider);
    key.push(':');
    key.push_str(id);
    key
}

/// The replay key of a verified request.
fn replay_key_of<B>(req: &Request<B>) -> String {
    req.extensions()
        .get::<VerifiedWebhook>()
        .and_then(|v| Some(replay_key(v.provider(), v.replay_id()?)))
        .unwrap_or_default()
}

/// Calls `f` with `<provider>:<delivery id>` built on the stack (ids are at most 256 bytes),
/// so looking a delivery up allocates nothing.
fn with_replay_key<R>(provider: Provider, id: &str, f: impl FnOnce(&str) -> R) -> R {
    let name = provider.as_str().as_bytes();
    let mut buf = [0u8; 320];
    let len = name.len() + 1 + id.len();
    match buf.get_mut(..len) {
        Some(key) => {
            key[..name.len()].copy_from_slice(name);
            key[name.len()] = b':';
            key[name.len() + 1..].copy_from_slice(id.as_bytes());
            // Both halves are `str`s and `:` is ASCII, so this cannot fail.
            f(std::str::from_utf8(key).unwrap_or_default())
        }
        None => f(&replay_key(provider, id)),
    }
}

/// The replay store and the delivery id to record in it, when there are both. Without a store
/// the id is not read (reading it validates it as UTF-8 again).
fn replay_target<'a>(
    shared: &'a Shared,
    verified: &'a VerifiedWebhook,
) -> Option<(&'a Arc<dyn ReplayStore>, &'a str)> {
    let store = shared.replay.as_ref()?;
    Some((store, verified.replay_id()?))
}

/// Hands a verified delivery to `inner` once it is ready: at once if it is, else from
/// [`State::Readying`]. An error of its readiness is the request's, and releases the claim.
fn call_inner<S, ReqBody>(
    mut inner: S,
    req: Request<ReqBody>,
    claim: Option<Claim>,
    cx: &mut Context<'_>,
) -> State<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    match inner.poll_ready(cx) {
        Poll::Ready(Ok(())) => call_ready(inner, req, claim),
        Poll::Ready(Err(err)) => not_taken(claim, err),
        Poll::Pending => State::Readying {
            inner: Some(inner),
            req: Some(req),
            claim,
        },
    }
}

/// The inner service could not take a delivery (its readiness failed): its claim is released
/// before the error is answered, as after a failed handler, so that a redelivery that comes at
/// once finds the id free.
fn not_taken<S, ReqBody>(claim: Option<Claim>, error: S::Error) -> State<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    match claim {
        Some(claim) => State::Settled {
            update: claim.release(),
            result: Some(Err(error)),
        },
        None => State::Failed { error: Some(error) },
    }
}

/// Calls `inner`, which was polled ready.
fn call_ready<S, ReqBody>(
    mut inner: S,
    req: Request<ReqBody>,
    claim: Option<Claim>,
) -> State<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    // Only a claim is settled by the answer: without one the request's type does not matter.
    let grpc = claim.is_some()
        && req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(Grpc::of)
            .is_some();
    State::Inner {
        future: inner.call(req),
        claim,
        grpc,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capacity(c: &Collected) -> usize {
        match c {
            Collected::Many(all) => all.capacity(),
            _ => 0,
        }
    }

    #[test]
    fn buffering_follows_what_arrives_not_what_is_announced() {
        let limit = 25 << 20;
        // 25 MiB announced, 2 bytes sent: no more than the first 64 KiB is reserved.
        let mut c = Collected::Empty;
        c.push(Bytes::from_static(b"a"), limit, limit);
        c.push(Bytes::from_static(b"b"), limit, limit);
        assert_eq!(c.len(), 2);
        assert!(capacity(&c) <= FIRST_RESERVE, "{}", capacity(&c));

        // A truthful announcement: doubling stops exactly at the announced length.
        let announced = 1_000_000;
        let chunk = Bytes::from(vec![7u8; 10_000]);
        let mut c = Collected::Empty;
        for _ in 0..announced / chunk.len() {
            c.push(chunk.clone(), announced, limit);
            assert!(capacity(&c) <= (2 * c.len()).max(FIRST_RESERVE));
        }
        assert_eq!(capacity(&c), announced);
        assert_eq!(c.take().len(), announced);

        // No announcement: doubling, capped at the limit.
        let mut c = Collected::Empty;
        for _ in 0..5 {
            c.push(chunk.clone(), 0, 50_000);
        }
        assert_eq!(c.len(), 50_000);
        assert_eq!(capacity(&c), 50_000);
    }
}
