//! A newcomer's axum server for GitHub and GitLab, built from the README and the guides, run on
//! 127.0.0.1 and sent signed deliveries; what the docs say about it, pinned.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::{Json, Router, extract::DefaultBodyLimit, routing::post};
use hmac::{KeyInit, Mac};
use tower::ServiceBuilder;
use tower_webhook::error::{WebhookErrorLayer, types};
use tower_webhook::signature::{OnReplay, Provider, Secrets, SignatureLayer, VerifiedWebhook};

const SECRET: &str = "It's a Secret to Everybody";

fn github_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Serves `app` on a loopback port.
async fn serve(app: Router) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, server)
}

fn client() -> reqwest::Client {
    crate::client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// The README's app (secrets from a comma-separated list, `route_layer` on the `POST` handler,
/// the error layer outside) with a GitLab route beside it, counting the deliveries each
/// handler sees.
fn readme_app(on_replay: OnReplay, calls: Arc<AtomicUsize>) -> Router {
    let github =
        SignatureLayer::github_with_secrets(Secrets::from_list("new-secret, old-secret").unwrap())
            .unwrap()
            .on_replay(on_replay);
    let gitlab = SignatureLayer::with_secrets(
        Provider::GitLab,
        Secrets::from_list("gl-token-new, gl-token-old").unwrap(),
    )
    .unwrap()
    .on_replay(on_replay);
    let handler = move |hook: VerifiedWebhook, _body: String| {
        let calls = Arc::clone(&calls);
        async move {
            let _ = hook.delivery_id();
            calls.fetch_add(1, Ordering::SeqCst);
            http::StatusCode::ACCEPTED
        }
    };
    Router::new()
        .route(
            "/api/v1/github_webhooks",
            post(handler.clone()).route_layer(github),
        )
        .route("/api/v1/gitlab_webhooks", post(handler).route_layer(gitlab))
        .layer(DefaultBodyLimit::max(25 * 1024 * 1024))
        .layer(WebhookErrorLayer::new())
}

/// The README now says what a copy of a handled delivery gets (409 by default, 200 with
/// `OnReplay::Acknowledge`), and signature.md that a delivery whose id header is left out is
/// verified and handled but not deduplicated: each copy reaches the handler.
#[tokio::test]
async fn replays_and_deliveries_without_an_id_as_the_readme_says() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (addr, server) = serve(readme_app(OnReplay::Reject, Arc::clone(&calls))).await;
    let http = client();
    let github = format!("http://{addr}/api/v1/github_webhooks");
    let gitlab = format!("http://{addr}/api/v1/gitlab_webhooks");
    let body = br#"{"action":"opened"}"#;

    // Signed with the old secret of the list: accepted.
    let send = |id: Option<&str>, secret: &str| {
        let mut req = http
            .post(&github)
            .header("x-github-event", "pull_request")
            .header("x-hub-signature-256", github_signature(secret, body))
            .header("content-type", "application/json")
            .body(&body[..]);
        if let Some(id) = id {
            req = req.header("x-github-delivery", id);
        }
        req.send()
    };
    assert_eq!(send(Some("d-1"), "old-secret").await.unwrap().status(), 202);
    // The same delivery id again: 409, a problem document, the handler not called.
    let res = send(Some("d-1"), "new-secret").await.unwrap();
    assert_eq!(res.status(), 409);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let doc: serde_json::Value = res.json().await.unwrap();
    assert_eq!(doc["type"], types::REPLAYED_DELIVERY);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // No `X-GitHub-Delivery`: verified and handled, each time.
    assert_eq!(send(None, "new-secret").await.unwrap().status(), 202);
    assert_eq!(send(None, "new-secret").await.unwrap().status(), 202);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // Not signed: refused, whatever the id.
    let res = send(None, "guess").await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.headers()["www-authenticate"],
        r#"Signature realm="github""#
    );

    // GitLab without `Idempotency-Key`: the same.
    for token in ["gl-token-new", "gl-token-old"] {
        let res = http
            .post(&gitlab)
            .header("x-gitlab-token", token)
            .header("x-gitlab-event", "Merge Request Hook")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    // `X-Gitlab-Event-UUID` is no delivery id: GitLab gives the deliveries one request makes to
    // a hook the same value, so two events with the same one are both handled.
    for _ in 0..2 {
        let res = http
            .post(&gitlab)
            .header("x-gitlab-token", "gl-token-new")
            .header("x-gitlab-event-uuid", "g-0")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 7);
    // With its `Idempotency-Key`, kept on GitLab's retries, a copy is a replay.
    for status in [202, 409] {
        let res = http
            .post(&gitlab)
            .header("x-gitlab-token", "gl-token-new")
            .header("idempotency-key", "g-1")
            .header("x-gitlab-event-uuid", format!("g-1-{status}"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), status);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 8);
    server.abort();

    // `OnReplay::Acknowledge(200)`: the copy gets an empty 200, the handler is not called.
    let calls = Arc::new(AtomicUsize::new(0));
    let ack = OnReplay::Acknowledge(http::StatusCode::OK);
    let (addr, server) = serve(readme_app(ack, Arc::clone(&calls))).await;
    let github = format!("http://{addr}/api/v1/github_webhooks");
    for status in [202, 200] {
        let res = http
            .post(&github)
            .header("x-github-delivery", "d-2")
            .header("x-hub-signature-256", github_signature("new-secret", body))
            .body(&body[..])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), status);
        assert!(res.bytes().await.unwrap().is_empty());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    server.abort();
}

