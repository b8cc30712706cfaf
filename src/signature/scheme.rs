//! Provider schemes: header parsing and MAC verification, independent of tower.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest, Sha256, Sha512};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use super::error::{SignatureConfigError, SignatureValidationError as E};
use super::secret::Secret;

/// The most signatures one delivery may carry, whatever the configuration.
pub(crate) const MAX_SIGNATURES: usize = 8;
/// The longest accepted delivery id, in bytes.
const MAX_ID_LEN: usize = 256;
/// The largest MAC (SHA-512).
const MAX_TAG: usize = 64;

/// Base64 with or without padding (Standard Webhooks secrets and signatures, Shopify).
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Who signed a delivery.
///
/// See the [module docs](super) for the scheme of each.
///
/// ```
/// use tower_webhook::signature::{Provider, SignatureLayer};
///
/// let layer = SignatureLayer::gitlab("token").unwrap();
/// assert_eq!(layer.provider(), Provider::GitLab);
/// assert_eq!(Provider::GitLab.as_str(), "gitlab");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Provider {
    /// GitHub: `X-Hub-Signature-256: sha256=<hex>`.
    GitHub,
    /// GitLab: `X-Gitlab-Token: <token>`.
    GitLab,
    /// Bitbucket Cloud: `X-Hub-Signature: sha256=<hex>`.
    BitbucketCloud,
    /// Bitbucket Data Center / Server: `X-Hub-Signature: sha256=<hex>`.
    BitbucketDataCenter,
    /// Gitea: `X-Gitea-Signature: <hex>`.
    Gitea,
    /// Forgejo: `X-Forgejo-Signature: <hex>` (or the Gitea header).
    Forgejo,
    /// Azure DevOps service hooks: `Authorization: Basic`.
    AzureDevOps,
    /// Stripe: `Stripe-Signature: t=<ts>,v1=<hex>`.
    Stripe,
    /// Slack: `X-Slack-Signature: v0=<hex>` and `X-Slack-Request-Timestamp`.
    Slack,
    /// Shopify: `X-Shopify-Hmac-Sha256: <base64>`.
    Shopify,
    /// Zoom: `x-zm-signature: v0=<hex>` and `x-zm-request-timestamp`.
    Zoom,
    /// Twitch EventSub: `Twitch-Eventsub-Message-Signature: sha256=<hex>`.
    Twitch,
    /// Standard Webhooks (Svix and others): `webhook-signature: v1,<base64>`.
    StandardWebhooks,
    /// A [`CustomScheme`].
    Custom,
    /// Verification was switched off with
    /// [`SignatureLayer::dangerously_skip_verification`](super::SignatureLayer::dangerously_skip_verification).
    Unverified,
}

impl Provider {
    /// A short lowercase name, used in logs and replay-store keys.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::{Provider, SignatureLayer};
    ///
    /// assert_eq!(Provider::BitbucketDataCenter.as_str(), "bitbucket-dc");
    /// assert_eq!(SignatureLayer::shopify("shpss_secret").unwrap().provider().as_str(), "shopify");
    /// assert_eq!(Provider::StandardWebhooks.to_string(), "standard-webhooks");
    /// ```
    pub fn as_str(&self) -> &'static str {
        match self {
            Provider::GitHub => "github",
            Provider::GitLab => "gitlab",
            Provider::BitbucketCloud => "bitbucket-cloud",
            Provider::BitbucketDataCenter => "bitbucket-dc",
            Provider::Gitea => "gitea",
            Provider::Forgejo => "forgejo",
            Provider::AzureDevOps => "azure-devops",
            Provider::Stripe => "stripe",
            Provider::Slack => "slack",
            Provider::Shopify => "shopify",
            Provider::Zoom => "zoom",
            Provider::Twitch => "twitch",
            Provider::StandardWebhooks => "standard-webhooks",
            Provider::Custom => "custom",
            Provider::Unverified => "unverified",
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The hash function of an HMAC scheme (see [`CustomScheme::algorithm`]).
///
/// ```
/// use tower_webhook::signature::{Algorithm, CustomScheme, SignatureLayer};
///
/// let scheme = CustomScheme::new("x-signature").algorithm(Algorithm::Sha512);
/// let layer = SignatureLayer::custom(scheme, "custom-secret").unwrap();
/// let req = http::Request::post("/hook")
///     .header("x-signature", "6d5e28e730a7cb07e94adaa7e5fba4f1ed3d6a8546cbbf0d3cf0bae21b58e8f9dc594fe86406bd8825dea360d798bdbe718e710cfabf435a7e5790c8e626d6ed")
///     .body(r#"{"n":1}"#)
///     .unwrap();
/// assert!(layer.verify(req.headers(), req.body().as_bytes()).is_ok());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Algorithm {
    /// HMAC-SHA1 (legacy; GitHub's `X-Hub-Signature`).
    Sha1,
    /// HMAC-SHA256.
    Sha256,
    /// HMAC-SHA512.
    Sha512,
}

/// How a MAC is written in a header (see [`CustomScheme::encoding`]).
///
/// ```
/// use tower_webhook::signature::{CustomScheme, Encoding, SignatureLayer};
///
/// let scheme = CustomScheme::new("x-signature").encoding(Encoding::Base64);
/// let layer = SignatureLayer::custom(scheme, "custom-secret").unwrap();
/// let req = http::Request::post("/hook")
///     .header("x-signature", "xFjg5o5EJlcrYJ8B0obysE1rQT3ch5aR6MFPDtp3QCw=")
///     .body(r#"{"n":1}"#)
///     .unwrap();
/// assert!(layer.verify(req.headers(), req.body().as_bytes()).is_ok());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Encoding {
    /// Hexadecimal, either case.
    Hex,
    /// Standard base64, padding optional.
    Base64,
}

/// A scheme of your own: one header carrying an HMAC of the body.
///
/// The header value is `<prefix><encoded MAC>`. With a
/// [`timestamp_header`](Self::timestamp_header) the signed message is `<timestamp>.<body>`
/// and the timestamp must lie inside the window; otherwise it is the body.
///
/// # Example
///
/// GitHub's legacy SHA-1 header:
///
/// ```
/// use tower_webhook::signature::{Algorithm, CustomScheme, Encoding, SignatureLayer};
///
/// let scheme = CustomScheme::new("x-hub-signature")
///     .prefix("sha1=")
///     .algorithm(Algorithm::Sha1)
///     .encoding(Encoding::Hex)
///     .delivery_id_header("x-github-delivery")
///     .event_header("x-github-event");
/// let layer = SignatureLayer::custom(scheme, "It's a Secret to Everybody").unwrap();
/// let req = http::Request::post("/hook")
///     .header("x-github-event", "ping")
///     .header("x-hub-signature", "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59")
///     .body("Hello, World!")
///     .unwrap();
/// let hook = layer.verify(req.headers(), req.body().as_bytes()).unwrap();
/// assert_eq!(hook.event(), Some("ping"));
/// ```
#[derive(Clone, Debug)]
pub struct CustomScheme {
    header: String,
    prefix: String,
    algorithm: Algorithm,
    encoding: Encoding,
    timestamp_header: Option<String>,
    delivery_id_header: Option<String>,
    event_header: Option<String>,
}

impl CustomScheme {
    /// A scheme reading the signature from `header`: HMAC-SHA256, hex, no prefix.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::{CustomScheme, SignatureLayer};
    ///
    /// // `x-signature: <hex HMAC-SHA256(secret, body)>`
    /// let layer = SignatureLayer::custom(CustomScheme::new("x-signature"), "custom-secret").unwrap();
    /// let req = http::Request::post("/hook")
    ///     .header("x-signature", "c458e0e68e4426572b609f01d286f2b04d6b413ddc879691e8c14f0eda77402c")
    ///     .body(r#"{"n":1}"#)
    ///     .unwrap();
    /// assert!(layer.verify(req.headers(), req.body().as_bytes()).is_ok());
    /// ```
    pub fn new(header: impl Into<String>) -> Self {
        Self {
            header: header.into(),
            prefix: String::new(),
            algorithm: Algorithm::Sha256,
            encoding: Encoding::Hex,
            timestamp_header: None,
            delivery_id_header: None,
            event_header: None,
        }
    }

