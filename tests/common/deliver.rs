//! One delivery through a `SignatureLayer`, for tests that only need its verdict.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt};
use tower_webhook::signature::{SignatureLayer, VerifiedWebhook};

/// POSTs `body` with `headers` through `layer` to a handler that keeps what it was given: the
/// status, and the `VerifiedWebhook` the handler saw (none when it was not called).
pub(crate) async fn deliver(
    layer: &SignatureLayer,
    headers: &[(&str, String)],
    body: impl AsRef<[u8]>,
) -> (StatusCode, Option<VerifiedWebhook>) {
    let svc = ServiceBuilder::new().layer(layer.clone()).service_fn(
        |req: Request<Full<Bytes>>| async move {
            let hook = req.extensions().get::<VerifiedWebhook>().cloned();
            let mut res = Response::new(Full::<Bytes>::default());
            res.extensions_mut().insert(hook);
            Ok::<_, Infallible>(res)
        },
    );
    let mut req = Request::post("/hook");
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let body = Bytes::copy_from_slice(body.as_ref());
    let res = svc
        .oneshot(req.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let hook = res
        .extensions()
        .get::<Option<VerifiedWebhook>>()
        .cloned()
        .flatten();
    (res.status(), hook)
}