/// signature.md's quick start takes `Json`: the docs now say that what axum's extractor refuses
/// is its own plain-text answer, passed on by `WebhookErrorLayer` (no problem document), and that
/// a GitHub hook of content type `application/x-www-form-urlencoded` gets 415 from it.
#[tokio::test]
async fn what_the_json_extractor_refuses_is_axums_own_answer() {
    let app = Router::new()
        .route(
            "/webhooks/github",
            post(|_hook: VerifiedWebhook, Json(_event): Json<serde_json::Value>| async { "ok" })
                .route_layer(SignatureLayer::github(SECRET).unwrap()),
        )
        .layer(WebhookErrorLayer::new());
    let (addr, server) = serve(app).await;
    let http = client();
    let url = format!("http://{addr}/webhooks/github");
    let send = |id: &'static str, content_type: &'static str, body: &'static [u8]| {
        http.post(&url)
            .header("x-github-delivery", id)
            .header("x-hub-signature-256", github_signature(SECRET, body))
            .header("content-type", content_type)
            .body(body)
            .send()
    };

    let form = send(
        "f-1",
        "application/x-www-form-urlencoded",
        b"payload=%7B%22action%22%3A%22opened%22%7D",
    )
    .await
    .unwrap();
    assert_eq!(form.status(), 415);
    assert!(
        form.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );

    let not_json = send("f-2", "application/json", b"not json").await.unwrap();
    assert_eq!(not_json.status(), 400);
    assert_ne!(
        not_json.headers()["content-type"],
        "application/problem+json"
    );

    // The refusals were not deliveries handled: the same id, now as JSON, is processed.
    let json = send("f-1", "application/json", br#"{"action":"opened"}"#)
        .await
        .unwrap();
    assert_eq!(json.status(), 200);
    server.abort();
}

/// The guide's stack uses tower's `TimeoutLayer` (a 504 problem document, with the request id);
/// it now warns that tower-http's `TimeoutLayer` answers by itself: 408, an empty body.
#[tokio::test]
async fn towers_timeout_is_a_504_problem_tower_https_an_empty_408() {
    async fn slow(_body: String) -> http::StatusCode {
        tokio::time::sleep(Duration::from_secs(30)).await;
        http::StatusCode::ACCEPTED
    }
    let tower_timeout = Router::new().route("/slow", post(slow)).layer(
        ServiceBuilder::new().layer(WebhookErrorLayer::new()).layer(
            tower::timeout::TimeoutLayer::new(Duration::from_millis(200)),
        ),
    );
    let tower_http_timeout = Router::new().route("/slow", post(slow)).layer(
        ServiceBuilder::new().layer(WebhookErrorLayer::new()).layer(
            tower_http::timeout::TimeoutLayer::with_status_code(
                http::StatusCode::REQUEST_TIMEOUT,
                Duration::from_millis(200),
            ),
        ),
    );
    let http = client();

    let (addr, server) = serve(tower_timeout).await;
    let res = http
        .post(format!("http://{addr}/slow"))
        .header("x-request-id", "req-504")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 504);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let doc: serde_json::Value = res.json().await.unwrap();
    assert_eq!(doc["type"], types::TIMEOUT);
    assert_eq!(doc["instance"], "req-504");
    server.abort();

    let (addr, server) = serve(tower_http_timeout).await;
    let res = http
        .post(format!("http://{addr}/slow"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 408);
    assert!(res.headers().get("content-type").is_none());
    assert!(res.bytes().await.unwrap().is_empty());
    server.abort();
}
