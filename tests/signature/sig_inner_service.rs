//! The layer's machinery around its inner service: the request it hands on, claims released on an
//! inner error, readiness.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_webhook::signature::{
    ClaimToken, MemoryReplayStore, ReplayFuture, ReplayStore, SignatureLayer,
};

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
async fn the_inner_service_is_asked_for_readiness_only_once_a_delivery_is_verified() {
    let (mut svc, mut handle) =
        tower_test::mock::spawn_layer::<Request<Chunks>, Response<Full<Bytes>>, _>(
            SignatureLayer::github(GH_SECRET).unwrap(),
        );
    handle.allow(0);
    // The layer itself is always ready: the inner service has no room, and is not asked yet.
    assert!(svc.poll_ready().is_ready());
    let unsigned = Request::post("/").body(Chunks::from(Bytes::new())).unwrap();
    assert_eq!(svc.call(unsigned).await.unwrap().status(), 401);
    // Verified and claimed, the delivery waits for room.
    let mut call = std::pin::pin!(svc.call(signed(None, "d-ready")));
    assert!(futures_util::poll!(call.as_mut()).is_pending());
    handle.allow(1);
    let (res, ()) = tokio::join!(call, async {
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.headers()["x-github-delivery"], "d-ready");
        send.send_response(Response::new(Full::default()));
    });
    assert_eq!(res.unwrap().status(), 200);
    // Handled: the id is recorded.
    handle.allow(1);
    let res = svc.call(signed(None, "d-ready")).await.unwrap();
    assert_eq!(res.status(), StatusCode::CONFLICT);
}

#[tokio::test]
async fn an_error_of_the_inner_readiness_answers_the_delivery_and_releases_its_claim() {
    let (mut svc, mut handle) =
        tower_test::mock::spawn_layer::<Request<Chunks>, Response<Full<Bytes>>, _>(
            SignatureLayer::github(GH_SECRET).unwrap(),
        );
    handle.allow(0);
    let mut call = std::pin::pin!(svc.call(signed(None, "d-not-ready")));
    assert!(futures_util::poll!(call.as_mut()).is_pending());
    handle.send_error("upstream pool closed");
    let err = call.await.unwrap_err();
    assert_eq!(err.to_string(), "upstream pool closed");
    // Not handled: the provider's redelivery is let in.
    handle.allow(1);
    let (res, ()) = tokio::join!(svc.call(signed(None, "d-not-ready")), async {
        let (_req, send) = handle.next_request().await.unwrap();
        send.send_response(Response::new(Full::default()));
    });
    assert_eq!(res.unwrap().status(), 200);
}

/// A body that is still on its way: it never ends (or the bytes of a finished one).
enum Arriving {
    Never,
    Done(Chunks),
}

impl http_body::Body for Arriving {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Arriving::Never => std::task::Poll::Pending,
            Arriving::Done(chunks) => std::pin::Pin::new(chunks).poll_frame(cx),
        }
    }
}

impl From<Bytes> for Arriving {
    fn from(bytes: Bytes) -> Self {
        Arriving::Done(Chunks::from(bytes))
    }
}

#[tokio::test]
async fn a_request_still_sending_its_body_holds_no_permit_of_an_inner_limit() {
    let svc = ServiceBuilder::new()
        .layer(SignatureLayer::github(GH_SECRET).unwrap())
        .concurrency_limit(1)
        .service(tower::service_fn(|_req: Request<Arriving>| async {
            Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
        }));
    // Headers of a signed delivery (anyone can write them), then a body that never comes.
    let stalled = Request::post("/github")
        .header("x-hub-signature-256", GH_SIG)
        .header("x-github-delivery", "d-stalled")
        .body(Arriving::Never)
        .unwrap();
    let stalled = tokio::spawn(svc.clone().oneshot(stalled));
    tokio::task::yield_now().await;
    let (parts, body) = signed(None, "d-signed").into_parts();
    let delivery = Request::from_parts(parts, Arriving::Done(body));
    let res = tokio::time::timeout(Duration::from_secs(10), svc.oneshot(delivery))
        .await
        .expect("the signed delivery waited for the permit of a request not yet verified");
    assert_eq!(res.unwrap().status(), 200);
    assert!(!stalled.is_finished());
    stalled.abort();
}

