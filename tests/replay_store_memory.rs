//! A `MemoryReplayStore` full of claims stays bounded in memory; copies of a gRPC call are
//! acknowledged, or released after a failure, as gRPC says.
//!
//! Its own test binary: it reads the resident memory of the whole process, which other tests
//! running beside it would change.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tower_webhook::signature::{ClaimToken, Clock, MemoryReplayStore, ReplayStore};

/// The bytes this process holds in memory (Linux).
fn resident() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// A `MemoryReplayStore` whose every id is a claim in progress refuses new ids (the layer
/// answers 503) until one is settled, "so the memory stays bounded". Each refusal queued every
/// held claim once more for the expiry sweep, and nothing trimmed that queue before an id was
/// let in again: a store of 256 claims grew by about 4 KB per refused delivery, 80 MB after
/// 20,000, for as long as the handlers ran (up to `claim_ttl`, 5 minutes by default).
#[test]
#[cfg(target_os = "linux")]
fn a_store_full_of_claims_does_not_grow_with_each_refused_delivery() {
    // Claims taken one millisecond apart, as deliveries arrive.
    let now = Arc::new(AtomicU64::new(1_700_000_000_000));
    let ms = Arc::clone(&now);
    let store = MemoryReplayStore::with_capacity(256).clock(Clock::from_fn(move || {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms.fetch_add(1, Ordering::SeqCst))
    }));
    let ttl = Duration::from_secs(300);
    let claim = |id: &str| {
        let mut future = store.claim(id, ClaimToken::unique(), ttl);
        // The memory store answers at once.
        let waker = std::task::Waker::noop();
        match std::pin::Pin::new(&mut future).poll(&mut std::task::Context::from_waker(waker)) {
            std::task::Poll::Ready(answer) => answer,
            std::task::Poll::Pending => panic!("the memory store answers at once"),
        }
    };
    for i in 0..256 {
        assert!(claim(&format!("github:running-{i}")).unwrap());
    }
    // One refusal first: what a refusal allocates for itself is freed when it returns.
    assert!(claim("github:refused").is_err());
    let before = resident();
    for i in 0..20_000 {
        assert!(
            claim(&format!("github:refused-{i}")).is_err(),
            "full of claims"
        );
    }
    let grown = resident().saturating_sub(before);
    assert!(
        grown < 16 << 20,
        "the store grew by {grown} bytes over 20,000 refused deliveries"
    );
    // Still full of the same claims, and still refusing.
    assert_eq!(store.len(), 256);
    assert!(!claim("github:running-0").unwrap());
}

const GITHUB_SIG: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

/// A GitHub-signed call with delivery id `d-1`, as gRPC (`content_type`) or plain HTTP.
fn delivery(content_type: Option<&str>) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut req = http::Request::post("/events.Sink/Deliver")
        .header("x-github-delivery", "d-1")
        .header("x-hub-signature-256", GITHUB_SIG);
    if let Some(content_type) = content_type {
        req = req
            .header("content-type", content_type)
            .header("te", "trailers");
    }
    req.body(http_body_util::Full::new(bytes::Bytes::from_static(
        b"Hello, World!",
    )))
    .unwrap()
}

/// Sends a gRPC call twice and a plain HTTP copy once; returns the copies' answers.
async fn copies_of_one_delivery<S, B>(svc: S) -> Vec<http::Response<B>>
where
    S: tower::Service<
            http::Request<http_body_util::Full<bytes::Bytes>>,
            Response = http::Response<B>,
        > + Clone,
    S::Error: std::fmt::Debug,
{
    use tower::ServiceExt;
    let first = svc
        .clone()
        .oneshot(delivery(Some("application/grpc+proto")))
        .await
        .unwrap();
    assert_eq!(first.headers()["grpc-status"], "0");
    vec![
        svc.clone()
            .oneshot(delivery(Some("application/grpc+proto")))
            .await
            .unwrap(),
        svc.oneshot(delivery(None)).await.unwrap(),
    ]
}

