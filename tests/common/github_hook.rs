//! A GitHub delivery signed with the secret of GitHub's documentation example, and a layer's
//! answer to it from a handler answering a chosen status.
#![allow(dead_code)] // not every test file uses each

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt};
use tower_webhook::signature::SignatureLayer;

pub(crate) const GH_SECRET: &str = "It's a Secret to Everybody";
pub(crate) const GH_BODY: &[u8] = b"Hello, World!";
pub(crate) const GH_SIG: &str =
    "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

/// Sends `req` through `layer` to a handler answering `status`; the status the client gets.
pub(crate) async fn send(
    layer: &SignatureLayer,
    status: StatusCode,
    req: Request<Full<Bytes>>,
) -> StatusCode {
    let svc = ServiceBuilder::new().layer(layer.clone()).service_fn(
        move |_: Request<Full<Bytes>>| async move {
            let mut res = Response::new(Full::<Bytes>::default());
            *res.status_mut() = status;
            Ok::<_, Infallible>(res)
        },
    );
    svc.oneshot(req).await.unwrap().status()
}

/// The signed delivery `delivery`.
pub(crate) fn github(delivery: &str) -> Request<Full<Bytes>> {
    Request::post("/github")
        .header("x-hub-signature-256", GH_SIG)
        .header("x-github-delivery", delivery)
        .body(Full::new(Bytes::from_static(GH_BODY)))
        .unwrap()
}