    /// The text before the MAC, e.g. `sha256=` (matched exactly).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::{CustomScheme, SignatureLayer, SignatureValidationError};
    ///
    /// let scheme = CustomScheme::new("x-signature").prefix("sha256=");
    /// let layer = SignatureLayer::custom(scheme, "custom-secret").unwrap();
    /// let sig = "c458e0e68e4426572b609f01d286f2b04d6b413ddc879691e8c14f0eda77402c";
    /// let signed = |value: String| http::Request::post("/hook").header("x-signature", value).body(r#"{"n":1}"#).unwrap();
    ///
    /// let req = signed(format!("sha256={sig}"));
    /// assert!(layer.verify(req.headers(), req.body().as_bytes()).is_ok());
    /// let req = signed(sig.to_owned()); // no prefix
    /// let err = layer.verify(req.headers(), req.body().as_bytes()).unwrap_err();
    /// assert!(matches!(err, SignatureValidationError::MalformedHeader(_)));
    /// ```
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The hash function (default SHA-256).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::{Algorithm, CustomScheme, SignatureLayer};
    ///
    /// let scheme = CustomScheme::new("x-signature").algorithm(Algorithm::Sha512);
    /// let layer = SignatureLayer::custom(scheme, "custom-secret").unwrap();
    /// let req = http::Request::post("/hook")
    ///     .header("x-signature", "6d5e28e730a7cb07e94adaa7e5fba4f1ed3d6a8546cbbf0d3cf0bae21b58e8f9dc594fe86406bd8825dea360d798bdbe718e710cfabf435a7e5790c8e626d6ed")
    ///     .body(r#"{"n":1}"#)
    ///     .unwrap();
    /// assert!(layer.verify(req.headers(), req.body().as_bytes()).is_ok());
    /// ```
    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// How the MAC is encoded (default hex).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::{CustomScheme, Encoding, SignatureLayer};
    ///
    /// let scheme = CustomScheme::new("x-signature").encoding(Encoding::Base64);
    /// let layer = SignatureLayer::custom(scheme, "custom-secret").unwrap();
    /// let req = http::Request::post("/hook")
    ///     .header("x-signature", "xFjg5o5EJlcrYJ8B0obysE1rQT3ch5aR6MFPDtp3QCw=")
    ///     .body(r#"{"n":1}"#)
    ///     .unwrap();
    /// assert!(layer.verify(req.headers(), req.body().as_bytes()).is_ok());
    /// ```
    pub fn encoding(mut self, encoding: Encoding) -> Self {
        self.encoding = encoding;
        self
    }

    /// A header with a Unix timestamp in seconds, signed as `<timestamp>.<body>`.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use tower_webhook::signature::{Clock, CustomScheme, SignatureLayer};
    ///
    /// let scheme = CustomScheme::new("x-signature").prefix("sha256=").timestamp_header("x-timestamp");
    /// let signed_at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    /// let layer = SignatureLayer::custom(scheme, "custom-secret").unwrap().clock(Clock::fixed(signed_at));
    ///
    /// // The MAC covers `1700000000.{"n":1}`.
    /// let req = http::Request::post("/hook")
    ///     .header("x-timestamp", "1700000000")
    ///     .header("x-signature", "sha256=48913cdbcf75bf8dbb6958adb5e810624d02bb81e1c5cab775e240aae3e428ac")
    ///     .body(r#"{"n":1}"#)
    ///     .unwrap();
    /// let hook = layer.verify(req.headers(), req.body().as_bytes()).unwrap();
    /// assert_eq!(hook.timestamp(), Some(signed_at));
    /// ```
    pub fn timestamp_header(mut self, header: impl Into<String>) -> Self {
        self.timestamp_header = Some(header.into());
        self
    }

    /// A header naming the delivery, used for replay protection.
    ///
    /// The signature does not cover it: with a [`timestamp_header`](Self::timestamp_header),
    /// the delivery's MAC is recorded beside its id, so that a copy sent again under another id,
    /// or none, inside the window is a replay too.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::{CustomScheme, SignatureLayer};
    ///
    /// let scheme = CustomScheme::new("x-signature").delivery_id_header("x-delivery-id");
    /// let layer = SignatureLayer::custom(scheme, "custom-secret").unwrap();
    /// let req = http::Request::post("/hook")
    ///     .header("x-delivery-id", "dlv_01HF3")
    ///     .header("x-signature", "c458e0e68e4426572b609f01d286f2b04d6b413ddc879691e8c14f0eda77402c")
    ///     .body(r#"{"n":1}"#)
    ///     .unwrap();
    /// let hook = layer.verify(req.headers(), req.body().as_bytes()).unwrap();
    /// assert_eq!(hook.delivery_id(), Some("dlv_01HF3"));
    /// ```
    pub fn delivery_id_header(mut self, header: impl Into<String>) -> Self {
        self.delivery_id_header = Some(header.into());
        self
    }

    /// A header naming the event.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_webhook::signature::{CustomScheme, SignatureLayer};
    ///
    /// let scheme = CustomScheme::new("x-signature").event_header("x-event");
    /// let layer = SignatureLayer::custom(scheme, "custom-secret").unwrap();
    /// let req = http::Request::post("/hook")
    ///     .header("x-event", "build.finished")
    ///     .header("x-signature", "c458e0e68e4426572b609f01d286f2b04d6b413ddc879691e8c14f0eda77402c")
    ///     .body(r#"{"n":1}"#)
    ///     .unwrap();
    /// let hook = layer.verify(req.headers(), req.body().as_bytes()).unwrap();
    /// assert_eq!(hook.event(), Some("build.finished"));
    /// ```
    pub fn event_header(mut self, header: impl Into<String>) -> Self {
        self.event_header = Some(header.into());
        self
    }
}

fn header_name(name: &str) -> Result<HeaderName, SignatureConfigError> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| SignatureConfigError::InvalidHeaderName(name.to_owned()))
}

mod names {
    use http::HeaderName;
    macro_rules! names {
        ($($id:ident = $s:literal;)*) => { $(pub(super) static $id: HeaderName = HeaderName::from_static($s);)* };
    }
    names! {
        AUTHORIZATION = "authorization";
        GITHUB_SIG = "x-hub-signature-256";
        GITHUB_DELIVERY = "x-github-delivery";
        GITHUB_EVENT = "x-github-event";
        GITLAB_TOKEN = "x-gitlab-token";
        GITLAB_IDEMPOTENCY = "idempotency-key";
        GITLAB_EVENT = "x-gitlab-event";
        HUB_SIG = "x-hub-signature";
        BB_UUID = "x-request-uuid";
        BB_REQUEST_ID = "x-request-id";
        BB_EVENT = "x-event-key";
        GITEA_SIG = "x-gitea-signature";
        GITEA_DELIVERY = "x-gitea-delivery";
        GITEA_EVENT = "x-gitea-event";
        FORGEJO_SIG = "x-forgejo-signature";
        FORGEJO_DELIVERY = "x-forgejo-delivery";
        FORGEJO_EVENT = "x-forgejo-event";
        STRIPE_SIG = "stripe-signature";
        SLACK_SIG = "x-slack-signature";
        SLACK_TS = "x-slack-request-timestamp";
        SHOPIFY_SIG = "x-shopify-hmac-sha256";
        SHOPIFY_ID = "x-shopify-webhook-id";
        SHOPIFY_TOPIC = "x-shopify-topic";
        SHOPIFY_EVENTS_SIG = "shopify-hmac-sha256";
        SHOPIFY_EVENTS_ID = "shopify-webhook-id";
        SHOPIFY_EVENTS_TOPIC = "shopify-topic";
        ZOOM_SIG = "x-zm-signature";
        ZOOM_TS = "x-zm-request-timestamp";
        TWITCH_SIG = "twitch-eventsub-message-signature";
        TWITCH_ID = "twitch-eventsub-message-id";
        TWITCH_TS = "twitch-eventsub-message-timestamp";
        TWITCH_TYPE = "twitch-eventsub-message-type";
        TWITCH_SUBSCRIPTION = "twitch-eventsub-subscription-type";
        WH_ID = "webhook-id";
        WH_TS = "webhook-timestamp";
        WH_SIG = "webhook-signature";
        SVIX_ID = "svix-id";
        SVIX_TS = "svix-timestamp";
        SVIX_SIG = "svix-signature";
    }
}