/// `OnReplay::Acknowledge` answers a copy of a handled delivery "an empty 2xx, so the sender
/// treats it as delivered". On a gRPC call that answer had neither `grpc-status` nor a gRPC
/// content type, which a gRPC client takes for a broken call (tonic: an error), so the sender
/// retried a delivery it had already made, and was "acknowledged" the same way each time. A
/// gRPC call is now acknowledged as gRPC says: HTTP 200, `grpc-status: 0`, its content type.
#[tokio::test]
async fn a_duplicate_grpc_call_is_acknowledged_with_grpc_status_ok() {
    use bytes::Bytes;
    use http::{Request, Response, StatusCode};
    use http_body_util::Full;
    use std::sync::atomic::AtomicUsize;
    use tower::ServiceBuilder;
    use tower_webhook::error::WebhookErrorLayer;
    use tower_webhook::signature::{OnReplay, SignatureLayer};

    let handled = Arc::new(AtomicUsize::new(0));
    let handler = |count: Arc<AtomicUsize>| {
        move |_: Request<Full<Bytes>>| {
            count.fetch_add(1, Ordering::SeqCst);
            async {
                let mut res = Response::new(Full::<Bytes>::default());
                let headers = res.headers_mut();
                headers.insert("content-type", "application/grpc+proto".parse().unwrap());
                headers.insert("grpc-status", "0".parse().unwrap());
                Ok::<_, std::convert::Infallible>(res)
            }
        }
    };
    let layer = || {
        SignatureLayer::github("It's a Secret to Everybody")
            .unwrap()
            .on_replay(OnReplay::Acknowledge(StatusCode::ACCEPTED))
    };
    let alone = ServiceBuilder::new()
        .layer(layer())
        .service_fn(handler(Arc::clone(&handled)));
    let grpc_and_http = copies_of_one_delivery(alone).await;
    let (grpc, http) = (&grpc_and_http[0], &grpc_and_http[1]);
    let behind_error_layer = ServiceBuilder::new()
        .layer(WebhookErrorLayer::new())
        .layer(layer())
        .service_fn(handler(Arc::clone(&handled)));
    let rendered = copies_of_one_delivery(behind_error_layer).await;
    let answers = [
        (grpc.status(), grpc.headers(), http.status(), http.headers()),
        (
            rendered[0].status(),
            rendered[0].headers(),
            rendered[1].status(),
            rendered[1].headers(),
        ),
    ];
    for (grpc_status, grpc, http_status, http) in answers {
        assert_eq!(grpc_status, StatusCode::OK);
        assert_eq!(
            grpc.get("grpc-status").map(|v| v.to_str().unwrap()),
            Some("0"),
            "{grpc:?}"
        );
        assert_eq!(grpc["content-type"], "application/grpc+proto");
        // An HTTP copy is still acknowledged with the configured status.
        assert_eq!(http_status, StatusCode::ACCEPTED);
        assert!(http.get("grpc-status").is_none());
    }
    assert_eq!(
        handled.load(Ordering::SeqCst),
        2,
        "each service processed it once"
    );
}

/// With `RecordDelivery::AfterSuccess` (the default) a delivery's id is "kept if the inner
/// service answers 2xx and released otherwise", so that the sender's retry of a failed delivery
/// is processed. A gRPC handler that fails answers HTTP 200 with a `grpc-status` other than 0
/// (tonic sends an error this way, in the headers): the layer took that for a success and kept
/// the id, and the retry was refused as a replay (or, with `OnReplay::Acknowledge`, answered as
/// delivered): the delivery was never processed. Such an answer now releases the id.
#[tokio::test]
async fn a_grpc_call_that_failed_is_released_for_its_retry() {
    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::Full;
    use std::sync::atomic::AtomicUsize;
    use tower::{ServiceBuilder, ServiceExt};
    use tower_webhook::signature::SignatureLayer;

    let calls = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&calls);
    let svc = ServiceBuilder::new()
        .layer(SignatureLayer::github("It's a Secret to Everybody").unwrap())
        .service_fn(move |_: Request<Full<Bytes>>| {
            // The first attempt fails (UNAVAILABLE), the retry succeeds.
            let status = if count.fetch_add(1, Ordering::SeqCst) == 0 {
                "14"
            } else {
                "0"
            };
            async move {
                let mut res = Response::new(Full::<Bytes>::default());
                let headers = res.headers_mut();
                headers.insert("content-type", "application/grpc+proto".parse().unwrap());
                headers.insert("grpc-status", status.parse().unwrap());
                Ok::<_, std::convert::Infallible>(res)
            }
        });
    let grpc = || delivery(Some("application/grpc+proto"));
    let failed = svc.clone().oneshot(grpc()).await.unwrap();
    assert_eq!(failed.headers()["grpc-status"], "14");
    let retry = svc.clone().oneshot(grpc()).await.unwrap();
    assert_eq!(
        retry
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap()),
        Some("0"),
        "the retry of a failed call was refused: {:?}",
        retry.headers()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // Handled now: a third copy is a replay, refused as gRPC refuses a call.
    let copy = svc.oneshot(grpc()).await.unwrap();
    assert_eq!(copy.headers()["grpc-status"], "6", "ALREADY_EXISTS");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
