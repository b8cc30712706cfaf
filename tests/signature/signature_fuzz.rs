//! Arbitrary bytes against every header parser, on stable Rust (the `fuzz/` crate runs the same
//! targets under libFuzzer with `.ci/fuzz.sh`).
//!
//! Cases per property: `TOWER_WEBHOOK_FUZZ_CASES` (default 1000).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use http_body_util::Full;
use proptest::prelude::*;
use sha2::Sha256;
use tower::{ServiceBuilder, ServiceExt};
use tower_webhook::signature::{Algorithm, Clock, CustomScheme, Encoding, SignatureLayer};

const SECRET: &str = "fuzz-secret";
const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NOW: u64 = 1_700_000_000;

fn cases() -> u32 {
    std::env::var("TOWER_WEBHOOK_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

fn clock() -> Clock {
    Clock::fixed(SystemTime::UNIX_EPOCH + Duration::from_secs(NOW))
}

/// Every provider with the headers its parser reads.
type Provider = (SignatureLayer, &'static [&'static str]);

fn providers() -> Vec<Provider> {
    let custom = CustomScheme::new("x-signature")
        .prefix("v=")
        .algorithm(Algorithm::Sha512)
        .encoding(Encoding::Base64)
        .timestamp_header("x-timestamp");
    let list: Vec<Provider> = vec![
        (
            SignatureLayer::github(SECRET).unwrap(),
            &["x-hub-signature-256", "x-github-delivery"],
        ),
        (
            SignatureLayer::gitlab(SECRET).unwrap(),
            &["x-gitlab-token", "idempotency-key"],
        ),
        (
            SignatureLayer::bitbucket_cloud(SECRET).unwrap(),
            &["x-hub-signature", "x-request-uuid"],
        ),
        (
            SignatureLayer::bitbucket_data_center(SECRET).unwrap(),
            &["x-hub-signature", "x-request-id"],
        ),
        (
            SignatureLayer::gitea(SECRET).unwrap(),
            &["x-gitea-signature", "content-type"],
        ),
        (
            SignatureLayer::forgejo(SECRET).unwrap(),
            &["x-forgejo-signature", "x-gitea-signature"],
        ),
        (
            SignatureLayer::azure_devops("user", SECRET).unwrap(),
            &["authorization", "authorization"],
        ),
        (
            SignatureLayer::stripe(SECRET).unwrap(),
            &["stripe-signature", "stripe-signature"],
        ),
        (
            SignatureLayer::slack(SECRET).unwrap(),
            &["x-slack-signature", "x-slack-request-timestamp"],
        ),
        (
            SignatureLayer::shopify(SECRET).unwrap(),
            &["x-shopify-hmac-sha256", "x-shopify-webhook-id"],
        ),
        (
            SignatureLayer::twitch(SECRET).unwrap(),
            &[
                "twitch-eventsub-message-signature",
                "twitch-eventsub-message-timestamp",
                "twitch-eventsub-message-id",
            ],
        ),
        (
            SignatureLayer::zoom(SECRET).unwrap(),
            &["x-zm-signature", "x-zm-request-timestamp"],
        ),
        (
            SignatureLayer::standard_webhooks(SW_SECRET).unwrap(),
            &["webhook-signature", "webhook-timestamp", "webhook-id"],
        ),
        (
            SignatureLayer::custom(custom, SECRET).unwrap(),
            &["x-signature", "x-timestamp"],
        ),
    ];
    list.into_iter()
        .map(|(l, h)| (l.clock(clock()), h))
        .collect()
}

/// Header-value-shaped bytes: mostly the characters parsers care about, sometimes anything.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..80),
        "(sha256=|sha1=|v0=|v1,|t=|Basic |whsec_)?[0-9a-fA-F=,+/ .t v1-]{0,140}"
            .prop_map(String::into_bytes),
        "[0-9]{0,25}|-[0-9]{1,20}".prop_map(String::into_bytes),
        r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{0,12})?(Z|z|[+-][0-9]{1,2}:[0-9]{2})?"
            .prop_map(String::into_bytes),
    ]
}

fn headers(names: &[&'static str], values: &[Vec<u8>]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in names.iter().zip(values) {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            map.append(HeaderName::from_static(name), v);
        }
    }
    map
}