/// Prepared keys: HMAC states keyed once at construction, or token digests.
#[derive(Clone)]
/// The keys prepared from the secrets. They are as good as the secrets (an HMAC's prepared
/// state signs without the key), so they are wiped on drop like them: the hash functions'
/// `zeroize` features wipe the HMAC states, `Zeroizing` the token digests.
pub(crate) enum Keys {
    Sha1(Vec<Hmac<sha1::Sha1>>),
    Sha256(Vec<Hmac<Sha256>>),
    Sha512(Vec<Hmac<Sha512>>),
    /// SHA-256 digests of plain tokens (GitLab) or `user:password` (Azure DevOps).
    Token(zeroize::Zeroizing<Vec<[u8; 32]>>),
    None,
}

// The prepared HMAC states are wiped on drop only while these features are on.
const _: () = {
    fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    let _ = wiped_on_drop::<sha1::Sha1>;
    let _ = wiped_on_drop::<Sha256>;
    let _ = wiped_on_drop::<Sha512>;
};

impl Keys {
    fn hmac(algorithm: Algorithm, secrets: &[Secret]) -> Self {
        fn prep<M: KeyInit>(secrets: &[Secret]) -> Vec<M> {
            secrets
                .iter()
                .map(|s| M::new_from_slice(s.expose()).expect("HMAC takes keys of any length"))
                .collect()
        }
        match algorithm {
            Algorithm::Sha1 => Keys::Sha1(prep(secrets)),
            Algorithm::Sha256 => Keys::Sha256(prep(secrets)),
            Algorithm::Sha512 => Keys::Sha512(prep(secrets)),
        }
    }

    fn tokens(secrets: &[Secret]) -> Self {
        Keys::Token(zeroize::Zeroizing::new(
            secrets
                .iter()
                .map(|s| Sha256::digest(s.expose()).into())
                .collect(),
        ))
    }

    pub(crate) fn count(&self) -> usize {
        match self {
            Keys::Sha1(k) => k.len(),
            Keys::Sha256(k) => k.len(),
            Keys::Sha512(k) => k.len(),
            Keys::Token(k) => k.len(),
            Keys::None => 0,
        }
    }

    fn tag_len(&self) -> usize {
        match self {
            Keys::Sha1(_) => 20,
            Keys::Sha256(_) => 32,
            Keys::Sha512(_) => 64,
            Keys::Token(_) | Keys::None => 0,
        }
    }
}

/// Where the signature is and what is signed.
#[derive(Clone, Debug)]
enum Kind {
    /// `header: <prefix><enc(H(message))>`, message = body (or `<ts>.<body>` with a timestamp).
    Body {
        headers: Vec<HeaderName>,
        prefix: Cow<'static, str>,
        encoding: Encoding,
        timestamp: Option<HeaderName>,
        /// Gitea/Forgejo: for form deliveries the decoded `payload` field is signed.
        form_payload: bool,
    },
    Stripe,
    /// `v0=<hex>` over `v0:<ts>:<body>` (Slack, Zoom).
    V0 {
        sig: HeaderName,
        ts: HeaderName,
    },
    StandardWebhooks,
    /// `sha256=<hex>` over `<message id><RFC 3339 timestamp><body>`.
    Twitch,
    Token(HeaderName),
    Basic,
    Unverified,
}

