//! WebhookErrorLayer: the `x-request-id` in a `tonic::Status`'s metadata does not replace the
//! caller's request id.

use crate::logs;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use logs::Logs;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_webhook::error::WebhookErrorLayer;

/// Every test here logs through its own subscriber (see `tests/common/logs.rs`).
fn capture_logs() -> (Logs, tracing::subscriber::DefaultGuard) {
    Logs::capture()
}

// ---------------------------------------------------------------------------------------------
// The request id of a gRPC answer

/// A `tonic::Status` that a tonic client got from an upstream carries the upstream's response
/// headers as metadata, its `x-request-id` among them. A client error's metadata goes to the
/// gRPC caller, but the request id is one the answer sets itself: the caller's own id is
/// echoed (as the log has it), once, not the upstream's in its place.
#[tokio::test]
async fn a_status_s_request_id_metadata_does_not_replace_the_caller_s() {
    let (logs, _guard) = capture_logs();
    let svc = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .service_fn(|_req: Request<Full<Bytes>>| async {
            let mut status = tonic::Status::not_found("no such installation");
            let metadata = status.metadata_mut();
            metadata.insert("x-request-id", "upstream-7".parse().unwrap());
            metadata.insert("x-installation", "42".parse().unwrap());
            Err::<Response<Full<Bytes>>, BoxError>(status.into())
        });
    for content_type in ["application/grpc", "application/grpc-web+proto"] {
        let grpc = Request::post("/test.Echo/Say")
            .header("content-type", content_type)
            .header("x-request-id", "req-1")
            .body(Full::default())
            .unwrap();
        let res = svc.clone().oneshot(grpc).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let headers = res.headers();
        assert_eq!(headers["grpc-status"], "5");
        let ids: Vec<_> = headers.get_all("x-request-id").iter().collect();
        assert_eq!(ids, ["req-1"], "{content_type}: {headers:?}");
        // The rest of the metadata still reaches the caller.
        assert_eq!(headers["x-installation"], "42");
    }
    assert!(
        logs.text().contains("request_id=\"req-1\""),
        "{}",
        logs.text()
    );

    // A call without a request id of its own: the metadata is passed on as it is.
    let grpc = Request::post("/test.Echo/Say")
        .header("content-type", "application/grpc")
        .body(Full::default())
        .unwrap();
    let res = svc.oneshot(grpc).await.unwrap();
    assert_eq!(res.headers()["x-request-id"], "upstream-7");
}
