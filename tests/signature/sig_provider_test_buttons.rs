//! Signature layer: the test buttons of Azure DevOps and Bitbucket Data Center, met through a
//! real axum server and a real HTTP client on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::routing::post;
use hmac::{Hmac, KeyInit, Mac};
use http::StatusCode;
use sha2::Sha256;
use tower_webhook::signature::{SignatureLayer, VerifiedWebhook};

/// Serves `layer` on `POST /hook` in front of a handler that counts its calls and answers
/// `<delivery id> <event>`.
async fn serve(layer: SignatureLayer) -> (SocketAddr, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let handler = move |hook: VerifiedWebhook| {
        let counted = Arc::clone(&counted);
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            format!(
                "{} {}",
                hook.delivery_id().unwrap_or("-"),
                hook.event().unwrap_or("-")
            )
        }
    };
    let app = Router::new().route("/hook", post(handler).route_layer(layer));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, calls)
}

/// Azure DevOps' "Test" dialog sends the documented sample event: the same `id` on every click
/// (`2ab4e3d3-...` for `git.pullrequest.created`), under the nil subscription id. Recorded like a
/// delivery, the second test within the replay TTL was refused with 409, and Azure DevOps showed
/// the test as failed. Such tests now reach the handler each time; events of a real
/// subscription are deduplicated as before.
#[tokio::test]
async fn azure_devops_test_notifications_reach_the_handler_every_time() {
    let layer = SignatureLayer::azure_devops("hooks", "p4ssw0rd").unwrap();
    let (addr, calls) = serve(layer).await;
    let client = crate::client::new();
    let url = format!("http://{addr}/hook");
    const SAMPLE_ID: &str = "2ab4e3d3-b7a6-425e-92b1-5a9982c1269e";
    let event = |subscription: &str, notification: u32| {
        serde_json::json!({
            "subscriptionId": subscription,
            "notificationId": notification,
            "id": SAMPLE_ID,
            "eventType": "git.pullrequest.created",
            "publisherId": "tfs",
            "message": {"text": "Jamal Hartnett created a new pull request"},
            "resource": {"pullRequestId": 1},
        })
    };
    let send = |body: serde_json::Value| {
        client
            .post(&url)
            .basic_auth("hooks", Some("p4ssw0rd"))
            .json(&body)
            .send()
    };

    for click in 1..=3 {
        let res = send(event("00000000-0000-0000-0000-000000000000", 7 + click))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "test {click}");
        assert_eq!(
            res.text().await.unwrap(),
            format!("{SAMPLE_ID} git.pullrequest.created"),
            "test {click}"
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // A real subscription's event is still processed once, whatever the tests did before.
    let real = "b5a1b7e2-4c0e-4a55-9d1c-6f0d2c3a9e01";
    let res = send(event(real, 1)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = send(event(real, 1)).await.unwrap();
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(calls.load(Ordering::SeqCst), 4);

    // Only the nil UUID itself marks a test: a subscription id of zeros written otherwise is
    // deduplicated like any other.
    for (n, subscription) in ["0", "0-0", "-0"].into_iter().enumerate() {
        let mut body = event(subscription, 30 + n as u32);
        body["id"] = format!("4c8b1f9e-0d2a-4c55-8e1f-00000000000{n}").into();
        let res = send(body.clone()).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{subscription}");
        let res = send(body).await.unwrap();
        assert_eq!(res.status(), StatusCode::CONFLICT, "{subscription}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 7);

    // A test still needs the credentials.
    let res = client
        .post(&url)
        .basic_auth("hooks", Some("wrong"))
        .json(&event("00000000-0000-0000-0000-000000000000", 20))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(calls.load(Ordering::SeqCst), 7);
}

/// Bitbucket Data Center's "Test connection" (`X-Event-Key: diagnostics:ping`) is verified like
/// any delivery: signed, it reaches the handler with its event and `X-Request-Id`; sent without
/// `X-Hub-Signature` (as some versions do even when the webhook has a secret), it is refused
/// with 401 before the handler, as docs/signature.md now says.
#[tokio::test]
async fn a_bitbucket_data_center_test_connection_is_verified_like_any_delivery() {
    const SECRET: &str = "bitbucket-dc-secret";
    let (addr, calls) = serve(SignatureLayer::bitbucket_data_center(SECRET).unwrap()).await;
    let client = crate::client::new();
    let url = format!("http://{addr}/hook");
    let body = r#"{"test": true}"#;
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));

    let ping = |request_id: &str| {
        client
            .post(&url)
            .header("content-type", "application/json; charset=utf-8")
            .header("x-event-key", "diagnostics:ping")
            .header("x-request-id", request_id)
            .body(body)
    };
    let res = ping("d872ad25-24fe-4278-a73a-2a10ed6b653d")
        .header("x-hub-signature", &signature)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.text().await.unwrap(),
        "d872ad25-24fe-4278-a73a-2a10ed6b653d diagnostics:ping"
    );

    let res = ping("96efd4cb-05ca-46cd-ac82-3cdf066ea77d")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        res.headers()["www-authenticate"],
        r#"Signature realm="bitbucket-dc""#
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