/// Where the delivery id and event name come from.
#[derive(Clone, Debug)]
enum Field {
    Headers(Vec<HeaderName>),
    /// A header proxies may add to (one that appends its own `X-Request-Id`): its first value,
    /// the sender's. For a field the MAC does not cover, which a sender could set anyway.
    FirstValue(HeaderName),
    /// A top-level string field of a JSON body.
    Json(&'static str),
    None,
}

/// A provider's complete scheme.
#[derive(Clone, Debug)]
pub(crate) struct Scheme {
    pub(crate) provider: Provider,
    kind: Kind,
    delivery_id: Field,
    event: Field,
}

fn hs(list: &[&'static HeaderName]) -> Vec<HeaderName> {
    list.iter().map(|h| (*h).clone()).collect()
}

impl Scheme {
    fn body(
        provider: Provider,
        sig: &[&'static HeaderName],
        prefix: &'static str,
        encoding: Encoding,
    ) -> Kind {
        let _ = provider;
        Kind::Body {
            headers: hs(sig),
            prefix: Cow::Borrowed(prefix),
            encoding,
            timestamp: None,
            form_payload: false,
        }
    }

    pub(crate) fn builtin(provider: Provider) -> Self {
        use names::*;
        let (kind, delivery_id, event) = match provider {
            Provider::GitHub => (
                Self::body(provider, &[&GITHUB_SIG], "sha256=", Encoding::Hex),
                Field::Headers(hs(&[&GITHUB_DELIVERY])),
                Field::Headers(hs(&[&GITHUB_EVENT])),
            ),
            Provider::GitLab => (
                Kind::Token(GITLAB_TOKEN.clone()),
                Field::Headers(hs(&[&GITLAB_IDEMPOTENCY])),
                Field::Headers(hs(&[&GITLAB_EVENT])),
            ),
            Provider::BitbucketCloud => (
                Self::body(provider, &[&HUB_SIG], "sha256=", Encoding::Hex),
                Field::Headers(hs(&[&BB_UUID])),
                Field::Headers(hs(&[&BB_EVENT])),
            ),
            Provider::BitbucketDataCenter => (
                Self::body(provider, &[&HUB_SIG], "sha256=", Encoding::Hex),
                Field::FirstValue(names::BB_REQUEST_ID.clone()),
                Field::Headers(hs(&[&BB_EVENT])),
            ),
            Provider::Gitea | Provider::Forgejo => {
                let forgejo = provider == Provider::Forgejo;
                let (sig, id, ev) = if forgejo {
                    (
                        hs(&[&FORGEJO_SIG, &GITEA_SIG]),
                        hs(&[&FORGEJO_DELIVERY, &GITEA_DELIVERY]),
                        hs(&[&FORGEJO_EVENT, &GITEA_EVENT]),
                    )
                } else {
                    (
                        hs(&[&GITEA_SIG]),
                        hs(&[&GITEA_DELIVERY]),
                        hs(&[&GITEA_EVENT]),
                    )
                };
                (
                    Kind::Body {
                        headers: sig,
                        prefix: Cow::Borrowed(""),
                        encoding: Encoding::Hex,
                        timestamp: None,
                        form_payload: true,
                    },
                    Field::Headers(id),
                    Field::Headers(ev),
                )
            }
            Provider::AzureDevOps => (Kind::Basic, Field::Json("id"), Field::Json("eventType")),
            Provider::Stripe => (Kind::Stripe, Field::Json("id"), Field::Json("type")),
            Provider::Slack => (
                Kind::V0 {
                    sig: SLACK_SIG.clone(),
                    ts: SLACK_TS.clone(),
                },
                Field::Json("event_id"),
                Field::Json("type"),
            ),
            // Zoom's event name and handshake are read by `zoom_meta`.
            Provider::Zoom => (
                Kind::V0 {
                    sig: ZOOM_SIG.clone(),
                    ts: ZOOM_TS.clone(),
                },
                Field::None,
                Field::None,
            ),
            // Shopify's Events deliveries name the same headers without `X-`.
            Provider::Shopify => (
                Self::body(
                    provider,
                    &[&SHOPIFY_SIG, &SHOPIFY_EVENTS_SIG],
                    "",
                    Encoding::Base64,
                ),
                Field::Headers(hs(&[&SHOPIFY_ID, &SHOPIFY_EVENTS_ID])),
                Field::Headers(hs(&[&SHOPIFY_TOPIC, &SHOPIFY_EVENTS_TOPIC])),
            ),
            Provider::Twitch => (
                Kind::Twitch,
                Field::Headers(hs(&[&TWITCH_ID])),
                Field::Headers(hs(&[&TWITCH_SUBSCRIPTION])),
            ),
            Provider::StandardWebhooks => (
                Kind::StandardWebhooks,
                Field::Headers(hs(&[&WH_ID, &SVIX_ID])),
                Field::Json("type"),
            ),
            Provider::Custom | Provider::Unverified => (Kind::Unverified, Field::None, Field::None),
        };
        Self {
            provider,
            kind,
            delivery_id,
            event,
        }
    }

    pub(crate) fn custom(custom: &CustomScheme) -> Result<Self, SignatureConfigError> {
        Ok(Self {
            provider: Provider::Custom,
            kind: Kind::Body {
                headers: vec![header_name(&custom.header)?],
                prefix: Cow::Owned(custom.prefix.clone()),
                encoding: custom.encoding,
                timestamp: custom
                    .timestamp_header
                    .as_deref()
                    .map(header_name)
                    .transpose()?,
                form_payload: false,
            },
            delivery_id: match &custom.delivery_id_header {
                Some(h) => Field::Headers(vec![header_name(h)?]),
                None => Field::None,
            },
            event: match &custom.event_header {
                Some(h) => Field::Headers(vec![header_name(h)?]),
                None => Field::None,
            },
        })
    }

    /// Prepares the keys this scheme needs.
    pub(crate) fn keys(&self, secrets: &[Secret], algorithm: Algorithm) -> Keys {
        match self.kind {
            Kind::Token(_) | Kind::Basic => Keys::tokens(secrets),
            Kind::Unverified => Keys::None,
            _ => Keys::hmac(algorithm, secrets),
        }
    }

    /// Whether the signed message has a timestamp that must be inside the window.
    pub(crate) fn is_unverified(&self) -> bool {
        matches!(self.kind, Kind::Unverified)
    }

    pub(crate) fn needs_json(&self) -> bool {
        matches!(self.delivery_id, Field::Json(_)) || matches!(self.event, Field::Json(_))
    }

    /// The header that carries the secret itself (GitLab's token, Azure DevOps' credentials),
    /// marked sensitive before the request reaches the inner service.
    pub(crate) fn credential_header(&self) -> Option<&HeaderName> {
        match &self.kind {
            Kind::Token(name) => Some(name),
            Kind::Basic => Some(&names::AUTHORIZATION),
            _ => None,
        }
    }

    pub(crate) fn is_slack(&self) -> bool {
        self.provider == Provider::Slack
    }

    /// The `WWW-Authenticate` challenge sent with a 401 (RFC 9110 §11.6.1, §15.5.2): `Basic`
    /// where the credentials are HTTP Basic ones (Azure DevOps), else `Signature`; the realm is
    /// the provider.
    pub(crate) fn challenge(&self) -> String {
        let scheme = match self.kind {
            Kind::Basic => "Basic",
            _ => "Signature",
        };
        // Provider names are lowercase ASCII letters and dashes: a valid header value.
        format!("{scheme} realm=\"{}\"", self.provider.as_str())
    }
}

/// One decoded signature.
#[derive(Clone, Copy)]
struct Sig {
    len: u8,
    bytes: [u8; MAX_TAG],
}

/// Decoded candidate signatures: the first inline (the common case, no allocation), the rest
/// (Stripe `v1` lists, Standard Webhooks lists) on the heap.
#[derive(Clone)]
pub(crate) struct Candidates {
    first: Option<Sig>,
    rest: Vec<Sig>,
}

impl Candidates {
    fn new() -> Self {
        Self {
            first: None,
            rest: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.first
            .iter()
            .chain(self.rest.iter())
            .map(|s| &s.bytes[..usize::from(s.len)])
    }

    /// Adds a decoded signature; a value that is not valid in its encoding or longer than
    /// any MAC is refused (before the cap is looked at: one that cannot be a signature does
    /// not count), and so is one past `cap`.
    fn push(
        &mut self,
        encoded: &[u8],
        encoding: Encoding,
        cap: usize,
        header: &HeaderName,
    ) -> Result<(), E> {
        let mut sig = Sig {
            len: 0,
            bytes: [0; MAX_TAG],
        };
        let n = match encoding {
            Encoding::Hex => {
                if !encoded.len().is_multiple_of(2) || encoded.len() > 2 * MAX_TAG {
                    return Err(E::MalformedHeader(header.clone()));
                }
                let n = encoded.len() / 2;
                if !decode_hex(encoded, &mut sig.bytes[..n]) {
                    return Err(E::MalformedHeader(header.clone()));
                }
                n
            }
            Encoding::Base64 => {
                if encoded.len() > 4 * MAX_TAG.div_ceil(3) {
                    return Err(E::MalformedHeader(header.clone()));
                }
                B64.decode_slice(encoded, &mut sig.bytes[..])
                    .map_err(|_| E::MalformedHeader(header.clone()))?
            }
        };
        sig.len = n as u8;
        if self.len() >= cap {
            return Err(E::TooManySignatures(cap));
        }
        if self.first.is_none() {
            self.first = Some(sig);
        } else {
            self.rest.push(sig);
        }
        Ok(())
    }
}

/// What the headers said, checked before the body is read.
pub(crate) struct Checked {
    sigs: Candidates,
    /// Bytes signed before the body (`<ts>.`, `v0:<ts>:`, `<id>.<ts>.`).
    prefix: Vec<u8>,
    pub(crate) timestamp: Option<u64>,
    /// For token schemes the match is decided from headers alone.
    token_match: Option<usize>,
    /// The delivery id header the signature covers (Standard Webhooks signs `webhook-id` or
    /// `svix-id`): the delivery id is read from it and from no other header.
    signed_id: Option<&'static HeaderName>,
}

/// The result of a successful verification, before it becomes a `VerifiedWebhook`.
pub(crate) struct Verified {
    pub(crate) secret_index: Option<usize>,
    pub(crate) timestamp: Option<u64>,
    pub(crate) delivery_id: Option<Text>,
    pub(crate) event: Option<Text>,
    /// A handshake to answer instead of calling the inner service.
    pub(crate) challenge: Option<Handshake>,
    /// Whether the delivery id is recorded in the replay store: not for a test notification
    /// whose id is a fixed sample (Azure DevOps' "Test" button).
    pub(crate) deduplicate: bool,
    /// The replay key of a delivery that has a signed timestamp but no delivery id (Zoom, a
    /// Slack command, a custom scheme without an id header), or an id the MAC does not cover (a
    /// custom scheme's id header): `sig-` and the first 16 bytes of its MAC in hex. A copy
    /// sent again inside the window carries the same MAC, however its signature header is
    /// written (hex in upper case, other signatures beside it).
    pub(crate) fingerprint: Option<Text>,
}

/// Up to this many header values, a header is found by one pass over the map rather than by
/// hashing its name (webhook requests carry 5 to 20 headers).
pub(crate) const LINEAR_SCAN_MAX: usize = 24;

/// The one value of a header that must appear at most once.
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a HeaderValue>, E> {
    if headers.len() <= LINEAR_SCAN_MAX {
        let mut found = None;
        for (n, value) in headers {
            if n == name && found.replace(value).is_some() {
                return Err(E::DuplicateHeader(name.clone()));
            }
        }
        return Ok(found);
    }
    let mut all = headers.get_all(name).iter();
    let first = all.next();
    if all.next().is_some() {
        return Err(E::DuplicateHeader(name.clone()));
    }
    Ok(first)
}

/// The first of `names` present (at most once).
fn first_of<'a>(
    headers: &'a HeaderMap,
    names: &'a [HeaderName],
) -> Result<Option<(&'a HeaderName, &'a HeaderValue)>, E> {
    for name in names {
        if let Some(v) = single(headers, name)? {
            return Ok(Some((name, v)));
        }
    }
    Ok(None)
}

fn required<'a>(
    headers: &'a HeaderMap,
    names: &'a [HeaderName],
) -> Result<(&'a HeaderName, &'a HeaderValue), E> {
    first_of(headers, names)?.ok_or_else(|| E::MissingHeader(names[0].clone()))
}

/// Strict Unix seconds: ASCII digits only, at most 19 of them (fits `u64` without overflow
/// checks failing), no sign, no spaces.
pub(crate) fn parse_timestamp(value: &[u8], header: &HeaderName) -> Result<u64, E> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(E::MalformedHeader(header.clone()));
    }
    value.iter().try_fold(0u64, |acc, d| {
        acc.checked_mul(10)
            .and_then(|acc| acc.checked_add(u64::from(d - b'0')))
            .ok_or_else(|| E::MalformedHeader(header.clone()))
    })
}