fn hmac256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// No panic, and nothing made without the secret verifies, for every parser.
    #[test]
    fn arbitrary_headers_never_verify(
        values in proptest::collection::vec(value(), 0..4),
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        for (layer, names) in providers() {
            let map = headers(names, &values);
            prop_assert!(layer.verify(&map, &body).is_err(), "{:?} verified {map:?}", layer.provider());
        }
    }

    /// A signed timestamp is accepted exactly when it is plain digits inside the window, even when
    /// the signature over it is valid: the oracle is computed here, independently.
    #[test]
    fn timestamps_are_strict_digits_in_window(ts in prop_oneof![
        "[0-9]{1,20}",
        "[+-]?[0-9 .e]{1,22}",
        (NOW - 400..NOW + 400).prop_map(|t| t.to_string()),
        Just("-9223372036854775808".to_owned()),
        Just("18446744073709551615".to_owned()),
        Just("18446744073709551616".to_owned()),
    ], body in proptest::collection::vec(any::<u8>(), 0..64)) {
        let key = B64.decode(SW_SECRET.trim_start_matches("whsec_")).unwrap();
        let sig = B64.encode(hmac256(&key, &[b"msg_1.", ts.as_bytes(), b".", &body]));
        let layer = SignatureLayer::standard_webhooks(SW_SECRET).unwrap().clock(clock());
        let mut map = HeaderMap::new();
        map.insert("webhook-id", HeaderValue::from_static("msg_1"));
        let Ok(ts_value) = HeaderValue::from_str(&ts) else { return Ok(()) };
        map.insert("webhook-timestamp", ts_value);
        map.insert("webhook-signature", HeaderValue::from_str(&format!("v1,{sig}")).unwrap());
        let expected = ts.len() <= 19
            && !ts.is_empty()
            && ts.bytes().all(|b| b.is_ascii_digit())
            && ts.parse::<u64>().is_ok_and(|t| t.abs_diff(NOW) <= 300);
        prop_assert_eq!(layer.verify(&map, &body).is_ok(), expected, "timestamp {:?}", ts);
    }

    /// A valid signature over any bytes verifies; any one changed byte does not.
    #[test]
    fn any_body_signed_verifies_and_any_flip_fails(
        body in proptest::collection::vec(any::<u8>(), 1..512),
        index in any::<prop::sample::Index>(),
        flip in 1u8..=255,
        upper in any::<bool>(),
    ) {
        let layer = SignatureLayer::github(SECRET).unwrap();
        let mut hex = hex::encode(hmac256(SECRET.as_bytes(), &[&body]));
        if upper {
            hex = hex.to_uppercase();
        }
        let mut map = HeaderMap::new();
        map.insert("x-hub-signature-256", HeaderValue::from_str(&format!("sha256={hex}")).unwrap());
        prop_assert!(layer.verify(&map, &body).is_ok());
        let mut bad = body.clone();
        bad[index.index(body.len())] ^= flip;
        prop_assert!(layer.verify(&map, &bad).is_err());
    }

    /// Stripe headers with any number of items: never a panic, the cap holds.
    #[test]
    fn stripe_item_lists(items in proptest::collection::vec("(t|v1|v0|x)=[0-9a-f]{0,70}", 0..12)) {
        let layer = SignatureLayer::stripe(SECRET).unwrap().clock(clock());
        let mut map = HeaderMap::new();
        map.insert("stripe-signature", HeaderValue::from_str(&items.join(",")).unwrap());
        let body: &[u8] = br#"{"id":"evt_1"}"#;
        prop_assert!(layer.verify(&map, body).is_err());
    }
}

/// The same inputs through the tower service: every one is answered, none reaches the handler.
#[tokio::test]
async fn arbitrary_requests_through_the_service_never_reach_the_handler() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut runner =
        proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(cases() / 4 + 1));
    let strategy = (
        proptest::collection::vec(value(), 0..4),
        proptest::collection::vec(any::<u8>(), 0..256),
    );
    for _ in 0..cases() / 4 + 1 {
        let (values, body) =
            proptest::strategy::ValueTree::current(&strategy.new_tree(&mut runner).unwrap());
        for (layer, names) in providers() {
            let c = calls.clone();
            let svc = ServiceBuilder::new()
                .layer(layer.clone().max_body_size(200))
                .service_fn(move |_req: Request<Full<Bytes>>| {
                    c.fetch_add(1, Ordering::SeqCst);
                    async { Ok::<_, Infallible>(Response::new(Full::<Bytes>::default())) }
                });
            let mut req = Request::post("/")
                .body(Full::new(Bytes::from(body.clone())))
                .unwrap();
            *req.headers_mut() = headers(names, &values);
            let res = svc.oneshot(req).await.unwrap();
            assert!(
                [401, 413].contains(&res.status().as_u16()),
                "{:?}: {}",
                layer.provider(),
                res.status()
            );
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}
