//! The layer's machinery around its inner service: the request it hands on, claims released on an
//! inner error, readiness.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_webhook::signature::SignatureLayer;

const GH_SECRET: &str = "It's a Secret to Everybody";
const GH_BODY: &[u8] = b"Hello, World!";
const GH_SIG: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

use crate::chunks;
use chunks::Chunks;

fn signed(content_length: Option<&str>, delivery: &str) -> Request<Chunks> {
    let mut builder = Request::post("/github")
        .header("x-hub-signature-256", GH_SIG)
        .header("x-github-delivery", delivery);
    if let Some(len) = content_length {
        builder = builder.header("content-length", len);
    }
    builder
        .body(Chunks(
            [
                Bytes::from_static(&GH_BODY[..5]),
                Bytes::from_static(&GH_BODY[5..]),
            ]
            .into(),
        ))
        .unwrap()
}

/// A handler that reports the `Content-Length` it was given and the bytes it read.
fn echo_length(
    calls: Arc<AtomicUsize>,
) -> impl Service<
    Request<Chunks>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    tower::service_fn(move |req: Request<Chunks>| {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            let announced = req
                .headers()
                .get("content-length")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let text = format!("{announced:?} {}", body.len());
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
        }
    })
}

#[tokio::test]
async fn the_handler_never_sees_a_content_length_its_body_contradicts() {
    for (announced, delivery) in [("20", "d-body-short"), ("5", "d-body-long")] {
        let calls = Arc::new(AtomicUsize::new(0));
        let svc = ServiceBuilder::new()
            .layer(SignatureLayer::github(GH_SECRET).unwrap())
            .service(echo_length(calls.clone()));
        let res = svc
            .oneshot(signed(Some(announced), delivery))
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            StatusCode::BAD_REQUEST,
            "announced {announced}"
        );
        assert_eq!(
            res.headers()["content-type"],
            "application/problem+json",
            "announced {announced}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 0, "announced {announced}");
    }
    // A truthful length, and none at all, are handed on as they are.
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(SignatureLayer::github(GH_SECRET).unwrap())
        .service(echo_length(calls.clone()));
    let res = svc
        .clone()
        .oneshot(signed(Some("13"), "d-true"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let text = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(text, "Some(\"13\") 13");
    let res = svc.oneshot(signed(None, "d-none")).await.unwrap();
    assert_eq!(res.status(), 200);
    let text = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(text, "None 13");
}

#[tokio::test]
async fn an_inner_error_releases_the_claim_for_the_redelivery() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let svc = ServiceBuilder::new()
        .layer(SignatureLayer::github(GH_SECRET).unwrap())
        .service(tower::service_fn(move |_req: Request<Chunks>| {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    Err::<Response<Full<Bytes>>, _>(std::io::Error::other("handler failed"))
                } else {
                    Ok(Response::new(Full::default()))
                }
            }
        }));
    assert!(svc.clone().oneshot(signed(None, "d-err")).await.is_err());
    let res = svc.clone().oneshot(signed(None, "d-err")).await.unwrap();
    assert_eq!(res.status(), 200);
    let res = svc.oneshot(signed(None, "d-err")).await.unwrap();
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_instance_polled_ready_is_the_one_called() {
    let (mut svc, mut handle) =
        tower_test::mock::spawn_layer::<Request<Chunks>, Response<Full<Bytes>>, _>(
            SignatureLayer::github(GH_SECRET).unwrap(),
        );
    handle.allow(1);
    assert!(svc.poll_ready().is_ready());
    // Refused on its headers: the ready inner service stays ready for the next call.
    let unsigned = Request::post("/").body(Chunks::from(Bytes::new())).unwrap();
    let res = svc.call(unsigned).await.unwrap();
    assert_eq!(res.status(), 401);
    let call = tokio::spawn(svc.call(signed(None, "d-ready")));
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req.headers()["x-github-delivery"], "d-ready");
    send.send_response(Response::new(Full::default()));
    assert_eq!(call.await.unwrap().unwrap().status(), 200);
    // The clone left behind was not polled: it asks the inner service again.
    assert!(svc.poll_ready().is_pending());
}
