//! What `SignatureLayer` tells the operator: the log lines of refusals and of claims that could
//! not be settled carry what is needed to act on them, and still no secret.

use crate::github_hook;
use github_hook::{GH_BODY, GH_SECRET, GH_SIG, send};

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt};
use tower_webhook::signature::{
    ClaimToken, MemoryReplayStore, ReplayFuture, ReplayStore, SignatureLayer,
};

use crate::logs;
use logs::Logs;

fn github(delivery: &str, content_length: Option<&str>) -> Request<Full<Bytes>> {
    let mut req = Request::post("/github")
        .header("x-hub-signature-256", GH_SIG)
        .header("x-github-delivery", delivery);
    if let Some(len) = content_length {
        req = req.header("content-length", len);
    }
    req.body(Full::new(Bytes::from_static(GH_BODY))).unwrap()
}

/// A body refused for what it carried is logged with the cause, not only "could not read the
/// request body": a `Content-Length` that the body contradicts says so, with both lengths.
#[tokio::test]
async fn a_refused_body_is_logged_with_its_cause() {
    let (logs, _guard) = Logs::capture();
    let layer = SignatureLayer::github(GH_SECRET).unwrap();
    let status = send(&layer, StatusCode::OK, github("d-1", Some("20"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let text = logs.text();
    assert!(
        text.contains("body of 13 bytes, Content-Length announced 20"),
        "{text}"
    );
    assert!(!text.contains(GH_SECRET), "{text}");
}

/// A body that streams from elsewhere (a proxied client's response) fails with that client's
/// error, which names the URL it read, credentials and all: the log has the cause without them.
#[tokio::test]
async fn a_failed_body_is_logged_without_the_credentials_its_error_names() {
    let (logs, _guard) = Logs::capture();
    let failure = "error decoding response body for url \
                   (https://bot:pw-s3cret@git.example/hook?access_token=tok-s3cret)";
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from_static(&GH_BODY[..4])),
        Err(std::io::Error::other(failure)),
    ];
    let req = Request::post("/github")
        .header("x-hub-signature-256", GH_SIG)
        .body(axum::body::Body::from_stream(futures_util::stream::iter(
            chunks,
        )))
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(SignatureLayer::github(GH_SECRET).unwrap())
        .service_fn(|_: Request<axum::body::Body>| async {
            Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
        });
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let text = logs.text();
    assert!(text.contains("error decoding response body"), "{text}");
    assert!(text.contains("git.example/hook"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}

/// A memory store whose claims cannot be released or completed.
#[derive(Debug, Default)]
struct Unsettled(MemoryReplayStore);

impl ReplayStore for Unsettled {
    fn insert(&self, key: &str, ttl: Duration) -> ReplayFuture {
        self.0.insert(key, ttl)
    }
    fn remove(&self, key: &str) -> ReplayFuture {
        self.0.remove(key)
    }
    fn claim(&self, key: &str, token: ClaimToken, ttl: Duration) -> ReplayFuture {
        self.0.claim(key, token, ttl)
    }
    fn complete(&self, _key: &str, _token: ClaimToken, _ttl: Duration) -> ReplayFuture {
        ReplayFuture::ready(Err("store unavailable".into()))
    }
    fn release(&self, _key: &str, _token: ClaimToken) -> ReplayFuture {
        ReplayFuture::ready(Err("store unavailable".into()))
    }
    fn completed(&self, key: &str) -> ReplayFuture {
        self.0.completed(key)
    }
    fn tracks_claims(&self) -> bool {
        true
    }
}

/// When a claim cannot be settled, the warning names the delivery it is about: the operator
/// can then clear that one id (or knows which delivery to look at), instead of learning only
/// that some delivery will be refused until its claim expires.
#[tokio::test]
async fn a_claim_that_cannot_be_settled_is_logged_with_its_delivery() {
    let (logs, _guard) = Logs::capture();
    let layer = SignatureLayer::github(GH_SECRET)
        .unwrap()
        .replay_store(Unsettled::default());

    // The handler fails: the release fails.
    let failed = send(
        &layer,
        StatusCode::INTERNAL_SERVER_ERROR,
        github("72d3162e-release", None),
    )
    .await;
    assert_eq!(failed, StatusCode::INTERNAL_SERVER_ERROR);
    let text = logs.text();
    assert!(text.contains("could not release a delivery id"), "{text}");
    assert!(text.contains("github:72d3162e-release"), "{text}");

    // The handler succeeds: the completion fails.
    let done = send(&layer, StatusCode::OK, github("72d3162e-complete", None)).await;
    assert_eq!(done, StatusCode::OK);
    let text = logs.text();
    assert!(
        text.contains("could not mark a delivery id as handled"),
        "{text}"
    );
    assert!(text.contains("github:72d3162e-complete"), "{text}");
    assert!(!text.contains(GH_SECRET), "{text}");
}

/// Slack's delivery id is the Events API's `event_id`: a payload that also has a top-level
/// `id` is deduplicated by its `event_id`, not by that other field.
#[test]
fn a_slack_delivery_is_identified_by_its_event_id_only() {
    use hmac::{KeyInit, Mac};
    let secret = "8f742231b10e8888abcd99yyyzzz85a5";
    let layer = SignatureLayer::slack(secret).unwrap();
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let body = br#"{"type":"event_callback","id":"not-the-delivery","event_id":"Ev08MFMKH6","event":{"type":"app_mention"}}"#;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("v0:{ts}:").as_bytes());
    mac.update(body);
    let sig = format!("v0={}", hex::encode(mac.finalize().into_bytes()));
    let mut headers = http::HeaderMap::new();
    headers.insert("x-slack-signature", sig.parse().unwrap());
    headers.insert("x-slack-request-timestamp", ts.parse().unwrap());
    let verified = layer.verify(&headers, body).unwrap();
    assert_eq!(verified.delivery_id(), Some("Ev08MFMKH6"));
    assert_eq!(verified.event(), Some("event_callback"));
}
