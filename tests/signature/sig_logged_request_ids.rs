//! What `SignatureLayer` logs about a delivery it answers itself: the request id, so the answer can
//! be found by it. Every test here logs through its own subscriber (see
//! `tests/common/logs.rs`).

use crate::logs;

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use logs::Logs;
use tower::{Service, ServiceExt};
use tower_webhook::signature::{OnReplay, SignatureLayer};

const SECRET: &str = "It's a Secret to Everybody";
const BODY: &str = r#"{"zen":"Keep it logically awesome."}"#;

fn delivery(request_id: &[u8], signature: &str) -> Request<Full<Bytes>> {
    Request::post("/github")
        .header("x-github-event", "ping")
        .header("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
        .header("x-hub-signature-256", signature)
        .header(
            "x-request-id",
            http::HeaderValue::from_bytes(request_id).unwrap(),
        )
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .unwrap()
}

fn signature() -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(BODY.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A duplicate acknowledged with `OnReplay::Acknowledge` is logged with its request id, as a
/// refused one is.
#[tokio::test]
async fn an_acknowledged_duplicate_is_logged_with_its_request_id() {
    let (logs, _guard) = Logs::capture();
    let layer = SignatureLayer::github(SECRET)
        .unwrap()
        .on_replay(OnReplay::Acknowledge(StatusCode::OK));
    let mut svc =
        tower::ServiceBuilder::new()
            .layer(layer)
            .service_fn(|_: Request<Full<Bytes>>| async {
                Ok::<_, std::convert::Infallible>(
                    Response::builder()
                        .status(StatusCode::ACCEPTED)
                        .body(Full::<Bytes>::default())
                        .unwrap(),
                )
            });
    let first = svc
        .ready()
        .await
        .unwrap()
        .call(delivery(b"first-1", &signature()))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let again = svc
        .ready()
        .await
        .unwrap()
        .call(delivery(b"again-2", &signature()))
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("duplicate webhook delivery acknowledged"))
        .unwrap_or_else(|| panic!("no acknowledgement logged: {text}"));
    assert!(line.contains("request_id=\"again-2\""), "{line}");
}

/// A request id past ASCII (hyper takes any visible byte in a header) is logged as it came, not
/// as an empty string, when the delivery is refused.
#[tokio::test]
async fn a_refused_delivery_logs_a_request_id_past_ascii() {
    let (logs, _guard) = Logs::capture();
    let svc = tower::ServiceBuilder::new()
        .layer(SignatureLayer::github(SECRET).unwrap())
        .service_fn(|_: Request<Full<Bytes>>| async {
            Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::default()))
        });
    let forged = delivery("livraison-é7".as_bytes(), "sha256=00");
    let res = svc.oneshot(forged).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("webhook rejected"))
        .unwrap_or_else(|| panic!("no rejection logged: {text}"));
    assert!(line.contains("request_id=\"livraison-é7\""), "{line}");
}