/// Strict RFC 3339 (`2023-07-19T10:11:12.123456789Z`, or a `+hh:mm` / `-hh:mm` offset) to Unix
/// seconds; `None` for anything else or a time before 1970.
pub(crate) fn parse_rfc3339(v: &[u8]) -> Option<u64> {
    fn num(v: &[u8]) -> Option<i64> {
        if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(v.iter().fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0')))
    }
    if v.len() < 20 || v.len() > 40 {
        return None;
    }
    let sep = |i: usize, c: u8| v[i] == c;
    if !(sep(4, b'-')
        && sep(7, b'-')
        && matches!(v[10], b'T' | b't')
        && sep(13, b':')
        && sep(16, b':'))
    {
        return None;
    }
    let (year, month, day) = (num(&v[0..4])?, num(&v[5..7])?, num(&v[8..10])?);
    let (hour, minute, second) = (num(&v[11..13])?, num(&v[14..16])?, num(&v[17..19])?);
    let mut rest = &v[19..];
    if let Some(fraction) = rest.strip_prefix(b".") {
        let digits = fraction.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        rest = &fraction[digits..];
    }
    let offset = match rest {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (h, m) = (num(&[*h1, *h2])?, num(&[*m1, *m2])?);
            if h > 23 || m > 59 {
                return None;
            }
            let off = h * 3600 + m * 60;
            if *sign == b'-' { -off } else { off }
        }
        _ => return None,
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    // Days from the civil date (H. Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    u64::try_from(secs).ok()
}

/// Checks `timestamp` against `now` with overflow-free arithmetic.
pub(crate) fn check_window(timestamp: u64, now: SystemTime, tolerance: Duration) -> Result<(), E> {
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if now.abs_diff(timestamp) > tolerance.as_secs() {
        return Err(E::TimestampOutOfWindow {
            timestamp,
            now,
            tolerance,
        });
    }
    Ok(())
}

/// Settings the header check needs.
pub(crate) struct Limits<'a> {
    pub(crate) max_signatures: usize,
    pub(crate) tolerance: Duration,
    pub(crate) clock: &'a super::clock::Clock,
}

impl Scheme {
    /// Everything that can be decided from headers alone.
    pub(crate) fn check_headers(
        &self,
        keys: &Keys,
        headers: &HeaderMap,
        limits: &Limits<'_>,
    ) -> Result<Checked, E> {
        let mut checked = Checked {
            sigs: Candidates::new(),
            prefix: Vec::new(),
            timestamp: None,
            token_match: None,
            signed_id: None,
        };
        let cap = limits.max_signatures;
        match &self.kind {
            Kind::Unverified => {}
            Kind::Body {
                headers: names,
                prefix,
                encoding,
                timestamp,
                ..
            } => {
                let (name, value) = required(headers, names)?;
                let rest = value
                    .as_bytes()
                    .strip_prefix(prefix.as_bytes())
                    .ok_or_else(|| E::MalformedHeader(name.clone()))?;
                checked.sigs.push(rest, *encoding, cap, name)?;
                if let Some(ts_name) = timestamp {
                    let ts = single(headers, ts_name)?
                        .ok_or_else(|| E::MissingHeader(ts_name.clone()))?;
                    let t = parse_timestamp(ts.as_bytes(), ts_name)?;
                    check_window(t, limits.clock.now(), limits.tolerance)?;
                    checked.timestamp = Some(t);
                    checked.prefix.extend_from_slice(ts.as_bytes());
                    checked.prefix.push(b'.');
                }
            }
            Kind::Stripe => {
                let name = &names::STRIPE_SIG;
                let value = single(headers, name)?.ok_or_else(|| E::MissingHeader(name.clone()))?;
                let mut ts: Option<&[u8]> = None;
                for item in value.as_bytes().split(|b| *b == b',') {
                    let item = item.trim_ascii();
                    // An empty item (a trailing comma) is skipped, as Stripe's SDKs do.
                    if item.is_empty() {
                        continue;
                    }
                    let eq = item
                        .iter()
                        .position(|b| *b == b'=')
                        .ok_or_else(|| E::MalformedHeader(name.clone()))?;
                    let (key, val) = (&item[..eq], &item[eq + 1..]);
                    match key {
                        b"t" if ts.replace(val).is_some() => {
                            return Err(E::MalformedHeader(name.clone()));
                        }
                        b"t" => {}
                        // Stripe's MAC is always 32 bytes: a `v1` that is not 64 hex digits
                        // cannot match, and is skipped as Stripe's SDKs skip it, so that the
                        // header's other `v1` still count. None usable is refused below.
                        b"v1" if val.len() == 64 && val.iter().all(u8::is_ascii_hexdigit) => {
                            checked.sigs.push(val, Encoding::Hex, cap, name)?;
                        }
                        // Other schemes (`v0` test signatures, future ones) are ignored.
                        _ => {}
                    }
                }
                let ts = ts.ok_or_else(|| E::MalformedHeader(name.clone()))?;
                if checked.sigs.len() == 0 {
                    return Err(E::MalformedHeader(name.clone()));
                }
                let t = parse_timestamp(ts, name)?;
                check_window(t, limits.clock.now(), limits.tolerance)?;
                checked.timestamp = Some(t);
                checked.prefix.extend_from_slice(ts);
                checked.prefix.push(b'.');
            }
            Kind::V0 {
                sig: name,
                ts: ts_name,
            } => {
                let value = single(headers, name)?.ok_or_else(|| E::MissingHeader(name.clone()))?;
                let hex = value
                    .as_bytes()
                    .strip_prefix(b"v0=")
                    .ok_or_else(|| E::MalformedHeader(name.clone()))?;
                if hex.len() != 64 {
                    return Err(E::MalformedHeader(name.clone()));
                }
                checked.sigs.push(hex, Encoding::Hex, cap, name)?;
                let ts =
                    single(headers, ts_name)?.ok_or_else(|| E::MissingHeader(ts_name.clone()))?;
                let t = parse_timestamp(ts.as_bytes(), ts_name)?;
                check_window(t, limits.clock.now(), limits.tolerance)?;
                checked.timestamp = Some(t);
                checked.prefix.extend_from_slice(b"v0:");
                checked.prefix.extend_from_slice(ts.as_bytes());
                checked.prefix.push(b':');
            }
            Kind::StandardWebhooks => {
                // `webhook-*` headers, or the `svix-*` names, never a mix.
                let svix = headers.get(&names::WH_SIG).is_none()
                    && headers.get(&names::SVIX_SIG).is_some();
                let (sig_name, id_name, ts_name) = if svix {
                    (&names::SVIX_SIG, &names::SVIX_ID, &names::SVIX_TS)
                } else {
                    (&names::WH_SIG, &names::WH_ID, &names::WH_TS)
                };
                let sig =
                    single(headers, sig_name)?.ok_or_else(|| E::MissingHeader(sig_name.clone()))?;
                let id =
                    single(headers, id_name)?.ok_or_else(|| E::MissingHeader(id_name.clone()))?;
                let ts =
                    single(headers, ts_name)?.ok_or_else(|| E::MissingHeader(ts_name.clone()))?;
                // The id is signed: one that is not a valid delivery id fails here, before the
                // body is read, rather than as an authentic but malformed delivery.
                if validate_id(id.as_bytes()).is_err() {
                    return Err(E::MalformedHeader(id_name.clone()));
                }
                let t = parse_timestamp(ts.as_bytes(), ts_name)?;
                // As the reference libraries read it: an entry that is not a `v1` signature
                // (another version, no comma) is skipped, and so is a `v1` that is not base64,
                // which cannot match. Only `v1` entries count against the cap.
                for item in sig
                    .as_bytes()
                    .split(|b| *b == b' ')
                    .filter(|i| !i.is_empty())
                {
                    let Some(val) = item.strip_prefix(b"v1,") else {
                        continue;
                    };
                    match checked.sigs.push(val, Encoding::Base64, cap, sig_name) {
                        Err(E::MalformedHeader(_)) => {}
                        other => other?,
                    }
                }
                if checked.sigs.len() == 0 {
                    return Err(E::MalformedHeader(sig_name.clone()));
                }
                check_window(t, limits.clock.now(), limits.tolerance)?;
                checked.timestamp = Some(t);
                checked.signed_id = Some(id_name);
                checked.prefix.extend_from_slice(id.as_bytes());
                checked.prefix.push(b'.');
                checked.prefix.extend_from_slice(ts.as_bytes());
                checked.prefix.push(b'.');
            }
            Kind::Twitch => {
                let name = &names::TWITCH_SIG;
                let value = single(headers, name)?.ok_or_else(|| E::MissingHeader(name.clone()))?;
                let hex = value
                    .as_bytes()
                    .strip_prefix(b"sha256=")
                    .ok_or_else(|| E::MalformedHeader(name.clone()))?;
                checked.sigs.push(hex, Encoding::Hex, cap, name)?;
                let id_name = &names::TWITCH_ID;
                let id =
                    single(headers, id_name)?.ok_or_else(|| E::MissingHeader(id_name.clone()))?;
                if validate_id(id.as_bytes()).is_err() {
                    return Err(E::MalformedHeader(id_name.clone()));
                }
                let ts_name = &names::TWITCH_TS;
                let ts =
                    single(headers, ts_name)?.ok_or_else(|| E::MissingHeader(ts_name.clone()))?;
                let t = parse_rfc3339(ts.as_bytes())
                    .ok_or_else(|| E::MalformedHeader(ts_name.clone()))?;
                check_window(t, limits.clock.now(), limits.tolerance)?;
                checked.timestamp = Some(t);
                checked.prefix.extend_from_slice(id.as_bytes());
                checked.prefix.extend_from_slice(ts.as_bytes());
            }
            Kind::Token(name) => {
                let value = single(headers, name)?.ok_or_else(|| E::MissingHeader(name.clone()))?;
                checked.token_match = Some(match_token(keys, value.as_bytes())?);
            }
            Kind::Basic => {
                let name = &names::AUTHORIZATION;
                let value = single(headers, name)?.ok_or_else(|| E::MissingHeader(name.clone()))?;
                let b = value.as_bytes();
                let encoded = b
                    .get(..6)
                    .filter(|p| p.eq_ignore_ascii_case(b"basic "))
                    .map(|_| b[6..].trim_ascii())
                    .ok_or_else(|| E::MalformedHeader(name.clone()))?;
                if encoded.len() > 4096 {
                    return Err(E::MalformedHeader(name.clone()));
                }
                let decoded = zeroize::Zeroizing::new(
                    B64.decode(encoded)
                        .map_err(|_| E::MalformedHeader(name.clone()))?,
                );
                checked.token_match = Some(match_token(keys, &decoded)?);
            }
        }
        // A signature of another length than the MAC's can never match: refuse before the body
        // is read, as if it had been compared.
        let tag_len = keys.tag_len();
        if tag_len != 0
            && checked.sigs.len() != 0
            && checked.sigs.iter().all(|s| s.len() != tag_len)
        {
            return Err(E::Mismatch);
        }
        Ok(checked)
    }