/// A store whose `release` or `complete` (the operation named) panics, the way a custom
/// store's bug would.
struct PanicsOn(&'static str, MemoryReplayStore);

impl ReplayStore for PanicsOn {
    fn insert(&self, key: &str, ttl: Duration) -> ReplayFuture {
        self.1.insert(key, ttl)
    }
    fn remove(&self, key: &str) -> ReplayFuture {
        self.1.remove(key)
    }
    fn claim(&self, key: &str, token: ClaimToken, ttl: Duration) -> ReplayFuture {
        if self.0 == "claim poll" {
            return ReplayFuture::new(PanicsWhenFirstPolled);
        }
        self.1.claim(key, token, ttl)
    }
    fn complete(&self, key: &str, token: ClaimToken, ttl: Duration) -> ReplayFuture {
        if self.0 == "complete" {
            panic!("complete is broken")
        }
        self.1.complete(key, token, ttl)
    }
    fn release(&self, key: &str, token: ClaimToken) -> ReplayFuture {
        if self.0 == "release" {
            panic!("release is broken")
        }
        self.1.release(key, token)
    }
    fn completed(&self, key: &str) -> ReplayFuture {
        self.1.completed(key)
    }
    fn tracks_claims(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn a_store_that_panics_when_a_dropped_delivery_is_released_is_logged_not_unwound() {
    let (logs, _guard) = crate::logs::Logs::capture();
    let mut svc = ServiceBuilder::new()
        .layer(
            SignatureLayer::github(GH_SECRET)
                .unwrap()
                .replay_store(PanicsOn("release", MemoryReplayStore::new())),
        )
        .service(tower::service_fn(|_req: Request<Chunks>| async {
            std::future::pending::<Result<Response<Full<Bytes>>, Infallible>>().await
        }));
    let mut call = Box::pin(svc.ready().await.unwrap().call(signed(None, "d-gone")));
    // Claimed, and in the handler: then the client goes away.
    assert!(futures_util::poll!(call.as_mut()).is_pending());
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(call)));
    assert!(dropped.is_ok(), "the store's panic unwound out of the drop");
    let logged = logs.text();
    assert!(
        logged.contains("the replay store panicked: release is broken"),
        "{logged}"
    );
}

/// A store whose `complete` panics once the handler answered 2xx: the answer goes out, and the
/// panic is logged as the store's failure. It unwound out of the response future, and a 2xx the
/// handler gave became the error layer's 500, or a reset.
#[tokio::test]
async fn a_store_that_panics_when_a_handled_delivery_is_completed_is_logged_not_unwound() {
    let (logs, _guard) = crate::logs::Logs::capture();
    let svc = ServiceBuilder::new()
        .layer(
            SignatureLayer::github(GH_SECRET)
                .unwrap()
                .replay_store(PanicsOn("complete", MemoryReplayStore::new())),
        )
        .service(tower::service_fn(|_req: Request<Chunks>| async {
            Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
        }));
    let answered = tokio::spawn(svc.oneshot(signed(None, "d-handled"))).await;
    let res = answered.expect("the store's panic unwound out of the response future");
    assert_eq!(res.unwrap().status(), StatusCode::OK);
    let logged = logs.text();
    assert!(
        logged.contains("the replay store panicked: complete is broken"),
        "{logged}"
    );
}

/// How many times a [`PanicsWhenFirstPolled`] was polled.
static POLLS: AtomicUsize = AtomicUsize::new(0);

/// A store's future, written by hand, that panics when first polled and would claim the id if
/// polled again: not fused, as a custom store's may not be.
struct PanicsWhenFirstPolled;

impl std::future::Future for PanicsWhenFirstPolled {
    type Output = Result<bool, tower::BoxError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        if POLLS.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("the claim is broken");
        }
        std::task::Poll::Ready(Ok(true))
    }
}

/// A store's future that panicked is not polled again: the lookup that held it polled it once
/// more as it was dropped, and a future that is not fused could then do its work twice (here,
/// claim the id after the delivery had failed).
#[tokio::test]
async fn a_store_future_that_panicked_is_not_polled_again() {
    let svc = ServiceBuilder::new()
        .layer(
            SignatureLayer::github(GH_SECRET)
                .unwrap()
                .replay_store(PanicsOn("claim poll", MemoryReplayStore::new())),
        )
        .service(tower::service_fn(|_req: Request<Chunks>| async {
            Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
        }));
    let _ = tokio::spawn(svc.oneshot(signed(None, "d-claim-panics"))).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        POLLS.load(Ordering::SeqCst),
        1,
        "polled again after its panic"
    );
}
