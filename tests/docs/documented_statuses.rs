//! The statuses and problem types the docs and rustdoc promise (a stale timestamp, a renderer's
//! status, other methods on a webhook route, a timeout's status), checked against what the crate
//! answers, through the public API.

use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};
use tower_webhook::error::{Problem, WebhookErrorLayer, types};
use tower_webhook::signature::{Clock, SignatureLayer};

/// `types::REPLAYED_DELIVERY` said it also stood for "a signed timestamp outside the window".
/// A stale delivery is answered 401 with `invalid-signature` (docs/signature.md's table), never
/// with the replay type a client would take for "already delivered".
#[tokio::test]
async fn a_stale_timestamp_is_an_invalid_signature_not_a_replay() {
    let signed_at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let layer = SignatureLayer::stripe("whsec_test")
        .unwrap()
        .clock(Clock::fixed(signed_at + Duration::from_secs(301)));
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .layer(layer)
        .service_fn(|_: Request<Full<Bytes>>| async {
            Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::default()))
        });
    let req = Request::post("/stripe")
        .header(
            "stripe-signature",
            "t=1700000000,v1=4aa90aa69730f112c87accbf54203d1076675eae3b18a5cb82b5ab9e7f5cd5bc",
        )
        .body(Full::new(Bytes::from_static(
            br#"{"id":"evt_1","type":"invoice.paid"}"#,
        )))
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["type"], types::INVALID_SIGNATURE);
    assert_ne!(doc["type"], types::REPLAYED_DELIVERY);
}

/// `RenderProblem` and docs/errors.md said a renderer's status is replaced only when it is
/// "below 400": any status that is not an error status (6xx included) gets the problem's.
#[tokio::test]
async fn a_renderer_status_that_is_not_an_error_gets_the_problems() {
    let odd = StatusCode::from_u16(600).unwrap();
    let layer = WebhookErrorLayer::new().render_with(move |problem: &Problem| {
        let mut res = Response::new(Bytes::from(problem.title().to_owned()));
        *res.status_mut() = odd;
        res
    });
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_: Request<String>| async {
            Err::<Response<String>, _>(Problem::new(StatusCode::CONFLICT))
        });
    let res = svc.oneshot(Request::new(String::new())).await.unwrap();
    assert_eq!(res.status(), StatusCode::CONFLICT);
}

/// The docs put `SignatureLayer` on the route's `POST` handler
/// (`post(handler).route_layer(layer)`): a signed delivery reaches the handler, an unsigned one
/// is refused 401, and a `GET` on the same path (a browser, a probe) gets axum's `405` with
/// `Allow: POST` instead of a 401 as if it were a badly signed delivery. Served on loopback.
#[tokio::test]
async fn the_documented_router_answers_other_methods_405_and_verifies_posts() {
    use axum::routing::post;
    use hmac::{Hmac, KeyInit, Mac};
    use tower_webhook::signature::VerifiedWebhook;

    async fn on_github(hook: VerifiedWebhook, body: String) -> String {
        format!("{} {}", hook.event().unwrap_or_default(), body.len())
    }
    let secret = "It's a Secret to Everybody";
    let app: axum::Router = axum::Router::new()
        .route(
            "/webhooks/github",
            post(on_github).route_layer(SignatureLayer::github(secret).unwrap()),
        )
        .layer(WebhookErrorLayer::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhooks/github", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = crate::client::new();

    let get = client.get(&url).send().await.unwrap();
    assert_eq!(get.status(), 405);
    assert_eq!(get.headers()["allow"], "POST");

    let body = r#"{"zen":"Keep it logically awesome."}"#;
    let unsigned = client.post(&url).body(body).send().await.unwrap();
    assert_eq!(unsigned.status(), 401);
    assert_eq!(
        unsigned.headers()["content-type"],
        "application/problem+json"
    );

    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let signed = client
        .post(&url)
        .header("x-hub-signature-256", signature)
        .header("x-github-event", "ping")
        .header("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), 200);
    assert_eq!(signed.text().await.unwrap(), format!("ping {}", body.len()));
    server.abort();
}

/// `timeout_status` takes any error status; the problem's title names that status, not
/// "Gateway Timeout" whatever it is.
#[tokio::test]
async fn a_timeout_answered_with_another_status_has_that_status_title() {
    for (status, title) in [
        (StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout"),
        (StatusCode::REQUEST_TIMEOUT, "Request Timeout"),
        (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable"),
    ] {
        let svc = ServiceBuilder::new()
            .layer(WebhookErrorLayer::new().timeout_status(status))
            .service_fn(|_: Request<Full<Bytes>>| async {
                Err::<Response<Full<Bytes>>, _>(tower::timeout::error::Elapsed::new())
            });
        let res = svc
            .oneshot(Request::new(Full::<Bytes>::default()))
            .await
            .unwrap();
        assert_eq!(res.status(), status);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem["title"], title, "{problem}");
        assert_eq!(problem["status"], status.as_u16());
        assert_eq!(problem["type"], types::TIMEOUT);
    }
}