    /// Verifies the MAC over `body` and extracts the delivery's metadata.
    pub(crate) fn verify_body(
        &self,
        keys: &Keys,
        checked: &Checked,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Verified, E> {
        let secret_index = match (&self.kind, checked.token_match) {
            (Kind::Unverified, _) => None,
            (_, Some(index)) => Some((index, None)),
            (
                Kind::Body {
                    form_payload: true, ..
                },
                None,
            ) if is_form(headers) => {
                // Gitea/Forgejo sign the JSON payload, which a form delivery carries URL-encoded.
                let payload = form_payload(body).ok_or(E::Mismatch)?;
                let (index, mac) = match_mac(keys, &checked.sigs, &[], &payload)?;
                Some((index, Some(mac)))
            }
            (_, None) => {
                let (index, mac) = match_mac(keys, &checked.sigs, &checked.prefix, body)?;
                Some((index, Some(mac)))
            }
        };
        let (secret_index, mac) = match secret_index {
            Some((index, mac)) => (Some(index), mac),
            None => (None, None),
        };
        let mut verified = Verified {
            secret_index,
            timestamp: checked.timestamp,
            delivery_id: None,
            event: None,
            challenge: None,
            deduplicate: true,
            fingerprint: None,
        };
        let json = if self.needs_json() && looks_like_json(body) {
            serde_json::from_slice::<Meta<'_>>(body).ok()
        } else {
            None
        };
        verified.delivery_id = match (&self.delivery_id, checked.signed_id) {
            // The signed id, never another header an attacker could add to a replayed delivery.
            (_, Some(name)) => match single(headers, name)? {
                Some(v) => {
                    validate_id(v.as_bytes())?;
                    Some(Text::header(v))
                }
                None => None,
            },
            // Bitbucket Data Center's `X-Request-Id`: the first, Bitbucket's, is the delivery's.
            (Field::FirstValue(name), None) => headers
                .get(name)
                .map(|v| validate_id(v.as_bytes()).map(|()| Text::header(v)))
                .transpose()?,
            (Field::Headers(names), None) => match first_of(headers, names)
                .map_err(|_| E::MalformedDelivery("duplicated delivery id header"))?
            {
                Some((_, v)) => {
                    validate_id(v.as_bytes())?;
                    Some(Text::header(v))
                }
                None => None,
            },
            (Field::Json(name), None) => json
                .as_ref()
                .and_then(|m| match *name {
                    "event_id" => m.event_id.as_deref(),
                    _ => m.id.as_deref(),
                })
                .map(|s| validate_id(s.as_bytes()).map(|()| Text::new(s)))
                .transpose()?,
            (Field::None, None) => None,
        };
        verified.event = match &self.event {
            Field::Headers(names) => first_of(headers, names)
                .ok()
                .flatten()
                .filter(|(_, v)| v.to_str().is_ok())
                .map(|(_, v)| Text::header(v)),
            Field::FirstValue(name) => headers
                .get(name)
                .filter(|v| v.to_str().is_ok())
                .map(Text::header),
            Field::Json("eventType") => json
                .as_ref()
                .and_then(|m| m.event_type.as_deref())
                .map(Text::new),
            Field::Json(_) => json.as_ref().and_then(|m| m.ty.as_deref()).map(Text::new),
            Field::None => None,
        };
        // Without a delivery id, a signed timestamp makes the MAC unique to this delivery: a
        // copy inside the window is told by it. So it is with an id the MAC does not cover (a
        // custom scheme's id header): a copy sent again under another id, or none, is told by
        // its MAC, and a redelivery with a new timestamp by its id.
        let unsigned_id = matches!(self.kind, Kind::Body { .. }) && checked.signed_id.is_none();
        if (verified.delivery_id.is_none() || unsigned_id) && verified.timestamp.is_some() {
            verified.fingerprint = mac.and_then(|mac| {
                let mut key = [0u8; 4 + 2 * MAC_FINGERPRINT];
                key[..4].copy_from_slice(b"sig-");
                hex::encode_to_slice(mac, &mut key[4..]).ok()?;
                std::str::from_utf8(&key).ok().map(Text::new)
            });
        }
        if matches!(self.kind, Kind::Stripe | Kind::Basic) && verified.delivery_id.is_none() {
            return Err(E::MalformedDelivery(
                "body is not a JSON event with an `id`",
            ));
        }
        // Azure DevOps' "Test" button sends the documented sample event, whose `id` is the same
        // on every click, under the nil subscription id: deduplicated, a second test would be
        // refused as a replay of the first.
        if matches!(self.kind, Kind::Basic)
            && json
                .as_ref()
                .and_then(|m| m.subscription_id.as_deref())
                .is_some_and(is_nil_uuid)
        {
            verified.deduplicate = false;
        }
        if let Some(m) = json
            .as_ref()
            .filter(|m| self.is_slack() && m.ty.as_deref() == Some("url_verification"))
        {
            let challenge = m
                .challenge
                .as_deref()
                .filter(|c| !c.is_empty() && c.len() <= 1024)
                .ok_or(E::MalformedDelivery("url_verification without a challenge"))?;
            verified.challenge = Some(Handshake {
                content_type: "text/plain",
                body: Bytes::copy_from_slice(challenge.as_bytes()),
            });
        }
        if self.provider == Provider::Zoom {
            zoom_meta(keys, &mut verified, body)?;
        }
        let twitch_check = self.provider == Provider::Twitch
            && headers
                .get(&names::TWITCH_TYPE)
                .is_some_and(|t| t.as_bytes() == b"webhook_callback_verification");
        if twitch_check {
            let challenge = serde_json::from_slice::<Meta<'_>>(body)
                .ok()
                .and_then(|m| m.challenge.map(Cow::into_owned))
                .filter(|c| !c.is_empty() && c.len() <= 1024)
                .ok_or(E::MalformedDelivery(
                    "webhook_callback_verification without a challenge",
                ))?;
            verified.challenge = Some(Handshake {
                content_type: "text/plain",
                body: Bytes::from(challenge),
            });
        }
        Ok(verified)
    }
}

impl Scheme {
    /// Whether a Gitea/Forgejo delivery made with the HTTP method `GET` is authentic. Gitea and
    /// Forgejo then send no body and put the JSON payload, signed as for `POST`, in the query
    /// string's one `payload` parameter, which the layer does not verify or hand on: such a
    /// delivery is refused, and this tells an authentic one (a webhook set to `GET`) from a
    /// forgery.
    pub(crate) fn signs_query_payload(
        &self,
        keys: &Keys,
        checked: &Checked,
        query: Option<&str>,
    ) -> bool {
        let (
            Kind::Body {
                form_payload: true, ..
            },
            Some(query),
        ) = (&self.kind, query)
        else {
            return false;
        };
        let mut pairs = query
            .as_bytes()
            .split(|b| *b == b'&')
            .filter(|pair| pair.starts_with(b"payload="));
        let (Some(pair), None) = (pairs.next(), pairs.next()) else {
            return false;
        };
        form_payload(pair).is_some_and(|payload| {
            checked.token_match.is_none() && match_mac(keys, &checked.sigs, &[], &payload).is_ok()
        })
    }
}

/// An answer to a provider's endpoint check.
pub(crate) struct Handshake {
    pub(crate) content_type: &'static str,
    pub(crate) body: Bytes,
}

#[derive(serde::Deserialize)]
struct ZoomMeta<'a> {
    #[serde(borrow, default, deserialize_with = "text")]
    event: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    payload: Option<ZoomPayload<'a>>,
}

