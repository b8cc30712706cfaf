//! Shared driver of the signature header fuzz targets.
//!
//! The input is split on `\n` into up to three header values and a body; each target puts the
//! values in its provider's headers and runs `SignatureLayer::verify`. Properties: no panic, and
//! nothing the fuzzer makes ever verifies (it does not know the secrets).

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};
use tower_webhook::signature::{Algorithm, Clock, CustomScheme, Encoding, SignatureLayer};

/// The provider a target exercises.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    GitHub,
    GitLab,
    Bitbucket,
    Gitea,
    AzureDevOps,
    Stripe,
    Slack,
    Shopify,
    StandardWebhooks,
    Custom,
    Zoom,
    Twitch,
}

const SECRET: &str = "fuzz-secret";
/// Timestamps near this instant are inside the window, so the MAC path is reached.
const NOW: u64 = 1_700_000_000;

fn layer(target: Target) -> &'static SignatureLayer {
    static LAYERS: OnceLock<Vec<SignatureLayer>> = OnceLock::new();
    let layers = LAYERS.get_or_init(|| {
        let clock = Clock::fixed(SystemTime::UNIX_EPOCH + Duration::from_secs(NOW));
        let custom = CustomScheme::new("x-signature")
            .prefix("v=")
            .algorithm(Algorithm::Sha512)
            .encoding(Encoding::Base64)
            .timestamp_header("x-timestamp")
            .delivery_id_header("x-delivery");
        vec![
            SignatureLayer::github(SECRET).unwrap(),
            SignatureLayer::gitlab(SECRET).unwrap(),
            SignatureLayer::bitbucket_cloud(SECRET).unwrap(),
            SignatureLayer::forgejo(SECRET).unwrap(),
            SignatureLayer::azure_devops("user", SECRET).unwrap(),
            SignatureLayer::stripe(SECRET).unwrap(),
            SignatureLayer::slack(SECRET).unwrap(),
            SignatureLayer::shopify(SECRET).unwrap(),
            SignatureLayer::standard_webhooks("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap(),
            SignatureLayer::custom(custom, SECRET).unwrap(),
            SignatureLayer::zoom(SECRET).unwrap(),
            SignatureLayer::twitch(SECRET).unwrap(),
        ]
        .into_iter()
        .map(|l| l.clock(clock.clone()))
        .collect()
    });
    &layers[target as usize]
}

fn headers_of(target: Target) -> &'static [&'static str] {
    match target {
        Target::GitHub => &["x-hub-signature-256", "x-github-delivery", "x-github-event"],
        Target::GitLab => &["x-gitlab-token", "idempotency-key", "x-gitlab-event"],
        Target::Bitbucket => &["x-hub-signature", "x-request-uuid", "x-event-key"],
        Target::Gitea => &["x-forgejo-signature", "x-gitea-signature", "content-type"],
        Target::AzureDevOps => &["authorization", "authorization", "content-type"],
        Target::Stripe => &["stripe-signature", "stripe-signature", "content-type"],
        Target::Slack => &[
            "x-slack-signature",
            "x-slack-request-timestamp",
            "content-type",
        ],
        Target::Shopify => &[
            "x-shopify-hmac-sha256",
            "x-shopify-webhook-id",
            "x-shopify-topic",
        ],
        Target::StandardWebhooks => &["webhook-signature", "webhook-timestamp", "webhook-id"],
        Target::Custom => &["x-signature", "x-timestamp", "x-delivery"],
        Target::Zoom => &["x-zm-signature", "x-zm-request-timestamp", "content-type"],
        Target::Twitch => &[
            "twitch-eventsub-message-signature",
            "twitch-eventsub-message-timestamp",
            "twitch-eventsub-message-id",
        ],
    }
}

/// Runs one input.
pub fn run(target: Target, data: &[u8]) {
    let mut parts = data.splitn(4, |b| *b == b'\n');
    let mut headers = HeaderMap::new();
    for name in headers_of(target) {
        let Some(value) = parts.next() else { break };
        // An empty part leaves the header out; invalid header bytes cannot reach a server.
        if value.is_empty() {
            continue;
        }
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(HeaderName::from_static(name), value);
        }
    }
    let body = parts.next().unwrap_or_default();
    let result = layer(target).verify(&headers, body);
    assert!(result.is_err(), "forged input verified: {headers:?}");
}
