//! Edge cases of `SignatureLayer`, its secrets and its replay stores, through the public API.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use http::HeaderMap;
use sha2::Sha256;
use tower_webhook::signature::{
    Clock, MemoryReplayStore, Provider, ReplayStore, Secrets, SignatureConfigError, SignatureLayer,
    SignatureValidationError,
};

const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NOW: u64 = 1_700_000_000;

fn at(secs: u64) -> Clock {
    Clock::fixed(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// Standard Webhooks headers signing `id`, `NOW` and `body` with `SW_SECRET`.
fn sw_headers(id: &str, body: &[u8]) -> HeaderMap {
    let key = B64.decode(SW_SECRET.trim_start_matches("whsec_")).unwrap();
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{NOW}.").as_bytes());
    mac.update(body);
    let sig = format!("v1,{}", B64.encode(mac.finalize().into_bytes()));
    let mut headers = HeaderMap::new();
    headers.insert(
        "webhook-id",
        http::HeaderValue::from_bytes(id.as_bytes()).unwrap(),
    );
    headers.insert("webhook-timestamp", NOW.to_string().parse().unwrap());
    headers.insert("webhook-signature", sig.parse().unwrap());
    headers
}

/// A capacity meant as "no practical bound" is taken as such, without an arithmetic overflow.
#[tokio::test]
async fn a_memory_store_of_the_largest_capacity_records_ids() {
    for capacity in [usize::MAX, usize::MAX / 2 + 1] {
        let store = MemoryReplayStore::with_capacity(capacity);
        let ttl = Duration::from_secs(60);
        assert!(store.insert("github:1", ttl).await.unwrap());
        assert!(!store.insert("github:1", ttl).await.unwrap());
        assert!(store.insert("github:2", ttl).await.unwrap());
        assert_eq!(store.len(), 2);
    }
}

/// The event name is read from the body's `type` whatever the types of its other top-level
/// fields: Standard Webhooks payloads are the sender's own JSON, where `id` may be a number.
#[test]
fn the_event_name_is_read_next_to_fields_of_other_types() {
    let layer = SignatureLayer::standard_webhooks(SW_SECRET)
        .unwrap()
        .clock(at(NOW));
    for body in [
        &br#"{"type":"order.created","id":123,"data":{}}"#[..],
        br#"{"id":null,"type":"order.created"}"#,
        br#"{"type":"order.created","event_id":[1,2],"eventType":{"a":"b"},"challenge":false}"#,
        br#"{"type":"order.created","id":1.5e3}"#,
    ] {
        let hook = layer.verify(&sw_headers("msg_1", body), body).unwrap();
        assert_eq!(
            hook.event(),
            Some("order.created"),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

/// The same holds for the event id a Stripe delivery is deduplicated by: a top-level field of
/// an unexpected type next to it does not turn an authentic delivery into a 400.
#[test]
fn the_stripe_event_id_is_read_next_to_fields_of_other_types() {
    let secret = "whsec_test";
    let layer = SignatureLayer::stripe(secret).unwrap().clock(at(NOW));
    let body = br#"{"id":"evt_1","object":"event","type":"invoice.paid","challenge":1}"#;
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{NOW}.").as_bytes());
    mac.update(body);
    let mut headers = HeaderMap::new();
    headers.insert(
        "stripe-signature",
        format!("t={NOW},v1={}", hex::encode(mac.finalize().into_bytes()))
            .parse()
            .unwrap(),
    );
    let hook = layer.verify(&headers, body).unwrap();
    assert_eq!(hook.delivery_id(), Some("evt_1"));
    assert_eq!(hook.event(), Some("invoice.paid"));
}

/// Where the delivery id is itself signed (Standard Webhooks' `webhook-id`, Twitch's message
/// id), an id that is not visible ASCII fails the header check, before the body is read, like
/// an empty or overlong one: 401, not the 400 of an authentic delivery with a bad id.
#[test]
fn a_signed_delivery_id_that_is_not_visible_ascii_fails_the_header_check() {
    let sw = SignatureLayer::standard_webhooks(SW_SECRET)
        .unwrap()
        .clock(at(NOW));
    let body = br#"{"type":"order.created"}"#;
    for id in ["msg 1", "msg\t1", "msg_\u{e9}"] {
        let headers = sw_headers(id, body);
        let err = sw.verify(&headers, body).unwrap_err();
        assert!(
            matches!(&err, SignatureValidationError::MalformedHeader(name) if name == "webhook-id"),
            "{id:?}: {err:?}"
        );
    }

    const SECRET: &str = "twitch-eventsub-secret";
    const TS: &str = "2023-07-19T10:11:12Z";
    let twitch = SignatureLayer::twitch(SECRET)
        .unwrap()
        .clock(at(1_689_761_472));
    let body = br#"{"subscription":{"type":"channel.follow"},"event":{}}"#;
    let id = "e76c6bd4 55c9";
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(id.as_bytes());
    mac.update(TS.as_bytes());
    mac.update(body);
    let mut headers = HeaderMap::new();
    headers.insert("twitch-eventsub-message-id", id.parse().unwrap());
    headers.insert("twitch-eventsub-message-timestamp", TS.parse().unwrap());
    headers.insert(
        "twitch-eventsub-message-signature",
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
            .parse()
            .unwrap(),
    );
    headers.insert(
        "twitch-eventsub-message-type",
        "notification".parse().unwrap(),
    );
    let err = twitch.verify(&headers, body).unwrap_err();
    assert!(
        matches!(&err, SignatureValidationError::MalformedHeader(name) if name == "twitch-eventsub-message-id"),
        "{err:?}"
    );
}

/// An Azure DevOps credential whose password part is empty (`hooks:`, or `:` alone) is an empty
/// secret, refused like `azure_devops("hooks", "")`: accepted, it let anyone who sends
/// `Authorization: Basic Og==` (`:`) or guesses the username through.
#[test]
fn an_azure_devops_credential_with_an_empty_password_is_refused() {
    for credential in [":", "hooks:"] {
        assert!(
            matches!(
                SignatureLayer::with_secrets(Provider::AzureDevOps, [credential]),
                Err(SignatureConfigError::EmptySecret)
            ),
            "{credential:?}"
        );
        let layer = SignatureLayer::azure_devops("hooks", "p4ssw0rd").unwrap();
        assert!(
            matches!(
                layer.secret(credential),
                Err(SignatureConfigError::EmptySecret)
            ),
            "{credential:?}"
        );
        let secrets = Secrets::new().with("hooks:p4ssw0rd").with(credential);
        assert!(SignatureLayer::with_secrets(Provider::AzureDevOps, secrets).is_err());
    }
    assert!(matches!(
        SignatureLayer::azure_devops("hooks", ""),
        Err(SignatureConfigError::EmptySecret)
    ));

    // What the refused `:` would have let through: an empty Basic credential.
    let mut headers = HeaderMap::new();
    headers.insert("authorization", "Basic Og==".parse().unwrap());
    let layer = SignatureLayer::azure_devops("hooks", "p4ssw0rd").unwrap();
    assert!(
        layer
            .verify(&headers, br#"{"id":"1","eventType":"git.push"}"#)
            .is_err()
    );
    // A password with a colon in it is still a password.
    assert!(SignatureLayer::with_secrets(Provider::AzureDevOps, ["hooks::"]).is_ok());
    assert!(SignatureLayer::with_secrets(Provider::AzureDevOps, [":p4ssw0rd"]).is_ok());
}

/// A replay TTL reckoned from a signed timestamp far in the future, with a tolerance that takes
/// it (`Duration::MAX`) and a clock near the epoch (a device whose clock was never set): adding
/// the replicas' clock skew to the time left in the window overflowed, and the request's future
/// panicked. It saturates now.
#[tokio::test]
async fn a_replay_ttl_from_a_far_timestamp_does_not_overflow() {
    use http_body_util::Full;
    use tower::{ServiceBuilder, ServiceExt};

    const SECRET: &str = "whsec_test_secret";
    let body = r#"{"id":"evt_far","type":"ping"}"#;
    let ts: u64 = 9_999_999_999_999_999_999;
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{ts}.{body}").as_bytes());
    let sig = hex::encode(mac.finalize().into_bytes());
    let layer = SignatureLayer::stripe(SECRET)
        .unwrap()
        .timestamp_tolerance(Duration::MAX)
        .clock(at(10));
    let svc = ServiceBuilder::new().layer(layer).service_fn(
        |_req: http::Request<Full<bytes::Bytes>>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::<bytes::Bytes>::default()))
        },
    );
    let req = http::Request::post("/stripe")
        .header("stripe-signature", format!("t={ts},v1={sig}"))
        .body(Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
}