#[derive(serde::Deserialize)]
struct ZoomPayload<'a> {
    #[serde(borrow, default, rename = "plainToken", deserialize_with = "text")]
    plain_token: Option<Cow<'a, str>>,
}

/// Zoom: the event name, and the `endpoint.url_validation` answer
/// `{"plainToken": t, "encryptedToken": hex(HMAC-SHA256(secret, t))}` with the secret that matched.
fn zoom_meta(keys: &Keys, verified: &mut Verified, body: &[u8]) -> Result<(), E> {
    let Some(meta) = looks_like_json(body)
        .then(|| serde_json::from_slice::<ZoomMeta<'_>>(body).ok())
        .flatten()
    else {
        return Ok(());
    };
    if meta.event.as_deref() == Some("endpoint.url_validation") {
        let plain = meta
            .payload
            .as_ref()
            .and_then(|p| p.plain_token.as_deref())
            .filter(|t| !t.is_empty() && t.len() <= 1024)
            .ok_or(E::MalformedDelivery(
                "endpoint.url_validation without a plainToken",
            ))?;
        let (Keys::Sha256(keys), Some(index)) = (keys, verified.secret_index) else {
            return Err(E::Mismatch);
        };
        let mut mac = keys[index].clone();
        mac.update(plain.as_bytes());
        let encrypted = hex::encode(mac.finalize().into_bytes());
        let answer = serde_json::json!({"plainToken": plain, "encryptedToken": encrypted});
        verified.challenge = Some(Handshake {
            content_type: "application/json",
            body: Bytes::from(answer.to_string()),
        });
    }
    verified.event = meta.event.as_deref().map(Text::new);
    Ok(())
}

#[derive(serde::Deserialize)]
struct Meta<'a> {
    #[serde(borrow, default, deserialize_with = "text")]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "text")]
    event_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "type", deserialize_with = "text")]
    ty: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "eventType", deserialize_with = "text")]
    event_type: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "text")]
    challenge: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "subscriptionId", deserialize_with = "text")]
    subscription_id: Option<Cow<'a, str>>,
}

/// Whether `id` is the nil UUID (`00000000-0000-0000-0000-000000000000`), the subscription id
/// of the events Azure DevOps sends from a service hook's "Test" dialog.
fn is_nil_uuid(id: &str) -> bool {
    id == "00000000-0000-0000-0000-000000000000"
}

/// A top-level field read as text: a string, or `None` for any other JSON value. The body is
/// the sender's JSON (Standard Webhooks payloads are any object), so a field of another type
/// (`"id": 123`) must not cost the fields next to it.
fn text<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};

    struct Text;

    impl<'de> Visitor<'de> for Text {
        type Value = Option<Cow<'de, str>>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_borrowed_str<Er>(self, v: &'de str) -> Result<Self::Value, Er> {
            Ok(Some(Cow::Borrowed(v)))
        }
        fn visit_str<Er>(self, v: &str) -> Result<Self::Value, Er> {
            Ok(Some(Cow::Owned(v.to_owned())))
        }
        fn visit_string<Er>(self, v: String) -> Result<Self::Value, Er> {
            Ok(Some(Cow::Owned(v)))
        }
        fn visit_bool<Er>(self, _: bool) -> Result<Self::Value, Er> {
            Ok(None)
        }
        fn visit_i64<Er>(self, _: i64) -> Result<Self::Value, Er> {
            Ok(None)
        }
        fn visit_u64<Er>(self, _: u64) -> Result<Self::Value, Er> {
            Ok(None)
        }
        fn visit_i128<Er>(self, _: i128) -> Result<Self::Value, Er> {
            Ok(None)
        }
        fn visit_u128<Er>(self, _: u128) -> Result<Self::Value, Er> {
            Ok(None)
        }
        fn visit_f64<Er>(self, _: f64) -> Result<Self::Value, Er> {
            Ok(None)
        }
        fn visit_unit<Er>(self) -> Result<Self::Value, Er> {
            Ok(None)
        }
        fn visit_none<Er>(self) -> Result<Self::Value, Er> {
            Ok(None)
        }
        fn visit_some<D2: serde::Deserializer<'de>>(
            self,
            de: D2,
        ) -> Result<Self::Value, D2::Error> {
            de.deserialize_any(self)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(None)
        }
    }

    de.deserialize_any(Text)
}

fn looks_like_json(body: &[u8]) -> bool {
    body.trim_ascii_start().first() == Some(&b'{')
}

fn validate_id(bytes: &[u8]) -> Result<(), E> {
    // Folded without an early exit, so that the check runs a word or a vector at a time.
    let visible = bytes.iter().fold(true, |ok, b| ok & b.is_ascii_graphic());
    if bytes.is_empty() || bytes.len() > MAX_ID_LEN || !visible {
        return Err(E::MalformedDelivery(
            "delivery id is empty, too long or not visible ASCII",
        ));
    }
    Ok(())
}

/// The longest text kept inline (delivery ids and event names are usually shorter).
const INLINE_TEXT: usize = 48;

/// Text taken from a header or from the body: short values inline (no allocation), longer
/// header values shared with the request, longer body values owned.
#[derive(Clone)]
pub(crate) enum Text {
    Inline {
        len: u8,
        bytes: InlineBytes,
    },
    /// Checked to be visible ASCII when taken.
    Header(HeaderValue),
    Owned(String),
}

/// The bytes of an inline [`Text`], word-aligned: reading them back as `str` then takes the
/// word-at-a-time path of UTF-8 validation from the first byte.
#[derive(Clone, Copy)]
#[repr(align(8))]
pub(crate) struct InlineBytes([u8; INLINE_TEXT]);

impl Text {
    /// A header value already checked to be visible ASCII (or `to_str`-able).
    pub(crate) fn header(value: &HeaderValue) -> Self {
        Self::inline(value.as_bytes()).unwrap_or_else(|| Text::Header(value.clone()))
    }

    pub(crate) fn new(text: &str) -> Self {
        Self::inline(text.as_bytes()).unwrap_or_else(|| Text::Owned(text.to_owned()))
    }

