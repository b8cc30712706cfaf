//! Documentation review, fourth round: what the docs and rustdoc tell users, checked against
//! what the crate does, through the public API.

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