    fn inline(text: &[u8]) -> Option<Self> {
        let mut bytes = InlineBytes([0; INLINE_TEXT]);
        bytes.0.get_mut(..text.len())?.copy_from_slice(text);
        Some(Text::Inline {
            len: text.len() as u8,
            bytes,
        })
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            // Only ever built from a `&str` or a `to_str`-able header value.
            Text::Inline { len, bytes } => {
                std::str::from_utf8(&bytes.0[..usize::from(*len)]).unwrap_or_default()
            }
            Text::Header(v) => v.to_str().unwrap_or_default(),
            Text::Owned(s) => s,
        }
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Text {}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Whether the media type is `application/x-www-form-urlencoded`, in any case (RFC 9110
/// §8.3.1), whatever its parameters: as axum's `Form` extractor decides.
///
/// Any type that starts like the form one, in any case: axum's `Form` and `RawForm` read a body
/// whose type merely starts with it (`application/x-www-form-urlencodedx`) as a form. Gitea signs
/// the same JSON whether it sends it raw or as a form, so a raw body taken here under such a type
/// would reach a `Form` handler as a form whose fields nobody signed (a `payload=` inside a
/// comment's text).
fn is_form(headers: &HeaderMap) -> bool {
    const FORM: &[u8] = b"application/x-www-form-urlencoded";
    headers.get(http::header::CONTENT_TYPE).is_some_and(|ct| {
        ct.as_bytes()
            .trim_ascii_start()
            .get(..FORM.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(FORM))
    })
}

/// The decoded JSON of a Gitea/Forgejo form delivery, which is exactly `payload=<urlencoded>`.
///
/// Anything else (other fields, a second `payload`) is refused: those bytes would reach the
/// handler's form extractor without being covered by the signature.
pub(crate) fn form_payload(body: &[u8]) -> Option<Vec<u8>> {
    let raw = body.strip_prefix(b"payload=")?;
    if raw.contains(&b'&') {
        return None;
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = raw.get(i + 1..i + 3)?;
                let mut byte = [0u8];
                decode_hex(hex, &mut byte).then_some(())?;
                out.push(byte[0]);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    Some(out)
}

/// The value of each hex digit (either case), 0xff for any other byte.
const HEX_VALUE: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// Decodes `2 * dst.len()` hex digits into `dst`; `false` if `src` has another length or a
/// byte that is not a hex digit. One table lookup per digit and no branch per byte.
pub(crate) fn decode_hex(src: &[u8], dst: &mut [u8]) -> bool {
    if src.len() != 2 * dst.len() {
        return false;
    }
    let mut invalid = 0u8;
    for (out, pair) in dst.iter_mut().zip(src.chunks_exact(2)) {
        let (hi, lo) = (
            HEX_VALUE[usize::from(pair[0])],
            HEX_VALUE[usize::from(pair[1])],
        );
        invalid |= hi | lo;
        *out = (hi << 4) | (lo & 0x0f);
    }
    invalid & 0xf0 == 0
}

/// The index of the first configured secret that matched, chosen without data-dependent
/// branches: every comparison is recorded, none ends the search early.
struct FirstMatch {
    found: subtle::Choice,
    index: u32,
}

impl FirstMatch {
    fn new() -> Self {
        Self {
            found: subtle::Choice::from(0),
            index: 0,
        }
    }

    fn record(&mut self, secret: usize, eq: subtle::Choice) {
        self.index
            .conditional_assign(&(secret as u32), eq & !self.found);
        self.found |= eq;
    }

    fn finish(self) -> Result<usize, E> {
        if bool::from(self.found) {
            Ok(self.index as usize)
        } else {
            Err(E::Mismatch)
        }
    }
}

/// Compares a presented token with every configured one, in constant time, no early exit.
fn match_token(keys: &Keys, presented: &[u8]) -> Result<usize, E> {
    let Keys::Token(digests) = keys else {
        return Err(E::Mismatch);
    };
    let presented: [u8; 32] = Sha256::digest(presented).into();
    let mut first = FirstMatch::new();
    for (i, digest) in digests.iter().enumerate() {
        first.record(i, tags_equal(digest, &presented));
    }
    first.finish()
}

/// Compares two tags of equal length without data-dependent branches: the differences are
/// folded into one byte, and only that byte goes through `subtle`.
fn tags_equal(a: &[u8], b: &[u8]) -> subtle::Choice {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    diff.ct_eq(&0) & subtle::Choice::from(u8::from(a.len() == b.len()))
}

/// Computes the MAC once per secret and compares it with every candidate in constant time.
fn match_mac(
    keys: &Keys,
    sigs: &Candidates,
    prefix: &[u8],
    body: &[u8],
) -> Result<(usize, [u8; MAC_FINGERPRINT]), E> {
    fn run<M: Mac + Clone>(
        keys: &[M],
        sigs: &Candidates,
        tag_len: usize,
        prefix: &[u8],
        body: &[u8],
    ) -> Result<(usize, [u8; MAC_FINGERPRINT]), E> {
        let mut first = FirstMatch::new();
        // The start of the MAC of the first secret that matched, chosen in constant time too.
        let mut fingerprint = [0u8; MAC_FINGERPRINT];
        for (i, key) in keys.iter().enumerate() {
            let mut mac = key.clone();
            mac.update(prefix);
            mac.update(body);
            let tag = mac.finalize().into_bytes();
            let before = first.found;
            let mut matched = subtle::Choice::from(0);
            for sig in sigs.iter() {
                // Lengths are public: a signature of the wrong length never matches.
                if sig.len() != tag_len {
                    continue;
                }
                let eq = tags_equal(tag.as_slice(), sig);
                first.record(i, eq);
                matched |= eq;
            }
            let take = matched & !before;
            for (out, byte) in fingerprint.iter_mut().zip(tag.iter()) {
                out.conditional_assign(byte, take);
            }
        }
        first.finish().map(|index| (index, fingerprint))
    }
    let tag_len = keys.tag_len();
    match keys {
        Keys::Sha1(k) => run(k, sigs, tag_len, prefix, body),
        Keys::Sha256(k) => run(k, sigs, tag_len, prefix, body),
        Keys::Sha512(k) => run(k, sigs, tag_len, prefix, body),
        Keys::Token(_) | Keys::None => Err(E::Mismatch),
    }
}

/// How many bytes of a MAC make the replay key of a delivery without a delivery id (every MAC
/// the schemes use is longer: SHA-1's is 20 bytes).
const MAC_FINGERPRINT: usize = 16;

/// Decodes a Standard Webhooks secret: `whsec_` + base64 (padding optional).
pub(crate) fn standard_webhooks_key(secret: &Secret) -> Result<Secret, SignatureConfigError> {
    let raw = secret.expose();
    let b64 = raw.strip_prefix(b"whsec_").unwrap_or(raw);
    let key = B64
        .decode(b64)
        .map_err(|_| SignatureConfigError::InvalidStandardWebhooksSecret)?;
    if key.is_empty() {
        return Err(SignatureConfigError::EmptySecret);
    }
    Ok(Secret::from_vec(key))
}

impl CustomScheme {
    pub(crate) fn algorithm_value(&self) -> Algorithm {
        self.algorithm
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decode_hex_agrees_with_the_hex_crate(src in proptest::collection::vec(any::<u8>(), 0..40)) {
            let mut ours = vec![0u8; src.len() / 2];
            let mut theirs = vec![0u8; src.len() / 2];
            let ok = decode_hex(&src, &mut ours);
            prop_assert_eq!(ok, hex::decode_to_slice(&src, &mut theirs).is_ok());
            if ok {
                prop_assert_eq!(ours, theirs);
            }
        }

        #[test]
        fn decode_hex_reads_what_hex_writes(bytes in proptest::collection::vec(any::<u8>(), 0..40), upper: bool) {
            let text = if upper { hex::encode_upper(&bytes) } else { hex::encode(&bytes) };
            let mut out = vec![0u8; bytes.len()];
            prop_assert!(decode_hex(text.as_bytes(), &mut out));
            prop_assert_eq!(out, bytes);
        }
    }

    /// `single` answers the same whether it scans a small map or hashes into a large one.
    #[test]
    fn single_finds_once_and_refuses_duplicates_in_small_and_large_maps() {
        let name = HeaderName::from_static("x-hub-signature-256");
        for filler in [2, LINEAR_SCAN_MAX + 6] {
            let mut headers = HeaderMap::new();
            for i in 0..filler {
                headers.append(
                    HeaderName::from_bytes(format!("x-filler-{i}").as_bytes()).unwrap(),
                    HeaderValue::from_static("v"),
                );
            }
            assert_eq!(single(&headers, &name).unwrap(), None, "{filler} headers");
            headers.append(&name, HeaderValue::from_static("sha256=ab"));
            assert_eq!(
                single(&headers, &name).unwrap(),
                Some(&HeaderValue::from_static("sha256=ab")),
                "{filler} headers"
            );
            headers.append(&name, HeaderValue::from_static("sha256=cd"));
            assert!(
                matches!(single(&headers, &name), Err(E::DuplicateHeader(n)) if n == name),
                "{filler} headers"
            );
        }
    }

    #[test]
    fn text_is_inline_when_short_and_compares_by_content() {
        let short = Text::header(&HeaderValue::from_static(
            "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        ));
        assert!(matches!(short, Text::Inline { .. }));
        assert_eq!(short.as_str(), "72d3162e-cc78-11e3-81ab-4c9367dc0958");
        let long = "x".repeat(INLINE_TEXT + 1);
        assert!(matches!(Text::new(&long), Text::Owned(_)));
        assert!(matches!(
            Text::header(&HeaderValue::from_str(&long).unwrap()),
            Text::Header(_)
        ));
        assert_eq!(Text::new("push"), Text::Owned("push".into()));
        assert_eq!(Text::new(""), Text::Owned(String::new()));
    }
}
